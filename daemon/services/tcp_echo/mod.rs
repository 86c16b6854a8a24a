//! TCP echo (RFC 862): everything a client sends is sent back, optionally
//! behind a prefix per chunk, until the client closes.
//!
//! Bounds: `max_connections` concurrent clients (the rest are accepted and
//! closed at once, counted as refused), a 16 KiB read buffer per connection
//! *while data is in flight* (none while idle), and an idle timeout that
//! closes clients silent in both directions.
//!
//! Memory: a connection waits for readability without a buffer and borrows
//! one only to read, echo and give it back. Measured with
//! `bench/idle_memory.sh` (1,000 connections, each exchanging a message and
//! then idle; fresh daemon per round, median of 5): a 16 KiB buffer held for
//! the connection's life cost 13.8 KB (1 B message) to 17.9 KB (12 KB
//! message) of RSS per idle connection; borrowing it leaves ~1.5 KB (the
//! task, whose future is ~560 bytes in a debug build, and the socket's
//! registration), with connections arriving one by one and 100 at a time.
//! Plain malloc/free per exchange measured the same as the free list used
//! here (1.54 against 1.55 KB); the free list ([`EchoBuf`], at most
//! `FREE_PER_THREAD` buffers per thread, ~280 KiB) is kept because a reused buffer needs no 17 KiB
//! zeroing per exchange (`vec![0; n]` on recycled heap is a memset) and its
//! pages stay the same few instead of wandering through the heap.

mod show;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ListenerKind, ServiceCtx, Settings, SpecError,
    Transport, listen_field,
};
use crate::net::accept::accept_loop;
use crate::net::cancel::CancelWatch;
use crate::net::idle::idle_expired;
use crate::net::tls::ServedTls;
use crate::proto;
use crate::spec::FieldError;
use crate::spec::form::{self, Key, Unit};
use crate::spec::tls;
use crate::telemetry::stats::Stats;

/// Read buffer per connection, borrowed only while data is in flight.
const BUF_SIZE: usize = 16 * 1024;
/// Longest prefix accepted, so a reply chunk stays bounded.
pub const MAX_PREFIX: usize = 1024;
/// Free buffers kept per thread (17 KiB each): enough for the exchanges
/// one worker has in flight at once in the common case; beyond it a buffer
/// goes back to the allocator.
const FREE_PER_THREAD: usize = 16;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer (room for the longest prefix and one read) borrowed from
/// this thread's free list, or allocated when the list is empty; returned
/// to the list of the thread that drops it.
struct EchoBuf(Box<[u8]>);

impl EchoBuf {
    fn take() -> Self {
        let reused = FREE.with(|f| f.borrow_mut().pop());
        EchoBuf(reused.unwrap_or_else(|| vec![0u8; MAX_PREFIX + BUF_SIZE].into_boxed_slice()))
    }
}

impl Drop for EchoBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // try_with: during thread teardown the list may be gone already.
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < FREE_PER_THREAD {
                f.push(buf);
            }
        });
    }
}

#[derive(Debug)]
pub struct TcpEcho {
    pub listen: SocketAddr,
    prefix: Arc<[u8]>,
    idle_timeout: Duration,
    /// Shared across restarts so connections that outlive a failed accept
    /// loop still count against the limit.
    limit: Arc<Semaphore>,
    /// Served TLS (`tls_cert`...): the plaintext inside is echoed.
    tls: Option<Arc<ServedTls>>,
}

impl TcpEcho {
    fn validate(spec: &proto::TcpEchoSpec) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        if spec.prefix.len() > MAX_PREFIX {
            return Err(SpecError::at(
                "prefix",
                format!(
                    "prefix is {} bytes; the limit is {MAX_PREFIX}",
                    spec.prefix.len()
                ),
            ));
        }
        let max = match spec.max_connections {
            0 => DEFAULT_MAX_CONNECTIONS,
            n => n as usize,
        };
        let idle_timeout =
            super::duration_field("idle_timeout", &spec.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
        Ok(TcpEcho {
            listen,
            prefix: spec.prefix.as_bytes().into(),
            idle_timeout,
            limit: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            tls: ServedTls::from_spec(spec.tls.as_ref(), &[])?.map(Arc::new),
        })
    }

