//! The monitored TCP proxy: each accepted client is joined to one upstream
//! and bytes are forwarded both ways until both sides have finished.
//!
//! - Upstream choice: round robin over the healthy upstreams. A connect
//!   that fails or times out marks that upstream unhealthy for
//!   `upstream_backoff` (passive health) and the next one is tried; when all
//!   are unhealthy, they are tried anyway rather than refusing the client.
//! - Pre-connect (`preconnect` > 0): a bb8 pool per upstream keeps that many
//!   established connections warm ([`pool`]). A client takes a warm
//!   one when there is one (checked on checkout, so a connection the upstream
//!   has closed is discarded, never handed out) and otherwise connects on
//!   demand; it never waits for the pool.
//! - Forwarding: two copy loops in one task, so neither direction can block
//!   the other. EOF on one side becomes a half-close (shutdown of the write
//!   side) on the other; a reset or error on one side becomes a reset
//!   (SO_LINGER 0) on the other. Read buffers (8 KiB, then 64 KiB for a
//!   burst that fills that) are borrowed only while data flows, so an idle
//!   connection holds no buffer; a few freed large ones are kept per
//!   thread, the rest are unmapped on drop (see [`BUF_SIZE`]), so a burst
//!   of exchanges leaves no buffer memory behind.
//! - An upstream that is the proxy's own listening address (the same
//!   address and port, or a local address on the listening port of a
//!   wildcard listener) is refused at start: each client would be joined to
//!   the proxy itself, one more connection per hop, until the connection
//!   limit ends the chain. Checked on the spec and again on the address
//!   actually bound (for port 0).
//! - Upstreams given by host name are resolved again every
//!   `resolve_interval`, off the runtime ([`resolve`]): new
//!   connections (and new warm ones) go to the latest answer, open ones stay
//!   where they are, and a failed lookup keeps the last good address.
//! - Connections are served on per-core workers ([`crate::net::workers`]):
//!   each worker accepts on its own socket of the listener's SO_REUSEPORT
//!   group and keeps the connections it accepted on its thread (see
//!   [`Proxy::accept`]).
//! - Faults (toxics): a direction a fault acts on goes through [`toxic`];
//!   a `down` fault resets a new client at accept, before any upstream is
//!   connected. A listener without faults pays one atomic load per read.
//! - TLS ([`tls`]): terminated from clients, originated to upstreams,
//!   both or neither; with neither, one branch at connection start and the
//!   path above is unchanged.
//! - Every closed connection is written to the access log
//!   ([`crate::telemetry::access_log`]) with client, upstream, bytes each way, duration
//!   and how it ended, unless the listener says `access_log = false`.

mod forward;
pub mod metrics;
pub mod pool;
pub mod resolve;
pub(crate) mod show;
mod tls;
mod toxic;

use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ListenerKind, ServiceCtx, Settings, SpecError,
    Transport, duration_field, listen_field,
};
use crate::net::accept::{Accepting, accept_loop_costing, spread};
use crate::net::bind::Sockets;
use crate::net::drain::Drain;
use crate::net::sockopt::abort;
use crate::net::workers;
use crate::proto;
use crate::spec::FieldError;
use crate::spec::form::{self, Key, Unit};
use crate::telemetry::stats::Stats;
pub use forward::BUF_SIZE;
use forward::{End, forward};
use pool::{TakeConnection, TcpPool};
use resolve::{Keeper, Resolver, UpstreamAddr};
pub(crate) use tls::toxic_layer;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_UPSTREAM_BACKOFF: Duration = Duration::from_secs(10);
/// Upper bound on `preconnect`, per upstream.
pub const MAX_PRECONNECT: u32 = 1024;
/// Upper bound on the number of upstreams.
pub const MAX_UPSTREAMS: usize = 64;
/// After closing a client no upstream would take: how long to discard what
/// it still sends, with nothing arriving and in all.
const REFUSED_DRAIN_QUIET: Duration = Duration::from_millis(500);
const REFUSED_DRAIN_TIME: Duration = Duration::from_secs(2);
/// Counters shared by the proxy and its pools.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub connect_failures: AtomicU64,
    pub connect_timeouts: AtomicU64,
    pub pool_hits: AtomicU64,
    pub pool_misses: AtomicU64,
    pub pool_stale: AtomicU64,
    pub resolve_failures: AtomicU64,
    pub resolves: AtomicU64,
}

