//! The hosted services and the interface the supervisor drives them through.
//!
//! A service is built from a validated spec ([`Service::from_spec`]), binds
//! its socket before StartListener returns ([`Service::bind`], so it can
//! report a port in use; both may block, so the supervisor calls them on
//! tokio's blocking pool), then runs until its `stop_accepting` token is
//! cancelled ([`Service::run`]). Connection tasks go on the context's
//! tracker so stop and shutdown can wait for them; they end early when
//! `close_connections` is cancelled. `run` returning an error (or
//! panicking) means the service failed, and the supervisor restarts it on
//! the same bound address.

pub mod client_key;
pub mod http;
pub mod proxy;
pub mod sniffer;
pub mod tcp_echo;
pub mod udp_echo;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addr::parse_listen_addr;
use crate::proto::{self, listener_spec::Kind};
use crate::stats::Stats;

/// Daemon-wide settings from the config that shape how services are built.
/// The supervisor holds one and passes it to every [`Service::from_spec`].
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The one directory pcap files may be written to (`capture_dir`); None
    /// when the config sets none and no default could be derived.
    pub capture_dir: Option<PathBuf>,
    /// netd's own UDP listening addresses, kept by the supervisor; the UDP
    /// echo drops datagrams from them (a spoofed one would start a loop).
    pub own_udp_addrs: crate::own_addrs::OwnAddrs,
}

/// What a running service receives from the supervisor.
#[derive(Clone, Debug)]
pub struct ServiceCtx {
    pub name: Arc<str>,
    pub stats: Arc<Stats>,
    /// Stop accepting new connections or datagrams and return from `run`.
    pub stop_accepting: CancellationToken,
    /// Close open connections now (stop, or shutdown after the grace period).
    pub close_connections: CancellationToken,
    /// Spawn connection tasks here; stop and shutdown wait for them.
    pub tracker: TaskTracker,
    /// For alerts a service raises.
    pub events: crate::events::EventBus,
}

/// A socket bound for a service, handed to [`Service::run`].
#[derive(Debug)]
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Udp(tokio::net::UdpSocket),
    Packet(sniffer::Capture),
}

impl Bound {
    /// A duplicate descriptor of the listening socket (TCP and UDP), kept
    /// by the supervisor so that an update can run a new service on the
    /// same socket and an upgrade can hand it over. None for a capture.
    pub fn dup_socket(&self) -> io::Result<Option<std::os::fd::OwnedFd>> {
        use std::os::fd::AsFd as _;
        match self {
            Bound::Tcp(l) => l.as_fd().try_clone_to_owned().map(Some),
            Bound::Udp(s) => s.as_fd().try_clone_to_owned().map(Some),
            Bound::Packet(_) => Ok(None),
        }
    }

    /// The socket address bound, for IP services.
    pub fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        match self {
            Bound::Tcp(l) => l.local_addr().map(Some),
            Bound::Udp(s) => s.local_addr().map(Some),
            Bound::Packet(_) => Ok(None),
        }
    }
}

/// A validated listener spec, ready to bind and run.
#[derive(Debug)]
pub enum Service {
    TcpEcho(tcp_echo::TcpEcho),
    UdpEcho(udp_echo::UdpEcho),
    Proxy(Arc<proxy::Proxy>),
    Http(Arc<http::Http>),
    Sniffer(Arc<sniffer::Sniffer>),
}

/// Why a spec was rejected; the message names the field and the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Why a bind failed, classified so the control plane can pick a status code.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{0} is already in use")]
    InUse(SocketAddr),
    #[error("permission denied binding {0} (ports below 1024 need root or CAP_NET_BIND_SERVICE)")]
    PermissionDenied(SocketAddr),
    #[error("cannot bind {0}: the address is not assigned to any interface on this host")]
    NotAvailable(SocketAddr),
    #[error("cannot bind {0}: {1}")]
    Other(SocketAddr, io::Error),
    /// Something the daemon lacks (a capability, a writable path).
    #[error("{0}")]
    Precondition(String),
}

impl BindError {
    fn from_io(addr: SocketAddr, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse(addr),
            io::ErrorKind::PermissionDenied => BindError::PermissionDenied(addr),
            io::ErrorKind::AddrNotAvailable => BindError::NotAvailable(addr),
            _ => BindError::Other(addr, e),
        }
    }
}

