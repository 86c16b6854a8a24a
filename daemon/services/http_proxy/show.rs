//! How netctl shows an http-proxy: its spec, its requests by status class
//! and route, and each upstream's health.

use serde_json::{Value, json};

use super::HttpProxy;
use crate::proto::{self, listener_stats::Detail};
use crate::services::proxy::show::upstream_json;
use crate::services::show::{
    Part, Show, dur, faults_json, short, tls_client_json, tls_server_json,
};

impl Show for HttpProxy {
    type Stats = proto::HttpProxyStats;
    const STATS_KEY: &'static str = "http_proxy";

    fn stats(detail: &Detail) -> Option<&Self::Stats> {
        if let Detail::HttpProxy(p) = detail {
            Some(p)
        } else {
            None
        }
    }

    fn spec_json(spec: &Self::Spec) -> Value {
        // Without `..`: a field added to the proto does not compile until
        // it is shown.
        let proto::HttpProxySpec {
            listen,
            upstreams,
            connect_timeout,
            upstream_backoff,
            max_connections,
            max_idle_per_upstream,
            upstream_protocol,
            forwarded,
            routes,
            retries,
            max_body_bytes,
            header_read_timeout,
            request_timeout,
            idle_timeout,
            max_streams,
            max_header_bytes,
            access_log,
            faults,
            envoy_fault_headers,
            tls,
            upstream_tls,
        } = spec;
        let mut v = json!({
            "listen": listen,
            "upstreams": upstreams,
            "upstream_protocol": upstream_protocol,
            "connect_timeout": dur(connect_timeout),
            "upstream_backoff": dur(upstream_backoff),
            "max_connections": max_connections,
            "max_idle_per_upstream": max_idle_per_upstream,
            "forwarded": forwarded,
            "routes": routes,
            "retries": retries,
            "max_body_bytes": max_body_bytes,
            "header_read_timeout": dur(header_read_timeout),
            "request_timeout": dur(request_timeout),
            "idle_timeout": dur(idle_timeout),
            "max_streams": max_streams,
            "max_header_bytes": max_header_bytes,
            "access_log": access_log.unwrap_or(true),
            "envoy_fault_headers": envoy_fault_headers,
            "faults": faults_json(faults),
        });
        if let Some(t) = tls_server_json(tls.as_ref()) {
            v["tls"] = t;
        }
        if let Some(t) = tls_client_json(upstream_tls.as_ref()) {
            v["upstream_tls"] = t;
        }
        v
    }

    fn spec_faults(spec: &Self::Spec) -> &[proto::Fault] {
        &spec.faults
    }

    fn stats_json(stats: &Self::Stats) -> Value {
        let proto::HttpProxyStats {
            requests,
            responses_1xx,
            responses_2xx,
            responses_3xx,
            responses_4xx,
            responses_5xx,
            upstream_errors,
            upstream_timeouts,
            retries,
            upgrades,
            too_large,
            latency_p50_ms,
            latency_p90_ms,
            latency_p99_ms,
            routes,
            upstreams,
            envoy_header_faults,
        } = stats;
        json!({
            "requests": requests,
            "responses_1xx": responses_1xx,
            "responses_2xx": responses_2xx,
            "responses_3xx": responses_3xx,
            "responses_4xx": responses_4xx,
            "responses_5xx": responses_5xx,
            "upstream_errors": upstream_errors,
            "upstream_timeouts": upstream_timeouts,
            "retries": retries,
            "upgrades": upgrades,
            "too_large": too_large,
            "latency_p50_ms": latency_p50_ms,
            "latency_p90_ms": latency_p90_ms,
            "latency_p99_ms": latency_p99_ms,
            "envoy_header_faults": envoy_header_faults,
            "routes": routes.iter().map(route_json).collect::<Vec<_>>(),
            "upstreams": upstreams.iter().map(upstream_json).collect::<Vec<_>>(),
        })
    }

