//! The monitored TCP proxy: each accepted client is joined to one upstream
//! and bytes are forwarded both ways until both sides have finished.
//!
//! - Upstream choice: round robin over the healthy upstreams. A connect
//!   that fails or times out marks that upstream unhealthy for
//!   `upstream_backoff` (passive health) and the next one is tried; when all
//!   are unhealthy, they are tried anyway rather than refusing the client.
//! - Pre-connect (`preconnect` > 0): a bb8 pool per upstream keeps that many
//!   established connections warm ([`crate::pool`]). A client takes a warm
//!   one when there is one (checked on checkout, so a connection the upstream
//!   has closed is discarded, never handed out) and otherwise connects on
//!   demand; it never waits for the pool.
//! - Forwarding: two copy loops in one task, so neither direction can block
//!   the other. EOF on one side becomes a half-close (shutdown of the write
//!   side) on the other; a reset or error on one side becomes a reset
//!   (SO_LINGER 0) on the other. Read buffers (64 KiB) are borrowed only
//!   while data flows, so an idle connection holds no buffer; a few freed
//!   ones are kept per thread, the rest are unmapped on drop (see
//!   [`BUF_SIZE`]), so a burst of exchanges leaves no buffer memory behind.
//! - An upstream that is the proxy's own listening address (the same
//!   address and port, or a local address on the listening port of a
//!   wildcard listener) is refused at start: each client would be joined to
//!   the proxy itself, one more connection per hop, until the connection
//!   limit ends the chain. Checked on the spec and again on the address
//!   actually bound (for port 0).
//! - Upstreams given by host name are resolved again every
//!   `resolve_interval`, off the runtime ([`crate::resolve`]): new
//!   connections (and new warm ones) go to the latest answer, open ones stay
//!   where they are, and a failed lookup keeps the last good address.
//! - Every closed connection is logged at info level (target `netd::access`)
//!   with client, upstream, bytes each way, duration and how it ended.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ServiceCtx, SpecError, duration_field,
    listen_field,
};
use crate::pool::{self, TakeConnection, TcpPool};
use crate::proto;
use crate::resolve::{self, Keeper, Resolver, UpstreamAddr};
use crate::stats::Stats;

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
/// Read buffer per direction, borrowed only while data flows. netd's
/// `main` makes blocks this large come from mmap (see `tune_allocator`
/// there), so buffers beyond the free list go back to the kernel when
/// dropped instead of staying resident in the heap after a burst.
pub const BUF_SIZE: usize = 64 * 1024;
/// Freed buffers kept per thread for the next exchange, so a steady stream
/// of connections maps none; at most 256 KiB per thread, less in practice
/// (a buffer is resident only as far as reads have filled it).
const FREE_PER_THREAD: usize = 4;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A forwarding buffer from this thread's free list, or a new one; on drop
/// it goes back to the list of the thread dropping it, or to the allocator
/// when the list is full.
struct CopyBuf(Vec<u8>);

impl CopyBuf {
    fn take() -> Self {
        let reused = FREE.with(|f| f.borrow_mut().pop());
        // Uninitialised capacity: no memset per burst.
        CopyBuf(reused.unwrap_or_else(|| Vec::with_capacity(BUF_SIZE)))
    }
}

impl Drop for CopyBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        // try_with: during thread teardown the list may be gone already.
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < FREE_PER_THREAD {
                f.push(buf);
            }
        });
    }
}

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

#[derive(Debug)]
struct Upstream {
    /// Where it is now; re-resolved when the spec gave a host name.
    addr: Arc<UpstreamAddr>,
    /// Skip this upstream until `base` + this many ms (passive health); 0
    /// while it is in rotation. An atomic: read for every client.
    down_until_ms: AtomicU64,
    base: Instant,
    connections: AtomicU64,
    connect_failures: AtomicU64,
    last_error: Mutex<String>,
    /// Built on first run (bb8 needs a runtime); kept across restarts.
    pool: OnceLock<TcpPool>,
}

impl Upstream {
    fn healthy(&self, now: Instant) -> bool {
        let until = self.down_until_ms.load(Relaxed);
        until == 0 || self.base + Duration::from_millis(until) <= now
    }

