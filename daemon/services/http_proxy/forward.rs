//! One proxied request: the limits, the faults before it is sent, the
//! upstream chosen (round robin over the healthy ones, retried on a
//! connect failure when the spec allows), the request rewritten
//! (hop-by-hop headers dropped, the client named by X-Forwarded-For or
//! Forwarded), sent over the pooled client of its HTTP version, and the
//! response (with the faults after) streamed back.
//!
//! - Bodies are counted both ways ([`super::body`]); the access-log line
//!   is written when the response body ends, with the bytes sent.
//! - A request body without a declared length is cut at max_body_bytes:
//!   the client gets 413 when no response was sent yet (else its stream
//!   is reset), counted in `too_large`.
//! - An HTTP/1.1 upgrade (WebSocket) goes over HTTP/1.1 and, on a 101,
//!   becomes a tunnel ([`super::upgrade`]).
//! - A failed connect or upstream TLS handshake ([`super::connector`])
//!   marks the upstream down with the reason as its `last_error`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use parking_lot::RwLock;
use tokio::time::Instant;

use super::body::{Counted, LogLine};
use super::connector::{ConnectError, Connector};
use super::{HttpProxy, UpstreamProtocol, fault, upgrade};
use crate::services::ServiceCtx;
use crate::services::http_server::Peer;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends, either way.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON error answered by netd itself.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    crate::services::http::error(status, message)
        .map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// The pooled clients to the upstreams, one per HTTP version and per
/// worker ([`super::accept`]: a request uses the pools of the worker its
/// client connection is on), built on first use in a run of the listener
/// (their pools spawn on the runtime) and dropped when the run ends, which
/// closes the idle pooled connections.
pub struct Clients {
    per_worker: Box<[Versions]>,
}

/// A worker's clients: HTTP/1.1 and HTTP/2.
#[derive(Default)]
struct Versions {
    h1: RwLock<Option<Arc<Client<Connector, Body>>>>,
    h2: RwLock<Option<Arc<Client<Connector, Body>>>>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            per_worker: (0..super::accept::pools())
                .map(|_| Versions::default())
                .collect(),
        }
    }
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

impl Clients {
    /// The client of one HTTP version on one worker.
    pub fn get(
        &self,
        h2: bool,
        worker: usize,
        build: impl FnOnce() -> Client<Connector, Body>,
    ) -> Arc<Client<Connector, Body>> {
        let mine = &self.per_worker[worker % self.per_worker.len()];
        let cell = if h2 { &mine.h2 } else { &mine.h1 };
        if let Some(c) = &*cell.read() {
            return c.clone();
        }
        let built = Arc::new(build());
        cell.write().get_or_insert(built).clone()
    }

    /// Drop all the clients (the listener's run ended).
    pub fn clear(&self) {
        for v in &*self.per_worker {
            v.h1.write().take();
            v.h2.write().take();
        }
    }
}

/// Serves a listener's requests.
#[derive(Clone)]
pub struct Handler {
    pub proxy: Arc<HttpProxy>,
    pub ctx: ServiceCtx,
    /// The worker the client's connection is on (its upstream pools).
    pub worker: usize,
}

impl crate::services::http_server::Handler for Handler {
    type Body = Counted;

    async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Counted> {
        let began = Instant::now();
        let p = &self.proxy;
        let method = req.method().clone();
        let logged_path = (p.access_log && crate::telemetry::access_log::enabled())
            .then(|| req.uri().path().to_owned());
        let route = p.routes.of(req.uri().path());
        let resp = self.respond(req, peer).await;
        let status = resp.status().as_u16();
        let took = began.elapsed();
        let c = &p.counters;
        c.requests.fetch_add(1, Relaxed);
        if let Some(class) = c.by_class.get(usize::from(status / 100)) {
            class.fetch_add(1, Relaxed);
        }
        c.latency.record(took);
        route.counters.record(status, took);
        // The access-log line is written when the body ends, with the
        // bytes sent.
        let log = logged_path.map(|path| LogLine {
            listener: self.ctx.name.clone(),
            client: peer.addr,
            client_cert: peer.client_cert.clone(),
            method,
            path,
            status,
            began,
            route: route.prefix.clone(),
            upstream: resp.extensions().get::<AnsweredBy>().map(|a| a.0),
        });
        let stats = self.ctx.stats.clone();
        resp.map(|b| Counted::response(b, stats, log))
    }