/// One upstream of a proxy (also of the http-proxy): where it is, its
/// health and counters.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// As the spec gave it (trimmed): what an update matches upstreams by.
    pub(crate) given: Box<str>,
    /// Where it is now; re-resolved when the spec gave a host name.
    pub(crate) addr: Arc<UpstreamAddr>,
    /// The listener's: carried to the next generation while the upstream
    /// stays in the spec (see [`ListenerKind::carry_over`]).
    pub(crate) state: Arc<UpstreamState>,
    /// Built on first run (bb8 needs a runtime); kept across restarts.
    pool: OnceLock<TcpPool>,
}

/// An upstream's health and counters.
#[derive(Debug)]
pub(crate) struct UpstreamState {
    /// Skip this upstream until `base` + this many ms (passive health); 0
    /// while it is in rotation. An atomic: read for every client.
    down_until_ms: AtomicU64,
    base: Instant,
    pub(crate) connections: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) last_error: Mutex<String>,
}

impl Upstream {
    /// An upstream as a spec gives it (`host:port`), checked.
    pub(crate) fn parse(u: &str) -> Result<Arc<Upstream>, SpecError> {
        let addr = listen_field("upstream", u).map_err(|e| e.about("upstreams"))?;
        if addr.port() == 0 {
            return Err(SpecError::at(
                "upstreams",
                format!("upstream '{u}': port 0 cannot be connected to"),
            ));
        }
        if addr.ip().is_unspecified() {
            return Err(SpecError::at(
                "upstreams",
                format!(
                    "upstream '{u}': {} is not an address to connect to",
                    addr.ip()
                ),
            ));
        }
        let addr = if UpstreamAddr::is_name(u) {
            UpstreamAddr::named(u.trim(), addr)
        } else {
            UpstreamAddr::literal(addr)
        };
        Ok(Arc::new(Upstream {
            given: u.trim().into(),
            addr: Arc::new(addr),
            state: Arc::new(UpstreamState {
                down_until_ms: AtomicU64::new(0),
                base: Instant::now(),
                connections: AtomicU64::new(0),
                connect_failures: AtomicU64::new(0),
                last_error: Mutex::new(String::new()),
            }),
            pool: OnceLock::new(),
        }))
    }

    /// Its line in the stats.
    pub(crate) fn status(&self, now: Instant, pool_idle: u32) -> proto::UpstreamStatus {
        proto::UpstreamStatus {
            addr: self.addr.to_string(),
            healthy: self.healthy(now),
            connections: self.state.connections.load(Relaxed),
            connect_failures: self.state.connect_failures.load(Relaxed),
            last_error: self.state.last_error.lock().clone(),
            pool_idle,
        }
    }

    pub(crate) fn healthy(&self, now: Instant) -> bool {
        let s = &self.state;
        let until = s.down_until_ms.load(Relaxed);
        until == 0 || s.base + Duration::from_millis(until) <= now
    }

