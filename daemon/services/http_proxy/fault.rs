//! HTTP faults on the http-proxy's requests: decided before a request is
//! forwarded ([`before`]: abort, request delay, request headers; Envoy's
//! `x-envoy-fault-*` headers when the listener honours them) and applied
//! to its response ([`after`]: response delay, response headers,
//! replace_body, slow_body, reset).
//!
//! Each fault of the listener's table is looked at per request, in list
//! order: its time window, then [`crate::fault::Active::decide_request`]
//! (client network, request conditions, every-Nth, toxicity as a
//! per-request probability). A listener that never had a fault pays one
//! atomic load per request (the table's version); a change to the table
//! reaches the next request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::HttpProxy;
use super::forward::{Body, BoxError, error, full};
use crate::fault::http::Request as Seen;
use crate::fault::{Active, FaultCounters, HttpAction, MAX_FAULT_DURATION, Phase, Rng};
use crate::services::ServiceCtx;
use crate::services::http_server::Peer;

/// What the faults do to a request's response, in list order.
#[derive(Debug, Default)]
pub struct After {
    steps: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Delay(Duration),
    /// A header or replace_body fault (its action says which).
    Change(Arc<Active>),
    Slow {
        rate: u64,
        counters: Option<Arc<FaultCounters>>,
    },
    Reset {
        after_bytes: u64,
        counters: Arc<FaultCounters>,
    },
}

/// The faults for a request about to be forwarded: `Err` is the answer
/// that takes its place (an abort).
pub async fn before(
    proxy: &HttpProxy,
    ctx: &ServiceCtx,
    req: &mut Request<Incoming>,
    peer: &Peer,
) -> Result<After, Response<Body>> {
    let mut after = After::default();
    if proxy.envoy_headers {
        envoy(proxy, req.headers(), &mut after).await?;
    }
    if cfg!(feature = "bench-no-faults") || ctx.faults.version() == 0 {
        return Ok(after);
    }
    let set = ctx.faults.current();
    if set.is_empty() {
        return Ok(after);
    }
    let now = Instant::now();
    let mut rng = Rng::new();
    for a in &set.faults {
        let Some(action) = a.fault.action.http() else {
            continue;
        };
        if !a.in_window(now) {
            continue;
        }
        let view = Seen {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        };
        if !a.decide_request(peer.addr.ip(), &view, &mut rng) {
            continue;
        }
        match action {
            HttpAction::Abort {
                http_status,
                grpc_status,
                body,
            } => return Err(abort(*http_status, *grpc_status, body)),
            HttpAction::Delay {
                delay,
                jitter,
                phase,
            } => {
                let d = rng.jitter(*delay, *jitter);
                match phase {
                    Phase::Request => tokio::time::sleep(d).await,
                    Phase::Response => after.steps.push(Step::Delay(d)),
                }
            }
            HttpAction::Header {
                phase: Phase::Request,
                ..
            } => change_headers(action, req.headers_mut()),
            HttpAction::Header { .. } | HttpAction::ReplaceBody { .. } => {
                after.steps.push(Step::Change(a.clone()));
            }
            HttpAction::SlowBody { rate } => after.steps.push(Step::Slow {
                rate: *rate,
                counters: Some(a.counters.clone()),
            }),
            HttpAction::Reset { after_bytes } => after.steps.push(Step::Reset {
                after_bytes: *after_bytes,
                counters: a.counters.clone(),
            }),
        }
    }
    Ok(after)
}

/// The faults on the response.
pub async fn after(after: After, resp: Response<Body>) -> Response<Body> {
    if after.steps.is_empty() {
        return resp;
    }
    let mut resp = resp;
    for step in after.steps {
        match step {
            Step::Delay(d) => tokio::time::sleep(d).await,
            Step::Change(a) => match a.fault.action.http() {
                Some(h @ HttpAction::Header { .. }) => change_headers(h, resp.headers_mut()),
                Some(HttpAction::ReplaceBody { body, content_type }) => {
                    let h = resp.headers_mut();
                    h.remove(header::CONTENT_ENCODING);
                    h.remove(header::TRANSFER_ENCODING);
                    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                    if let Some(ct) = content_type {
                        h.insert(header::CONTENT_TYPE, ct.clone());
                    }
                    *resp.body_mut() = full(body.clone());
                }
                _ => {}
            },
            Step::Slow { rate, counters } => {
                resp = resp.map(|b| Paced::new(b, rate, counters).boxed_unsync());
            }
            Step::Reset {
                after_bytes,
                counters,
            } => {
                resp = resp.map(|b| Cut::new(b, after_bytes, counters).boxed_unsync());
            }
        }
    }
    resp
}

