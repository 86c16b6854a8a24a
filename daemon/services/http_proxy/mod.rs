//! The HTTP-aware reverse proxy (`http-proxy`): requests, not bytes.
//!
//! - Clients speak HTTP/1.1 (keep-alive) or HTTP/2 (h2c by the preface, or
//!   h2 by ALPN over TLS): the connection side is the shared
//!   [`crate::services::http_server`], as for the `http` kind, with the
//!   same header, stream and idle limits.
//! - Each request goes to one upstream, round robin over the healthy ones
//!   (the `proxy` kind's [`Upstream`]: a connect that fails marks it down
//!   for `upstream_backoff`), over a keep-alive pool per upstream (hyper's
//!   pooled client, [`forward`]). The upstream is spoken to in the
//!   client's HTTP version (`upstream_protocol = "auto"`), so gRPC reaches
//!   it over h2c with its trailers.
//! - HTTP faults ([`fault`]) act on requests matched by method, path,
//!   headers or gRPC method; per-route counters ([`routes`]).
//! - Upstream TLS (`upstream_tls`, ALPN h2 or http/1.1 by the client's
//!   version) is the pooled clients' connector ([`connector`]); HTTP/1.1
//!   upgrades pass through as tunnels ([`upgrade`]); bodies are counted
//!   into bytes_in/bytes_out ([`body`]).

mod accept;
mod body;
mod connector;
mod fault;
mod forward;
pub mod metrics;
mod routes;
mod show;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::http::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_REQUEST_TIMEOUT, MAX_HEADER_BYTES_RANGE, MAX_MAX_BODY, MAX_MAX_STREAMS,
    REQUEST_TIMEOUT_RANGE, TLS_DEFAULT_ALPN, connection_timeouts, tls_handshake_timeout,
};
use super::http_server::Server as HttpServer;
use super::proxy::resolve;
use super::proxy::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_UPSTREAM_BACKOFF, MAX_UPSTREAMS, Upstream, check_not_self,
};
use super::{
    DEFAULT_MAX_CONNECTIONS, ListenerKind, ServiceCtx, Settings, SpecError, Transport,
    duration_field, duration_in, listen_field, size_in,
};
use crate::net::bind::Sockets;
use crate::net::tls::{ServedTls, TlsCounters, UpstreamTls};
use crate::proto;
use crate::spec::FieldError;
use crate::spec::form::{self, Key, Unit};
use crate::telemetry::stats::Histogram;

/// Idle keep-alive connections per upstream unless the spec says.
pub const DEFAULT_MAX_IDLE: u32 = 64;
pub const MAX_MAX_IDLE: u32 = 1024;
/// Concurrent HTTP/2 streams per client connection unless the spec says
/// (gRPC clients multiplex; the `http` kind's 32 is low for a proxy).
pub const DEFAULT_MAX_STREAMS: u32 = 100;
pub const MAX_ROUTES: usize = 64;
pub const MAX_RETRIES: u32 = 8;
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP version spoken to the upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// The client's: HTTP/2 clients reach the upstream over h2c (or h2).
    Auto,
    Http1,
    H2c,
}

impl UpstreamProtocol {
    fn parse(s: &str) -> Result<Self, SpecError> {
        match s.trim() {
            "" | "auto" => Ok(UpstreamProtocol::Auto),
            "http1" | "http/1.1" => Ok(UpstreamProtocol::Http1),
            "h2c" | "h2" | "http2" => Ok(UpstreamProtocol::H2c),
            o => Err(SpecError::at(
                "upstream_protocol",
                format!("upstream_protocol '{o}': expected auto, http1 or h2c"),
            )),
        }
    }
}

/// Which header tells the upstream who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// `X-Forwarded-For` (appended to) and `X-Forwarded-Proto`.
    pub xff: bool,
    /// RFC 7239 `Forwarded` (appended to).
    pub rfc7239: bool,
}

impl Forwarded {
    fn parse(s: &str) -> Result<Self, SpecError> {
        let (xff, rfc7239) = match s.trim() {
            "" | "x-forwarded-for" | "xff" => (true, false),
            "forwarded" => (false, true),
            "both" => (true, true),
            "none" => (false, false),
            o => {
                return Err(SpecError::at(
                    "forwarded",
                    format!("forwarded '{o}': expected x-forwarded-for, forwarded, both or none"),
                ));
            }
        };
        Ok(Forwarded { xff, rfc7239 })
    }
}