    pub(crate) fn mark_down(&self, backoff: Duration, error: String) {
        let s = &self.state;
        let until = (s.base.elapsed() + backoff).as_millis().max(1) as u64;
        s.down_until_ms.store(until, Relaxed);
        *s.last_error.lock() = error;
        s.connect_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn mark_up(&self) {
        if self.state.down_until_ms.load(Relaxed) != 0 {
            self.state.down_until_ms.store(0, Relaxed);
        }
    }
}

#[derive(Debug)]
pub struct Proxy {
    pub listen: SocketAddr,
    upstreams: Vec<Arc<Upstream>>,
    preconnect: u32,
    connect_timeout: Duration,
    idle_timeout: Duration,
    upstream_backoff: Duration,
    resolve_interval: Duration,
    resolver: Arc<dyn Resolver>,
    limit: Arc<Semaphore>,
    next: AtomicUsize,
    counters: Arc<ProxyCounters>,
    /// Write an access-log line per connection (`access_log`, default true).
    access_log: bool,
    /// TLS to clients and/or upstreams ([`tls`]).
    tls: tls::ProxyTls,
}

/// What connecting a client to an upstream came to.
enum Connected<'a> {
    To(TcpStream, &'a Upstream),
    /// The upstream took the connection and reset it at once.
    Reset(&'a Upstream),
    /// No upstream could be reached (or netd is closing connections).
    Nowhere,
}

impl Proxy {
    fn validate(spec: &proto::ProxySpec) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        if spec.upstreams.is_empty() {
            return Err(SpecError::new(
                "at least one upstream is required (host:port)",
            ));
        }
        if spec.upstreams.len() > MAX_UPSTREAMS {
            return Err(SpecError::new(format!("at most {MAX_UPSTREAMS} upstreams")));
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
        if spec.preconnect > MAX_PRECONNECT {
            return Err(SpecError::at(
                "preconnect",
                format!(
                    "preconnect is {}; the limit is {MAX_PRECONNECT}",
                    spec.preconnect
                ),
            ));
        }
        crate::fault::compile_all(&spec.faults, crate::fault::Target::Tcp)?;
        let max = match spec.max_connections {
            0 => DEFAULT_MAX_CONNECTIONS,
            n => n as usize,
        };
        Ok(Proxy {
            listen,
            upstreams,
            preconnect: spec.preconnect,
            connect_timeout: duration_field(
                "connect_timeout",
                &spec.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            idle_timeout: duration_field("idle_timeout", &spec.idle_timeout, DEFAULT_IDLE_TIMEOUT)?,
            upstream_backoff: duration_field(
                "upstream_backoff",
                &spec.upstream_backoff,
                DEFAULT_UPSTREAM_BACKOFF,
            )?,
            resolve_interval: super::duration_in(
                "resolve_interval",
                &spec.resolve_interval,
                resolve::DEFAULT_RESOLVE_INTERVAL,
                resolve::RESOLVE_INTERVAL_RANGE,
            )?,
            resolver: Arc::new(resolve::SystemResolver),
            limit: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            next: AtomicUsize::new(0),
            counters: Arc::new(ProxyCounters::default()),
            access_log: spec.access_log.unwrap_or(true),
            tls: tls::ProxyTls::from_spec(spec)?,
        })
    }

    pub fn stats(&self) -> proto::ProxyStats {
        let now = Instant::now();
        let c = &self.counters;
        proto::ProxyStats {
            connect_failures: c.connect_failures.load(Relaxed),
            connect_timeouts: c.connect_timeouts.load(Relaxed),
            pool_hits: c.pool_hits.load(Relaxed),
            pool_misses: c.pool_misses.load(Relaxed),
            pool_stale: c.pool_stale.load(Relaxed),
            resolve_failures: c.resolve_failures.load(Relaxed),
            resolves: c.resolves.load(Relaxed),
            upstreams: self
                .upstreams
                .iter()
                .map(|u| {
                    let idle = u.pool.get().map_or(0, |p| p.state().idle_connections);
                    u.status(now, idle)
                })
                .collect(),
        }
    }

    async fn run_on(
        self: &Arc<Self>,
        listener: Sockets<TcpListener>,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        self.tls.start(&ctx);
        if self.preconnect > 0 {
            for u in &self.upstreams {
                u.pool.get_or_init(|| {
                    pool::build(
                        u.addr.clone(),
                        self.preconnect,
                        self.connect_timeout,
                        self.counters.clone(),
                    )
                });
            }
        }
        let bound = listener.local_addr().ok();
        let accept = self.accept(listener, &ctx);
        // Named upstreams are resolved again while the proxy accepts; the
        // lookups themselves run on the blocking pool.
        let keep = keep_upstreams_resolved(
            &self.upstreams,
            bound,
            &*self.resolver,
            self.resolve_interval,
            resolve::Counters {
                failures: &self.counters.resolve_failures,
                resolves: &self.counters.resolves,
            },
            &ctx.name,
        );
        tokio::select! {
            r = accept => r,
            () = keep => unreachable!("keep_resolved never returns"),
        }
    }

    /// Accept clients until `ctx.stop_accepting`: one accept loop per
    /// per-core worker ([`workers`]), each on its own socket of the
    /// listener's SO_REUSEPORT group (one per worker, bound by the
    /// supervisor: [`ListenerKind::sockets`]) registered with that worker's
    /// own reactor, so the kernel hands a new client to one worker's socket,
    /// wakes that worker only, and the client's connection is served start
    /// to finish by that thread. A group smaller than the workers (one
    /// socket with `NETD_REUSEPORT=off`, or one handed over by a netd that
    /// had no groups) is shared: the other workers accept on `dup(2)`s of
    /// its sockets. A group larger (handed over by a netd on more cores)
    /// gets a loop on every socket, so no queue is left unserved. Without
    /// workers (one core), every socket's loop runs on the current runtime.
    ///
    /// Why per-core workers rather than the main (work-stealing) runtime:
    /// measured with `conn_load rate` (50 clients, 8 alternating rounds of
    /// 3 s, medians, CPU from /proc/PID/stat), the same build with and
    /// without them: 3,544 against 3,104 connections/s (HAProxy 3,483), user
    /// CPU per connection 15.8 against 20.8 µs, system 96.8 against 89.9 µs
    /// (one epoll_wait per connection or so where the shared runtime
    /// batched more), total 113.5 against 114.5 µs (HAProxy 110.2). Kept for
    /// the rate and the user-space CPU; the total is the kernel's TCP work
    /// per connection, the same for both (see bench/README.md's proxy
    /// benchmark). One socket per worker rather than dups of one: with a
    /// shared socket, every worker's epoll woke for some connections only
    /// to find them taken (an accept4 returning EAGAIN for ~9% of them,
    /// strace -c -f); see bench/README.md's new-connections section for
    /// the group's figures. The listening sockets handed to `run` are
    /// taken out of the main runtime's reactor (below): registered there
    /// too, they woke the main runtime's thread for nearly every client
    /// (`perf stat --per-thread`: 19,618 context switches of that thread
    /// for 32,348 connections; 3 without).
    async fn accept(
        self: &Arc<Self>,
        sockets: Sockets<TcpListener>,
        ctx: &ServiceCtx,
    ) -> anyhow::Result<()> {
        let serve = |proxy: &Arc<Self>, ctx: &ServiceCtx| {
            let (proxy, ctx) = (proxy.clone(), ctx.clone());
            move |client, peer| {
                let proxy = proxy.clone();
                let ctx = ctx.clone();
                async move { proxy.serve(client, peer, &ctx).await }
            }
        };
        // One loop per socket, each on its worker ([`workers::run_each`]:
        // they end with this future however it ends, so no socket
        // outlives `run`).
        let listeners = spread(sockets, workers::handles().len())?;
        let what = "a proxy worker's accept loop";
        workers::run_each(
            listeners,
            &ctx.stop_accepting,
            what,
            |_, std_listener, stop| {
                let (proxy, ctx) = (self.clone(), ctx.clone());
                async move {
                    // Registered with the reactor of the runtime it runs on.
                    let listener = TcpListener::from_std(std_listener)?;
                    let accepting = Accepting {
                        stop: &stop,
                        ..ctx.accepting()
                    };
                    accept_loop_costing(&listener, accepting, &proxy.limit, 2, serve(&proxy, &ctx))
                        .await
                }
            },
        )
        .await
    }

    /// Upstreams in the order to try them for the next client: healthy ones
    /// round robin first, then the unhealthy ones as a last resort. Health
    /// is read once per upstream (a bit each; there are at most 64), so an
    /// upstream changing state meanwhile is still tried exactly once.
    fn candidates(&self) -> impl Iterator<Item = &Upstream> {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Relaxed) % n;
        let now = Instant::now();
        let order = move || (0..n).map(move |i| (start + i) % n);
        let healthy: u64 = order()
            .filter(|&i| self.upstreams[i].healthy(now))
            .fold(0, |bits, i| bits | 1 << i);
        let pass = move |want: bool| {
            order()
                .filter(move |&i| (healthy >> i & 1 == 1) == want)
                .map(move |i| &*self.upstreams[i])
        };
        pass(true).chain(pass(false))
    }

    /// Take a warm connection from the upstream's pool, if it has one.
    async fn warm(&self, u: &Upstream) -> Option<TcpStream> {
        let pool = u.pool.get()?;
        if pool.state().idle_connections > 0 {
            // Checkout validates the connection (is it still open?) and
            // returns at once when an idle one is there; the timeout only
            // guards against racing another client for the last one.
            if let Ok(Ok(mut conn)) =
                tokio::time::timeout(Duration::from_millis(50), pool.get()).await
            {
                if let Some(stream) = conn.take() {
                    self.counters.pool_hits.fetch_add(1, Relaxed);
                    return Some(stream);
                }
            }
        }
        self.counters.pool_misses.fetch_add(1, Relaxed);
        None
    }

    async fn connect(&self, ctx: &ServiceCtx) -> Connected<'_> {
        for u in self.candidates() {
            if self.preconnect > 0 {
                if let Some(s) = self.warm(u).await {
                    return Connected::To(s, u);
                }
            }
            let attempt = tokio::select! {
                _ = ctx.close_connections.cancelled() => return Connected::Nowhere,
                r = tokio::time::timeout(self.connect_timeout, TcpStream::connect(u.addr.get())) => r,
            };
            match attempt {
                Ok(Ok(s)) => {
                    u.mark_up();
                    let _ = s.set_nodelay(true);
                    return Connected::To(s, u);
                }
                // The handshake completed (the upstream is up and took the
                // connection) and the upstream reset it before netd saw
                // the connect finish: the socket's pending error is
                // ECONNRESET. That is the upstream's answer to this client,
                // passed on as a reset like one after the connect.
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    u.mark_up();
                    return Connected::Reset(u);
                }
                Ok(Err(e)) => {
                    self.counters.connect_failures.fetch_add(1, Relaxed);
                    tracing::warn!(listener = %ctx.name, upstream = %u.addr, error = %e, "upstream connect failed");
                    u.mark_down(self.upstream_backoff, format!("connect failed: {e}"));
                }
                Err(_) => {
                    self.counters.connect_timeouts.fetch_add(1, Relaxed);
                    tracing::warn!(listener = %ctx.name, upstream = %u.addr, timeout = ?self.connect_timeout, "upstream connect timed out");
                    u.mark_down(
                        self.upstream_backoff,
                        format!(
                            "connect timed out after {}",
                            humantime::format_duration(self.connect_timeout)
                        ),
                    );
                }
            }
        }
        Connected::Nowhere
    }