    fn mark_down(&self, backoff: Duration, error: String) {
        let until = (self.base.elapsed() + backoff).as_millis().max(1) as u64;
        self.down_until_ms.store(until, Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
        self.connect_failures.fetch_add(1, Relaxed);
    }

    fn mark_up(&self) {
        if self.down_until_ms.load(Relaxed) != 0 {
            self.down_until_ms.store(0, Relaxed);
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
}

/// What connecting a client to an upstream came to.
enum Connected<'a> {
    To(TcpStream, &'a Upstream),
    /// The upstream took the connection and reset it at once.
    Reset(&'a Upstream),
    /// No upstream could be reached (or netd is closing connections).
    Nowhere,
}

/// How a proxied connection ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    IdleTimeout,
    ClosedByNetd,
    ClientReset,
    UpstreamReset,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Done => "closed",
            End::IdleTimeout => "idle timeout",
            End::ClosedByNetd => "closed by netd",
            End::ClientReset => "client error/reset",
            End::UpstreamReset => "upstream error/reset",
        }
    }
}

impl Proxy {
    pub fn from_spec(spec: &proto::ProxySpec) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        if spec.upstreams.is_empty() {
            return Err(SpecError(
                "at least one upstream is required (host:port)".into(),
            ));
        }
        if spec.upstreams.len() > MAX_UPSTREAMS {
            return Err(SpecError(format!("at most {MAX_UPSTREAMS} upstreams")));
        }
        let mut upstreams = Vec::with_capacity(spec.upstreams.len());
        for u in &spec.upstreams {
            let addr = listen_field("upstream", u)?;
            if addr.port() == 0 {
                return Err(SpecError(format!(
                    "upstream '{u}': port 0 cannot be connected to"
                )));
            }
            if addr.ip().is_unspecified() {
                return Err(SpecError(format!(
                    "upstream '{u}': {} is not an address to connect to",
                    addr.ip()
                )));
            }
            let addr = if UpstreamAddr::is_name(u) {
                UpstreamAddr::named(u.trim(), addr)
            } else {
                UpstreamAddr::literal(addr)
            };
            upstreams.push(Arc::new(Upstream {
                addr: Arc::new(addr),
                down_until_ms: AtomicU64::new(0),
                base: Instant::now(),
                connections: AtomicU64::new(0),
                connect_failures: AtomicU64::new(0),
                last_error: Mutex::new(String::new()),
                pool: OnceLock::new(),
            }));
        }
        if listen.port() != 0 {
            check_not_self(listen, upstreams.iter().map(|u| u.addr.get()))?;
        }
        if spec.preconnect > MAX_PRECONNECT {
            return Err(SpecError(format!(
                "preconnect is {}; the limit is {MAX_PRECONNECT}",
                spec.preconnect
            )));
        }
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
        })
    }

    /// Refuse a spec whose upstream is the address the proxy was bound to
    /// (see [`check_not_self`]); run once the listener is bound, so a
    /// listener on port 0 is checked too.
    pub fn check_bound(&self, bound: SocketAddr) -> Result<(), SpecError> {
        check_not_self(bound, self.upstreams.iter().map(|u| u.addr.get()))
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
                .map(|u| proto::UpstreamStatus {
                    addr: u.addr.to_string(),
                    healthy: u.healthy(now),
                    connections: u.connections.load(Relaxed),
                    connect_failures: u.connect_failures.load(Relaxed),
                    last_error: u
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                    pool_idle: u
                        .pool
                        .get()
                        .map(|p| p.state().idle_connections)
                        .unwrap_or(0),
                })
                .collect(),
        }
    }

    pub async fn run(
        self: &Arc<Self>,
        listener: TcpListener,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
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
        let accept = super::accept_loop(&listener, &ctx, &self.limit, |client, peer| {
            let proxy = self.clone();
            let ctx = ctx.clone();
            async move { proxy.serve(client, peer, &ctx).await }
        });
        // Named upstreams are resolved again while the proxy accepts; the
        // lookups themselves run on the blocking pool.
        let bound = listener.local_addr().ok();
        let allowed = move |a: SocketAddr| match bound {
            Some(b) => check_not_self(b, std::iter::once(a)).map_err(|e| e.0),
            None => Ok(()),
        };
        // The new address gets a chance: a failure at the old one says
        // nothing about it.
        let moved = |addr: &UpstreamAddr| {
            for u in &self.upstreams {
                if std::ptr::eq(&*u.addr, addr) {
                    u.mark_up();
                }
            }
        };
        let keep = resolve::keep_resolved(
            Keeper::new(self.upstreams.iter().map(|u| u.addr.clone())),
            &*self.resolver,
            self.resolve_interval,
            resolve::Counters {
                failures: &self.counters.resolve_failures,
                resolves: &self.counters.resolves,
            },
            &allowed,
            &moved,
            &ctx.name,
        );
        tokio::select! {
            r = accept => r,
            () = keep => unreachable!("keep_resolved never returns"),
        }
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
        let (mut upstream, u) = match Box::pin(self.connect(ctx)).await {
            Connected::To(s, u) => (s, u),
            Connected::Reset(u) => {
                u.connections.fetch_add(1, Relaxed);
                abort(&client);
                tracing::info!(
                    target: "netd::access",
                    listener = %ctx.name,
                    client = %peer,
                    upstream = %u.addr,
                    bytes_up = 0,
                    bytes_down = 0,
                    duration_ms = began.elapsed().as_millis() as u64,
                    end = End::UpstreamReset.as_str(),
                    "proxied connection closed"
                );
                return;
            }
            Connected::Nowhere => {
                Stats::add(&ctx.stats.errors, 1);
                tracing::info!(target: "netd::access", listener = %ctx.name, client = %peer, "no upstream reachable; closing client");
                // A prompt, clean close: the client sees EOF at once. What it
                // already sent is drained (briefly), so the close is a FIN and
                // not a reset.
                let _ = client.shutdown().await;
                let mut drain = super::Drain::new(REFUSED_DRAIN_QUIET, REFUSED_DRAIN_TIME);
                let drained = std::future::poll_fn(|cx| drain.poll_drain(&client, cx));
                tokio::select! {
                    _ = drained => {}
                    _ = ctx.close_connections.cancelled() => {}
                }
                return;
            }
        };
        u.connections.fetch_add(1, Relaxed);
        let up = AtomicU64::new(0);
        let down = AtomicU64::new(0);
        let end = self.pipe(&mut client, &mut upstream, ctx, &up, &down).await;
        match end {
            // Propagate a reset: abort the other side instead of a clean FIN.
            End::ClientReset => abort(&upstream),
            End::UpstreamReset => abort(&client),
            _ => {}
        }
        tracing::info!(
            target: "netd::access",
            listener = %ctx.name,
            client = %peer,
            upstream = %u.addr,
            bytes_up = up.load(Relaxed),
            bytes_down = down.load(Relaxed),
            duration_ms = began.elapsed().as_millis() as u64,
            end = end.as_str(),
            "proxied connection closed"
        );
    }

    /// Forward both ways until both directions are done, one side fails, the
    /// connection idles out, or netd closes it.
    async fn pipe(
        &self,
        client: &mut TcpStream,
        upstream: &mut TcpStream,
        ctx: &ServiceCtx,
        up: &AtomicU64,
        down: &AtomicU64,
    ) -> End {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let activity = Activity::new();
        let c2u = copy(cr, uw, &activity, &ctx.stats.bytes_in, up);
        let u2c = copy(ur, cw, &activity, &ctx.stats.bytes_out, down);
        // One timer, re-armed while traffic moves; boxed because tokio's
        // Sleep is large and would otherwise be padded into every task.
        let idle = async {
            let sleep = tokio::time::sleep_until(activity.last() + self.idle_timeout);
            tokio::pin!(sleep);
            loop {
                (&mut sleep).await;
                if super::idle_expired(sleep.as_mut(), activity.last(), self.idle_timeout) {
                    return;
                }
            }
        };
        let idle = Box::pin(idle);
        // Polled by hand rather than with select!/try_join!, whose nested
        // async blocks would store each copy future more than once and
        // roughly triple the size of every connection's task.
        let mut c2u = std::pin::pin!(c2u);
        let mut u2c = std::pin::pin!(u2c);
        let mut idle = idle;
        let mut closed = super::CancelWatch::new(&ctx.close_connections);
        let (mut c2u_done, mut u2c_done) = (false, false);
        std::future::poll_fn(|cx| {
            use std::task::Poll;
            if !c2u_done {
                match c2u.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => c2u_done = true,
                    Poll::Ready(Err(Side::Reader)) => return Poll::Ready(End::ClientReset),
                    Poll::Ready(Err(Side::Writer)) => return Poll::Ready(End::UpstreamReset),
                    Poll::Pending => {}
                }
            }
            if !u2c_done {
                match u2c.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => u2c_done = true,
                    Poll::Ready(Err(Side::Reader)) => return Poll::Ready(End::UpstreamReset),
                    Poll::Ready(Err(Side::Writer)) => return Poll::Ready(End::ClientReset),
                    Poll::Pending => {}
                }
            }
            if c2u_done && u2c_done {
                return Poll::Ready(End::Done);
            }
            if idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::IdleTimeout);
            }
            if closed.poll_cancelled(cx).is_ready() {
                return Poll::Ready(End::ClosedByNetd);
            }
            Poll::Pending
        })
        .await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Reader,
    Writer,
}

