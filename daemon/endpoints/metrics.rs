//! Optional Prometheus endpoint: `GET /metrics` in the OpenMetrics text
//! format, one series per listener with `listener` and `kind` labels.
//!
//! A `prometheus-client` collector reads the same atomic snapshots as
//! GetStats at scrape time, so scraping adds no work to the data path and
//! the numbers always agree with `netctl stats`. Off unless
//! `[metrics] listen` is set.
//!
//! The endpoint shares the process (and its file descriptors) with every
//! listener and the control plane, so it is bounded like them ([`Limits`]):
//! at most `max_connections` connections at once (more are closed as soon as
//! they are accepted), request headers within `header_timeout`, an idle
//! keep-alive connection closed after `idle_timeout`, and each response
//! written within [`RESPONSE_TIMEOUT`]. HTTP/1.1 only: that is what
//! Prometheus speaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::control::admission::Gate;
use crate::endpoints::http;
use crate::fault::metrics as fault_families;
use crate::proto::{self, ListenerStats};
use crate::services::{KINDS, KindInfo};
use crate::supervisor::Supervisor;
use crate::telemetry::families::{Buckets, Desc, Metric, Series};

pub use crate::endpoints::http::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, Limits,
    MAX_MAX_CONNECTIONS, RESPONSE_TIMEOUT, TIMEOUT_RANGE,
};

type Getter = fn(&ListenerStats) -> u64;

/// Counters: (name without `_total`, help, getter). The encoder appends
/// `_total`.
const COUNTERS: &[(&str, &str, Getter)] = &[
    ("netd_connections", "Connections accepted.", |s| {
        s.connections_total
    }),
    (
        "netd_connections_refused",
        "Connections refused by the connection limit.",
        |s| s.connections_refused,
    ),
    ("netd_received_bytes", "Bytes received from clients.", |s| {
        s.bytes_in
    }),
    ("netd_sent_bytes", "Bytes sent to clients.", |s| s.bytes_out),
    ("netd_received_datagrams", "Datagrams received.", |s| {
        s.datagrams_in
    }),
    ("netd_sent_datagrams", "Datagrams sent.", |s| {
        s.datagrams_out
    }),
    (
        "netd_errors",
        "I/O errors on connections and sockets.",
        |s| s.errors,
    ),
    (
        "netd_panics",
        "Connection tasks that panicked (a bug; the listener kept serving).",
        |s| s.panics,
    ),
];

#[derive(Debug)]
struct ListenerCollector {
    supervisor: Supervisor,
    /// Connections to this endpoint closed at accept by the limit.
    refused: Arc<AtomicU64>,
}

