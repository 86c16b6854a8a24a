//! The HTTP JSON service, in the spirit of httpbin, on hyper.
//!
//! - `GET`/`HEAD` any path: 200 with `{"method", "path", "query_params",
//!   "timestamp"}`; query parameters are decoded and grouped into lists per
//!   key as Python's `parse_qs` does (blank values dropped).
//! - `POST` any path with a JSON body: 201 `{"status":"success","received":
//!   ...}`; invalid JSON: 400 `{"status":"error","message":"Invalid JSON:
//!   ..."}`. Any other method: 405 with `Allow`.
//! - Limits: body size (413, checked against Content-Length before reading
//!   and while reading), header read timeout (slow-loris), request timeout
//!   (408), connection limit (shared accept loop). Malformed requests get
//!   hyper's 400.
//! - Memory bounds: request bodies are buffered only within a per-listener
//!   budget (`body_budget_bytes`, a semaphore of bytes shared by all
//!   connections; reserved from Content-Length up front, or chunk by chunk
//!   without it); a request that would exceed it gets 503 with Retry-After.
//!   Header sections beyond `max_header_bytes` get 431 (HTTP/1: checked by
//!   the handler, and hyper's read buffer is sized just above it; HTTP/2:
//!   SETTINGS_MAX_HEADER_LIST_SIZE, which h2 enforces with a 431). HTTP/2
//!   connections carry at most `max_streams` streams (more: REFUSED_STREAM)
//!   and are closed after `idle_timeout` without an open stream, or after
//!   `header_read_timeout` if no request came at all, so a client that
//!   sends the preface and nothing else cannot hold a connection slot.
//! - Optional bearer token (compared in constant time; never logged or
//!   returned) and per-client-IP rate limit (governor's keyed GCRA limiter,
//!   429 with Retry-After; idle client entries are pruned every minute).
//!   IPv6 clients are keyed by their /64 (`rate_limit_ipv6_prefix`), as one
//!   host can rotate through the addresses of a whole /64.
//! - HTTP/1.1 with keep-alive, and HTTP/2 with prior knowledge (h2c),
//!   chosen by peeking at the connection preface.
//! - HTTPS with `tls_cert`/`tls_key` ([`crate::net::tls::ServedTls`]):
//!   ALPN offers h2 and http/1.1 by default and decides between HTTP/2 and
//!   HTTP/1.1 (no ALPN: HTTP/1.1); the handshake runs in the connection
//!   task, so it holds a connection slot and has the handshake deadline.
//!   Everything above applies unchanged to the plaintext inside.
//! - One access-log line per request ([`crate::telemetry::access_log`]) unless the
//!   listener says `access_log = false`.
//! - Lingering close (HTTP/1): when netd answers before reading the whole
//!   request (413, 401, 429, 405 with a body), closing at once would leave
//!   unread bytes, and Linux answers those with a reset that can destroy the
//!   response before the client reads it. So the connection half-closes
//!   after the response and discards what the client still sends, until it
//!   closes, goes quiet for a second, or five seconds pass.

mod echo;
pub mod metrics;
mod show;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{
    DEFAULT_MAX_CONNECTIONS, ListenerKind, ServiceCtx, Settings, SpecError, Transport, duration_in,
    listen_field, size_in,
};
use crate::net::accept::accept_loop;
use crate::net::tls::ServedTls;
use crate::proto;
use crate::services::http_server::Server as HttpServer;
use crate::spec::FieldError;
use crate::spec::form::{self, Key, Unit};
use crate::telemetry::stats::{Histogram, Stats};
pub use echo::query_params;
pub(crate) use echo::{error, header_size};
use echo::{json_echo, json_response, request_echo};

pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
pub const MAX_MAX_BODY: u64 = 1 << 30;
pub const DEFAULT_BODY_BUDGET: u64 = 64 << 20;
pub const MAX_BODY_BUDGET: u64 = 64 << 30;
pub const DEFAULT_MAX_STREAMS: u32 = 32;
pub const MAX_MAX_STREAMS: u32 = 1000;
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 16 * 1024;
pub const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=1024 * 1024;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds of header_read_timeout and request_timeout.
pub const REQUEST_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);
/// Bounds of the HTTP/2 idle_timeout.
pub const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(24 * 3600);
/// What netd shows in place of a configured token.
pub const REDACTED: &str = "<redacted>";