    async fn run_on(&self, listener: TcpListener, ctx: ServiceCtx) -> anyhow::Result<()> {
        if let Some(tls) = &self.tls {
            let events = Some((ctx.events.clone(), Self::KIND));
            tls.watch(
                ctx.name.clone(),
                ctx.stop_accepting.clone(),
                &ctx.tracker,
                events,
            );
        }
        accept_loop(&listener, ctx.accepting(), &self.limit, |stream, peer| {
            let conn = Conn {
                prefix: self.prefix.clone(),
                idle: self.idle_timeout,
                stats: ctx.stats.clone(),
                close: ctx.close_connections.clone(),
            };
            let name = ctx.name.clone();
            let tls = self.tls.clone();
            async move {
                let result = match tls {
                    None => conn.echo(stream).await,
                    // Boxed: the TLS state (rustls' connection, its
                    // buffers) would otherwise size every plaintext
                    // connection's future too (bench/idle_memory.sh).
                    Some(tls) => {
                        let served = Box::pin(async {
                            match tls.accept(stream).await {
                                Ok(s) => Some(conn.echo_tls(s).await),
                                Err(reason) => {
                                    tracing::debug!(listener = %name, %peer, reason = reason.label(), "TLS handshake failed");
                                    None
                                }
                            }
                        });
                        match served.await {
                            Some(r) => r,
                            None => return,
                        }
                    }
                };
                match result {
                    Ok(end) => tracing::debug!(listener = %name, %peer, end, "connection closed"),
                    Err(e) => {
                        Stats::add(&conn.stats.errors, 1);
                        tracing::debug!(listener = %name, %peer, error = %e, "connection failed");
                    }
                }
            }
        })
        .await
    }
}

impl ListenerKind for TcpEcho {
    type Spec = proto::TcpEchoSpec;
    type Socket = TcpListener;
    const SLUG: &'static str = "tcp-echo";
    const KIND: proto::ListenerKind = proto::ListenerKind::TcpEcho;
    const TRANSPORT: Transport = Transport::Tcp;
    const ABOUT: &'static str = "TCP echo (RFC 862): echoes everything until the client closes.";
    const KEYS: &'static [Key] = &[
        form::LISTEN,
        Key::new(
            "prefix",
            "prefix",
            Unit::Text,
            "Prepended to every chunk echoed, e.g. \"Echo: \".",
        ),
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
            "Close connections idle this long, e.g. 30s, 5m (default 5m).",
        ),
        form::ACCESS_LOG,
        tls::TLS_CERT,
        tls::TLS_KEY,
        tls::TLS_CLIENT_CA,
        tls::TLS_CLIENT_AUTH,
        tls::TLS_ALPN,
        tls::TLS_HANDSHAKE_TIMEOUT,
    ];

    fn read_config(t: &toml::Table, _opts: &form::ReadOptions) -> Result<Self::Spec, FieldError> {
        Ok(proto::TcpEchoSpec {
            listen: form::text(t, "listen")?,
            prefix: form::text(t, "prefix")?,
            max_connections: form::u32(t, "max_connections")?,
            idle_timeout: form::duration(t, "idle_timeout")?,
            access_log: form::opt_bool(t, "access_log")?,
            tls: tls::read_server(t)?,
        })
    }

    fn write_config(spec: &Self::Spec, t: &mut crate::spec::Table) -> Result<(), String> {
        let proto::TcpEchoSpec {
            listen,
            prefix,
            max_connections,
            idle_timeout,
            access_log,
            tls,
        } = spec;
        t.string("listen", listen);
        t.string("prefix", prefix);
        t.u64("max_connections", (*max_connections).into())?;
        t.duration("idle_timeout", idle_timeout)?;
        t.opt_bool("access_log", *access_log);
        tls::write_server(tls, t)
    }

    fn spec_listen(spec: &Self::Spec) -> Option<&str> {
        Some(&spec.listen)
    }

    fn from_spec(spec: &Self::Spec, _settings: &Settings) -> Result<Self, SpecError> {
        super::check_max_connections(spec.max_connections)?;
        Self::validate(spec)
    }

    fn effective_spec(&self, shown: &Self::Spec) -> Self::Spec {
        proto::TcpEchoSpec {
            tls: shown.tls.as_ref().map(ServedTls::effective),
            max_connections: super::effective_max_connections(shown.max_connections),
            idle_timeout: super::effective_duration(&shown.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            access_log: Some(shown.access_log.unwrap_or(true)),
            ..shown.clone()
        }
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(self.listen)
    }

    async fn run(self: Arc<Self>, socket: TcpListener, ctx: ServiceCtx) -> anyhow::Result<()> {
        self.run_on(socket, ctx).await
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        None
    }

    fn tls_stats(&self) -> Option<proto::TlsStats> {
        self.tls.as_ref().map(|t| t.stats())
    }

    fn carry_over(&mut self, prev: &Self) {
        if let (Some(new), Some(old)) = (&mut self.tls, &prev.tls) {
            if let Some(new) = Arc::get_mut(new) {
                new.carry_over(old);
            }
        }
    }

    fn descriptors(spec: &Self::Spec, _budget: &crate::net::fd_budget::Budget) -> u64 {
        super::fd_cost::connections(spec.max_connections)
    }
}