/// A header fault's changes: remove, then set, then add.
fn change_headers(action: &HttpAction, h: &mut HeaderMap) {
    let HttpAction::Header {
        set, add, remove, ..
    } = action
    else {
        return;
    };
    for n in remove {
        h.remove(n);
    }
    for (n, v) in set {
        h.insert(n.clone(), v.clone());
    }
    for (n, v) in add {
        h.append(n.clone(), v.clone());
    }
}

/// The answer of an abort: an HTTP status with a body (netd's JSON error
/// when none is given), or a gRPC status in trailers-only form.
fn abort(
    http_status: Option<StatusCode>,
    grpc_status: Option<u32>,
    body: &Bytes,
) -> Response<Body> {
    if let Some(g) = grpc_status {
        let mut r = Response::new(full(Bytes::new()));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(HeaderName::from_static("grpc-status"), HeaderValue::from(g));
        let message = if body.is_empty() {
            Bytes::from_static(b"fault injected by netd")
        } else {
            body.clone()
        };
        if let Ok(v) = HeaderValue::from_bytes(&grpc_message(&message)) {
            h.insert(HeaderName::from_static("grpc-message"), v);
        }
        return r;
    }
    let status = http_status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    if body.is_empty() {
        return error(status, "fault injected by netd (abort)");
    }
    let mut r = Response::new(full(body.clone()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// gRPC's percent-encoding of grpc-message (all but printable ASCII
/// other than '%').
fn grpc_message(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for &b in m {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Envoy's header-controlled faults (`Err`: the abort's answer) (`header_abort`, `header_delay`,
/// `header_limit` of its fault filter), when the listener honours them:
/// a delay first, then an abort, then a limit on the response's rate.
async fn envoy(proxy: &HttpProxy, h: &HeaderMap, after: &mut After) -> Result<(), Response<Body>> {
    let num = |name: &str| -> Option<u64> { h.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(delay_ms) = num("x-envoy-fault-delay-request") {
        let mut rng = Rng::new();
        if percent(&mut rng, num("x-envoy-fault-delay-request-percentage")) {
            proxy.counters.envoy_header_faults.fetch_add(1, Relaxed);
            let d = Duration::from_millis(delay_ms).min(MAX_FAULT_DURATION);
            tokio::time::sleep(d).await;
        }
    }
    match envoy_abort(proxy, after, &num) {
        Some(answer) => Err(answer),
        None => Ok(()),
    }
}

fn envoy_abort(
    proxy: &HttpProxy,
    after: &mut After,
    num: &dyn Fn(&str) -> Option<u64>,
) -> Option<Response<Body>> {
    let mut rng = Rng::new();
    // The HTTP status wins when both are given (as in Envoy); a status out
    // of [200, 600) is ignored.
    let http_status = num("x-envoy-fault-abort-request")
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok());
    let grpc_status = num("x-envoy-fault-abort-grpc-request").and_then(|g| u32::try_from(g).ok());
    if (http_status.is_some() || grpc_status.is_some())
        && percent(&mut rng, num("x-envoy-fault-abort-request-percentage"))
    {
        proxy.counters.envoy_header_faults.fetch_add(1, Relaxed);
        let grpc = if http_status.is_some() {
            None
        } else {
            grpc_status
        };
        return Some(abort(http_status, grpc, &Bytes::new()));
    }
    // KiB/s, a positive whole number.
    if let Some(kib) = num("x-envoy-fault-throughput-response").filter(|k| *k > 0) {
        if percent(
            &mut rng,
            num("x-envoy-fault-throughput-response-percentage"),
        ) {
            proxy.counters.envoy_header_faults.fetch_add(1, Relaxed);
            let rate = kib
                .saturating_mul(1024)
                .clamp(crate::fault::MIN_RATE, crate::fault::MAX_RATE);
            after.steps.push(Step::Slow {
                rate,
                counters: None,
            });
        }
    }
    None
}

/// A percentage header's roll: absent is 100; above 100 is 100.
fn percent(rng: &mut Rng, p: Option<u64>) -> bool {
    match p {
        None => true,
        Some(p) => rng.chance(p.min(100) as f64 / 100.0),
    }
}

/// A response body sent at `rate` bytes per second: each frame is cut
/// into slices of 1/50 s of data, each sent when it is due, counted from
/// the first.
struct Paced {
    inner: Body,
    rate: u64,
    slice: usize,
    start: Option<Instant>,
    sent: u64,
    pending: Bytes,
    sleep: Pin<Box<Sleep>>,
    counters: Option<Arc<FaultCounters>>,
}

impl Paced {
    fn new(inner: Body, rate: u64, counters: Option<Arc<FaultCounters>>) -> Paced {
        Paced {
            inner,
            rate,
            slice: usize::try_from(rate / 50)
                .unwrap_or(usize::MAX)
                .clamp(1, 64 * 1024),
            start: None,
            sent: 0,
            pending: Bytes::new(),
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            counters,
        }
    }
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Bounded: each turn either sends a slice, waits, or reads a frame.
        loop {
            if !this.pending.is_empty() {
                let start = *this.start.get_or_insert_with(Instant::now);
                let due = start + Duration::from_secs_f64(this.sent as f64 / this.rate as f64);
                if Instant::now() < due {
                    this.sleep.as_mut().reset(due);
                    ready!(this.sleep.as_mut().poll(cx));
                }
                let n = this.slice.min(this.pending.len());
                let chunk = this.pending.split_to(n);
                this.sent += n as u64;
                if let Some(c) = &this.counters {
                    FaultCounters::add(&c.bytes_delayed, n as u64);
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.inner.size_hint();
        let p = self.pending.len() as u64;
        h.set_lower(h.lower().saturating_add(p));
        if let Some(u) = h.upper() {
            h.set_upper(u.saturating_add(p));
        }
        h
    }
}

/// How long a cut body waits, once it has reached its cut, before it
/// fails: a failing body makes hyper drop what it has not written yet
/// (HTTP/2 clears a reset stream's queued frames, HTTP/1 closes with its
/// buffer unflushed), so the headers and the bytes before the cut are
/// given this long to leave first.
const CUT_FLUSH: Duration = Duration::from_millis(25);

/// A response body that fails after `after_bytes` (or at its end, if it
/// is shorter): hyper resets the HTTP/2 stream, or closes the HTTP/1
/// connection with the body incomplete.
struct Cut {
    inner: Body,
    left: u64,
    done: bool,
    /// Set at the cut: the body fails when it fires.
    flush: Option<Pin<Box<Sleep>>>,
    counters: Arc<FaultCounters>,
}

impl Cut {
    fn new(inner: Body, after_bytes: u64, counters: Arc<FaultCounters>) -> Cut {
        Cut {
            inner,
            left: after_bytes,
            done: false,
            flush: None,
            counters,
        }
    }

    fn fail(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let flush = self
            .flush
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_FLUSH)));
        ready!(flush.as_mut().poll(cx));
        self.done = true;
        FaultCounters::add(&self.counters.connections_closed, 1);
        Poll::Ready(Some(Err(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "response reset by fault",
        )))))
    }
}

impl http_body::Body for Cut {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.left == 0 || this.flush.is_some() {
            return this.fail(cx);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let n = (data.len() as u64).min(this.left);
                    this.left -= n;
                    data.truncate(n as usize);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                // Trailers would end the response whole.
                Err(_) => this.fail(cx),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => this.fail(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message(b"no 100%"), b"no 100%25");
        assert_eq!(grpc_message("é".as_bytes()), b"%C3%A9");
    }

    #[tokio::test(start_paused = true)]
    async fn paced_body_takes_its_time_and_cut_body_fails() {
        let c = Arc::new(FaultCounters::default());
        let body = Paced::new(full(vec![b'x'; 2000]), 1000, Some(c.clone()));
        let began = Instant::now();
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 2000);
        assert!(began.elapsed() >= Duration::from_millis(1900));
        assert_eq!(c.bytes_delayed.load(Relaxed), 2000);
        let cut = Cut::new(full(vec![b'y'; 100]), 10, c.clone());
        assert!(cut.collect().await.is_err());
        assert_eq!(c.connections_closed.load(Relaxed), 1);
    }
}