/// The token of an HTTP listener's flat form: `token` or `token_file`
/// (never both), the placeholder [`REDACTED`] only as `token` and only
/// where `opts` allows it (an apply file, an update: "keep the token").
fn read_token(t: &toml::Table, opts: &form::ReadOptions) -> Result<String, FieldError> {
    use form::Class;
    match (
        form::opt_text(t, "token")?,
        form::opt_text(t, "token_file")?,
    ) {
        (None, None) => Ok(String::new()),
        (Some(_), Some(_)) => Err(FieldError::new(
            "token",
            Class::Listener,
            "token and token_file are both set; give one of them",
        )),
        (Some(token), None) => {
            if token == REDACTED && !opts.placeholders {
                return Err(FieldError::new(
                    "token",
                    Class::Listener,
                    format!(
                        "token = \"{REDACTED}\" is a placeholder written by netctl export; \
                         set the real token or token_file"
                    ),
                ));
            }
            Ok(token)
        }
        (None, Some(file)) => {
            let token = crate::sys::safe_file::read_regular_text(
                std::path::Path::new(&file),
                form::MAX_SECRET_FILE_BYTES,
            )
            .map_err(|e| {
                FieldError::new(
                    "token_file",
                    Class::Value,
                    format!("token_file: cannot read {file}: {e}"),
                )
            })?
            .trim()
            .to_string();
            if token == REDACTED {
                return Err(FieldError::new(
                    "token_file",
                    Class::Listener,
                    format!(
                        "token_file {file} holds the placeholder \"{REDACTED}\" written by \
                         netctl export, not a token"
                    ),
                ));
            }
            Ok(token)
        }
    }
}
/// What HTTPS offers by ALPN unless `tls_alpn` says otherwise.
pub const TLS_DEFAULT_ALPN: &[&str] = &["h2", "http/1.1"];

#[derive(Debug, Default)]
struct HttpCounters {
    requests: AtomicU64,
    by_class: [AtomicU64; 6],
    unauthorized: AtomicU64,
    rate_limited: AtomicU64,
    body_budget_refused: AtomicU64,
    /// Shared with [`HttpServer`], which counts into it.
    idle_closed: Arc<AtomicU64>,
    latency: Histogram,
}

#[derive(Debug)]
pub struct Http {
    pub listen: SocketAddr,
    max_body: u64,
    request_timeout: Duration,
    max_header_bytes: u32,
    /// Bytes of request body that may be buffered at once, across all
    /// connections (one permit per byte).
    body_budget: Semaphore,
    token: Option<Box<[u8]>>,
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// IPv6 clients share a bucket per prefix of this length.
    ipv6_prefix: u8,
    limit: Arc<Semaphore>,
    /// The listener's: carried from generation to generation (see
    /// [`ListenerKind::carry_over`]).
    counters: Arc<HttpCounters>,
    /// Write an access-log line per request (`access_log`, default true).
    access_log: bool,
    /// How connections are served: timeouts, HTTP/2 limits, HTTPS
    /// (`tls_cert`...). Rebuilt by `carry_over` around the listener's
    /// counters.
    server: Arc<HttpServer>,
}

/// What serves a connection's requests: the listener and its context.
#[derive(Clone)]
struct Handler {
    http: Arc<Http>,
    name: Arc<str>,
    stats: Arc<Stats>,
}

impl crate::services::http_server::Handler for Handler {
    type Body = Full<Bytes>;

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: &crate::services::http_server::Peer,
    ) -> Response<Full<Bytes>> {
        self.http
            .handle(
                req,
                peer.addr,
                peer.client_cert.as_deref(),
                &self.name,
                &self.stats,
            )
            .await
    }
}