    async fn serve(&self, mut client: TcpStream, peer: SocketAddr, ctx: &ServiceCtx) {
        let began = Instant::now();
        let faults = toxic::ConnFaults::new(&ctx.faults, peer.ip());
        if faults.down() {
            abort(&client);
            tracing::info!(
                target: "netd::access",
                listener = %ctx.name,
                client = %peer,
                bytes_up = 0,
                bytes_down = 0,
                duration_ms = began.elapsed().as_millis() as u64,
                end = End::FaultReset.as_str(),
                "proxied connection closed"
            );
            return;
        }
        if self.tls.is_on() {
            return Box::pin(self.serve_tls(client, peer, ctx, &faults, began)).await;
        }
        let (mut upstream, u) = match Box::pin(self.connect(ctx)).await {
            Connected::To(s, u) => (s, u),
            Connected::Reset(u) => {
                u.state.connections.fetch_add(1, Relaxed);
                abort(&client);
                if self.access_log {
                    crate::telemetry::access_log::proxy(
                        &ctx.name,
                        peer,
                        Some(u.addr.get()),
                        0,
                        0,
                        began.elapsed().as_millis() as u64,
                        End::UpstreamReset.as_str(),
                    );
                }
                return;
            }
            Connected::Nowhere => {
                Stats::add(&ctx.stats.errors, 1);
                if self.access_log {
                    crate::telemetry::access_log::proxy(
                        &ctx.name,
                        peer,
                        None,
                        0,
                        0,
                        began.elapsed().as_millis() as u64,
                        "no upstream",
                    );
                }
                // A prompt, clean close: the client sees EOF at once. What it
                // already sent is drained (briefly), so the close is a FIN and
                // not a reset.
                let _ = client.shutdown().await;
                let mut drain = Drain::new(REFUSED_DRAIN_QUIET, REFUSED_DRAIN_TIME);
                let drained = std::future::poll_fn(|cx| drain.poll_drain(&client, cx));
                tokio::select! {
                    _ = drained => {}
                    _ = ctx.close_connections.cancelled() => {}
                }
                return;
            }
        };
        u.state.connections.fetch_add(1, Relaxed);
        let up = AtomicU64::new(0);
        let down = AtomicU64::new(0);
        let end = forward(
            &mut client,
            &mut upstream,
            self.idle_timeout,
            ctx,
            &up,
            &down,
            &faults,
        )
        .await;
        match end {
            // Propagate a reset: abort the other side instead of a clean FIN.
            End::ClientReset => abort(&upstream),
            End::UpstreamReset => abort(&client),
            End::FaultReset => {
                abort(&client);
                abort(&upstream);
            }
            _ => {}
        }
        if self.access_log {
            crate::telemetry::access_log::proxy(
                &ctx.name,
                peer,
                Some(u.addr.get()),
                up.load(Relaxed),
                down.load(Relaxed),
                began.elapsed().as_millis() as u64,
                end.as_str(),
            );
        }
    }
}

