//! The HTTP plumbing of netd's own HTTP endpoints (`/metrics`, the
//! Toxiproxy-compatible API): the admitted accept loop ([`serve`]), each
//! connection's phases and deadlines ([`Timing`]), serving one HTTP/1.1
//! connection within them ([`serve_connection`]), the request body bound
//! ([`read_body`]) and the plain responses both answer with. What an
//! endpoint answers is its own module's business; how it is served is
//! this one's.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::admission::{Gate, Slot, Source};

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

/// The accept loop of an HTTP endpoint netd serves itself (`/metrics`, the
/// Toxiproxy API): connections admitted by `gate` (a cap in all and per
/// source address; the others closed at once and counted in `refused`),
/// transient accept errors
/// backed off, each connection served by `conn` on a tracked task, until
/// `stop`; then new connections are refused while the open ones finish.
/// `what` names the endpoint in log lines.
pub(crate) async fn serve<F, Fut>(
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
enum Phase {
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
struct Timing {
    limits: Limits,
    /// The bound of [`Phase::Respond`].
    respond: Duration,
    now: Mutex<(Phase, Instant)>,
}

impl Timing {
    /// A connection accepted now, whose responses are bounded by `respond`.
    fn new(limits: Limits, respond: Duration) -> Timing {
        Timing {
            limits,
            respond,
            now: Mutex::new((Phase::Head, Instant::now() + limits.header_timeout)),
        }
    }

    fn get(&self) -> (Phase, Instant) {
        *self.now.lock()
    }

    fn enter(&self, phase: Phase) {
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
struct TimedStream {
    stream: TcpStream,
    timing: Arc<Timing>,
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
struct TimedBody {
    body: Full<Bytes>,
    timing: Arc<Timing>,
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

/// Drive one HTTP/1 connection of netd's own endpoints (/metrics, the
/// Toxiproxy API) until it ends (`Ok`), fails (`Err(Some)`), or a phase of
/// `timing` runs past its deadline (`Err(None)`). From `stop` on, the
/// connection shuts down gracefully: the response in flight finishes.
async fn drive<I, S, B>(
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

/// How one connection of an endpoint is served: its name in log lines,
/// the bound of [`Phase::Respond`] and of the request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Names the endpoint in log lines ("metrics", "toxiproxy API").
    pub(crate) what: &'static str,
    pub(crate) limits: Limits,
    /// From a request's headers to its response handed over in full.
    pub(crate) respond: Duration,
    /// Largest request head hyper buffers (None: hyper's default).
    pub(crate) max_head: Option<usize>,
}

/// Serve one HTTP/1.1 connection with `handle` until the client closes
/// it, a phase runs past its deadline, or `stop` (which lets the response
/// in flight finish). Keep-alive on; hyper's own header timer off, as
/// [`Timing`] covers the header read (hyper's would also cut idle
/// keep-alive connections short).
pub(crate) async fn serve_connection<H, Fut>(
    stream: TcpStream,
    how: ConnLimits,
    stop: &CancellationToken,
    handle: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let peer = stream.peer_addr().ok();
    let timing = Arc::new(Timing::new(how.limits, how.respond));
    let io = TokioIo::new(TimedStream {
        stream,
        timing: timing.clone(),
    });
    let handle = Arc::new(handle);
    let service = {
        let timing = timing.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            timing.enter(Phase::Respond);
            let timing = timing.clone();
            let answer = handle(req);
            async move {
                let body = answer.await.map(|body| TimedBody { body, timing });
                Ok::<_, Infallible>(body)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None).keep_alive(true);
    if let Some(max) = how.max_head {
        builder.max_buf_size(max);
    }
    let what = how.what;
    match drive(builder.serve_connection(io, service), &timing, stop).await {
        Ok(()) => {}
        Err(None) => {
            let (phase, _) = timing.get();
            tracing::debug!(?peer, ?phase, "{what} connection timed out; closing");
        }
        Err(Some(e)) => tracing::debug!(?peer, error = %e, "{what} connection error"),
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over the limit (declared in Content-Length, or as it arrived).
    TooLarge,
    /// The connection failed while the body was read.
    Read(Box<dyn std::error::Error + Send + Sync>),
}

/// The body of `req`, at most `max` bytes: a larger declared
/// Content-Length is refused before a byte is read, a body that grows past
/// `max` as it arrives is cut off there.
pub(crate) async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Read(e)),
    }
}

/// A `text/plain` response.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A response without a body.
pub(crate) fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// An `application/json` response: `v` and a newline.
pub(crate) fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = v.to_string();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