/// The listener's counters (carried from generation to generation).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    /// By status class: index 1 to 5.
    pub by_class: [AtomicU64; 6],
    pub upstream_errors: AtomicU64,
    pub upstream_timeouts: AtomicU64,
    pub retries: AtomicU64,
    pub upgrades: AtomicU64,
    pub too_large: AtomicU64,
    pub envoy_header_faults: AtomicU64,
    pub idle_closed: Arc<AtomicU64>,
    pub latency: Histogram,
}

#[derive(Debug)]
pub struct HttpProxy {
    pub listen: SocketAddr,
    upstreams: Vec<Arc<Upstream>>,
    connect_timeout: Duration,
    upstream_backoff: Duration,
    max_idle: u32,
    protocol: UpstreamProtocol,
    forwarded: Forwarded,
    routes: routes::Routes,
    retries: u32,
    max_body: u64,
    request_timeout: Duration,
    max_header_bytes: u32,
    access_log: bool,
    envoy_headers: bool,
    limit: Arc<Semaphore>,
    next: AtomicUsize,
    counters: Arc<Counters>,
    /// The client side: timeouts, HTTP/2 limits, HTTPS.
    server: Arc<HttpServer>,
    /// The upstream side: pooled clients, built when the listener runs.
    clients: forward::Clients,
    /// TLS to the upstreams (`upstream_tls`).
    upstream_tls: Option<Arc<UpstreamTls>>,
    /// Where upstream handshakes are counted: the served TLS's counters,
    /// or the listener's own when it only originates.
    tls_counters: Arc<TlsCounters>,
}

