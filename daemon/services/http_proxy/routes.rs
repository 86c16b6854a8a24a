//! Per-route counters of the http-proxy: the spec's path prefixes, each
//! request counted under the longest one its path starts with, or under
//! "/" (always present).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::MAX_ROUTES;
use crate::proto;
use crate::services::SpecError;
use crate::telemetry::stats::Histogram;

/// Bounds of the Prometheus latency buckets, in seconds.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One route's counters.
#[derive(Debug, Default)]
pub struct RouteCounters {
    pub requests: AtomicU64,
    /// By status class: index 1 to 5.
    pub by_class: [AtomicU64; 6],
    /// Cumulative-at-scrape: counts per bucket of [`BUCKETS`] (the last
    /// one is above the largest bound).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    latency: Histogram,
}

impl RouteCounters {
    pub fn record(&self, status: u16, took: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if let Some(c) = self.by_class.get(usize::from(status / 100)) {
            c.fetch_add(1, Relaxed);
        }
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
        self.latency.record(took);
    }
}

#[derive(Debug)]
pub struct Route {
    /// Shared, so that a request's access-log line can name its route
    /// without a copy.
    pub prefix: Arc<str>,
    pub counters: Arc<RouteCounters>,
}

/// The routes, longest prefix first; "/" last.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub fn parse(prefixes: &[String]) -> Result<Routes, SpecError> {
        if prefixes.len() > MAX_ROUTES {
            return Err(SpecError::at(
                "routes",
                format!(
                    "routes has {} prefixes; at most {MAX_ROUTES}",
                    prefixes.len()
                ),
            ));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(prefixes.len() + 1);
        for p in prefixes {
            let p = p.trim();
            if !p.starts_with('/') || p.len() > 256 || p.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(SpecError::at(
                    "routes",
                    format!(
                        "routes: '{}' is not a path prefix: it must start with '/' (\"/api\") and be at most 256 printable ASCII characters without spaces",
                        p.escape_debug()
                    ),
                ));
            }
            if routes.iter().any(|r| &*r.prefix == p) {
                return Err(SpecError::at(
                    "routes",
                    format!("routes: '{p}' is listed twice"),
                ));
            }
            routes.push(Route {
                prefix: p.into(),
                counters: Arc::default(),
            });
        }
        if !routes.iter().any(|r| &*r.prefix == "/") {
            routes.push(Route {
                prefix: "/".into(),
                counters: Arc::default(),
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Routes { routes })
    }

    /// The route a path is counted under.
    pub fn of(&self, path: &str) -> &Route {
        self.routes
            .iter()
            .find(|r| path.starts_with(&*r.prefix))
            .unwrap_or_else(|| &self.routes[self.routes.len() - 1])
    }

    /// A route that stays keeps its counters.
    pub fn carry_over(&mut self, prev: &Routes) {
        for r in &mut self.routes {
            if let Some(p) = prev.routes.iter().find(|p| p.prefix == r.prefix) {
                r.counters = p.counters.clone();
            }
        }
    }

    pub fn stats(&self) -> Vec<proto::HttpRouteStats> {
        let mut out: Vec<proto::HttpRouteStats> = self
            .routes
            .iter()
            .map(|r| {
                let c = &r.counters;
                let [p50, p90, p99] = c.latency.quantiles_ms([0.5, 0.9, 0.99]);
                let mut cumulative = 0;
                let latency_buckets = c.buckets[..BUCKETS.len()]
                    .iter()
                    .map(|b| {
                        cumulative += b.load(Relaxed);
                        cumulative
                    })
                    .collect();
                proto::HttpRouteStats {
                    route: r.prefix.to_string(),
                    requests: c.requests.load(Relaxed),
                    responses_1xx: c.by_class[1].load(Relaxed),
                    responses_2xx: c.by_class[2].load(Relaxed),
                    responses_3xx: c.by_class[3].load(Relaxed),
                    responses_4xx: c.by_class[4].load(Relaxed),
                    responses_5xx: c.by_class[5].load(Relaxed),
                    latency_p50_ms: p50,
                    latency_p90_ms: p90,
                    latency_p99_ms: p99,
                    latency_buckets,
                    latency_sum_seconds: c.sum_micros.load(Relaxed) as f64 / 1e6,
                }
            })
            .collect();
        out.sort_by(|a, b| a.route.cmp(&b.route));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_slash_catches_the_rest() {
        let r = Routes::parse(&["/api".into(), "/api/orders".into()]).unwrap();
        assert_eq!(&*r.of("/api/orders/7").prefix, "/api/orders");
        assert_eq!(&*r.of("/api/x").prefix, "/api");
        assert_eq!(&*r.of("/other").prefix, "/");
        let refused = |routes: &[&str]| {
            let v: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
            let e = Routes::parse(&v).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("routes"));
            e.message
        };
        let e = refused(&["api"]);
        assert!(e.starts_with("routes: 'api' is not a path prefix"), "{e}");
        assert!(refused(&["/a b"]).contains("without spaces"));
        assert_eq!(refused(&["/a", "/a"]), "routes: '/a' is listed twice");
        let many: Vec<String> = (0..=MAX_ROUTES).map(|i| format!("/r{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(refused(&many), "routes has 65 prefixes; at most 64");
        r.of("/api").counters.record(503, Duration::from_millis(20));
        let s = r.stats();
        let api = s.iter().find(|s| s.route == "/api").unwrap();
        assert_eq!((api.requests, api.responses_5xx), (1, 1));
        assert_eq!(api.latency_buckets[..4], [0, 0, 1, 1]);
    }
}
