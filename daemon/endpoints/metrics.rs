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

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::admission::{Gate, Slot, Source};
use crate::fault::metrics as fault_families;
use crate::proto::{self, ListenerStats};
use crate::services::{KINDS, KindInfo};
use crate::supervisor::Supervisor;
use crate::telemetry::families::{Desc, Metric};

/// Default for `[metrics] max_connections`. A Prometheus server keeps one
/// connection per target; 64 leaves room for a few scrapers and curl.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Largest `[metrics] max_connections` the config accepts.
pub const MAX_MAX_CONNECTIONS: usize = 4096;
/// Default for `[metrics] header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `[metrics] idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest and longest `header_timeout` / `idle_timeout` the config accepts.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
/// Time from a request's headers to its response handed over in full
/// (Prometheus' own default scrape timeout is 10s).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bounds of the endpoint, from `[metrics]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers: from accept for
    /// the first request, from its first byte for later ones.
    pub header_timeout: Duration,
    /// Time a keep-alive connection may sit between requests.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

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

/// One declared family and its series at a scrape.
struct Family {
    desc: Desc,
    series: Vec<(Labels, u64)>,
}

impl Family {
    /// Add a series: the `base` labels (listener, kind), then the family's
    /// own labels with `values`.
    fn put(&mut self, base: &Labels, values: &[&str], v: u64) {
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
        self.series.push((labels, v));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.series.is_empty() {
            return Ok(());
        }
        let kind = match self.desc.metric {
            Metric::Counter => MetricType::Counter,
            Metric::Gauge => MetricType::Gauge,
        };
        let mut family = encoder.encode_descriptor(self.desc.name, self.desc.help, None, kind)?;
        for (labels, v) in &self.series {
            match self.desc.metric {
                Metric::Counter => ConstCounter::new(*v).encode(family.encode_family(labels)?)?,
                Metric::Gauge => {
                    ConstGauge::new(*v as i64).encode(family.encode_family(labels)?)?;
                }
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
    serve_endpoint(
        listener,
        Gate::new(
            "metrics",
            crate::control::admission::Limits::for_max(limits.max_connections, false),
        ),
        &stop,
        &refused,
        "metrics endpoint",
        |stream, _peer, _source, slot| {
            serve_connection(stream, slot, registry.clone(), limits, stop.clone())
        },
    )
    .await;
}

/// The accept loop of an HTTP endpoint netd serves itself (`/metrics`, the
/// Toxiproxy API): connections admitted by `gate` (a cap in all and per
/// source address; the others closed at once and counted in `refused`),
/// transient accept errors
/// backed off, each connection served by `conn` on a tracked task, until
/// `stop`; then new connections are refused while the open ones finish.
/// `what` names the endpoint in log lines.
pub(crate) async fn serve_endpoint<F, Fut>(
    listener: tokio::net::TcpListener,
    gate: Gate,
    stop: &CancellationToken,
    refused: &AtomicU64,
    what: &str,
    mut conn: F,
) where
    F: FnMut(tokio::net::TcpStream, std::net::SocketAddr, Source, Slot) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = Duration::from_millis(10);
                conn
            }
            Err(e) if crate::net::accept::is_transient_accept_error(&e) => {
                tracing::debug!(error = %e, "{what}: accept failed; backing off");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "{what} failed; no longer serving it");
                break;
            }
        };
        // The callers of these endpoints are not told apart by role here
        // (the Toxiproxy API checks each request's caller itself).
        let source = Source::tcp(stream.local_addr().ok(), peer);
        let Some(slot) = gate.admit(source, false) else {
            // Closed at once: a flood of these must not cost a descriptor
            // for long; the gate logs them sparingly.
            refused.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        tracker.spawn(conn(stream, peer, source, slot));
    }
    // Refuse new connections at once while the open ones finish.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Where a connection is in its request cycle. Each phase has a deadline;
/// a connection still in the phase at its deadline is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a request's headers (`header_timeout`).
    Head,
    /// Answering: from the headers until the response body is handed over
    /// in full (`RESPONSE_TIMEOUT`).
    Respond,
    /// Keep-alive between requests (`idle_timeout`), until a byte arrives.
    Idle,
}

/// A connection's phase and deadline. Moved on by the socket (first byte
/// of a request), the service (headers parsed) and the response body
/// (dropped once sent); all of that happens while the connection future
/// is polled, so the driver sees each change right after the poll.
#[derive(Debug)]
pub(crate) struct Timing {
    limits: Limits,
    /// The bound of [`Phase::Respond`].
    respond: Duration,
    now: Mutex<(Phase, Instant)>,
}

impl Timing {
    pub(crate) fn new(limits: Limits) -> Timing {
        Timing::with_respond_timeout(limits, RESPONSE_TIMEOUT)
    }

