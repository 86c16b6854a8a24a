//! Per-connection machinery of the HTTP servers: HTTP/2 stream activity
//! (for the idle timeout of a connection with no open stream), the
//! executor that runs each HTTP/2 stream with panic containment, and the
//! lingering close of HTTP/1 connections (plain TCP or TLS over TCP).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::net::contain::contain_panic;
use crate::net::drain::Drain;
use crate::telemetry::stats::Stats;

/// Open streams of one HTTP/2 connection and when the last one ended, for
/// its idle timeout.
pub(crate) struct Activity {
    open: std::sync::atomic::AtomicUsize,
    /// Whether a stream (a request) was ever opened on the connection.
    used: std::sync::atomic::AtomicBool,
    last: parking_lot::Mutex<tokio::time::Instant>,
}

/// Keeps a stream counted as open until dropped (when its handler ends).
pub(crate) struct OpenStream(Arc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        *self.0.last.lock() = tokio::time::Instant::now();
        self.0.open.fetch_sub(1, Relaxed);
    }
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            open: 0.into(),
            used: false.into(),
            last: parking_lot::Mutex::new(tokio::time::Instant::now()),
        }
    }

    pub(crate) fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Relaxed);
        self.used.store(true, Relaxed);
        OpenStream(self.clone())
    }

    pub(crate) fn last(&self) -> tokio::time::Instant {
        *self.last.lock()
    }

    /// Completes once the connection has had no open stream for `limit`,
    /// or, before its first request, for `first` (the header timeout: a
    /// connection that sent the preface and nothing else gets no longer
    /// than an HTTP/1 one that sent no request line). The timer is
    /// re-armed only when it fires, so streams starting and ending cost no
    /// timer work.
    pub(crate) async fn idle(&self, limit: Duration, first: Duration) {
        let limit_now = || {
            if self.used.load(Relaxed) {
                limit
            } else {
                limit.min(first)
            }
        };
        let mut due = self.last() + limit_now();
        loop {
            tokio::time::sleep_until(due).await;
            if self.open.load(Relaxed) > 0 {
                due = tokio::time::Instant::now() + limit;
                continue;
            }
            let quiet_until = self.last() + limit_now();
            if tokio::time::Instant::now() >= quiet_until {
                return;
            }
            due = quiet_until;
        }
    }
}

/// Runs hyper's HTTP/2 stream tasks on the listener's tracker (so stop
/// and shutdown wait for them), with panics contained and counted like a
/// connection task's.
#[derive(Clone)]
pub(crate) struct StreamExec {
    pub(crate) stats: Arc<Stats>,
    pub(crate) name: Arc<str>,
    pub(crate) tracker: tokio_util::task::TaskTracker,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let stats = self.stats.clone();
        let name = self.name.clone();
        self.tracker.spawn(async move {
            contain_panic(
                async move {
                    fut.await;
                },
                &stats,
                &name,
            )
            .await;
        });
    }
}

/// How long a closing HTTP/1 connection keeps discarding what the client
/// still sends, in all and with nothing arriving.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_QUIET: Duration = Duration::from_secs(1);

/// What an HTTP connection runs on: a TCP stream, TLS over one, or the
/// inner end of a layer beneath HTTP (see `Handler::beneath`). The
/// lingering close drains the TCP socket underneath (after a TLS
/// close_notify, what the client still sends is discarded unread); a
/// layer's inner end has none (the layer passes the close on).
pub trait Socket: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    fn tcp(&self) -> Option<&TcpStream>;
}

impl Socket for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.get_ref().0)
    }
}

impl Socket for tokio::io::DuplexStream {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// A connection whose shutdown lingers (see the module notes): hyper calls
/// `poll_shutdown` when it is done with a connection; that sends the FIN
/// (on TLS: close_notify, then the FIN) and then reads and drops input
/// until EOF, `LINGER_QUIET` without data, or `LINGER_TIME` in all.
pub(crate) struct Lingering<S> {
    stream: S,
    /// Set once the write side is shut.
    drain: Option<Drain>,
}

impl<S: Socket> Lingering<S> {
    pub(crate) fn new(stream: S) -> Self {
        Lingering {
            stream,
            drain: None,
        }
    }
}

impl<S: Socket> tokio::io::AsyncRead for Lingering<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: Socket> tokio::io::AsyncWrite for Lingering<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.drain.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.drain = Some(Drain::new(LINGER_QUIET, LINGER_TIME));
        }
        let (Some(drain), Some(tcp)) = (&mut this.drain, this.stream.tcp()) else {
            return Poll::Ready(Ok(()));
        };
        drain.poll_drain(tcp, cx).map(|()| Ok(()))
    }
}
