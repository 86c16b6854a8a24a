//! Control-plane connections: accepted under a cap, tagged with who the peer
//! is, and closed when idle.
//!
//! [`incoming_unix`] and [`incoming_tcp`] turn a listening socket into the
//! stream of connections tonic serves. Each connection holds a permit of a
//! semaphore sized `[control] max_connections`; when none is left the new
//! connection is closed at once, so a flood of idle clients cannot take the
//! daemon's file descriptors. Each carries a [`ConnInfo`] (tonic's
//! `Connected::ConnectInfo`), with the peer's credentials learned at accept
//! and a count of the calls open on it. A connection with no call open for
//! `idle_timeout` is closed: that bounds what a client that connects and
//! then says nothing can hold.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::auth::Peer;

/// Per-connection state shared between the connection and its calls.
#[derive(Debug)]
pub struct ConnState {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
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
        Some(*self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + idle)
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
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

/// What tonic hands each request about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Arc<Peer>,
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
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    _permit: OwnedSemaphorePermit,
}

impl<IO> ControlConn<IO> {
    fn new(io: IO, peer: Peer, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        ControlConn {
            io,
            info: ConnInfo {
                peer: Arc::new(peer),
                state: Arc::new(ConnState::new()),
            },
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            _permit: permit,
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

impl<IO: AsyncRead + Unpin> AsyncRead for ControlConn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
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

/// Bounds applied to every control connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    slots: Arc<Semaphore>,
    max: usize,
    idle_timeout: Duration,
}

impl ConnLimits {
    pub fn new(max_connections: usize, idle_timeout: Duration) -> ConnLimits {
        ConnLimits {
            slots: Arc::new(Semaphore::new(max_connections)),
            max: max_connections,
            idle_timeout,
        }
    }

    fn admit<IO>(&self, io: IO, peer: Peer) -> Option<ControlConn<IO>> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(ControlConn::new(io, peer, permit, self.idle_timeout)),
            Err(_) => {
                tracing::warn!(limit = self.max, peer = ?peer, "control connection limit reached; closing a new connection");
                None
            }
        }
    }
}

/// Pause after an accept error (e.g. out of descriptors) so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Connections on the Unix control socket, with their peer credentials.
pub fn incoming_unix(
    listener: tokio::net::UnixListener,
    limits: ConnLimits,
) -> impl Stream<Item = io::Result<ControlConn<tokio::net::UnixStream>>> {
    futures_util::stream::unfold((listener, limits), |(l, limits)| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let peer = match unix_peer(&s) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read a control peer's credentials; closing");
                            continue;
                        }
                    };
                    if let Some(c) = limits.admit(s, peer) {
                        return Some((Ok(c), (l, limits)));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a control connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
}

/// Connections on a TCP control address.
pub fn incoming_tcp(
    listener: tokio::net::TcpListener,
    limits: ConnLimits,
) -> impl Stream<Item = io::Result<ControlConn<tokio::net::TcpStream>>> {
    futures_util::stream::unfold((listener, limits), |(l, limits)| async move {
        loop {
            match l.accept().await {
                Ok((s, addr)) => {
                    let _ = s.set_nodelay(true);
                    if let Some(c) = limits.admit(s, Peer::Tcp(addr)) {
                        return Some((Ok(c), (l, limits)));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a control connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
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