impl HttpProxy {
    fn validate(spec: &proto::HttpProxySpec) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        if spec.upstreams.is_empty() {
            return Err(SpecError::at(
                "upstreams",
                "at least one upstream is required (host:port)",
            ));
        }
        if spec.upstreams.len() > MAX_UPSTREAMS {
            return Err(SpecError::at(
                "upstreams",
                format!("at most {MAX_UPSTREAMS} upstreams"),
            ));
        }
        let upstreams = spec
            .upstreams
            .iter()
            .map(|u| Upstream::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if listen.port() != 0 {
            check_not_self(listen, upstreams.iter().map(|u| u.addr.get()))
                .map_err(|e| e.about("upstreams"))?;
        }
        crate::fault::compile_all(&spec.faults, crate::fault::Target::Http)?;
        if spec.retries > MAX_RETRIES {
            return Err(SpecError::at(
                "retries",
                format!("retries is {}; at most {MAX_RETRIES}", spec.retries),
            ));
        }
        let max = size_in(
            "max_connections",
            u64::from(spec.max_connections),
            DEFAULT_MAX_CONNECTIONS as u64,
            1..=super::MAX_MAX_CONNECTIONS,
        )? as usize;
        let max_header_bytes = size_in(
            "max_header_bytes",
            u64::from(spec.max_header_bytes),
            u64::from(DEFAULT_MAX_HEADER_BYTES),
            MAX_HEADER_BYTES_RANGE,
        )? as u32;
        let access_log = spec.access_log.unwrap_or(true);
        let counters = Arc::new(Counters::default());
        let served_tls = ServedTls::from_spec(spec.tls.as_ref(), TLS_DEFAULT_ALPN)?.map(Arc::new);
        let upstream_tls = UpstreamTls::from_spec(spec.upstream_tls.as_ref())?.map(Arc::new);
        let tls_counters = served_tls
            .as_ref()
            .map_or_else(Arc::default, |s| s.counters().clone());
        let (header_timeout, idle_timeout) =
            connection_timeouts(&spec.header_read_timeout, &spec.idle_timeout)?;
        let server = HttpServer {
            header_timeout,
            idle_timeout,
            max_streams: size_in(
                "max_streams",
                u64::from(spec.max_streams),
                u64::from(DEFAULT_MAX_STREAMS),
                1..=u64::from(MAX_MAX_STREAMS),
            )? as u32,
            max_header_bytes,
            tls: served_tls,
            tls_handshake_timeout: tls_handshake_timeout(spec.tls.as_ref()),
            want_client_cert: access_log,
            upgrades: true,
            idle_closed: counters.idle_closed.clone(),
        };
        let connect_timeout = duration_field(
            "connect_timeout",
            &spec.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let max_idle = size_in(
            "max_idle_per_upstream",
            u64::from(spec.max_idle_per_upstream),
            u64::from(DEFAULT_MAX_IDLE),
            1..=u64::from(MAX_MAX_IDLE),
        )? as u32;
        Ok(HttpProxy {
            listen,
            upstreams,
            connect_timeout,
            upstream_backoff: duration_field(
                "upstream_backoff",
                &spec.upstream_backoff,
                DEFAULT_UPSTREAM_BACKOFF,
            )?,
            max_idle,
            protocol: UpstreamProtocol::parse(&spec.upstream_protocol)?,
            forwarded: Forwarded::parse(&spec.forwarded)?,
            routes: routes::Routes::parse(&spec.routes)?,
            retries: spec.retries,
            max_body: size_in(
                "max_body_bytes",
                spec.max_body_bytes,
                DEFAULT_MAX_BODY,
                1..=MAX_MAX_BODY,
            )?,
            request_timeout: duration_in(
                "request_timeout",
                &spec.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
                REQUEST_TIMEOUT_RANGE,
            )?,
            max_header_bytes,
            access_log,
            envoy_headers: spec.envoy_fault_headers,
            limit: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            next: AtomicUsize::new(0),
            counters,
            server: Arc::new(server),
            clients: forward::Clients::default(),
            upstream_tls,
            tls_counters,
        })
    }

    pub fn stats(&self) -> proto::HttpProxyStats {
        let c = &self.counters;
        let now = Instant::now();
        let [p50, p90, p99] = c.latency.quantiles_ms([0.5, 0.9, 0.99]);
        proto::HttpProxyStats {
            requests: c.requests.load(Relaxed),
            responses_1xx: c.by_class[1].load(Relaxed),
            responses_2xx: c.by_class[2].load(Relaxed),
            responses_3xx: c.by_class[3].load(Relaxed),
            responses_4xx: c.by_class[4].load(Relaxed),
            responses_5xx: c.by_class[5].load(Relaxed),
            upstream_errors: c.upstream_errors.load(Relaxed),
            upstream_timeouts: c.upstream_timeouts.load(Relaxed),
            retries: c.retries.load(Relaxed),
            upgrades: c.upgrades.load(Relaxed),
            too_large: c.too_large.load(Relaxed),
            latency_p50_ms: p50,
            latency_p90_ms: p90,
            latency_p99_ms: p99,
            routes: self.routes.stats(),
            upstreams: self.upstreams.iter().map(|u| u.status(now, 0)).collect(),
            envoy_header_faults: c.envoy_header_faults.load(Relaxed),
        }
    }

    /// The next upstream to try: round robin over the healthy ones (all of
    /// them when none is), skipping those whose bit is set in `tried`
    /// (there are at most [`MAX_UPSTREAMS`], 64).
    fn pick(&self, tried: u64) -> Option<(usize, &Arc<Upstream>)> {
        let n = self.upstreams.len();
        let now = Instant::now();
        let start = self.next.fetch_add(1, Relaxed);
        let order = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| tried & (1 << i) == 0);
        let mut first = None;
        for i in order {
            first.get_or_insert(i);
            if self.upstreams[i].healthy(now) {
                return Some((i, &self.upstreams[i]));
            }
        }
        first.map(|i| (i, &self.upstreams[i]))
    }

    /// The pooled client of one HTTP version for this run of the listener.
    fn client(
        &self,
        h2: bool,
        worker: usize,
        ctx: &ServiceCtx,
    ) -> Arc<hyper_util::client::legacy::Client<connector::Connector, forward::Body>> {
        self.clients.get(h2, worker, || {
            connector::client(
                connector::Settings {
                    connect_timeout: self.connect_timeout,
                    max_idle: accept::idle_share(self.max_idle),
                    idle_timeout: POOL_IDLE_TIMEOUT,
                    tls: self.upstream_tls.clone(),
                    counters: self.tls_counters.clone(),
                    upstreams: self.upstreams.clone(),
                    close: ctx.close_connections.clone(),
                },
                h2,
            )
        })
    }

    async fn run_on(
        self: &Arc<Self>,
        listener: Sockets<TcpListener>,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        if self.upstream_tls.as_ref().is_some_and(|u| u.insecure) {
            tracing::warn!(
                listener = %ctx.name,
                "upstream_insecure is set: upstream TLS certificates are NOT verified, \
                 anyone on the path can pose as the upstream (for lab self-signed upstreams only)"
            );
        }
        let r = self.serve_on(listener, ctx).await;
        // The run is over: the pools go, closing their idle connections.
        self.clients.clear();
        r
    }