impl ListenerKind for Proxy {
    type Spec = proto::ProxySpec;
    type Socket = Sockets<TcpListener>;
    const SLUG: &'static str = "proxy";
    const KIND: proto::ListenerKind = proto::ListenerKind::Proxy;
    const TRANSPORT: Transport = Transport::Tcp;
    const ABOUT: &'static str = "Monitored TCP proxy: forwards each client to an upstream (round robin over the healthy ones), with an optional pool of warm connections.";
    const KEYS: &'static [Key] = &[
        form::LISTEN,
        Key::new("max_connections", "max-connections", Unit::Count, "Concurrent client connections; more are refused (default 1024)."),
        Key::new("idle_timeout", "idle-timeout", Unit::Duration, "Close connections idle in both directions this long (default 5m)."),
        Key::new("upstreams", "upstream", Unit::Addrs, "Upstream host:port (repeat for several; round robin). The proxy's own listening address is refused.")
            .short('u')
            .start_required(),
        Key::new("preconnect", "preconnect", Unit::Count, "Keep N established connections warm per upstream (bb8 pool)."),
        Key::new("connect_timeout", "upstream-connect-timeout", Unit::Duration, "Upstream connect timeout (default 5s). --connect-timeout is still accepted here; netctl's own goes before the command.")
            .alias("connect-timeout"),
        Key::new("upstream_backoff", "upstream-backoff", Unit::Duration, "Skip an upstream whose connect failed for this long (default 10s)."),
        Key::new("resolve_interval", "resolve-interval", Unit::Duration, "Resolve upstreams given by host name again this often; a failed lookup keeps the last address (default 30s)."),
        form::ACCESS_LOG,
        form::FAULTS,
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
        Ok(proto::ProxySpec {
            listen: form::text(t, "listen")?,
            upstreams: form::strings(t, "upstreams")?,
            preconnect: form::u32(t, "preconnect")?,
            connect_timeout: form::duration(t, "connect_timeout")?,
            idle_timeout: form::duration(t, "idle_timeout")?,
            max_connections: form::u32(t, "max_connections")?,
            upstream_backoff: form::duration(t, "upstream_backoff")?,
            resolve_interval: form::duration(t, "resolve_interval")?,
            access_log: form::opt_bool(t, "access_log")?,
            faults: super::read_faults(t)?,
            tls: crate::spec::tls::read_server(t)?,
            upstream_tls: crate::spec::tls::read_client(t)?,
        })
    }

    fn write_config(spec: &Self::Spec, t: &mut crate::spec::Table) -> Result<(), String> {
        let proto::ProxySpec {
            listen,
            upstreams,
            preconnect,
            connect_timeout,
            idle_timeout,
            max_connections,
            upstream_backoff,
            resolve_interval,
            access_log,
            faults,
            tls,
            upstream_tls,
        } = spec;
        t.string("listen", listen);
        if !upstreams.is_empty() {
            let list = upstreams
                .iter()
                .map(|u| toml::Value::String(u.clone()))
                .collect();
            t.line("upstreams", toml::Value::Array(list));
        }
        t.u64("preconnect", (*preconnect).into())?;
        t.duration("connect_timeout", connect_timeout)?;
        t.duration("idle_timeout", idle_timeout)?;
        t.u64("max_connections", (*max_connections).into())?;
        t.duration("upstream_backoff", upstream_backoff)?;
        t.duration("resolve_interval", resolve_interval)?;
        t.opt_bool("access_log", *access_log);
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

    /// The counters (connect failures, pool hits and misses, lookups)
    /// are the listener's, and so are the health, counters and last error
    /// of each upstream that stays in the spec (matched as written): one
    /// marked down stays down until its backoff ends or a connect
    /// succeeds. Pools are the generation's (their size may change).
    fn carry_over(&mut self, prev: &Self) {
        self.counters = prev.counters.clone();
        self.tls.carry_over(&prev.tls);
        carry_states(&mut self.upstreams, &prev.upstreams);
    }

    fn effective_spec(&self, shown: &Self::Spec) -> Self::Spec {
        use super::effective_duration as dur;
        proto::ProxySpec {
            tls: shown
                .tls
                .as_ref()
                .map(crate::net::tls::ServedTls::effective),
            connect_timeout: dur(&shown.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
            idle_timeout: dur(&shown.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            max_connections: super::effective_max_connections(shown.max_connections),
            upstream_backoff: dur(&shown.upstream_backoff, DEFAULT_UPSTREAM_BACKOFF),
            resolve_interval: dur(&shown.resolve_interval, resolve::DEFAULT_RESOLVE_INTERVAL),
            access_log: Some(shown.access_log.unwrap_or(true)),
            ..shown.clone()
        }
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(self.listen)
    }

    /// Refuse a spec whose upstream is the address the proxy was bound to
    /// (see [`check_not_self`]); run once the listener is bound, so a
    /// listener on port 0 is checked too.
    fn check_bound(&self, local: SocketAddr) -> Result<(), SpecError> {
        check_not_self(local, self.upstreams.iter().map(|u| u.addr.get()))
    }

    /// One socket per per-core worker (a SO_REUSEPORT group).
    fn sockets(&self) -> usize {
        workers::socket_count()
    }

    async fn run(
        self: Arc<Self>,
        socket: Sockets<TcpListener>,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        self.run_on(socket, ctx).await
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::Proxy(self.stats()))
    }

    fn tls_stats(&self) -> Option<proto::TlsStats> {
        self.tls.stats()
    }

    /// Two per connection (client and upstream), and the warm pool.
    fn descriptors(spec: &Self::Spec, _budget: &crate::net::fd_budget::Budget) -> u64 {
        2 * super::fd_cost::connections(spec.max_connections) + u64::from(spec.preconnect)
    }

    fn faults(spec: &Self::Spec) -> Option<(&Vec<proto::Fault>, crate::fault::Target)> {
        Some((&spec.faults, crate::fault::Target::Tcp))
    }

    fn faults_mut(spec: &mut Self::Spec) -> Option<&mut Vec<proto::Fault>> {
        Some(&mut spec.faults)
    }
}

/// Keep the upstreams given by host name resolved, every `interval`
/// (never returns; see [`resolve::keep_resolved`]): an address that would
/// loop back to the listener bound at `bound` is refused, and an upstream
/// whose address moved is put back in rotation (a failure at the old
/// address says nothing about the new one). Shared with the http-proxy.
pub(crate) async fn keep_upstreams_resolved(
    upstreams: &[Arc<Upstream>],
    bound: Option<SocketAddr>,
    resolver: &dyn Resolver,
    interval: Duration,
    counters: resolve::Counters<'_>,
    listener: &str,
) {
    let allowed = move |a: SocketAddr| match bound {
        Some(b) => check_not_self(b, std::iter::once(a)).map_err(|e| e.message),
        None => Ok(()),
    };
    let moved = |addr: &UpstreamAddr| {
        for u in upstreams {
            if std::ptr::eq(&*u.addr, addr) {
                u.mark_up();
            }
        }
    };
    resolve::keep_resolved(
        Keeper::new(upstreams.iter().map(|u| u.addr.clone())),
        resolver,
        interval,
        counters,
        &allowed,
        &moved,
        listener,
    )
    .await;
}

/// Each upstream that stays in the spec (matched as written, once) keeps
/// its health, counters and last error.
pub(crate) fn carry_states(new: &mut [Arc<Upstream>], prev: &[Arc<Upstream>]) {
    let mut taken = vec![false; prev.len()];
    for u in new {
        let found = prev
            .iter()
            .enumerate()
            .find(|(i, p)| !taken[*i] && p.given == u.given);
        if let (Some((i, p)), Some(u)) = (found, Arc::get_mut(u)) {
            taken[i] = true;
            u.state = p.state.clone();
        }
    }
}

/// An upstream that would connect the proxy to itself: it is refused
/// (also by the udp-proxy).
pub(crate) fn check_not_self(
    listen: SocketAddr,
    upstreams: impl Iterator<Item = SocketAddr>,
) -> Result<(), SpecError> {
    for up in upstreams {
        if loops_back(listen, up) {
            return Err(SpecError::new(format!(
                "upstream '{up}' is this proxy's own listening address ({listen}): \
                 every client would be proxied to the proxy itself"
            )));
        }
    }
    Ok(())
}

/// Whether connecting to `up` reaches a listener bound to `listen`: the
/// same port, and the same address or, for a wildcard listener of the same
/// family (IPv6 listeners are IPv6-only), an address of this host.
fn loops_back(listen: SocketAddr, up: SocketAddr) -> bool {
    use std::net::IpAddr;
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if listen.port() == 0 || listen.port() != up.port() {
        return false;
    }
    let (l, u) = (listen.ip(), canonical(up.ip()));
    if canonical(l) == u {
        return true;
    }
    // Binding succeeds only on an address this host has (or loopback).
    l.is_unspecified()
        && l.is_ipv4() == u.is_ipv4()
        && (u.is_loopback() || std::net::UdpSocket::bind((u, 0)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(upstreams: &[&str]) -> Proxy {
        let spec = proto::ProxySpec {
            listen: "127.0.0.1:0".into(),
            upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        };
        Proxy::from_spec(&spec, &Settings::default()).expect("a valid proxy spec")
    }

    /// An update carries each upstream's state to the upstream of the same
    /// address in the new spec, whatever its position, once; a new one
    /// starts fresh; the proxy's counters are shared.
    #[test]
    fn carry_over_matches_upstreams_as_written() {
        let old = proxy(&["127.0.0.1:1", "127.0.0.1:2"]);
        old.upstreams[0].mark_down(Duration::from_secs(600), "refused".into());
        old.counters.connect_failures.fetch_add(1, Relaxed);
        let mut new = proxy(&["127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:3"]);
        new.carry_over(&old);
        let now = Instant::now();
        assert!(Arc::ptr_eq(
            &new.upstreams[0].state,
            &old.upstreams[1].state
        ));
        assert!(Arc::ptr_eq(
            &new.upstreams[1].state,
            &old.upstreams[0].state
        ));
        assert!(!new.upstreams[1].healthy(now), "still down");
        // Listed twice: only one of them is the old upstream.
        assert!(!Arc::ptr_eq(
            &new.upstreams[2].state,
            &old.upstreams[0].state
        ));
        assert!(new.upstreams[2].healthy(now) && new.upstreams[3].healthy(now));
        assert_eq!(new.stats().connect_failures, 1);
        assert_eq!(new.stats().upstreams[1].connect_failures, 1);
        assert_eq!(new.stats().upstreams[1].last_error, "refused");
    }
}