/// Parse "100/s", "600/m", "3600/h" into a quota (the burst is one
/// period's worth).
pub fn parse_rate(s: &str) -> Result<Quota, SpecError> {
    let bad = || {
        SpecError::at(
            "rate_limit",
            format!("rate_limit '{s}': expected N/s, N/m or N/h with N > 0, e.g. 100/s"),
        )
    };
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: NonZeroU32 = n.trim().parse().map_err(|_| bad())?;
    match unit.trim() {
        "s" | "sec" | "second" => Ok(Quota::per_second(n)),
        "m" | "min" | "minute" => Ok(Quota::per_minute(n)),
        "h" | "hour" => Ok(Quota::per_hour(n)),
        _ => Err(bad()),
    }
}

/// A TLS listener's handshake deadline (in range: `ServedTls::from_spec`
/// checks it), also the time a client has to send its first byte.
pub(crate) fn tls_handshake_timeout(tls: Option<&proto::TlsServer>) -> Duration {
    tls.and_then(|t| t.handshake_timeout)
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(crate::net::tls::server::DEFAULT_HANDSHAKE_TIMEOUT)
}

/// An HTTP kind's header read timeout and HTTP/2 idle timeout, checked
/// and defaulted.
pub(crate) fn connection_timeouts(
    header_read_timeout: &Option<prost_types::Duration>,
    idle_timeout: &Option<prost_types::Duration>,
) -> Result<(Duration, Duration), SpecError> {
    Ok((
        duration_in(
            "header_read_timeout",
            header_read_timeout,
            DEFAULT_HEADER_TIMEOUT,
            REQUEST_TIMEOUT_RANGE,
        )?,
        duration_in(
            "idle_timeout",
            idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            IDLE_TIMEOUT_RANGE,
        )?,
    ))
}