    async fn serve_on(
        self: &Arc<Self>,
        listener: Sockets<TcpListener>,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        if let Some(tls) = &self.server.tls {
            tls.watch(
                ctx.name.clone(),
                ctx.stop_accepting.clone(),
                &ctx.tracker,
                Some((ctx.events.clone(), proto::ListenerKind::HttpProxy)),
            );
        }
        let bound = listener.local_addr().ok();
        let accept = self.accept(listener, &ctx);
        // Named upstreams are resolved again while the proxy serves.
        let lookups = super::proxy::ProxyCounters::default();
        let keep = super::proxy::keep_upstreams_resolved(
            &self.upstreams,
            bound,
            &resolve::SystemResolver,
            resolve::DEFAULT_RESOLVE_INTERVAL,
            resolve::Counters {
                failures: &lookups.resolve_failures,
                resolves: &lookups.resolves,
            },
            &ctx.name,
        );
        tokio::select! {
            r = accept => r,
            () = keep => unreachable!("keep_resolved never returns"),
        }
    }
}

impl ListenerKind for HttpProxy {
    type Spec = proto::HttpProxySpec;
    type Socket = Sockets<TcpListener>;
    const SLUG: &'static str = "http-proxy";
    const KIND: proto::ListenerKind = proto::ListenerKind::HttpProxy;
    const TRANSPORT: Transport = Transport::Tcp;
    const ABOUT: &'static str = "HTTP-aware reverse proxy (HTTP/1.1, h2, gRPC, WebSocket): each request to an upstream (round robin over the healthy ones) over keep-alive pools, with HTTP faults by route.";
    const KEYS: &'static [Key] = &[
        form::LISTEN,
        Key::new("max_connections", "max-connections", Unit::Count, "Concurrent client connections; more are refused (default 1024)."),
        Key::new("upstreams", "upstream", Unit::Addrs, "Upstream host:port (repeat for several; round robin). The proxy's own listening address is refused.")
            .short('u')
            .start_required(),
        Key::new("connect_timeout", "upstream-connect-timeout", Unit::Duration, "Upstream connect timeout (default 5s)."),
        Key::new("upstream_backoff", "upstream-backoff", Unit::Duration, "Skip an upstream whose connect failed for this long (default 10s)."),
        Key::new("max_idle_per_upstream", "max-idle-per-upstream", Unit::Count, "Idle keep-alive connections kept per upstream, 1-1024 (default 64)."),
        Key::new("upstream_protocol", "upstream-protocol", Unit::Text, "HTTP version to the upstreams: auto (the client's; default), http1 or h2c."),
        Key::new("forwarded", "forwarded", Unit::Text, "Client address header: x-forwarded-for (default), forwarded (RFC 7239), both or none."),
        Key::new("routes", "route", Unit::Texts, "A path prefix counted separately in the stats (repeat for several; at most 64)."),
        Key::new("retries", "retries", Unit::Count, "Try a request whose upstream could not be connected on the next upstream this many times, 0-8 (default 0: 502 at once)."),
        Key::new("max_body_bytes", "max-body", Unit::Bytes, "Largest request body forwarded, in bytes; larger gets 413 (default 1 MiB)."),
        Key::new("header_read_timeout", "header-timeout", Unit::Duration, "Time a client has to send a request's headers (default 10s)."),
        Key::new("request_timeout", "request-timeout", Unit::Duration, "Time the upstream has to answer with headers (default 30s); slower gets 504."),
        Key::new("idle_timeout", "idle-timeout", Unit::Duration, "Close an HTTP/2 client connection with no open stream, or an idle WebSocket tunnel, this long (default 60s); HTTP/1.1 keep-alive connections wait --header-timeout for their next request."),
        Key::new("max_streams", "max-streams", Unit::Count, "Concurrent HTTP/2 streams per client connection, 1-1000 (default 100)."),
        Key::new("max_header_bytes", "max-header-bytes", Unit::Bytes32, "Largest request header section in bytes, 1024 to 1 MiB (default 16 KiB); larger gets 431."),
        form::ACCESS_LOG,
        form::FAULTS,
        Key::new("envoy_fault_headers", "envoy-fault-headers", Unit::Switch, "Honour Envoy's x-envoy-fault-* request headers (off by default: any client could fail its own requests)."),
        crate::spec::tls::TLS_CERT,
        crate::spec::tls::TLS_KEY,
        crate::spec::tls::TLS_CLIENT_CA,
        crate::spec::tls::TLS_CLIENT_AUTH,
        crate::spec::tls::TLS_ALPN,
        crate::spec::tls::TLS_HANDSHAKE_TIMEOUT,
        crate::spec::tls::UPSTREAM_TLS,
        crate::spec::tls::UPSTREAM_SNI,
        crate::spec::tls::UPSTREAM_CA,
        crate::spec::tls::UPSTREAM_CERT,
        crate::spec::tls::UPSTREAM_KEY,
        crate::spec::tls::UPSTREAM_INSECURE,
    ];
    const FAMILIES: &'static dyn crate::telemetry::families::DetailFamilies = &metrics::FAMILIES;

    fn read_config(t: &toml::Table, _opts: &form::ReadOptions) -> Result<Self::Spec, FieldError> {
        Ok(proto::HttpProxySpec {
            listen: form::text(t, "listen")?,
            upstreams: form::strings(t, "upstreams")?,
            connect_timeout: form::duration(t, "connect_timeout")?,
            upstream_backoff: form::duration(t, "upstream_backoff")?,
            max_connections: form::u32(t, "max_connections")?,
            max_idle_per_upstream: form::u32(t, "max_idle_per_upstream")?,
            upstream_protocol: form::text(t, "upstream_protocol")?,
            forwarded: form::text(t, "forwarded")?,
            routes: form::strings(t, "routes")?,
            retries: form::u32(t, "retries")?,
            max_body_bytes: form::u64(t, "max_body_bytes")?,
            header_read_timeout: form::duration(t, "header_read_timeout")?,
            request_timeout: form::duration(t, "request_timeout")?,
            idle_timeout: form::duration(t, "idle_timeout")?,
            max_streams: form::u32(t, "max_streams")?,
            max_header_bytes: form::u32(t, "max_header_bytes")?,
            access_log: form::opt_bool(t, "access_log")?,
            faults: super::read_faults(t)?,
            envoy_fault_headers: form::bool(t, "envoy_fault_headers")?,
            tls: crate::spec::tls::read_server(t)?,
            upstream_tls: crate::spec::tls::read_client(t)?,
        })
    }

    fn write_config(spec: &Self::Spec, t: &mut crate::spec::Table) -> Result<(), String> {
        let proto::HttpProxySpec {
            listen,
            upstreams,
            connect_timeout,
            upstream_backoff,
            max_connections,
            max_idle_per_upstream,
            upstream_protocol,
            forwarded,
            routes,
            retries,
            max_body_bytes,
            header_read_timeout,
            request_timeout,
            idle_timeout,
            max_streams,
            max_header_bytes,
            access_log,
            faults,
            envoy_fault_headers,
            tls,
            upstream_tls,
        } = spec;
        let list =
            |v: &[String]| toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect());
        t.string("listen", listen);
        if !upstreams.is_empty() {
            t.line("upstreams", list(upstreams));
        }
        t.duration("connect_timeout", connect_timeout)?;
        t.duration("upstream_backoff", upstream_backoff)?;
        t.u64("max_connections", (*max_connections).into())?;
        t.u64("max_idle_per_upstream", (*max_idle_per_upstream).into())?;
        t.string("upstream_protocol", upstream_protocol);
        t.string("forwarded", forwarded);
        if !routes.is_empty() {
            t.line("routes", list(routes));
        }
        t.u64("retries", (*retries).into())?;
        t.u64("max_body_bytes", *max_body_bytes)?;
        t.duration("header_read_timeout", header_read_timeout)?;
        t.duration("request_timeout", request_timeout)?;
        t.duration("idle_timeout", idle_timeout)?;
        t.u64("max_streams", (*max_streams).into())?;
        t.u64("max_header_bytes", (*max_header_bytes).into())?;
        t.opt_bool("access_log", *access_log);
        t.bool("envoy_fault_headers", *envoy_fault_headers);
        crate::spec::tls::write_server(tls, t)?;
        crate::spec::tls::write_client(upstream_tls, t);
        crate::fault::attrs::write_faults(t, faults);
        Ok(())
    }

    fn spec_listen(spec: &Self::Spec) -> Option<&str> {
        Some(&spec.listen)
    }

    fn from_spec(spec: &Self::Spec, _settings: &Settings) -> Result<Self, SpecError> {
        super::check_max_connections(spec.max_connections)?;
        Self::validate(spec)
    }

    /// The request counters, each route's and each upstream's (while it
    /// stays in the spec) and the TLS counters are the listener's.
    fn carry_over(&mut self, prev: &Self) {
        self.counters = prev.counters.clone();
        self.routes.carry_over(&prev.routes);
        super::proxy::carry_states(&mut self.upstreams, &prev.upstreams);
        HttpServer::carry_over(&mut self.server, &prev.server, &prev.counters.idle_closed);
        // The TLS counters go on while the listener keeps serving TLS, or
        // keeps not serving it.
        match &self.server.tls {
            Some(s) => self.tls_counters = s.counters().clone(),
            None if prev.server.tls.is_none() => self.tls_counters = prev.tls_counters.clone(),
            None => {}
        }
    }

    fn effective_spec(&self, shown: &Self::Spec) -> Self::Spec {
        use super::effective_duration as dur;
        let or = |v: u64, default: u64| if v == 0 { default } else { v };
        proto::HttpProxySpec {
            connect_timeout: dur(&shown.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
            upstream_backoff: dur(&shown.upstream_backoff, DEFAULT_UPSTREAM_BACKOFF),
            max_connections: super::effective_max_connections(shown.max_connections),
            max_idle_per_upstream: self.max_idle,
            upstream_protocol: match self.protocol {
                UpstreamProtocol::Auto => "auto",
                UpstreamProtocol::Http1 => "http1",
                UpstreamProtocol::H2c => "h2c",
            }
            .into(),
            forwarded: match (self.forwarded.xff, self.forwarded.rfc7239) {
                (true, false) => "x-forwarded-for",
                (false, true) => "forwarded",
                (true, true) => "both",
                (false, false) => "none",
            }
            .into(),
            max_body_bytes: or(shown.max_body_bytes, DEFAULT_MAX_BODY),
            header_read_timeout: dur(&shown.header_read_timeout, DEFAULT_HEADER_TIMEOUT),
            request_timeout: dur(&shown.request_timeout, DEFAULT_REQUEST_TIMEOUT),
            idle_timeout: dur(&shown.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            max_streams: or(shown.max_streams.into(), DEFAULT_MAX_STREAMS.into()) as u32,
            max_header_bytes: or(
                shown.max_header_bytes.into(),
                DEFAULT_MAX_HEADER_BYTES.into(),
            ) as u32,
            access_log: Some(shown.access_log.unwrap_or(true)),
            tls: shown.tls.as_ref().map(ServedTls::effective),
            ..shown.clone()
        }
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(self.listen)
    }

    fn check_bound(&self, local: SocketAddr) -> Result<(), SpecError> {
        check_not_self(local, self.upstreams.iter().map(|u| u.addr.get()))
    }

    /// One socket per per-core worker (a SO_REUSEPORT group), as the
    /// TCP proxy's.
    fn sockets(&self) -> usize {
        crate::net::workers::socket_count()
    }

    async fn run(
        self: Arc<Self>,
        socket: Sockets<TcpListener>,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        self.run_on(socket, ctx).await
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::HttpProxy(self.stats()))
    }

    fn tls_stats(&self) -> Option<proto::TlsStats> {
        if let Some(t) = &self.server.tls {
            return Some(t.stats());
        }
        self.upstream_tls.as_ref()?;
        let c = &self.tls_counters;
        Some(proto::TlsStats {
            upstream_handshakes: c.upstream_handshakes.load(Relaxed),
            upstream_failures: c.upstream_failures.load(Relaxed),
            ..Default::default()
        })
    }

    /// Per client connection: itself and, at worst, one upstream
    /// connection (HTTP/1), plus each upstream's idle pool (shared by the
    /// workers, at least one each).
    fn descriptors(spec: &Self::Spec, _budget: &crate::net::fd_budget::Budget) -> u64 {
        let idle = match spec.max_idle_per_upstream {
            0 => DEFAULT_MAX_IDLE,
            n => n,
        };
        2 * super::fd_cost::connections(spec.max_connections)
            + u64::from(idle).max(accept::pools() as u64) * spec.upstreams.len() as u64
    }

    fn faults(spec: &Self::Spec) -> Option<(&Vec<proto::Fault>, crate::fault::Target)> {
        Some((&spec.faults, crate::fault::Target::Http))
    }

    fn faults_mut(spec: &mut Self::Spec) -> Option<&mut Vec<proto::Fault>> {
        Some(&mut spec.faults)
    }
}
