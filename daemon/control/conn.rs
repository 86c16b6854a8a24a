//! Control-plane connections: accepted under a cap, tagged with who the peer
//! is, and closed when idle.
//!
//! [`incoming_unix`] and [`incoming_tcp`] turn a listening socket into the
//! stream of connections tonic serves. Who gets in is decided by the
//! endpoint's [`Gate`] (see [`crate::control::admission`]): the caller is identified
//! first (peer credentials at accept on the Unix socket, the client
//! certificate after a TLS handshake run apart under its own cap and
//! deadline), and only then takes a slot. Each connection carries a
//! [`ConnInfo`] (tonic's `Connected::ConnectInfo`) with the caller and its
//! role and a count of the calls open on it. A connection with no call open for
//! `idle_timeout` is closed: that bounds what a client that connects and
//! then says nothing can hold.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::control::admission::{Gate, Reason, Slot, Source};
use crate::control::auth::{Caller, Peer, Policy, Role};
use crate::util::warn_limit::{DEFAULT_INTERVAL, RateLimitedWarn};

/// Per-connection state shared between the connection and its calls.
#[derive(Debug)]
pub struct ConnState {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Cancelled to close the connection from outside (an idle one making
    /// room on a full endpoint, see [`IdleConns`]).
    close: tokio_util::sync::CancellationToken,
    /// The connection's place at its endpoint: held here (not by the
    /// connection's task) so that making room gives it back at once.
    slot: Mutex<Option<Slot>>,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            close: tokio_util::sync::CancellationToken::new(),
            slot: Mutex::new(None),
        }
    }

    /// No call open on it for at least `grace`.
    fn idle_for(&self, grace: Duration) -> bool {
        self.active.load(Ordering::Relaxed) == 0
            && self
                .idle_since
                .lock()
                .elapsed()
                >= grace
    }

    /// Count a call open until the guard (held by its response body) drops.
    pub fn stream_started(self: &Arc<Self>) -> StreamGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// When the connection becomes closable for idleness, or `None` while
    /// a call is open.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(*self.idle_since.lock() + idle)
    }
}

/// Marks one call open on a connection.
#[derive(Debug)]
pub struct StreamGuard(Arc<ConnState>);

/// Control calls finished since the last [`take_calls_closed`]: a burst of
/// them (thousands of watch streams going away) is worth a heap trim.
static CALLS_CLOSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Calls closed since the previous call of this function.
pub fn take_calls_closed() -> u64 {
    CALLS_CLOSED.swap(0, Ordering::Relaxed)
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        CALLS_CLOSED.fetch_add(1, Ordering::Relaxed);
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.0.idle_since.lock() = Instant::now();
        }
    }
}

/// What tonic hands each request about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Arc<Peer>,
    /// Who the peer is and its role, decided at admission.
    pub caller: Caller,
    pub state: Arc<ConnState>,
}

/// A response body that keeps its call counted as open until it is done.
pub struct CountedBody {
    inner: tonic::body::Body,
    _guard: StreamGuard,
}

impl CountedBody {
    pub fn new(inner: tonic::body::Body, guard: StreamGuard) -> CountedBody {
        CountedBody {
            inner,
            _guard: guard,
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An accepted control connection.
pub struct ControlConn<IO> {
    io: IO,
    info: ConnInfo,
    closed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
}

impl<IO> ControlConn<IO> {
    fn new(io: IO, peer: Peer, caller: Caller, slot: Slot, idle_timeout: Duration) -> Self {
        let state = Arc::new(ConnState::new());
        *state.slot.lock() = Some(slot);
        ControlConn {
            io,
            closed: Box::pin(state.close.clone().cancelled_owned()),
            info: ConnInfo {
                peer: Arc::new(peer),
                caller,
                state,
            },
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
        }
    }

    /// Ready(()) once the connection has had no call open for the idle
    /// timeout; otherwise re-arms the timer (registering the waker).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.idle.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.info.state.idle_deadline(self.idle_timeout) {
                Some(deadline) if deadline <= now => return Poll::Ready(()),
                Some(deadline) => self.idle.as_mut().reset(deadline),
                None => self.idle.as_mut().reset(now + self.idle_timeout),
            }
        }
        Poll::Pending
    }
}

impl<IO> Drop for ControlConn<IO> {
    fn drop(&mut self) {
        // Calls still finishing may hold the state a moment longer; the
        // place is the connection's.
        self.info
            .state
            .slot
            .lock()
            .take();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ControlConn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "idle connection closed to make room",
            )));
        }
        if self.poll_idle(cx).is_ready() {
            tracing::debug!(peer = ?self.info.peer, "closing an idle control connection");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "control connection idle",
            )));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ControlConn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> tonic::transport::server::Connected for ControlConn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// What every connection of one endpoint gets: the admission rules, how