    fn stats_cell(p: &Self::Stats) -> Vec<String> {
        let up = p.upstreams.iter().filter(|u| u.healthy).count();
        let mut parts = vec![
            format!("{} req", short(p.requests)),
            format!("{up}/{} up", p.upstreams.len()),
        ];
        if p.responses_5xx > 0 {
            parts.push(format!("{} 5xx", short(p.responses_5xx)));
        }
        if p.upstream_timeouts > 0 {
            parts.push(format!("{} 504", short(p.upstream_timeouts)));
        }
        if p.requests > 0 {
            parts.push(format!("p99 {:.1}ms", p.latency_p99_ms));
        }
        parts
    }

    fn status(p: &Self::Stats) -> Vec<Part> {
        let mut parts = vec![Part::line(
            "requests",
            format!(
                "{} (1xx {}, 2xx {}, 3xx {}, 4xx {}, 5xx {}); p50 {:.1}ms p90 {:.1}ms p99 {:.1}ms",
                p.requests,
                p.responses_1xx,
                p.responses_2xx,
                p.responses_3xx,
                p.responses_4xx,
                p.responses_5xx,
                p.latency_p50_ms,
                p.latency_p90_ms,
                p.latency_p99_ms
            ),
        )];
        parts.push(Part::line(
            "upstream",
            format!(
                "{} errors (502), {} timeouts (504), {} retries, {} upgrades",
                p.upstream_errors, p.upstream_timeouts, p.retries, p.upgrades
            ),
        ));
        let mut refused = format!("{} too large (413, 431)", p.too_large);
        if p.envoy_header_faults > 0 {
            refused += &format!("; {} faults by Envoy headers", p.envoy_header_faults);
        }
        parts.push(Part::line("limits", refused));
        let routes = p
            .routes
            .iter()
            .map(|r| {
                vec![
                    format!("  {}", r.route),
                    r.requests.to_string(),
                    r.responses_1xx.to_string(),
                    r.responses_2xx.to_string(),
                    r.responses_3xx.to_string(),
                    r.responses_4xx.to_string(),
                    r.responses_5xx.to_string(),
                    format!("{:.1}ms", r.latency_p50_ms),
                    format!("{:.1}ms", r.latency_p99_ms),
                ]
            })
            .collect();
        parts.push(Part::Table {
            title: "routes",
            header: &[
                "  ROUTE", "REQUESTS", "1XX", "2XX", "3XX", "4XX", "5XX", "P50", "P99",
            ],
            rows: routes,
        });
        let rows = p
            .upstreams
            .iter()
            .map(|u| {
                vec![
                    format!("  {}", u.addr),
                    if u.healthy { "healthy" } else { "down" }.into(),
                    u.connections.to_string(),
                    u.connect_failures.to_string(),
                    if u.last_error.is_empty() {
                        "-".into()
                    } else {
                        u.last_error.clone()
                    },
                ]
            })
            .collect();
        parts.push(Part::Table {
            title: "upstreams",
            header: &["  ADDR", "HEALTH", "REQUESTS", "FAILURES", "LAST_ERROR"],
            rows,
        });
        parts
    }
}

/// One route's counters.
fn route_json(r: &proto::HttpRouteStats) -> Value {
    let proto::HttpRouteStats {
        route,
        requests,
        responses_1xx,
        responses_2xx,
        responses_3xx,
        responses_4xx,
        responses_5xx,
        latency_p50_ms,
        latency_p90_ms,
        latency_p99_ms,
        latency_buckets,
        latency_sum_seconds,
    } = r;
    json!({
        "route": route,
        "requests": requests,
        "responses_1xx": responses_1xx,
        "responses_2xx": responses_2xx,
        "responses_3xx": responses_3xx,
        "responses_4xx": responses_4xx,
        "responses_5xx": responses_5xx,
        "latency_p50_ms": latency_p50_ms,
        "latency_p90_ms": latency_p90_ms,
        "latency_p99_ms": latency_p99_ms,
        "latency_buckets": latency_buckets,
        "latency_sum_seconds": latency_sum_seconds,
    })
}