impl Http {
    fn validate(spec: &proto::HttpSpec) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        let token = match spec.token.as_str() {
            "" => None,
            t if t.len() > 4096 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                // Say what is wrong without echoing any of it.
                return Err(SpecError::at(
                    "token",
                    "token must be 1-4096 printable ASCII characters without spaces",
                ));
            }
            t => Some(t.as_bytes().into()),
        };
        let limiter = match spec.rate_limit.as_str() {
            "" => None,
            r => Some(Arc::new(DefaultKeyedRateLimiter::keyed(parse_rate(r)?))),
        };
        let max = size_in(
            "max_connections",
            u64::from(spec.max_connections),
            DEFAULT_MAX_CONNECTIONS as u64,
            1..=super::MAX_MAX_CONNECTIONS,
        )? as usize;
        let max_body = size_in(
            "max_body_bytes",
            spec.max_body_bytes,
            DEFAULT_MAX_BODY,
            1..=MAX_MAX_BODY,
        )?;
        let budget = size_in(
            "body_budget_bytes",
            spec.body_budget_bytes,
            DEFAULT_BODY_BUDGET.max(max_body),
            1..=MAX_BODY_BUDGET,
        )?;
        if budget < max_body {
            return Err(SpecError::at(
                "body_budget_bytes",
                format!(
                    "body_budget_bytes ({budget}) must be at least max_body_bytes ({max_body}), \
                 or no request with a body of the largest size could ever be served"
                ),
            ));
        }
        let max_streams = size_in(
            "max_streams",
            u64::from(spec.max_streams),
            u64::from(DEFAULT_MAX_STREAMS),
            1..=u64::from(MAX_MAX_STREAMS),
        )? as u32;
        let max_header_bytes = size_in(
            "max_header_bytes",
            u64::from(spec.max_header_bytes),
            u64::from(DEFAULT_MAX_HEADER_BYTES),
            MAX_HEADER_BYTES_RANGE,
        )? as u32;
        let access_log = spec.access_log.unwrap_or(true);
        let counters = Arc::new(HttpCounters::default());
        let (header_timeout, idle_timeout) =
            connection_timeouts(&spec.header_read_timeout, &spec.idle_timeout)?;
        let server = HttpServer {
            header_timeout,
            idle_timeout,
            max_streams,
            max_header_bytes,
            tls: ServedTls::from_spec(spec.tls.as_ref(), TLS_DEFAULT_ALPN)?.map(Arc::new),
            tls_handshake_timeout: tls_handshake_timeout(spec.tls.as_ref()),
            want_client_cert: access_log,
            upgrades: false,
            idle_closed: counters.idle_closed.clone(),
        };
        Ok(Http {
            listen,
            max_body,
            request_timeout: duration_in(
                "request_timeout",
                &spec.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
                REQUEST_TIMEOUT_RANGE,
            )?,
            max_header_bytes,
            // Within usize on 64-bit targets (MAX_PERMITS is 2^61 - 1).
            body_budget: Semaphore::new((budget as usize).min(Semaphore::MAX_PERMITS)),
            token,
            limiter,
            ipv6_prefix: super::client_key::ipv6_prefix_field(
                "rate_limit_ipv6_prefix",
                spec.rate_limit_ipv6_prefix,
            )?,
            limit: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            counters,
            access_log,
            server: Arc::new(server),
        })
    }

    pub fn stats(&self) -> proto::HttpStats {
        let c = &self.counters;
        let [p50, p90, p99] = c.latency.quantiles_ms([0.5, 0.9, 0.99]);
        proto::HttpStats {
            requests: c.requests.load(Relaxed),
            responses_2xx: c.by_class[2].load(Relaxed),
            responses_3xx: c.by_class[3].load(Relaxed),
            responses_4xx: c.by_class[4].load(Relaxed),
            responses_5xx: c.by_class[5].load(Relaxed),
            unauthorized: c.unauthorized.load(Relaxed),
            rate_limited: c.rate_limited.load(Relaxed),
            body_budget_refused: c.body_budget_refused.load(Relaxed),
            idle_closed: c.idle_closed.load(Relaxed),
            latency_p50_ms: p50,
            latency_p90_ms: p90,
            latency_p99_ms: p99,
        }
    }

    async fn run_on(
        self: &Arc<Self>,
        listener: TcpListener,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        if let Some(tls) = &self.server.tls {
            tls.watch(
                ctx.name.clone(),
                ctx.stop_accepting.clone(),
                &ctx.tracker,
                Some((ctx.events.clone(), proto::ListenerKind::Http)),
            );
        }
        // Forget clients of the rate limiter that have been quiet, so its
        // table stays bounded by the clients of the last minute.
        if let Some(limiter) = &self.limiter {
            let limiter = limiter.clone();
            let stop = ctx.stop_accepting.clone();
            ctx.tracker.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            limiter.retain_recent();
                            limiter.shrink_to_fit();
                        }
                    }
                }
            });
        }
        let handler = Handler {
            http: self.clone(),
            name: ctx.name.clone(),
            stats: ctx.stats.clone(),
        };
        accept_loop(&listener, ctx.accepting(), &self.limit, |stream, peer| {
            let server = self.server.clone();
            let handler = handler.clone();
            let ctx = ctx.clone();
            async move { server.serve(handler, stream, peer, ctx).await }
        })
        .await
    }

    /// `client_cert`: the subject of the client's verified certificate
    /// (HTTPS with `tls_client_ca`), for the access log.
    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        client_cert: Option<&str>,
        name: &str,
        stats: &Stats,
    ) -> Response<Full<Bytes>> {
        let began = Instant::now();
        let method = req.method().clone();
        // The path for the access log, only when a line will be written (a
        // copy: keeping the URI would keep hyper's read buffer shared).
        let logged_path = (self.access_log && crate::telemetry::access_log::enabled())
            .then(|| req.uri().path().to_owned());
        // An HTTP/1 request whose body may be left unread by an error reply:
        // that connection cannot carry another request, so say so.
        let h1 = req.version() < hyper::Version::HTTP_2;
        let h1_with_body = h1 && !hyper::body::Body::is_end_stream(req.body());
        // HTTP/2 header sections are bounded by h2 itself (431 from
        // SETTINGS_MAX_HEADER_LIST_SIZE); HTTP/1 ones are measured here.
        let header_bytes = if h1 { header_size(&req) } else { 0 };
        let mut resp = if header_bytes > self.max_header_bytes as usize {
            error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!(
                    "request header section larger than {} bytes",
                    self.max_header_bytes
                ),
            )
        } else {
            match tokio::time::timeout(self.request_timeout, self.respond(req, peer, stats)).await {
                Ok(r) => r,
                Err(_) => error(StatusCode::REQUEST_TIMEOUT, "request timed out"),
            }
        };
        if h1_with_body
            && (resp.status().is_client_error() || resp.status() == StatusCode::SERVICE_UNAVAILABLE)
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let elapsed = began.elapsed();
        let c = &self.counters;
        c.requests.fetch_add(1, Relaxed);
        let status = resp.status();
        if let Some(class) = c.by_class.get((status.as_u16() / 100) as usize) {
            class.fetch_add(1, Relaxed);
        }
        c.latency.record(elapsed);
        let body_len = if method == Method::HEAD {
            0
        } else {
            hyper::body::Body::size_hint(resp.body())
                .exact()
                .unwrap_or(0)
        };
        Stats::add(&stats.bytes_out, body_len);
        if let Some(path) = logged_path {
            crate::telemetry::access_log::http(
                name,
                peer,
                client_cert,
                method.as_str(),
                &path,
                status.as_u16(),
                body_len,
                elapsed.as_micros() as u64,
            );
        }
        resp
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        stats: &Stats,
    ) -> Response<Full<Bytes>> {
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) =
                limiter.check_key(&super::client_key::rate_key(peer.ip(), self.ipv6_prefix))
            {
                self.counters.rate_limited.fetch_add(1, Relaxed);
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                return r;
            }
        }
        if let Some(token) = &self.token {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            let ok = presented.is_some_and(|p| bool::from(p.ct_eq(token)));
            if !ok {
                self.counters.unauthorized.fetch_add(1, Relaxed);
                let (msg, challenge) = match presented {
                    None => ("missing bearer token", "Bearer realm=\"netd\""),
                    Some(_) => (
                        "invalid bearer token",
                        "Bearer realm=\"netd\", error=\"invalid_token\"",
                    ),
                };
                let mut r = error(StatusCode::UNAUTHORIZED, msg);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                return r;
            }
        }
        match *req.method() {
            Method::GET | Method::HEAD => json_response(
                StatusCode::OK,
                &request_echo(req.method().as_str(), req.uri().path(), req.uri().query()),
            ),
            Method::POST => self.post(req, stats).await,
            _ => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                r
            }
        }
    }

    async fn post(&self, req: Request<Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
        let too_large = || {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body larger than {} bytes", self.max_body),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return too_large();
        }
        // Reserve the declared length from the listener's body budget up
        // front; without one, reserve as the chunks arrive. The permits are
        // held until the body is parsed and dropped.
        let over_budget = || {
            self.counters.body_budget_refused.fetch_add(1, Relaxed);
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies in flight on this listener; retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            r
        };
        // max_body is at most 1 GiB, so lengths up to it fit in a u32.
        let declared = declared.unwrap_or(0) as u32;
        let mut reserved = match self.body_budget.try_acquire_many(declared) {
            Ok(p) => p,
            Err(_) => return over_budget(),
        };
        let mut body = req.into_body();
        let mut buf: Vec<u8> = Vec::with_capacity(declared as usize);
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("could not read the body: {e}"),
                    );
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = buf.len() + data.len();
            if len as u64 > self.max_body {
                return too_large();
            }
            let held = reserved.num_permits();
            if len > held {
                match self.body_budget.try_acquire_many((len - held) as u32) {
                    Ok(more) => reserved.merge(more),
                    Err(_) => return over_budget(),
                }
            }
            buf.extend_from_slice(&data);
        }
        let body = buf;
        Stats::add(&stats.bytes_in, body.len() as u64);
        let (status, reply) = json_echo(&body);
        json_response(status, &reply)
    }
}