/// Default bound on concurrent connections per TCP listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default idle timeout for TCP connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Service {
    /// Validate `spec` against the daemon's `settings`. May block (an
    /// upstream name is resolved, interfaces are listed).
    pub fn from_spec(spec: &proto::ListenerSpec, settings: &Settings) -> Result<Self, SpecError> {
        check_common_bounds(spec)?;
        match &spec.kind {
            None => Err(SpecError(
                "the listener spec names no kind (tcp_echo, udp_echo, proxy, http, sniffer)".into(),
            )),
            Some(Kind::TcpEcho(s)) => Ok(Service::TcpEcho(tcp_echo::TcpEcho::from_spec(s)?)),
            Some(Kind::UdpEcho(s)) => {
                Ok(Service::UdpEcho(udp_echo::UdpEcho::from_spec(s, settings)?))
            }
            Some(Kind::Proxy(s)) => Ok(Service::Proxy(Arc::new(proxy::Proxy::from_spec(s)?))),
            Some(Kind::Http(s)) => Ok(Service::Http(Arc::new(http::Http::from_spec(s)?))),
            Some(Kind::Sniffer(s)) => Ok(Service::Sniffer(Arc::new(sniffer::Sniffer::from_spec(
                s, settings,
            )?))),
        }
    }

    pub fn kind(&self) -> proto::ListenerKind {
        match self {
            Service::TcpEcho(_) => proto::ListenerKind::TcpEcho,
            Service::UdpEcho(_) => proto::ListenerKind::UdpEcho,
            Service::Proxy(_) => proto::ListenerKind::Proxy,
            Service::Http(_) => proto::ListenerKind::Http,
            Service::Sniffer(_) => proto::ListenerKind::Sniffer,
        }
    }

    /// The address a spec asks for, if it is valid and binds one (port may
    /// be 0); for checks across listeners, such as clashing ports.
    pub fn spec_listen_addr(spec: &proto::ListenerSpec) -> Option<SocketAddr> {
        let listen = match &spec.kind {
            Some(Kind::TcpEcho(s)) => &s.listen,
            Some(Kind::UdpEcho(s)) => &s.listen,
            Some(Kind::Proxy(s)) => &s.listen,
            Some(Kind::Http(s)) => &s.listen,
            Some(Kind::Sniffer(_)) | None => return None,
        };
        parse_listen_addr(listen).ok()
    }

    /// The address the spec asked for (port may be 0); None for services
    /// that do not bind an IP address (the sniffer).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        match self {
            Service::TcpEcho(s) => Some(s.listen),
            Service::UdpEcho(s) => Some(s.listen),
            Service::Proxy(s) => Some(s.listen),
            Service::Http(s) => Some(s.listen),
            Service::Sniffer(_) => None,
        }
    }

    /// What a person should see as the bound address: the socket address,
    /// or the interface a sniffer captures on.
    pub fn describe_bound(&self, bound: Option<SocketAddr>) -> String {
        match (self, bound) {
            (Service::Sniffer(s), _) => s.interface.clone(),
            (_, Some(a)) => a.to_string(),
            (_, None) => String::new(),
        }
    }

    /// The spec as netd shows it: secrets (an HTTP token) replaced.
    pub fn redact(spec: &mut proto::ListenerSpec) {
        if let Some(Kind::Http(h)) = &mut spec.kind {
            if !h.token.is_empty() {
                h.token = http::REDACTED.to_string();
            }
        }
    }

    /// The spec as netd reports it back: secrets redacted, and a sniffer's
    /// pcap path as resolved in capture_dir.
    pub fn shown_spec(&self, mut spec: proto::ListenerSpec) -> proto::ListenerSpec {
        Self::redact(&mut spec);
        if let (Service::Sniffer(s), Some(Kind::Sniffer(k))) = (self, &mut spec.kind) {
            if let Some(p) = s.pcap_path() {
                k.pcap_path = p.to_string_lossy().into_owned();
            }
        }
        spec
    }

    /// Kind-specific counters for the stats message, if the kind has any.
    pub fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        match self {
            Service::Proxy(p) => Some(proto::listener_stats::Detail::Proxy(p.stats())),
            Service::Http(h) => Some(proto::listener_stats::Detail::Http(h.stats())),
            Service::Sniffer(s) => Some(proto::listener_stats::Detail::Sniffer(s.stats())),
            Service::UdpEcho(u) => Some(proto::listener_stats::Detail::UdpEcho(u.stats())),
            Service::TcpEcho(_) => None,
        }
    }

    /// Bind the service's socket, at `addr` when given (a restart rebinds
    /// the address first bound) or else where the spec says. Must be called
    /// within a tokio runtime, off its workers: a sniffer's bind opens its
    /// pcap file.
    pub fn bind(&self, addr: Option<SocketAddr>) -> Result<Bound, BindError> {
        if let Service::Sniffer(s) = self {
            return s.open().map(Bound::Packet);
        }
        let addr = addr
            .or(self.listen_addr())
            .ok_or_else(|| BindError::Precondition("nothing to bind".into()))?;
        match self {
            Service::UdpEcho(_) => bind_udp(addr).map(Bound::Udp),
            _ => bind_tcp(addr).map(Bound::Tcp),
        }
        .map_err(|e| BindError::from_io(addr, e))
    }

    /// Take over an already bound socket instead of binding one: the
    /// socket of the listener this service replaces in place, or one handed
    /// over by a previous netd (`--upgrade`, systemd's fd store). The
    /// socket must be of the service's type (a listening TCP socket, or a
    /// UDP socket); with `expect_addr`, also bound where the spec asks (an
    /// inherited socket from an older config may not be). A sniffer opens
    /// a new capture instead.
    pub fn adopt(&self, fd: std::os::fd::OwnedFd, expect_addr: bool) -> Result<Bound, BindError> {
        use socket2::{Socket, Type};
        let want = match self {
            Service::Sniffer(_) => return self.bind(None),
            Service::UdpEcho(_) => Type::DGRAM,
            _ => Type::STREAM,
        };
        let spec_addr = self
            .listen_addr()
            .ok_or_else(|| BindError::Precondition("nothing to bind".into()))?;
        let socket = Socket::from(fd);
        let bad = |why: String| {
            BindError::Precondition(format!(
                "cannot take over the socket for {spec_addr}: {why}"
            ))
        };
        let ty = socket.r#type().map_err(|e| bad(e.to_string()))?;
        if ty != want {
            return Err(bad("it is not of the listener's type".into()));
        }
        if want == Type::STREAM && !socket.is_listener().map_err(|e| bad(e.to_string()))? {
            return Err(bad("it is not listening".into()));
        }
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| bad("it has no IP address".into()))?;
        if expect_addr
            && (local.ip() != spec_addr.ip()
                || (spec_addr.port() != 0 && local.port() != spec_addr.port()))
        {
            return Err(bad(format!("it is bound to {local}")));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| BindError::from_io(local, e))?;
        let r = if want == Type::DGRAM {
            tokio::net::UdpSocket::from_std(socket.into()).map(Bound::Udp)
        } else {
            tokio::net::TcpListener::from_std(socket.into()).map(Bound::Tcp)
        };
        r.map_err(|e| BindError::from_io(local, e))
    }

    /// Checks that need the address actually bound (port 0 resolved): a
    /// proxy must not have itself as an upstream.
    pub fn check_bound(&self, bound: &Bound) -> Result<(), SpecError> {
        match (self, bound.local_addr()) {
            (Service::Proxy(p), Ok(Some(addr))) => p.check_bound(addr),
            _ => Ok(()),
        }
    }

    pub async fn run(self: Arc<Self>, bound: Bound, ctx: ServiceCtx) -> anyhow::Result<()> {
        match (&*self, bound) {
            (Service::TcpEcho(s), Bound::Tcp(l)) => s.run(l, ctx).await,
            (Service::UdpEcho(s), Bound::Udp(u)) => s.run(u, ctx).await,
            (Service::Proxy(s), Bound::Tcp(l)) => s.run(l, ctx).await,
            (Service::Http(s), Bound::Tcp(l)) => s.run(l, ctx).await,
            (Service::Sniffer(s), Bound::Packet(c)) => s.run(c, ctx).await,
            _ => anyhow::bail!("internal error: socket type does not match the service"),
        }
    }
}