/// callers are given a role, TLS (on a TCP endpoint that has it) and the
/// idle timeout.
#[derive(Clone)]
pub struct Endpoint {
    pub gate: Gate,
    pub policy: Arc<Policy>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub idle_timeout: Duration,
    /// When set (the health endpoint), a connection refused because every
    /// slot is taken makes room by closing the oldest connection with no
    /// call open, instead: a prober's call takes milliseconds, so holding
    /// idle connections cannot keep probers out.
    pub idle_evict: Option<Arc<IdleConns>>,
}

/// The connections of an endpoint, oldest first, to find an idle one to
/// close when the endpoint is full.
#[derive(Debug, Default)]
pub struct IdleConns {
    conns: Mutex<std::collections::VecDeque<(Source, std::sync::Weak<ConnState>)>>,
}

impl IdleConns {
    fn push(&self, source: Source, state: &Arc<ConnState>) {
        let mut c = self.conns.lock();
        c.retain(|(_, w)| w.strong_count() > 0);
        c.push_back((source, Arc::downgrade(state)));
    }

    /// Make room for a connection from `source`: close the oldest
    /// connection that has had no call open for [`ROOM_GRACE`], of the
    /// source holding the most connections, provided it holds at least two
    /// more than `source` does; give its place back now. Whether one was
    /// closed.
    ///
    /// So a prober (holding none) displaces a client holding idle
    /// connections, while clients holding about as many as each other
    /// cannot take turns displacing each other's (which would keep every
    /// connection young, and a newcomer out); and a connection just made,
    /// or just done with a call, is left the time to make it.
    fn make_room(&self, gate: &Gate, source: Source) -> bool {
        let mut c = self.conns.lock();
        c.retain(|(_, w)| w.strong_count() > 0);
        let mine = gate.held_by(source);
        let mut best: Option<(usize, usize)> = None; // (held, index)
        for (i, (src, w)) in c.iter().enumerate() {
            let Some(state) = w.upgrade() else { continue };
            if !state.idle_for(ROOM_GRACE) || state.close.is_cancelled() {
                continue;
            }
            let held = gate.held_by(*src);
            if held > mine + 1 && best.is_none_or(|(h, _)| held > h) {
                best = Some((held, i));
            }
        }
        match best
            .and_then(|(_, i)| c.remove(i))
            .and_then(|(_, w)| w.upgrade())
        {
            Some(state) => {
                state.close.cancel();
                state.slot.lock().take();
                true
            }
            None => false,
        }
    }
}

/// A connection is closed to make room only after this long with no call
/// open.
const ROOM_GRACE: Duration = Duration::from_secs(1);

/// Pause after an accept error (e.g. out of descriptors) so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// One rate-limited warning for every accept loop's errors.
static ACCEPT_ERRORS: RateLimitedWarn = RateLimitedWarn::new(DEFAULT_INTERVAL);

fn accept_failed(endpoint: &str, e: &io::Error) {
    if let Some(suppressed) = ACCEPT_ERRORS.hit() {
        tracing::warn!(endpoint, error = %e, suppressed, "accepting a connection failed");
    }
}

/// Connections on the Unix control socket, with their peer credentials.
/// The caller is known at accept, so the admission decision is too.
pub fn incoming_unix(
    listener: tokio::net::UnixListener,
    ep: Endpoint,
) -> impl Stream<Item = io::Result<ControlConn<tokio::net::UnixStream>>> {
    futures_util::stream::unfold((listener, ep), |(l, ep)| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let peer = match unix_peer(&s) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot read a control peer's credentials; closing");
                            continue;
                        }
                    };
                    let Peer::Unix { uid, .. } = peer else {
                        continue;
                    };
                    let caller = ep.policy.caller(&peer, false, None);
                    if let Some(slot) = ep.gate.admit(Source::Uid(uid), caller.role == Role::Admin)
                    {
                        let c = ControlConn::new(s, peer, caller, slot, ep.idle_timeout);
                        return Some((Ok(c), (l, ep)));
                    }
                }
                Err(e) => {
                    accept_failed(ep.gate.endpoint(), &e);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
}