impl Collector for ListenerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listeners = self.supervisor.list();
        let labels: Vec<[(&str, &str); 2]> = listeners
            .iter()
            .map(|l| [("listener", l.name.as_str()), ("kind", l.kind().slug())])
            .collect();
        for (name, help, get) in COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, labels) in listeners.iter().zip(&labels) {
                let v = l.stats.as_ref().map(get).unwrap_or(0);
                ConstCounter::new(v).encode(family.encode_family(labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "netd_listener_restarts",
            "Restarts after a failure.",
            None,
            MetricType::Counter,
        )?;
        for (l, labels) in listeners.iter().zip(&labels) {
            ConstCounter::new(l.restarts as u64).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "netd_connections_active",
            "Open connections.",
            None,
            MetricType::Gauge,
        )?;
        for (l, labels) in listeners.iter().zip(&labels) {
            let v = l.stats.as_ref().map_or(0, |s| s.connections_active as i64);
            ConstGauge::new(v).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "netd_listener_up",
            "1 if the listener is running, 0 if it is failed or stopping.",
            None,
            MetricType::Gauge,
        )?;
        for (l, labels) in listeners.iter().zip(&labels) {
            let up = (l.state() == proto::ListenerState::Running) as i64;
            ConstGauge::new(up).encode(family.encode_family(labels)?)?;
        }
        ConstCounter::new(self.refused.load(Relaxed)).encode(encoder.encode_descriptor(
            "netd_metrics_connections_refused",
            "Connections to this endpoint closed at once: max_connections were open.",
            None,
            MetricType::Counter,
        )?)?;
        let endpoints = crate::control::admission::snapshot();
        let mut family = encoder.encode_descriptor(
            "netd_endpoint_connections",
            "Connections admitted and open on one of netd's own endpoints (control, health, metrics, toxiproxy_api).",
            None,
            MetricType::Gauge,
        )?;
        for e in &endpoints {
            let labels: Labels = vec![("endpoint", e.endpoint.to_string())];
            ConstGauge::new(e.open as i64).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "netd_endpoint_connections_refused",
            "Connections to one of netd's own endpoints closed by its admission rules, by reason: full, per_source, handshake_evicted, handshake_timeout, handshake_failed.",
            None,
            MetricType::Counter,
        )?;
        for e in &endpoints {
            for (reason, n) in &e.refused {
                let labels: Labels = vec![
                    ("endpoint", e.endpoint.to_string()),
                    ("reason", reason.as_str().to_string()),
                ];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        ConstCounter::new(crate::telemetry::access_log::dropped()).encode(encoder.encode_descriptor(
            "netd_access_log_dropped",
            "Access-log lines dropped: the buffer was full (the output did not keep up) or the write failed.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(crate::telemetry::access_log::written()).encode(
            encoder.encode_descriptor(
                "netd_access_log_written",
                "Access-log lines written.",
                None,
                MetricType::Counter,
            )?,
        )?;
        ConstGauge::new(crate::net::fd_budget::capacity() as i64).encode(encoder.encode_descriptor(
            "netd_descriptor_budget",
            "File descriptors the data plane may hold: RLIMIT_NOFILE less the control plane's reserve and netd's own.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(crate::net::fd_budget::available() as i64).encode(encoder.encode_descriptor(
            "netd_descriptor_budget_available",
            "Descriptors of the data plane's budget not in use; at 0 accept loops pause and udp-proxies refuse new clients.",
            None,
            MetricType::Gauge,
        )?)?;
        encode_declared(&listeners, &mut encoder)
    }
}

type Labels = Vec<(&'static str, String)>;

/// A series' value at a scrape.
enum Value {
    Int(u64),
    /// Per bucket (not cumulative: the encoder adds them up), the last
    /// one `+Inf` (`f64::MAX` to the encoder).
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

impl Value {
    fn of(series: Series<'_>) -> Value {
        match series {
            Series::Value(v) => Value::Int(v),
            Series::Histogram(b) => Value::histogram(b),
        }
    }

    /// A source's cumulative buckets as the encoder takes them. Counters
    /// read one by one may be a request apart: the counts are kept
    /// non-decreasing and `count` (the `+Inf` bucket) at least the last.
    fn histogram(b: Buckets<'_>) -> Value {
        let mut buckets = Vec::with_capacity(b.bounds.len() + 1);
        let mut below = 0;
        for (i, bound) in b.bounds.iter().enumerate() {
            let upto = b.cumulative.get(i).copied().unwrap_or(below).max(below);
            buckets.push((*bound, upto - below));
            below = upto;
        }
        let count = b.count.max(below);
        buckets.push((f64::MAX, count - below));
        Value::Histogram {
            sum: b.sum,
            count,
            buckets,
        }
    }
}

/// A histogram series as `prometheus-client` encodes one.
struct ConstHistogram<'a> {
    sum: f64,
    count: u64,
    buckets: &'a [(f64, u64)],
}

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One declared family and its series at a scrape.
struct Family {
    desc: Desc,
    series: Vec<(Labels, Value)>,
}

impl Family {
    /// Add a series: the `base` labels (listener, kind), then the family's
    /// own labels with `values`.
    fn put(&mut self, base: &Labels, values: &[&str], v: Series<'_>) {
        debug_assert_eq!(
            values.len(),
            self.desc.labels.len(),
            "label values of {}",
            self.desc.name
        );
        let mut labels = base.clone();
        labels.extend(
            self.desc
                .labels
                .iter()
                .zip(values)
                .map(|(k, v)| (*k, (*v).to_string())),
        );
        self.series.push((labels, Value::of(v)));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.series.is_empty() {
            return Ok(());
        }
        let kind = match self.desc.metric {
            Metric::Counter => MetricType::Counter,
            Metric::Gauge => MetricType::Gauge,
            Metric::Histogram => MetricType::Histogram,
        };
        let mut family = encoder.encode_descriptor(self.desc.name, self.desc.help, None, kind)?;
        for (labels, v) in &self.series {
            let into = family.encode_family(labels)?;
            match (self.desc.metric, v) {
                (Metric::Counter, Value::Int(v)) => ConstCounter::new(*v).encode(into)?,
                (Metric::Gauge, Value::Int(v)) => ConstGauge::new(*v as i64).encode(into)?,
                (
                    Metric::Histogram,
                    Value::Histogram {
                        sum,
                        count,
                        buckets,
                    },
                ) => ConstHistogram {
                    sum: *sum,
                    count: *count,
                    buckets,
                }
                .encode(into)?,
                // A reader of another type than its family's (the
                // constructors of `families::Family` rule it out).
                _ => debug_assert!(false, "{}: series of another type", self.desc.name),
            }
        }
        Ok(())
    }
}

/// Where `desc`'s family is in `families`, added if it is new: a family
/// two kinds declare (the datagram-source guard's) is one family with the
/// series of both.
fn slot(families: &mut Vec<Family>, desc: Desc) -> usize {
    if let Some(i) = families.iter().position(|f| f.desc.name == desc.name) {
        debug_assert_eq!(
            families[i].desc, desc,
            "{} declared twice, unalike",
            desc.name
        );
        return i;
    }
    families.push(Family {
        desc,
        series: Vec::new(),
    });
    families.len() - 1
}

/// Series of the families only some listeners have: those each kind
/// declares (its `FAMILIES` in the kinds registry) and each fault's
/// ([`crate::fault::metrics`]). A family without series is left out.
fn encode_declared(
    listeners: &[proto::Listener],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut families = Vec::new();
    // Each kind with where its families are in `families`.
    let kinds: Vec<(KindInfo, Vec<usize>)> = KINDS
        .iter()
        .map(|k| {
            let at = k.families.descs().into_iter();
            (*k, at.map(|d| slot(&mut families, d)).collect())
        })
        .collect();
    let fault_at: Vec<usize> = fault_families::FAMILIES
        .iter()
        .map(|f| slot(&mut families, f.desc))
        .collect();
    let tls_at: Vec<usize> = crate::telemetry::families::TLS
        .iter()
        .map(|f| slot(&mut families, f.desc))
        .collect();
    for l in listeners {
        let Some(stats) = &l.stats else { continue };
        let base: Labels = vec![
            ("listener", l.name.clone()),
            ("kind", l.kind().slug().to_string()),
        ];
        let kind = kinds.iter().find(|(k, _)| k.kind == l.kind());
        if let (Some(detail), Some((info, at))) = (&stats.detail, kind) {
            for (i, &at) in at.iter().enumerate() {
                let family = &mut families[at];
                info.families
                    .read(i, detail, &mut |values, v| family.put(&base, values, v));
            }
        }
        for f in &stats.faults {
            for (declared, &at) in fault_families::FAMILIES.iter().zip(&fault_at) {
                let family = &mut families[at];
                declared.read(f, &mut |values, v| family.put(&base, values, v));
            }
        }
        if let Some(t) = &stats.tls {
            for (declared, &at) in crate::telemetry::families::TLS.iter().zip(&tls_at) {
                let family = &mut families[at];
                declared.read(t, &mut |values, v| family.put(&base, values, v));
            }
        }
    }
    for f in &families {
        f.encode(encoder)?;
    }
    Ok(())
}

/// Serve `/metrics` on `listener` within `limits` until `stop` is
/// cancelled; then connections finish the response in flight and close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: Limits,
    supervisor: Supervisor,
    stop: CancellationToken,
) {
    let refused = Arc::new(AtomicU64::new(0));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ListenerCollector {
        supervisor,
        refused: refused.clone(),
    }));
    let registry = Arc::new(registry);
    let how = http::ConnLimits {
        what: "metrics",
        limits,
        respond: RESPONSE_TIMEOUT,
        max_head: None,
    };
    http::serve(
        listener,
        Gate::new(
            "metrics",
            crate::control::admission::Limits::for_max(limits.max_connections, false),
        ),
        &stop,
        &refused,
        "metrics endpoint",
        |stream, _peer, _source, slot| {
            let registry = registry.clone();
            let stop = stop.clone();
            async move {
                // The connection's place at the endpoint, until it ends.
                let _slot = slot;
                http::serve_connection(stream, how, &stop, move |req| {
                    std::future::ready(respond(&req, &registry))
                })
                .await;
            }
        },
    )
    .await;
}

/// The one resource: `GET /metrics` (HEAD too).
fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    use http::plain;
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn parse(metrics: &str) -> Result<Config, String> {
        Config::parse(&format!("[metrics]\n{metrics}\n"), "x.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn limits_default_and_from_config() {
        let c = parse("listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(c.metrics_limits, Limits::default());
        let c = parse(
            "listen = \"[::1]:9464\"\nmax_connections = 2\nheader_timeout = \"1s\"\nidle_timeout = \"2m\"",
        )
        .unwrap();
        assert_eq!(
            c.metrics_limits,
            Limits {
                max_connections: 2,
                header_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(120),
            }
        );
    }

    #[test]
    fn listen_is_loopback_unless_allow_remote() {
        assert!(parse("listen = \"[::ffff:127.0.0.1]:9464\"").is_ok());
        for addr in ["0.0.0.0:9464", "[::]:9464", "192.0.2.1:9464"] {
            let e = parse(&format!("listen = \"{addr}\"")).unwrap_err();
            assert!(
                e.starts_with("x.toml:2: metrics.listen:") && e.contains("not a loopback"),
                "{e}"
            );
            let c = parse(&format!("listen = \"{addr}\"\nallow_remote = true")).unwrap();
            assert_eq!(c.metrics_listen, Some(addr.parse().unwrap()));
        }
    }

    /// The declared families of fixed listeners, as `/metrics` encodes them.
    #[derive(Debug)]
    struct Declared(Vec<proto::Listener>);

    impl Collector for Declared {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_declared(&self.0, &mut encoder)
        }
    }

    fn encode_text(listeners: Vec<proto::Listener>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Declared(listeners)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// Every family a kind declares (and every fault family) is exported
    /// for a listener of that kind, with its help, type and labels.
    #[test]
    fn every_declared_family_is_exported_for_a_listener_of_its_kind() {
        let fault = proto::FaultStats {
            name: "late".into(),
            r#type: "latency".into(),
            ..Default::default()
        };
        // Every TLS family has a series only with an expiry and an upstream.
        let tls = proto::TlsStats {
            certificate_not_after: 1_900_000_000,
            upstream_handshakes: 1,
            ..Default::default()
        };
        let listeners = KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| proto::Listener {
                name: format!("l{i}"),
                kind: k.kind as i32,
                stats: Some(ListenerStats {
                    detail: k.families.sample(),
                    faults: vec![fault.clone()],
                    tls: Some(tls.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let text = encode_text(listeners);
        let exported = |desc: Desc, listener: &str, kind: &str| {
            let (ty, suffix) = match desc.metric {
                Metric::Counter => ("counter", "_total"),
                Metric::Gauge => ("gauge", ""),
                Metric::Histogram => ("histogram", "_count"),
            };
            let name = desc.name;
            assert!(
                text.contains(&format!("# HELP {name} {}\n", desc.help)),
                "no HELP of {name}:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {name} {ty}\n")),
                "no TYPE of {name}:\n{text}"
            );
            let series = format!("{name}{suffix}{{listener=\"{listener}\",kind=\"{kind}\"");
            let line = text
                .lines()
                .find(|l| l.starts_with(&series))
                .unwrap_or_else(|| panic!("no series of {name} for {kind}:\n{text}"));
            for label in desc.labels {
                assert!(line.contains(&format!(",{label}=\"")), "{line}");
            }
        };
        for (i, k) in KINDS.iter().enumerate() {
            for desc in k.families.descs() {
                exported(desc, &format!("l{i}"), k.slug);
            }
            for f in fault_families::FAMILIES {
                exported(f.desc, &format!("l{i}"), k.slug);
            }
            for f in crate::telemetry::families::TLS {
                exported(f.desc, &format!("l{i}"), k.slug);
            }
        }
        assert!(
            text.contains("netd_tls_certificate_expiry_seconds{listener=\"l0\",kind=\"tcp-echo\"} 1900000000\n"),
            "{text}"
        );
    }

    /// A family name means one family: declared alike wherever it is
    /// declared, and none of the families every listener has.
    #[test]
    fn a_family_name_is_declared_once_or_alike() {
        let mut all: Vec<Desc> = KINDS.iter().flat_map(|k| k.families.descs()).collect();
        all.extend(fault_families::FAMILIES.iter().map(|f| f.desc));
        all.extend(crate::telemetry::families::TLS.iter().map(|f| f.desc));
        for a in &all {
            for b in all.iter().filter(|b| b.name == a.name) {
                assert_eq!(a, b, "{} declared twice, unalike", a.name);
            }
            assert!(
                !COUNTERS.iter().any(|(name, _, _)| *name == a.name),
                "{} is one of the counters every listener has",
                a.name
            );
        }
    }

    /// A histogram family is exported the Prometheus way: a cumulative
    /// `_bucket` series per bound (`le`) and `+Inf`, equal to `_count`,
    /// and `_sum`; counts read a request apart stay consistent.
    #[test]
    fn a_histogram_has_cumulative_buckets_inf_a_sum_and_a_count() {
        let route = |route: &str, requests, latency_buckets: Vec<u64>| proto::HttpRouteStats {
            route: route.into(),
            requests,
            latency_buckets,
            latency_sum_seconds: 12.5,
            ..Default::default()
        };
        let stats = proto::HttpProxyStats {
            routes: vec![
                route("/api", 5, vec![1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 4]),
                // Buckets read after a request the count missed; and a
                // short list.
                route("/b", 2, vec![0, 3]),
            ],
            ..Default::default()
        };
        let text = encode_text(vec![proto::Listener {
            name: "hp".into(),
            kind: proto::ListenerKind::HttpProxy as i32,
            stats: Some(ListenerStats {
                detail: Some(proto::listener_stats::Detail::HttpProxy(stats)),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let name = "netd_http_proxy_request_duration_seconds";
        assert!(
            text.contains(&format!("# TYPE {name} histogram\n")),
            "{text}"
        );
        let labels = |route: &str| format!("listener=\"hp\",kind=\"http-proxy\",route=\"{route}\"");
        for (le, n) in [("0.005", 1), ("0.025", 3), ("10.0", 4), ("+Inf", 5)] {
            let line = format!("{name}_bucket{{le=\"{le}\",{}}} {n}\n", labels("/api"));
            assert!(text.contains(&line), "no {line} in:\n{text}");
        }
        for line in [
            format!("{name}_sum{{{}}} 12.5\n", labels("/api")),
            format!("{name}_count{{{}}} 5\n", labels("/api")),
            format!("{name}_bucket{{le=\"0.01\",{}}} 3\n", labels("/b")),
            format!("{name}_bucket{{le=\"10.0\",{}}} 3\n", labels("/b")),
            format!("{name}_bucket{{le=\"+Inf\",{}}} 3\n", labels("/b")),
            format!("{name}_count{{{}}} 3\n", labels("/b")),
        ] {
            assert!(text.contains(&line), "no {line} in:\n{text}");
        }
    }

    /// No series, no family: a daemon without a listener of a kind does
    /// not export the kind's families.
    #[test]
    fn families_without_series_are_left_out() {
        assert_eq!(encode_text(Vec::new()), "# EOF\n");
    }
}
