//! Optional Prometheus endpoint: `GET /metrics` in the OpenMetrics text
//! format, one series per listener with `listener` and `kind` labels.
//!
//! A `prometheus-client` collector reads the same atomic snapshots as
//! GetStats at scrape time, so scraping adds no work to the data path and
//! the numbers always agree with `netctl stats`. Off unless
//! `[metrics] listen` is set.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::proto::{self, ListenerStats};
use crate::supervisor::Supervisor;

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
];

#[derive(Debug)]
struct ListenerCollector {
    supervisor: Supervisor,
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
    /// Series for the counters only some kinds have (proxy, http, sniffer).
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
            &http_latency,
            &sniff_packets,
            &sniff_bytes,
            &sniff_drops,
            &sniff_alerts,
        ] {
            f.encode(encoder)?;
        }
        Ok(())
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

/// Serve `/metrics` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    supervisor: Supervisor,
    stop: CancellationToken,
) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ListenerCollector { supervisor }));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(registry));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