/// Copy one direction until EOF (then half-close the writer) or an error
/// (which side failed is returned). Waits for readability before borrowing
/// a buffer, so a silent connection holds none. A direction whose reads
/// fill the whole buffer is a bulk transfer: it switches to splice(2)
/// through a pipe, so the bytes move socket to socket inside the kernel
/// without being copied through user space.
async fn copy(
    mut r: ReadHalf<'_>,
    mut w: WriteHalf<'_>,
    activity: &Activity,
    total: &AtomicU64,
    mine: &AtomicU64,
) -> Result<(), Side> {
    let mut pipe: Option<Pipe> = None;
    loop {
        r.readable().await.map_err(|_| Side::Reader)?;
        if let Some(p) = &pipe {
            // Boxed: its state exists only during a burst, not in every idle
            // connection's task.
            match Box::pin(splice_burst(&r, &w, p, activity, total, mine)).await? {
                Burst::Drained => continue,
                Burst::Eof => {
                    pass_on_eof(&mut w, activity).await;
                    return Ok(());
                }
            }
        }
        let mut held = CopyBuf::take();
        let buf = &mut held.0;
        loop {
            buf.clear();
            // AsyncRead rather than try_read: on a short read tokio marks
            // the socket drained, which saves the recv that would only
            // have returned EAGAIN (one per direction per exchange).
            let n = match r.read_buf(buf).await {
                Ok(0) => {
                    pass_on_eof(&mut w, activity).await;
                    return Ok(());
                }
                Ok(n) => n,
                Err(_) => return Err(Side::Reader),
            };
            w.write_all(&buf[..n]).await.map_err(|_| Side::Writer)?;
            Stats::add(total, n as u64);
            mine.fetch_add(n as u64, Relaxed);
            activity.touch();
            if n < BUF_SIZE {
                // Drained: wait for more without holding the buffer.
                break;
            }
            if pipe.is_none() {
                // A full buffer: bulk data. Splice from here on (if a pipe
                // can be had; otherwise keep copying).
                pipe = Pipe::new().ok();
                if pipe.is_some() {
                    break;
                }
            }
        }
    }
}

