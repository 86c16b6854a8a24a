//! The forward loop of one proxied connection: two copy loops in one task
//! (so neither direction can block the other), bulk transfers switched to
//! splice(2), EOF passed on as a half-close, an error on one side reported
//! so the caller can reset the other, one idle timer for both directions,
//! and read buffers borrowed only while data flows (a few freed ones kept
//! per thread). A direction that a fault acts on leaves this path for
//! [`super::toxic`] (checked with one atomic load per read).

use std::future::Future as _;
use std::io;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::ServiceCtx;
use super::toxic::{self, ConnFaults};
use crate::fault::{Dir, Watch};
use crate::net::cancel::CancelWatch;
use crate::net::idle::idle_expired;
use crate::net::splice::{PIPE_SIZE, Pipe, splice};
use crate::telemetry::stats::Stats;

/// Read buffer per direction, borrowed only while data flows. netd's
/// `main` makes blocks this large come from mmap (see `tune_allocator`
/// there), so buffers beyond the free list go back to the kernel when
/// dropped instead of staying resident in the heap after a burst.
pub const BUF_SIZE: usize = 64 * 1024;
/// Freed large buffers kept per thread for the next burst, so a steady
/// stream of connections maps none; at most 256 KiB per thread, less in
/// practice (a buffer is resident only as far as reads have filled it).
const FREE_PER_THREAD: usize = 4;

/// The first read of each burst goes into a buffer this small; only a read
/// that fills it moves the burst to a [`BUF_SIZE`] one. Most exchanges
/// (requests, replies, handshakes) fit, and with every read taking a large
/// buffer, the moments when more than [`FREE_PER_THREAD`] were in use at
/// once cost an mmap, a page fault and a munmap each: 0.11 of each per
/// connection under `conn_load rate` (50 clients), ~1% of the proxy's CPU.
const SMALL_BUF_SIZE: usize = 8 * 1024;
/// Freed small buffers kept per thread (at most 256 KiB). Without this
/// list each burst's buffer was a malloc and free of 8 KiB, too large for
/// glibc's per-thread cache: chunks split, merged and unlinked in the
/// shared bins, 2.8% of the proxy's CPU under `conn_load rate` (`perf
/// record`: _int_malloc, unlink_chunk, _int_free, malloc_consolidate).
const SMALL_FREE_PER_THREAD: usize = 32;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    static FREE_SMALL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A forwarding buffer, small or large, from this thread's free list of
/// its size or a new one; on drop it goes back to the list of the thread
/// dropping it, or to the allocator when that list is full.
struct CopyBuf(Vec<u8>);

impl CopyBuf {
    fn small() -> Self {
        let reused = FREE_SMALL.with(|f| f.borrow_mut().pop());
        CopyBuf(reused.unwrap_or_else(|| Vec::with_capacity(SMALL_BUF_SIZE)))
    }

    fn take() -> Self {
        let reused = FREE.with(|f| f.borrow_mut().pop());
        // Uninitialised capacity: no memset per burst.
        CopyBuf(reused.unwrap_or_else(|| Vec::with_capacity(BUF_SIZE)))
    }

    fn is_small(&self) -> bool {
        self.0.capacity() < BUF_SIZE
    }
}

impl Drop for CopyBuf {
    fn drop(&mut self) {
        let (list, keep) = if self.is_small() {
            (&FREE_SMALL, SMALL_FREE_PER_THREAD)
        } else {
            (&FREE, FREE_PER_THREAD)
        };
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        // try_with: during thread teardown the list may be gone already.
        let _ = list.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < keep {
                f.push(buf);
            }
        });
    }
}

/// How a proxied connection ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Done,
    IdleTimeout,
    ClosedByNetd,
    ClientReset,
    UpstreamReset,
    /// A fault closed both sides (timeout, limit_data).
    FaultClosed,
    /// A fault reset both sides (reset_peer, down).
    FaultReset,
}

impl End {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            End::Done => "closed",
            End::IdleTimeout => "idle timeout",
            End::ClosedByNetd => "closed by netd",
            End::ClientReset => "client error/reset",
            End::UpstreamReset => "upstream error/reset",
            End::FaultClosed => "closed by fault",
            End::FaultReset => "reset by fault",
        }
    }
}

/// Forward both ways until both directions are done, one side fails, the
/// connection idles out, or netd closes it.
pub(super) async fn forward(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle_timeout: Duration,
    ctx: &ServiceCtx,
    up: &AtomicU64,
    down: &AtomicU64,
    faults: &ConnFaults<'_>,
) -> End {
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    let activity = Activity::new();
    let c2u = copy(
        cr,
        uw,
        &activity,
        &ctx.stats.bytes_in,
        up,
        faults,
        Dir::Upstream,
    );
    let u2c = copy(
        ur,
        cw,
        &activity,
        &ctx.stats.bytes_out,
        down,
        faults,
        Dir::Downstream,
    );
    // Polled by hand rather than with select!/try_join!, whose nested
    // async blocks would store each copy future more than once and
    // roughly triple the size of every connection's task.
    let c2u = std::pin::pin!(c2u);
    let u2c = std::pin::pin!(u2c);
    until_end(c2u, u2c, &activity, idle_timeout, ctx).await
}

