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
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::control::admission::Gate;
use crate::endpoints::http;
use crate::proto::{self, ListenerStats};
use crate::supervisor::Supervisor;

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
        self.encode_kind_specific(&listeners, &mut encoder)
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: name, help, type, and (labels, value) per series.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    series: Vec<(Labels, u64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, counter: bool) -> Self {
        Family {
            name,
            help,
            counter,
            series: Vec::new(),
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.series.is_empty() {
            return Ok(());
        }
        let kind = if self.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut family = encoder.encode_descriptor(self.name, self.help, None, kind)?;
        for (labels, v) in &self.series {
            if self.counter {
                ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
            } else {
                ConstGauge::new(*v as i64).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

impl ListenerCollector {
    /// Series for the counters only some kinds have (proxy, http, sniffer,
    /// udp-echo).
    fn encode_kind_specific(
        &self,
        listeners: &[proto::Listener],
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use proto::listener_stats::Detail;
        let mut proxy_failures = Family::new(
            "netd_proxy_connect_failures",
            "Upstream connects that failed.",
            true,
        );
        let mut proxy_timeouts = Family::new(
            "netd_proxy_connect_timeouts",
            "Upstream connects that timed out.",
            true,
        );
        let mut pool_hits = Family::new(
            "netd_proxy_pool_hits",
            "Clients served from a warm pooled connection.",
            true,
        );
        let mut pool_misses = Family::new(
            "netd_proxy_pool_misses",
            "Clients that found no warm connection.",
            true,
        );
        let mut pool_stale = Family::new(
            "netd_proxy_pool_stale",
            "Warm connections found closed and discarded.",
            true,
        );
        let mut upstream_up = Family::new(
            "netd_proxy_upstream_healthy",
            "1 if the upstream is in rotation, 0 while backed off.",
            false,
        );
        let mut http_responses = Family::new(
            "netd_http_responses",
            "HTTP responses by status class.",
            true,
        );
        let mut http_requests = Family::new("netd_http_requests", "HTTP requests answered.", true);
        let mut http_rate_limited = Family::new(
            "netd_http_rate_limited",
            "HTTP requests refused with 429 by the rate limit (of the 4xx).",
            true,
        );
        let mut http_latency = Family::new(
            "netd_http_latency_p99_microseconds",
            "p99 request latency (histogram bucket bound).",
            false,
        );
        let mut sniff_packets = Family::new(
            "netd_sniffer_packets",
            "Packets captured, by protocol.",
            true,
        );
        let mut sniff_bytes =
            Family::new("netd_sniffer_bytes", "Bytes captured, by protocol.", true);
        let mut sniff_drops = Family::new(
            "netd_sniffer_kernel_drops",
            "Packets the kernel dropped before netd read them.",
            true,
        );
        let mut sniff_alerts = Family::new(
            "netd_sniffer_alerts",
            "Alerts raised by the detectors.",
            true,
        );
        let mut sniff_fragments = Family::new(
            "netd_sniffer_fragments",
            "Captured IPv4/IPv6 fragments after the first (no transport header).",
            true,
        );
        let mut sniff_malformed = Family::new(
            "netd_sniffer_malformed",
            "Captured packets with a malformed IP header.",
            true,
        );
        let mut udp_drops = Family::new(
            "netd_udp_echo_drops",
            "Datagrams a UDP echo or udp-proxy received but did not answer or forward, by reason (own_source, reflector_source, rate_limited; a udp-proxy also source_clients) or dropped by the kernel (kernel).",
            true,
        );
        let mut udp_truncated = Family::new(
            "netd_udp_echo_truncated",
            "UDP echo replies cut to the reply size cap.",
            true,
        );
        let mut udp_sources = Family::new(
            "netd_udp_echo_sources",
            "Sources in a UDP echo's or udp-proxy's rate-limit table.",
            false,
        );
        type FaultCounter = fn(&crate::proto::FaultStats) -> u64;
        let mut fault_counters: Vec<(Family, FaultCounter)> = vec![
            (
                Family::new(
                    "netd_fault_connections_affected",
                    "Connections (TCP) or clients (UDP) a fault was applied to.",
                    true,
                ),
                |f| f.connections_affected,
            ),
            (
                Family::new(
                    "netd_fault_bytes_delayed",
                    "Bytes a fault held back (latency, bandwidth, slicer).",
                    true,
                ),
                |f| f.bytes_delayed,
            ),
            (
                Family::new("netd_fault_bytes_dropped", "Bytes a fault discarded.", true),
                |f| f.bytes_dropped,
            ),
            (
                Family::new(
                    "netd_fault_connections_closed",
                    "Connections a fault closed or reset.",
                    true,
                ),
                |f| f.connections_closed,
            ),
            (
                Family::new(
                    "netd_fault_datagrams_lost",
                    "Datagrams a fault dropped.",
                    true,
                ),
                |f| f.datagrams_lost,
            ),
            (
                Family::new(
                    "netd_fault_datagrams_duplicated",
                    "Datagrams a fault sent twice.",
                    true,
                ),
                |f| f.datagrams_duplicated,
            ),
            (
                Family::new(
                    "netd_fault_datagrams_reordered",
                    "Datagrams a fault held back behind later ones.",
                    true,
                ),
                |f| f.datagrams_reordered,
            ),
            (
                Family::new(
                    "netd_fault_datagrams_corrupted",
                    "Datagrams in which a fault flipped a bit.",
                    true,
                ),
                |f| f.datagrams_corrupted,
            ),
            (
                Family::new(
                    "netd_fault_datagrams_delayed",
                    "Datagrams a fault delayed.",
                    true,
                ),
                |f| f.datagrams_delayed,
            ),
        ];
        let mut fault_active = Family::new(
            "netd_fault_active",
            "1 while a fault is inside its time window (always, without one).",
            false,
        );
        let mut udp_proxy_clients = Family::new(
            "netd_udp_proxy_clients",
            "Clients a UDP proxy has an upstream socket for.",
            false,
        );
        let mut udp_proxy_expired = Family::new(
            "netd_udp_proxy_clients_expired",
            "UDP proxy clients forgotten after their idle timeout or evicted.",
            true,
        );
        let mut udp_proxy_refused = Family::new(
            "netd_udp_proxy_clients_refused",
            "Datagrams of new UDP proxy clients dropped: the client table was full.",
            true,
        );
        let mut udp_proxy_errors = Family::new(
            "netd_udp_proxy_upstream_errors",
            "Failed sends or receives on UDP proxy upstream sockets.",
            true,
        );
        let mut udp_evicted = Family::new(
            "netd_udp_echo_sources_evicted",
            "Idle sources evicted from a UDP echo's or udp-proxy's rate-limit table.",
            true,
        );
        for l in listeners {
            let base: Labels = vec![
                ("listener", l.name.clone()),
                ("kind", l.kind().slug().to_string()),
            ];
            let with = |k: &'static str, v: String| {
                let mut b = base.clone();
                b.push((k, v));
                b
            };
            for f in l.stats.iter().flat_map(|s| &s.faults) {
                let labels = {
                    let mut b = with("fault", f.name.clone());
                    b.push(("type", f.r#type.clone()));
                    b
                };
                for (family, get) in &mut fault_counters {
                    family.series.push((labels.clone(), get(f)));
                }
                fault_active.series.push((labels, f.active as u64));
            }
            match l.stats.as_ref().and_then(|s| s.detail.as_ref()) {
                Some(Detail::Proxy(p)) => {
                    proxy_failures
                        .series
                        .push((base.clone(), p.connect_failures));
                    proxy_timeouts
                        .series
                        .push((base.clone(), p.connect_timeouts));
                    pool_hits.series.push((base.clone(), p.pool_hits));
                    pool_misses.series.push((base.clone(), p.pool_misses));
                    pool_stale.series.push((base.clone(), p.pool_stale));
                    for u in &p.upstreams {
                        upstream_up
                            .series
                            .push((with("upstream", u.addr.clone()), u.healthy as u64));
                    }
                }
                Some(Detail::Http(h)) => {
                    for (class, v) in [
                        ("2xx", h.responses_2xx),
                        ("3xx", h.responses_3xx),
                        ("4xx", h.responses_4xx),
                        ("5xx", h.responses_5xx),
                    ] {
                        http_responses.series.push((with("class", class.into()), v));
                    }
                    http_requests.series.push((base.clone(), h.requests));
                    http_rate_limited
                        .series
                        .push((base.clone(), h.rate_limited));
                    http_latency
                        .series
                        .push((base.clone(), (h.latency_p99_ms * 1000.0) as u64));
                }
                Some(Detail::Sniffer(f)) => {
                    for (proto, c) in [
                        ("tcp", &f.tcp),
                        ("udp", &f.udp),
                        ("icmp", &f.icmp),
                        ("other", &f.other),
                    ] {
                        let c = c.unwrap_or_default();
                        sniff_packets
                            .series
                            .push((with("protocol", proto.into()), c.packets));
                        sniff_bytes
                            .series
                            .push((with("protocol", proto.into()), c.bytes));
                    }
                    sniff_drops.series.push((base.clone(), f.kernel_drops));
                    sniff_alerts.series.push((base.clone(), f.alerts));
                    sniff_fragments.series.push((base.clone(), f.fragments));
                    sniff_malformed.series.push((base.clone(), f.malformed));
                }
                Some(Detail::UdpEcho(u)) => {
                    for (reason, v) in [
                        ("own_source", u.own_source_drops),
                        ("reflector_source", u.reflector_source_drops),
                        ("rate_limited", u.rate_limited),
                        ("kernel", u.kernel_drops),
                    ] {
                        udp_drops.series.push((with("reason", reason.into()), v));
                    }
                    udp_truncated.series.push((base.clone(), u.truncated));
                    udp_sources.series.push((base.clone(), u.sources_tracked));
                    udp_evicted.series.push((base.clone(), u.sources_evicted));
                }
                Some(Detail::UdpProxy(u)) => {
                    // The datagram-source guard's families, shared with the
                    // UDP echo (told apart by the kind label).
                    for (reason, v) in [
                        ("own_source", u.own_source_drops),
                        ("reflector_source", u.reflector_source_drops),
                        ("rate_limited", u.rate_limited),
                        ("source_clients", u.source_clients_refused),
                        ("kernel", u.kernel_drops),
                    ] {
                        udp_drops.series.push((with("reason", reason.into()), v));
                    }
                    udp_sources.series.push((base.clone(), u.sources_tracked));
                    udp_evicted.series.push((base.clone(), u.sources_evicted));
                    udp_proxy_clients
                        .series
                        .push((base.clone(), u.clients_active));
                    udp_proxy_expired
                        .series
                        .push((base.clone(), u.clients_expired));
                    udp_proxy_refused
                        .series
                        .push((base.clone(), u.clients_refused));
                    udp_proxy_errors
                        .series
                        .push((base.clone(), u.upstream_errors));
                }
                None => {}
            }
        }
        for f in [
            &proxy_failures,
            &proxy_timeouts,
            &pool_hits,
            &pool_misses,
            &pool_stale,
            &upstream_up,
            &http_responses,
            &http_requests,
            &http_rate_limited,
            &http_latency,
            &sniff_packets,
            &sniff_bytes,
            &sniff_drops,
            &sniff_alerts,
            &sniff_fragments,
            &sniff_malformed,
            &udp_drops,
            &udp_truncated,
            &udp_sources,
            &udp_evicted,
            &udp_proxy_clients,
            &udp_proxy_expired,
            &udp_proxy_refused,
            &udp_proxy_errors,
            &fault_active,
        ] {
            f.encode(encoder)?;
        }
        for (f, _) in &fault_counters {
            f.encode(encoder)?;
        }
        Ok(())
    }
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
}