/// Connections on a TCP endpoint (control, health), accepted by a task of
/// their own. The source of each is a loopback peer's uid
/// ([`crate::control::peer_uid`]), so that local users are capped apart though all
/// come from 127.0.0.1, or else its address; on TLS, the handshake runs on
/// a task of its own under the gate's handshake rules. Only connections
/// whose caller is known are handed to the server.
pub fn incoming_tcp(
    listener: tokio::net::TcpListener,
    ep: Endpoint,
) -> impl Stream<Item = io::Result<ControlConn<TcpOrTls>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                r = listener.accept() => r,
            };
            let (s, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(ep.gate.endpoint(), &e);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            let source = Source::tcp(s.local_addr().ok(), addr);
            let peer = Peer::Tcp(addr);
            if ep.tls.is_none() && ep.policy.insecure_tcp() {
                // Plain TCP on loopback: the caller is the user owning the
                // peer's socket, given a role by the same rules as on the
                // Unix socket (its name and groups are looked up off the
                // runtime, so on a task of its own).
                let (tx, ep) = (tx.clone(), ep.clone());
                tokio::spawn(async move {
                    let user = match source {
                        Source::Uid(uid) => crate::control::peer_uid::local_user(uid).await,
                        Source::Ip(_) => None,
                    };
                    let caller = match user {
                        Some(u) => {
                            let c = ep.policy.caller(&u.peer(), false, None);
                            Caller {
                                identity: format!("insecure-tcp:{} {addr}", u.identity()),
                                role: c.role,
                            }
                        }
                        None => Caller {
                            identity: format!("insecure-tcp:unidentified {addr}"),
                            role: Role::None,
                        },
                    };
                    if let Some(slot) = ep.gate.admit(source, caller.role == Role::Admin) {
                        let io = TcpOrTls::Tcp(s);
                        let c = ControlConn::new(io, peer, caller, slot, ep.idle_timeout);
                        let _ = tx.send(Ok(c)).await;
                    }
                });
                continue;
            }
            let Some(acceptor) = ep.tls.clone() else {
                // Plain TCP without roles: the health endpoint. Its
                // reserved slots are for local probers of root or netd's
                // own user (kubelet probing a hostNetwork pod is a root
                // socket on the node), so that remote peers, however many
                // addresses they have, cannot take every slot.
                let caller = ep.policy.caller(&peer, false, None);
                let prober = matches!(source, Source::Uid(u) if u == 0 || u == crate::sys::euid());
                let privileged = caller.role == Role::Admin || prober;
                let slot = match (ep.gate.try_admit(source, privileged), &ep.idle_evict) {
                    (Ok(slot), _) => slot,
                    (Err(Reason::Full), Some(idle)) if idle.make_room(&ep.gate, source) => {
                        // The closed connection's place was given back
                        // above, in this same step of the accept loop.
                        match ep.gate.try_admit(source, privileged) {
                            Ok(slot) => slot,
                            Err(r) => {
                                ep.gate.refuse(r, source);
                                continue;
                            }
                        }
                    }
                    (Err(r), _) => {
                        ep.gate.refuse(r, source);
                        continue;
                    }
                };
                let io = TcpOrTls::Tcp(s);
                let c = ControlConn::new(io, peer, caller, slot, ep.idle_timeout);
                if let Some(idle) = &ep.idle_evict {
                    idle.push(source, &c.info.state);
                }
                if tx.send(Ok(c)).await.is_err() {
                    break;
                }
                continue;
            };
            // Registered here, in accept order, so that the oldest
            // handshakes are the ones that make way.
            let handshake = ep.gate.handshake(source);
            let (tx, ep) = (tx.clone(), ep.clone());
            tokio::spawn(async move {
                let Some(tls) = handshake.run(acceptor.accept(s)).await else {
                    return;
                };
                let certs: Option<Vec<Vec<u8>>> = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect());
                let caller = ep.policy.caller(&peer, true, certs.as_deref());
                if caller.role == Role::Admin {
                    ep.gate.trust(source);
                }
                if let Some(slot) = ep.gate.admit(source, caller.role == Role::Admin) {
                    let io = TcpOrTls::Tls(Box::new(tls));
                    let c = ControlConn::new(io, peer, caller, slot, ep.idle_timeout);
                    let _ = tx.send(Ok(c)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A TCP control connection, plain (loopback with `insecure`, health) or
/// TLS.
pub enum TcpOrTls {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl AsyncRead for TcpOrTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpOrTls::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            TcpOrTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpOrTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpOrTls::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            TcpOrTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpOrTls::Tcp(s) => Pin::new(s).poll_flush(cx),
            TcpOrTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpOrTls::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            TcpOrTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpOrTls::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TcpOrTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TcpOrTls::Tcp(s) => s.is_write_vectored(),
            TcpOrTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The server side of the control plane's TLS: the certificate chain and
/// key, client certificates verified against `client_ca` when set (and
/// then required), ALPN h2 (gRPC).
pub fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots
                    .add(c.context("client_ca: not a PEM certificate")?)
                    .context("client_ca")?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .context("client_ca")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("cert: not a PEM certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("key: not a PEM private key")?;
    let mut config = builder
        .with_single_cert(chain, key)
        .context("cert and key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// uid, gid and pid from SO_PEERCRED; supplementary groups from
/// SO_PEERGROUPS (Linux 4.13+; empty where unsupported).
fn unix_peer(s: &tokio::net::UnixStream) -> io::Result<Peer> {
    use std::os::fd::AsFd;
    let cred = s.peer_cred()?;
    let groups = crate::sys::peer_groups(s.as_fd());
    Ok(Peer::Unix {
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
        pid: cred.pid(),
    })
}