    /// For an endpoint whose answers take longer than a scrape (the
    /// Toxiproxy API starts and replaces listeners).
    pub(crate) fn with_respond_timeout(limits: Limits, respond: Duration) -> Timing {
        Timing {
            limits,
            respond,
            now: Mutex::new((Phase::Head, Instant::now() + limits.header_timeout)),
        }
    }

    pub(crate) fn get(&self) -> (Phase, Instant) {
        *self.now.lock()
    }

    pub(crate) fn enter(&self, phase: Phase) {
        let bound = match phase {
            Phase::Head => self.limits.header_timeout,
            Phase::Respond => self.respond,
            Phase::Idle => self.limits.idle_timeout,
        };
        *self.now.lock() = (phase, Instant::now() + bound);
    }

    /// Bytes arrived: on an idle connection, that begins the next request.
    fn bytes_read(&self) {
        if self.get().0 == Phase::Idle {
            self.enter(Phase::Head);
        }
    }
}

/// The accepted socket, telling [`Timing`] when bytes arrive.
pub(crate) struct TimedStream {
    pub(crate) stream: TcpStream,
    pub(crate) timing: Arc<Timing>,
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.timing.bytes_read();
        }
        r
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body that moves its connection to [`Phase::Idle`] when hyper
/// is done with it (dropped after its last frame, or with the connection).
pub(crate) struct TimedBody {
    pub(crate) body: Full<Bytes>,
    pub(crate) timing: Arc<Timing>,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.timing.enter(Phase::Idle);
    }
}

/// Serve one connection until the client closes it, a phase runs past its
/// deadline, or shutdown (which lets the response in flight finish).
async fn serve_connection(
    stream: TcpStream,
    _slot: Slot,
    registry: Arc<Registry>,
    limits: Limits,
    stop: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let timing = Arc::new(Timing::new(limits));
    let io = TokioIo::new(TimedStream {
        stream,
        timing: timing.clone(),
    });
    let service = {
        let timing = timing.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            timing.enter(Phase::Respond);
            let resp = respond(&req, &registry).map(|body| TimedBody {
                body,
                timing: timing.clone(),
            });
            std::future::ready(Ok::<_, Infallible>(resp))
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // No hyper timer: `Timing` covers the header read, and hyper's own
    // header timeout would also cut idle keep-alive connections short.
    builder.header_read_timeout(None).keep_alive(true);
    let ended = drive(builder.serve_connection(io, service), &timing, &stop).await;
    match ended {
        Ok(()) => {}
        Err(None) => {
            let (phase, _) = timing.get();
            tracing::debug!(?peer, ?phase, "metrics connection timed out; closing");
        }
        Err(Some(e)) => tracing::debug!(?peer, error = %e, "metrics connection error"),
    }
}

/// Drive one HTTP/1 connection of netd's own endpoints (/metrics, the
/// Toxiproxy API) until it ends (`Ok`), fails (`Err(Some)`), or a phase of
/// `timing` runs past its deadline (`Err(None)`). From `stop` on, the
/// connection shuts down gracefully: the response in flight finishes.
pub(crate) async fn drive<I, S, B>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    timing: &Timing,
    stop: &CancellationToken,
) -> Result<(), Option<hyper::Error>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use std::future::Future as _;
    let mut conn = std::pin::pin!(conn);
    let mut deadline = std::pin::pin!(tokio::time::sleep_until(timing.get().1));
    let mut stopped = std::pin::pin!(stop.cancelled());
    let mut draining = false;
    std::future::poll_fn(|cx| {
        if !draining && stopped.as_mut().poll(cx).is_ready() {
            conn.as_mut().graceful_shutdown();
            draining = true;
        }
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(Some));
        }
        // The poll above may have moved the connection to another phase.
        let (_, due) = timing.get();
        if deadline.deadline() != due {
            deadline.as_mut().reset(due);
        }
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(None));
        }
        Poll::Pending
    })
    .await
}

/// The one resource: `GET /metrics` (HEAD too).
fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
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
        let listeners = KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| proto::Listener {
                name: format!("l{i}"),
                kind: k.kind as i32,
                stats: Some(ListenerStats {
                    detail: k.families.sample(),
                    faults: vec![fault.clone()],
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
        }
    }

    /// A family name means one family: declared alike wherever it is
    /// declared, and none of the families every listener has.
    #[test]
    fn a_family_name_is_declared_once_or_alike() {
        let mut all: Vec<Desc> = KINDS.iter().flat_map(|k| k.families.descs()).collect();
        all.extend(fault_families::FAMILIES.iter().map(|f| f.desc));
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

    /// No series, no family: a daemon without a listener of a kind does
    /// not export the kind's families.
    #[test]
    fn families_without_series_are_left_out() {
        assert_eq!(encode_text(Vec::new()), "# EOF\n");
    }
}