    /// With a TCP fault (toxic) on the listener, the client connection's
    /// bytes pass through it beneath HTTP ([`crate::services::proxy::toxic_layer`]);
    /// decided at accept: a TCP fault added later reaches the connections
    /// accepted after it. One atomic load while the listener never had a
    /// fault.
    fn beneath<S: crate::services::http_server::conn::Socket>(
        &self,
        stream: S,
        peer: std::net::SocketAddr,
        ctx: &ServiceCtx,
    ) -> Result<(tokio::io::DuplexStream, crate::services::http_server::Layer), S> {
        let mut watch = crate::fault::Watch::new(&ctx.faults);
        let toxic = watch
            .get()
            .is_some_and(|set| set.faults.iter().any(|a| a.fault.action.tcp().is_some()));
        if !toxic {
            return Err(stream);
        }
        let (inner, outer) = tokio::io::duplex(LAYER_BUFFER);
        let layer = crate::services::proxy::toxic_layer(stream, outer, peer, ctx.clone());
        Ok((inner, Box::pin(layer)))
    }
}

/// Bytes in flight each way between the layer beneath HTTP and HTTP.
const LAYER_BUFFER: usize = 64 * 1024;

/// Which upstream answered a response (for the access log); absent on
/// netd's own answers.
#[derive(Debug, Clone, Copy)]
pub struct AnsweredBy(pub std::net::SocketAddr);

/// Headers that describe one connection, not the message (RFC 9110
/// 7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Drop the hop-by-hop headers, and those the Connection header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
    // TE: only "trailers" may pass (gRPC needs it).
    if h.get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        h.remove(header::TE);
    }
}