/// The range any duration in a listener spec must fall in unless its field
/// says narrower (see [`duration_in`]): long enough for every timeout and
/// window netd has, short enough that adding it to a clock reading can
/// never overflow.
pub const DURATION_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(7 * 24 * 3600);

/// A duration field: unset means `default`; otherwise it must be within
/// [`DURATION_RANGE`] (1ms to 7 days).
pub(crate) fn duration_field(
    field: &str,
    value: &Option<prost_types::Duration>,
    default: Duration,
) -> Result<Duration, SpecError> {
    duration_in(field, value, default, DURATION_RANGE)
}

/// A duration field that must be within `range`; unset means `default`.
/// The error names the field and the bounds.
pub(crate) fn duration_in(
    field: &str,
    value: &Option<prost_types::Duration>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, SpecError> {
    let Some(d) = value else { return Ok(default) };
    let bounds = || {
        format!(
            "{} to {}",
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        )
    };
    let d = Duration::try_from(*d).map_err(|_| {
        SpecError(format!(
            "{field} must not be negative (it must be {})",
            bounds()
        ))
    })?;
    if d.is_zero() {
        return Err(SpecError(format!(
            "{field} must be greater than zero (it must be {})",
            bounds()
        )));
    }
    if !range.contains(&d) {
        return Err(SpecError(format!(
            "{field} is {}; it must be {}",
            humantime::format_duration(d),
            bounds()
        )));
    }
    Ok(d)
}

/// A size or count field: 0 means `default`; otherwise it must be within
/// `range`. The error names the field and the bounds.
pub(crate) fn size_in(
    field: &str,
    value: u64,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SpecError> {
    match value {
        0 => Ok(default),
        n if range.contains(&n) => Ok(n),
        n => Err(SpecError(format!(
            "{field} is {n}; it must be {} to {} (0 for the default, {default})",
            range.start(),
            range.end()
        ))),
    }
}

/// Largest `max_connections` of any TCP listener.
pub const MAX_MAX_CONNECTIONS: u64 = 1_000_000;

/// Bounds shared by several kinds, checked before the kind's own
/// validation so every entry point (config, StartListener) applies them.
fn check_common_bounds(spec: &proto::ListenerSpec) -> Result<(), SpecError> {
    let max_connections = match &spec.kind {
        Some(Kind::TcpEcho(s)) => s.max_connections,
        Some(Kind::Proxy(s)) => s.max_connections,
        Some(Kind::Http(s)) => s.max_connections,
        _ => 0,
    };
    size_in(
        "max_connections",
        u64::from(max_connections),
        DEFAULT_MAX_CONNECTIONS as u64,
        1..=MAX_MAX_CONNECTIONS,
    )?;
    if let Some(Kind::Sniffer(s)) = &spec.kind {
        size_in("pcap_max_bytes", s.pcap_max_bytes, 100 << 20, 1..=1 << 40)?;
        size_in("pcap_max_files", u64::from(s.pcap_max_files), 3, 1..=1000)?;
    }
    Ok(())
}

pub(crate) fn listen_field(field: &str, value: &str) -> Result<SocketAddr, SpecError> {
    if value.trim().is_empty() {
        return Err(SpecError(format!(
            "{field} is required (host:port, e.g. 127.0.0.1:8080)"
        )));
    }
    parse_listen_addr(value).map_err(|e| SpecError(format!("{field}: {e}")))
}

/// Backlog for TCP listening sockets.
const BACKLOG: i32 = 1024;

fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Every TCP service wants Nagle off on its connections. Set on the
    // listening socket, it is inherited by each accepted socket (Linux and
    // the BSDs copy TCP_NODELAY from the listener), which saves a
    // setsockopt(2) per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// For a per-connection idle timer that is re-armed only when it fires
/// (reads and writes just note the time): true if the connection really
/// has been idle for `limit` since `last`; otherwise the timer is re-armed
/// for `last + limit`.
pub(crate) fn idle_expired(
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    last: tokio::time::Instant,
    limit: Duration,
) -> bool {
    let due = last + limit;
    if tokio::time::Instant::now() >= due {
        return true;
    }
    timer.reset(due);
    false
}

/// Discards what a peer still sends after netd has shut its write side, so
/// that the close which follows sends a FIN rather than a reset. Linux
/// resets a connection closed with unread input, and a reset can destroy
/// the last reply before the peer reads it. Ends at EOF or a read error, at
/// `quiet` without data, or at `total` in all.
pub(crate) struct Drain {
    quiet: Duration,
    end: tokio::time::Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Drain {
    pub(crate) fn new(quiet: Duration, total: Duration) -> Drain {
        let now = tokio::time::Instant::now();
        Drain {
            quiet,
            end: now + total,
            timer: Box::pin(tokio::time::sleep_until(now + quiet.min(total))),
        }
    }

    pub(crate) fn poll_drain(
        &mut self,
        stream: &tokio::net::TcpStream,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::future::Future;
        use std::task::Poll;
        let mut scratch = [0u8; 8192];
        // Bounded per poll: a peer sending flat out cannot hold the worker.
        for _ in 0..64 {
            match stream.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {
                    let now = tokio::time::Instant::now();
                    if now >= self.end {
                        return Poll::Ready(());
                    }
                    self.timer.as_mut().reset((now + self.quiet).min(self.end));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    match stream.poll_read_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Ready(Ok(())) => {}
                    }
                }
                Err(_) => return Poll::Ready(()),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Waits for a token to be cancelled from a loop that polls often (per
/// accept, per read, per datagram) without paying for it each time.
///
/// `CancellationToken::cancelled()` registers a waiter under the token's
/// mutex, shared by every connection of a listener, and every poll of it
/// takes that lock again. This registers once, and later polls from the
/// same task only read the token's atomic flag: the registered waker wakes
/// the task when the token is cancelled. A poll with a different waker
/// registers again.
pub(crate) struct CancelWatch<'a> {
    token: &'a CancellationToken,
    waiter: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFuture<'a>>>,
    registered: Option<std::task::Waker>,
}

impl<'a> CancelWatch<'a> {
    pub(crate) fn new(token: &'a CancellationToken) -> Self {
        CancelWatch {
            token,
            waiter: Box::pin(token.cancelled()),
            registered: None,
        }
    }

    /// Ready once the token is cancelled.
    pub(crate) fn poll_cancelled(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::future::Future as _;
        use std::task::Poll;
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if self.waiter.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }

    /// A future for `select!` branches; the registration outlives it.
    pub(crate) fn cancelled(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_cancelled(cx))
    }
}

/// The accept loop shared by the TCP services: accept until
/// `stop_accepting`, backing off on transient errors (mini-redis style)
/// instead of spinning; refuse clients beyond `limit` at once (counted); run
/// each accepted connection as a task on the listener's tracker, holding its
/// permit and its `connections_active` slot for as long as it lives. Returns
/// an error only when the listening socket itself fails.
pub(crate) async fn accept_loop<F, Fut>(
    listener: &tokio::net::TcpListener,
    ctx: &ServiceCtx,
    limit: &Arc<tokio::sync::Semaphore>,
    mut handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use anyhow::Context as _;
    let mut backoff = Duration::from_millis(10);
    let mut stop = CancelWatch::new(&ctx.stop_accepting);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = Duration::from_millis(10);
                conn
            }
            Err(e) if is_transient_accept_error(&e) => {
                Stats::add(&ctx.stats.errors, 1);
                tracing::warn!(listener = %ctx.name, error = %e, "accept failed; backing off");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(e).context("accepting connections failed"),
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            Stats::add(&ctx.stats.connections_refused, 1);
            tracing::debug!(listener = %ctx.name, %peer, "connection limit reached; refusing");
            drop(stream);
            continue;
        };
        let guard = ctx.stats.connection();
        // Boxed: awaiting a future captured by an async block stores it
        // twice in the block's state; a box makes that second copy a
        // pointer (half the memory per idle connection).
        let task = Box::pin(handle(stream, peer));
        let stats = ctx.stats.clone();
        let name = ctx.name.clone();
        ctx.tracker.spawn(async move {
            let _permit = permit;
            let _guard = guard;
            contain_panic(task, &stats, &name).await;
        });
    }
}

/// Run a connection's (or an HTTP/2 stream's) task so that a panic in it
/// ends only that task: it is counted (`panics`, and `errors`) and logged
/// at most once per [`crate::stats::PANIC_LOG_INTERVAL`] per listener, and
/// the listener keeps serving.
pub(crate) async fn contain_panic<F: std::future::Future<Output = ()>>(
    task: F,
    stats: &Stats,
    name: &str,
) {
    use futures_util::FutureExt as _;
    if let Err(payload) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        if let Some(suppressed) = stats.record_panic() {
            tracing::error!(listener = name, panic = %what, suppressed, "a connection task panicked; the listener keeps serving");
        }
    }
}

/// Accept errors that concern one connection or a passing shortage (file
/// descriptors, memory) rather than the listening socket itself: back off and
/// keep accepting.
pub(crate) fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ETIMEDOUT
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_contained_counted_and_logged_once_per_interval() {
        let stats = Stats::new();
        for _ in 0..3 {
            contain_panic(async { panic!("boom") }, &stats, "t").await;
        }
        contain_panic(async {}, &stats, "t").await;
        assert_eq!(stats.panics.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 3);
        // Logged for the first; the next two fall in the same interval.
        let fresh = Stats::new();
        assert_eq!(fresh.record_panic(), Some(0));
        assert_eq!(fresh.record_panic(), None);
    }

    #[test]
    fn durations_beyond_their_range_are_refused() {
        let huge = Some(prost_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        });
        let e = duration_field("idle_timeout", &huge, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.0.starts_with("idle_timeout is ") && e.0.ends_with("; it must be 1ms to 7days"),
            "{e}"
        );
        let zero = Some(prost_types::Duration::default());
        assert!(duration_field("x", &zero, Duration::from_secs(1)).is_err());
        assert_eq!(
            duration_field("x", &None, Duration::from_secs(3)).unwrap(),
            Duration::from_secs(3)
        );
    }
}