/// The reader finished sending: pass that on as a half-close. When the
/// other direction has already finished, both sockets are about to be
/// closed, and close(2) sends the same FIN without a shutdown(2) first.
async fn pass_on_eof(w: &mut WriteHalf<'_>, activity: &Activity) {
    if !activity.finish_direction() {
        let _ = w.shutdown().await;
    }
}

enum Burst {
    /// The socket has nothing more to read for now.
    Drained,
    /// The peer closed its side.
    Eof,
}

/// Move what the reader has, through the pipe, to the writer.
async fn splice_burst(
    r: &ReadHalf<'_>,
    w: &WriteHalf<'_>,
    pipe: &Pipe,
    activity: &Activity,
    total: &AtomicU64,
    mine: &AtomicU64,
) -> Result<Burst, Side> {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let (rs, ws): (&TcpStream, &TcpStream) = (r.as_ref(), w.as_ref());
    loop {
        let n = match rs.try_io(Interest::READABLE, || {
            splice(rs.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE)
        }) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(_) => return Err(Side::Reader),
        };
        // The pipe was empty and now holds n bytes: push them all out
        // before reading more, so it never fills.
        let mut left = n;
        while left > 0 {
            ws.writable().await.map_err(|_| Side::Writer)?;
            match ws.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), ws.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Side::Writer),
            }
        }
        Stats::add(total, n as u64);
        mine.fetch_add(n as u64, Relaxed);
        activity.touch();
    }
}

/// Pipe capacity asked for (the kernel's default pipe-max-size), and so the
/// most bytes moved per splice(2); a pipe that cannot grow keeps 64 KiB.
const PIPE_SIZE: usize = 1024 * 1024;

/// A non-blocking pipe for splicing one direction of a connection.
struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        use std::os::fd::FromRawFd;
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills two descriptors that we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Best effort: fewer, larger splices. Pages are only used while
        // data sits in the pipe.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        // SAFETY: both descriptors were just created and are owned here.
        Ok(unsafe {
            Pipe {
                read: std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                write: std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: splice(2) between descriptors we hold, no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// When a connection last moved data, shared by its two copy loops.
struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
    /// Directions that have reached EOF (0, 1 or 2).
    finished: AtomicU8,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            finished: AtomicU8::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Relaxed);
    }

    /// Note that one direction reached EOF; true when the other one had
    /// already.
    fn finish_direction(&self) -> bool {
        self.finished.fetch_add(1, Relaxed) == 1
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Relaxed))
    }
}

/// An upstream that would connect the proxy to itself: it is refused.
fn check_not_self(
    listen: SocketAddr,
    upstreams: impl Iterator<Item = SocketAddr>,
) -> Result<(), SpecError> {
    for up in upstreams {
        if loops_back(listen, up) {
            return Err(SpecError(format!(
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

/// Close with RST instead of FIN.
fn abort(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