/// Bytes read at once from a TLS client (rustls holds the record
/// buffers): the buffer starts at [`TLS_BUF_START`] and grows to this the
/// first time a read fills it, as the proxy's TLS copy buffers do.
const TLS_BUF_SIZE: usize = 16 * 1024;
const TLS_BUF_START: usize = 2 * 1024;

struct Conn {
    prefix: Arc<[u8]>,
    idle: Duration,
    stats: Arc<Stats>,
    close: CancellationToken,
}

impl Conn {
    /// Echo until the client closes, goes idle, or the listener closes its
    /// connections; says which.
    async fn echo(&self, mut stream: TcpStream) -> io::Result<&'static str> {
        let p = self.prefix.len();
        let mut closed = CancelWatch::new(&self.close);
        // One timer per connection, re-armed only when it fires: each read
        // and write just notes the time.
        let mut last = Instant::now();
        let idle = tokio::time::sleep_until(last + self.idle);
        tokio::pin!(idle);
        loop {
            // Wait without a buffer: an idle connection holds none.
            tokio::select! {
                _ = closed.cancelled() => return Ok("closed by netd"),
                r = stream.readable() => r?,
                _ = &mut idle => {
                    if idle_expired(idle.as_mut(), last, self.idle) {
                        return Ok("idle timeout");
                    }
                    continue;
                }
            };
            let mut held = EchoBuf::take();
            let buf = &mut held.0[..p + BUF_SIZE];
            // One poll_read rather than try_read: on a short read tokio
            // marks the socket drained, which saves the recv that would
            // only return EAGAIN. Pending (a spurious wake-up) goes back to
            // waiting and returns the buffer.
            let mut rb = ReadBuf::new(&mut buf[p..]);
            let polled = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::pin::Pin::new(&mut stream).poll_read(cx, &mut rb))
            })
            .await;
            let n = match polled {
                std::task::Poll::Ready(r) => {
                    r?;
                    rb.filled().len()
                }
                std::task::Poll::Pending => continue,
            };
            last = Instant::now();
            if n == 0 {
                // The client finished sending and everything is echoed.
                let _ = stream.shutdown().await;
                return Ok("client closed");
            }
            buf[..p].copy_from_slice(&self.prefix);
            Stats::add(&self.stats.bytes_in, n as u64);
            let mut write = std::pin::pin!(stream.write_all(&buf[..p + n]));
            loop {
                tokio::select! {
                    _ = closed.cancelled() => return Ok("closed by netd"),
                    r = &mut write => {
                        r?;
                        break;
                    }
                    _ = &mut idle => {
                        if idle_expired(idle.as_mut(), last, self.idle) {
                            return Ok("idle timeout (client not reading)");
                        }
                    }
                }
            }
            last = Instant::now();
            Stats::add(&self.stats.bytes_out, (p + n) as u64);
        }
    }

    /// Echo the plaintext of a TLS connection, as [`Conn::echo`] does
    /// (no prefix buffer trick: the buffer is held while the connection
    /// lives, next to rustls' own).
    async fn echo_tls<S>(&self, mut stream: S) -> io::Result<&'static str>
    where
        S: AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncReadExt as _;
        let p = self.prefix.len();
        let mut closed = CancelWatch::new(&self.close);
        let mut buf = vec![0u8; p + TLS_BUF_START];
        buf[..p].copy_from_slice(&self.prefix);
        loop {
            let n = tokio::select! {
                _ = closed.cancelled() => return Ok("closed by netd"),
                r = tokio::time::timeout(self.idle, stream.read(&mut buf[p..])) => match r {
                    Err(_) => return Ok("idle timeout"),
                    // Closed without close_notify: most clients do that.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                    Ok(r) => r?,
                },
            };
            if n == 0 {
                let _ = stream.shutdown().await;
                return Ok("client closed");
            }
            Stats::add(&self.stats.bytes_in, n as u64);
            tokio::select! {
                _ = closed.cancelled() => return Ok("closed by netd"),
                r = tokio::time::timeout(self.idle, stream.write_all(&buf[..p + n])) => match r {
                    Err(_) => return Ok("idle timeout (client not reading)"),
                    Ok(r) => r?,
                },
            }
            Stats::add(&self.stats.bytes_out, (p + n) as u64);
            if p + n == buf.len() && buf.len() < p + TLS_BUF_SIZE {
                buf.resize(p + TLS_BUF_SIZE, 0);
            }
        }
    }
}
