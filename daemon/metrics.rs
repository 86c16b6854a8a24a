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