/// Drive both directions of a connection (`c2u` client to upstream, `u2c`
/// back) until both are done, one side fails, the connection idles out
/// (no byte either way for `idle_timeout`), or netd closes it; says which.
/// Shared by the spliced forward and the TLS plaintext one.
pub(super) async fn until_end<A, B>(
    mut c2u: std::pin::Pin<&mut A>,
    mut u2c: std::pin::Pin<&mut B>,
    activity: &Activity,
    idle_timeout: Duration,
    ctx: &ServiceCtx,
) -> End
where
    A: std::future::Future<Output = Result<(), Side>>,
    B: std::future::Future<Output = Result<(), Side>>,
{
    // One timer, re-armed while traffic moves; boxed because tokio's
    // Sleep is large and would otherwise be padded into every task.
    let mut idle = Box::pin(async {
        let sleep = tokio::time::sleep_until(activity.last() + idle_timeout);
        tokio::pin!(sleep);
        loop {
            (&mut sleep).await;
            if idle_expired(sleep.as_mut(), activity.last(), idle_timeout) {
                return;
            }
        }
    });
    let mut closed = CancelWatch::new(&ctx.close_connections);
    let (mut c2u_done, mut u2c_done) = (false, false);
    std::future::poll_fn(|cx| {
        use std::task::Poll;
        if !c2u_done {
            match c2u.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => c2u_done = true,
                Poll::Ready(Err(Side::Reader)) => return Poll::Ready(End::ClientReset),
                Poll::Ready(Err(Side::Writer)) => return Poll::Ready(End::UpstreamReset),
                Poll::Ready(Err(s)) => return Poll::Ready(s.fault_end()),
                Poll::Pending => {}
            }
        }
        if !u2c_done {
            match u2c.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => u2c_done = true,
                Poll::Ready(Err(Side::Reader)) => return Poll::Ready(End::UpstreamReset),
                Poll::Ready(Err(Side::Writer)) => return Poll::Ready(End::ClientReset),
                Poll::Ready(Err(s)) => return Poll::Ready(s.fault_end()),
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

/// Why a direction ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Reader,
    Writer,
    FaultClosed,
    FaultReset,
}

impl Side {
    pub(super) fn fault_end(self) -> End {
        match self {
            Side::FaultReset => End::FaultReset,
            _ => End::FaultClosed,
        }
    }
}

/// Copy one direction until EOF (then half-close the writer) or an error
/// (which side failed is returned). Waits for readability before borrowing
/// a buffer, so a silent connection holds none. A direction whose reads
/// fill the whole buffer is a bulk transfer: it switches to splice(2)
/// through a pipe, so the bytes move socket to socket inside the kernel
/// without being copied through user space. Once a fault acts on the
/// direction, the rest of it goes through [`toxic::run`].
async fn copy(
    mut r: ReadHalf<'_>,
    mut w: WriteHalf<'_>,
    activity: &Activity,
    total: &AtomicU64,
    mine: &AtomicU64,
    faults: &ConnFaults<'_>,
    dir: Dir,
) -> Result<(), Side> {
    let mut pipe: Option<Pipe> = None;
    let mut watch = Watch::new(faults.table);
    // The fault check, at the start and after each wait for data: one
    // atomic load unless the listener has faults. Boxed: only a faulty
    // connection's task holds the faulty path's state.
    macro_rules! unless_faulty {
        () => {
            if toxic::acts_on(&mut watch, dir) {
                return Box::pin(toxic::run(r, w, activity, total, mine, faults, dir, watch)).await;
            }
        };
    }
    unless_faulty!();
    loop {
        r.readable().await.map_err(|_| Side::Reader)?;
        unless_faulty!();
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
        let mut held = CopyBuf::small();
        loop {
            let buf = &mut held.0;
            buf.clear();
            // Each read is tokio's AsyncRead polled once. On a short read
            // tokio marks the socket drained, which saves the recv that
            // would only have returned EAGAIN (one per direction per
            // exchange); and a read with nothing there (Pending: tokio has
            // cleared the readiness) ends the burst, so no buffer is held
            // while waiting. (try_read would leave the readiness set after
            // a short read; awaiting the read would hold the buffer, and an
            // idle connection would keep one per direction.)
            let read = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::pin::pin!(r.read_buf(&mut *buf)).poll(cx))
            })
            .await;
            let read = match read {
                std::task::Poll::Ready(read) => read,
                std::task::Poll::Pending => break,
            };
            let n = match read {
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
            if n < buf.capacity() {
                // Drained: wait for more without holding the buffer.
                break;
            }
            if held.is_small() {
                // More than a small read: the rest of the burst gets a
                // large buffer.
                held = CopyBuf::take();
                continue;
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
pub(super) async fn pass_on_eof<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, activity: &Activity) {
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
    use tokio::io::Interest;
    let (rs, ws): (&TcpStream, &TcpStream) = (r.as_ref(), w.as_ref());
    loop {
        let n = match rs.try_io(Interest::READABLE, || splice(rs, &pipe.write, PIPE_SIZE)) {
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
            match ws.try_io(Interest::WRITABLE, || splice(&pipe.read, ws, left)) {
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

/// When a connection last moved data, shared by its two copy loops.
pub(super) struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
    /// Directions that have reached EOF (0, 1 or 2).
    finished: AtomicU8,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            finished: AtomicU8::new(0),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Relaxed);
    }

    /// Note that one direction reached EOF; true when the other one had
    /// already.
    fn finish_direction(&self) -> bool {
        self.finished.fetch_add(1, Relaxed) == 1
    }

    pub(super) fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Relaxed))
    }
}