impl Handler {
    async fn respond(&self, mut req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let p = &*self.proxy;
        let h1 = req.version() < Version::HTTP_2;
        if h1 && crate::services::http::header_size(&req) > p.max_header_bytes as usize {
            p.counters.too_large.fetch_add(1, Relaxed);
            return error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!(
                    "request header section larger than {} bytes",
                    p.max_header_bytes
                ),
            );
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > p.max_body) {
            p.counters.too_large.fetch_add(1, Relaxed);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body larger than {} bytes", p.max_body),
            );
        }
        let after = match fault::before(p, &self.ctx, &mut req, peer).await {
            Ok(after) => after,
            Err(answer) => return answer,
        };
        let resp = self.forward(req, peer).await;
        fault::after(after, resp).await
    }

    /// Send the request upstream and return the upstream's response (or
    /// netd's 502/504, or 413 when a body without a declared length turns
    /// out too large).
    async fn forward(&self, mut req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let p = &*self.proxy;
        let h1_client = req.version() < Version::HTTP_2;
        let upgrade = h1_client
            .then(|| upgrade::requested(req.headers()))
            .flatten();
        // An upgrade goes over HTTP/1.1 whatever upstream_protocol says.
        let h2 = upgrade.is_none()
            && match p.protocol {
                UpstreamProtocol::Auto => !h1_client,
                UpstreamProtocol::Http1 => false,
                UpstreamProtocol::H2c => true,
            };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Over TLS the upstream picks the version by ALPN: the request is
        // written as HTTP/1.1 (Host kept), and goes over HTTP/2 when the
        // connection negotiated h2.
        let h2_written = h2 && p.upstream_tls.is_none();
        self.rewrite(&mut parts, peer, h2_written, upgrade);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let bodyless = hyper::body::Body::is_end_stream(&body);
        // Only a request without a body is ever sent twice: the head is
        // copied for each attempt only then.
        let may_retry = bodyless && p.retries > 0 && p.upstreams.len() > 1;
        let limited = http_body_util::Limited::new(body, p.max_body as usize);
        let mut body: Option<Body> =
            Some(Counted::request(limited, self.ctx.stats.clone()).boxed_unsync());
        let client = p.client(h2, self.worker, &self.ctx);
        let scheme = if p.upstream_tls.is_some() {
            "https"
        } else {
            "http"
        };
        // The upstreams tried (at most 64: a bit each) and how many.
        let (mut tried, mut attempts) = (0u64, 0usize);
        loop {
            let Some((i, up)) = p.pick(tried) else {
                p.counters.upstream_errors.fetch_add(1, Relaxed);
                return error(StatusCode::BAD_GATEWAY, "no upstream could be reached");
            };
            tried |= 1 << i;
            attempts += 1;
            let uri = Uri::builder()
                .scheme(scheme)
                .authority(up.addr.get().to_string())
                .path_and_query(path.clone())
                .build();
            let Ok(uri) = uri else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "request target cannot be forwarded",
                );
            };
            let mut out = Request::new(body.take().unwrap_or_else(|| full(Bytes::new())));
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            *out.version_mut() = parts.version;
            *out.headers_mut() = if may_retry {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            up.state.connections.fetch_add(1, Relaxed);
            let sent = tokio::time::timeout(p.request_timeout, client.request(out)).await;
            let e = match sent {
                Ok(Ok(resp)) => {
                    up.mark_up();
                    let mut answer = self.answer(resp, client_upgrade);
                    answer.extensions_mut().insert(AnsweredBy(up.addr.get()));
                    return answer;
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    p.counters.upstream_timeouts.fetch_add(1, Relaxed);
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "upstream {} did not answer within {}",
                            up.addr,
                            humantime::format_duration(p.request_timeout)
                        ),
                    );
                }
            };
            if is_too_large(&e) {
                p.counters.too_large.fetch_add(1, Relaxed);
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body larger than {} bytes", p.max_body),
                );
            }
            if !e.is_connect() {
                tracing::debug!(listener = %self.ctx.name, upstream = %up.addr, error = %e, "upstream request failed");
                p.counters.upstream_errors.fetch_add(1, Relaxed);
                return error(
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream {}: {}", up.addr, source_text(&e)),
                );
            }
            let why = connect_error(&e);
            tracing::debug!(listener = %self.ctx.name, upstream = %up.addr, error = %why, "upstream connect failed");
            up.mark_down(p.upstream_backoff, why.clone());
            let again = may_retry && attempts <= p.retries as usize && attempts < p.upstreams.len();
            if again {
                p.counters.retries.fetch_add(1, Relaxed);
                continue;
            }
            p.counters.upstream_errors.fetch_add(1, Relaxed);
            return error(
                StatusCode::BAD_GATEWAY,
                &format!("upstream {}: {why}", up.addr),
            );
        }
    }

    /// The request's head as the upstream gets it: hop-by-hop headers
    /// dropped (an upgrade's two put back), the client named, Host for
    /// HTTP/1.1 (from the client's :authority when it spoke HTTP/2).
    fn rewrite(
        &self,
        parts: &mut http::request::Parts,
        peer: &Peer,
        h2: bool,
        upgrade: Option<HeaderValue>,
    ) {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        strip_hop_by_hop(&mut parts.headers);
        if let Some(u) = upgrade {
            upgrade::restore(&mut parts.headers, u);
        }
        add_forwarded(&self.proxy, &mut parts.headers, peer, authority.as_deref());
        if h2 {
            parts.headers.remove(header::HOST);
        } else if let Some(a) = authority.as_deref() {
            if !parts.headers.contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(a) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        parts.version = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
    }

    /// The upstream's response as the client gets it; a 101 to an upgrade
    /// request joins the two connections.
    fn answer(
        &self,
        mut resp: Response<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<Body> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upgraded = match client_upgrade {
            Some(on_client) if switching => {
                let kept = upgrade::requested(resp.headers());
                let on_upstream = hyper::upgrade::on(&mut resp);
                self.proxy.counters.upgrades.fetch_add(1, Relaxed);
                upgrade::spawn(
                    on_client,
                    on_upstream,
                    self.proxy.server.idle_timeout,
                    self.proxy.limit.clone(),
                    &self.ctx,
                );
                kept
            }
            _ => None,
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(u) = upgraded {
            upgrade::restore(&mut parts.headers, u);
        }
        // An upstream failing in the middle of its body is an upstream
        // error.
        let counters = self.proxy.counters.clone();
        let body = body.map_err(move |e| {
            counters.upstream_errors.fetch_add(1, Relaxed);
            BoxError::from(e)
        });
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// Whether a request failed because its body went over max_body_bytes.
fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Why a connection to the upstream failed, for its `last_error`.
fn connect_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return c.to_string();
        }
        cur = err.source();
    }
    format!("connect failed: {}", source_text(e))
}

/// The innermost cause of a client error, for a message.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Name the client to the upstream, as the listener says.
fn add_forwarded(p: &HttpProxy, h: &mut HeaderMap, peer: &Peer, host: Option<&str>) {
    let ip = peer.addr.ip();
    let proto = if peer.tls { "https" } else { "http" };
    if p.forwarded.xff {
        let xff = HeaderName::from_static("x-forwarded-for");
        let value = match h.get(&xff).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(xff, v);
        }
        h.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(proto),
        );
    }
    if p.forwarded.rfc7239 {
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let mut element = format!("for={node};proto={proto}");
        if let Some(host) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
            element.push_str(&format!(";host=\"{host}\""));
        }
        let value = match h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {element}"),
            None => element,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(header::FORWARDED, v);
        }
    }
}
