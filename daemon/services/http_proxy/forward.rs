//! One proxied request: the limits, the faults before it is sent, the
//! upstream chosen (round robin over the healthy ones, retried on a
//! connect failure when the spec allows), the request rewritten
//! (hop-by-hop headers dropped, the client named by X-Forwarded-For or
//! Forwarded), sent over the pooled client of its HTTP version, and the
//! response (with the faults after) streamed back.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::{HttpProxy, POOL_IDLE_TIMEOUT, UpstreamProtocol, fault};
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
/// client connection is on), built on first use (their pools spawn on the
/// runtime that builds a connection).
#[derive(Debug)]
pub struct Clients {
    connect_timeout: Duration,
    max_idle: u32,
    per_worker: OnceLock<Box<[Versions]>>,
}

/// A worker's clients: HTTP/1.1 and HTTP/2.
#[derive(Debug, Default)]
struct Versions {
    h1: OnceLock<Client<HttpConnector, Body>>,
    h2: OnceLock<Client<HttpConnector, Body>>,
}

impl Clients {
    pub fn new(connect_timeout: Duration, max_idle: u32) -> Clients {
        Clients {
            connect_timeout,
            max_idle,
            per_worker: OnceLock::new(),
        }
    }

    fn get(&self, h2: bool, worker: usize) -> &Client<HttpConnector, Body> {
        let all = self.per_worker.get_or_init(|| {
            let n = crate::net::workers::handles().len().max(1);
            (0..n).map(|_| Versions::default()).collect()
        });
        let mine = &all[worker % all.len()];
        let cell = if h2 { &mine.h2 } else { &mine.h1 };
        cell.get_or_init(|| {
            let mut c = HttpConnector::new();
            c.set_connect_timeout(Some(self.connect_timeout));
            c.set_nodelay(true);
            let mut b = Client::builder(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(self.max_idle as usize)
                .http2_only(h2);
            b.build(c)
        })
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
    type Body = Body;

    async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let began = Instant::now();
        let p = &self.proxy;
        let method = req.method().clone();
        let logged_path = (p.access_log && crate::telemetry::access_log::enabled())
            .then(|| req.uri().path().to_owned());
        let route = p.routes.of(req.uri().path()).counters.clone();
        let resp = self.respond(req, peer).await;
        let status = resp.status().as_u16();
        let took = began.elapsed();
        let c = &p.counters;
        c.requests.fetch_add(1, Relaxed);
        if let Some(class) = c.by_class.get(usize::from(status / 100)) {
            class.fetch_add(1, Relaxed);
        }
        c.latency.record(took);
        route.record(status, took);
        if let Some(path) = logged_path {
            crate::telemetry::access_log::http(
                &self.ctx.name,
                peer.addr,
                peer.client_cert.as_deref(),
                method.as_str(),
                &path,
                status,
                0,
                took.as_micros() as u64,
            );
        }
        resp
    }
}

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
    /// netd's 502/504).
    async fn forward(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let p = &*self.proxy;
        let h2 = match p.protocol {
            UpstreamProtocol::Auto => req.version() >= Version::HTTP_2,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::H2c => true,
        };
        let (mut parts, body) = req.into_parts();
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
        add_forwarded(p, &mut parts.headers, peer, authority.as_deref());
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
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let bodyless = hyper::body::Body::is_end_stream(&body);
        let limit = p.max_body as usize;
        let mut body: Option<Body> = Some(
            http_body_util::Limited::new(body, limit)
                .map_err(BoxError::from)
                .boxed_unsync(),
        );
        let client = p.clients.get(h2, self.worker);
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let Some((i, up)) = p.pick(&tried) else {
                p.counters.upstream_errors.fetch_add(1, Relaxed);
                return error(StatusCode::BAD_GATEWAY, "no upstream could be reached");
            };
            tried.push(i);
            let uri = Uri::builder()
                .scheme("http")
                .authority(up.addr.get().to_string())
                .path_and_query(path.as_str())
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
            *out.headers_mut() = parts.headers.clone();
            up.state.connections.fetch_add(1, Relaxed);
            let sent = tokio::time::timeout(p.request_timeout, client.request(out)).await;
            match sent {
                Ok(Ok(resp)) => {
                    up.mark_up();
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    return Response::from_parts(
                        parts,
                        body.map_err(BoxError::from).boxed_unsync(),
                    );
                }
                Ok(Err(e)) if e.is_connect() => {
                    tracing::debug!(listener = %self.ctx.name, upstream = %up.addr, error = %e, "upstream connect failed");
                    up.mark_down(
                        p.upstream_backoff,
                        format!("connect failed: {}", source_text(&e)),
                    );
                    let again = bodyless
                        && tried.len() <= p.retries as usize
                        && tried.len() < p.upstreams.len();
                    if again {
                        p.counters.retries.fetch_add(1, Relaxed);
                        continue;
                    }
                    p.counters.upstream_errors.fetch_add(1, Relaxed);
                    return error(
                        StatusCode::BAD_GATEWAY,
                        &format!("upstream {}: connect failed", up.addr),
                    );
                }
                Ok(Err(e)) => {
                    tracing::debug!(listener = %self.ctx.name, upstream = %up.addr, error = %e, "upstream request failed");
                    p.counters.upstream_errors.fetch_add(1, Relaxed);
                    return error(
                        StatusCode::BAD_GATEWAY,
                        &format!("upstream {}: {}", up.addr, source_text(&e)),
                    );
                }
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
            }
        }
    }
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