impl ListenerKind for Http {
    type Spec = proto::HttpSpec;
    type Socket = TcpListener;
    const SLUG: &'static str = "http";
    const KIND: proto::ListenerKind = proto::ListenerKind::Http;
    const TRANSPORT: Transport = Transport::Tcp;
    const ABOUT: &'static str = "HTTP JSON echo service (httpbin-like): GET echoes method, path and query; POST echoes a JSON body.";
    const KEYS: &'static [Key] = &[
        form::LISTEN,
        Key::new(
            "max_connections",
            "max-connections",
            Unit::Count,
            "Concurrent connections; more are refused (default 1024).",
        ),
        Key::new(
            "idle_timeout",
            "idle-timeout",
            Unit::Duration,
            "Close an HTTP/2 connection with no open stream this long once it has made a request, 1ms to 24h (default 60s).",
        ),
        Key::new(
            "max_body_bytes",
            "max-body",
            Unit::Bytes,
            "Largest request body in bytes; larger gets 413 (default 1 MiB).",
        ),
        Key::new(
            "header_read_timeout",
            "header-timeout",
            Unit::Duration,
            "Time a client has to send a request's headers, and an HTTP/2 connection its first request (default 10s).",
        ),
        Key::new(
            "request_timeout",
            "request-timeout",
            Unit::Duration,
            "Time a request has to complete (default 30s); slower gets 408.",
        ),
        Key::new(
            "token_file",
            "token-file",
            Unit::Path,
            "Read the bearer token from this file (surrounding whitespace is trimmed).",
        )
        .replaces("token"),
        Key::new(
            "token",
            "token",
            Unit::Text,
            "Require `Authorization: Bearer TOKEN` (prefer --token-file: a command line is visible to other local users).",
        )
        .replaces("token_file"),
        Key::new(
            "rate_limit",
            "rate-limit",
            Unit::Rate,
            "Per-client-IP rate limit: N/s, N/m or N/h, e.g. 100/s; over it gets 429 with Retry-After.",
        ),
        Key::new(
            "rate_limit_ipv6_prefix",
            "rate-limit-ipv6-prefix",
            Unit::Bits,
            "IPv6 clients share a rate-limit bucket per prefix of this length (1-128, default 64).",
        ),
        Key::new(
            "body_budget_bytes",
            "body-budget",
            Unit::Bytes,
            "Request bodies buffered at once across all connections, in bytes (default 64 MiB, at least --max-body); beyond it: 503.",
        ),
        Key::new(
            "max_streams",
            "max-streams",
            Unit::Count,
            "Concurrent HTTP/2 streams per connection, 1-1000 (default 32).",
        ),
        Key::new(
            "max_header_bytes",
            "max-header-bytes",
            Unit::Bytes32,
            "Largest request header section in bytes, 1024 to 1 MiB (default 16 KiB); larger gets 431.",
        ),
        form::ACCESS_LOG,
        crate::spec::tls::TLS_CERT,
        crate::spec::tls::TLS_KEY,
        crate::spec::tls::TLS_CLIENT_CA,
        crate::spec::tls::TLS_CLIENT_AUTH,
        crate::spec::tls::TLS_ALPN,
        crate::spec::tls::TLS_HANDSHAKE_TIMEOUT,
    ];
    const FAMILIES: &'static dyn crate::telemetry::families::DetailFamilies = &metrics::FAMILIES;

    fn read_config(t: &toml::Table, opts: &form::ReadOptions) -> Result<Self::Spec, FieldError> {
        Ok(proto::HttpSpec {
            listen: form::text(t, "listen")?,
            max_body_bytes: form::u64(t, "max_body_bytes")?,
            header_read_timeout: form::duration(t, "header_read_timeout")?,
            request_timeout: form::duration(t, "request_timeout")?,
            max_connections: form::u32(t, "max_connections")?,
            token: read_token(t, opts)?,
            rate_limit: form::text(t, "rate_limit")?,
            body_budget_bytes: form::u64(t, "body_budget_bytes")?,
            max_streams: form::u32(t, "max_streams")?,
            max_header_bytes: form::u32(t, "max_header_bytes")?,
            idle_timeout: form::duration(t, "idle_timeout")?,
            rate_limit_ipv6_prefix: form::u32(t, "rate_limit_ipv6_prefix")?,
            access_log: form::opt_bool(t, "access_log")?,
            tls: crate::spec::tls::read_server(t)?,
        })
    }

    fn write_config(spec: &Self::Spec, t: &mut crate::spec::Table) -> Result<(), String> {
        let proto::HttpSpec {
            listen,
            max_body_bytes,
            header_read_timeout,
            request_timeout,
            max_connections,
            token,
            rate_limit,
            body_budget_bytes,
            max_streams,
            max_header_bytes,
            idle_timeout,
            rate_limit_ipv6_prefix,
            access_log,
            tls,
        } = spec;
        t.string("listen", listen);
        t.u64("max_body_bytes", *max_body_bytes)?;
        t.duration("header_read_timeout", header_read_timeout)?;
        t.duration("request_timeout", request_timeout)?;
        t.u64("max_connections", (*max_connections).into())?;
        // Never the secret: netd reports the placeholder anyway, and an
        // export is a file people copy around.
        if !token.is_empty() {
            t.line("token", REDACTED.into());
        }
        t.string("rate_limit", rate_limit);
        t.u64("body_budget_bytes", *body_budget_bytes)?;
        t.u64("max_streams", (*max_streams).into())?;
        t.u64("max_header_bytes", (*max_header_bytes).into())?;
        t.duration("idle_timeout", idle_timeout)?;
        t.u64("rate_limit_ipv6_prefix", (*rate_limit_ipv6_prefix).into())?;
        t.opt_bool("access_log", *access_log);
        crate::spec::tls::write_server(tls, t)?;
        Ok(())
    }

    fn spec_listen(spec: &Self::Spec) -> Option<&str> {
        Some(&spec.listen)
    }

    fn from_spec(spec: &Self::Spec, _settings: &Settings) -> Result<Self, SpecError> {
        super::check_max_connections(spec.max_connections)?;
        Self::validate(spec)
    }

    /// The request counters, the latency histogram and the TLS counters
    /// are the listener's.
    fn carry_over(&mut self, prev: &Self) {
        self.counters = prev.counters.clone();
        HttpServer::carry_over(&mut self.server, &prev.server, &prev.counters.idle_closed);
    }

    fn effective_spec(&self, shown: &Self::Spec) -> Self::Spec {
        use super::effective_duration as dur;
        let or = |v: u64, default: u64| if v == 0 { default } else { v };
        let max_body = or(shown.max_body_bytes, DEFAULT_MAX_BODY);
        proto::HttpSpec {
            max_body_bytes: max_body,
            header_read_timeout: dur(&shown.header_read_timeout, DEFAULT_HEADER_TIMEOUT),
            request_timeout: dur(&shown.request_timeout, DEFAULT_REQUEST_TIMEOUT),
            max_connections: super::effective_max_connections(shown.max_connections),
            body_budget_bytes: or(shown.body_budget_bytes, DEFAULT_BODY_BUDGET.max(max_body)),
            max_streams: or(shown.max_streams.into(), DEFAULT_MAX_STREAMS.into()) as u32,
            max_header_bytes: or(
                shown.max_header_bytes.into(),
                DEFAULT_MAX_HEADER_BYTES.into(),
            ) as u32,
            idle_timeout: dur(&shown.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            rate_limit_ipv6_prefix: match shown.rate_limit_ipv6_prefix {
                0 => u32::from(super::client_key::DEFAULT_IPV6_PREFIX),
                n => n,
            },
            access_log: Some(shown.access_log.unwrap_or(true)),
            tls: shown.tls.as_ref().map(ServedTls::effective),
            ..shown.clone()
        }
    }

    fn redact(spec: &mut Self::Spec) {
        if !spec.token.is_empty() {
            spec.token = REDACTED.to_string();
        }
    }

    fn keep_secrets(new: &mut Self::Spec, current: &Self::Spec) {
        if new.token == REDACTED {
            new.token = current.token.clone();
        }
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(self.listen)
    }

    async fn run(self: Arc<Self>, socket: TcpListener, ctx: ServiceCtx) -> anyhow::Result<()> {
        self.run_on(socket, ctx).await
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::Http(self.stats()))
    }

    fn tls_stats(&self) -> Option<proto::TlsStats> {
        self.server.tls.as_ref().map(|t| t.stats())
    }

    fn descriptors(spec: &Self::Spec, _budget: &crate::net::fd_budget::Budget) -> u64 {
        super::fd_cost::connections(spec.max_connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert!(parse_rate("100/s").is_ok());
        assert!(parse_rate("5/m").is_ok());
        for bad in ["0/s", "x/s", "10", "10/d", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
