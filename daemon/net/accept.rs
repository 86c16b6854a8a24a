//! The accept loop shared by the TCP services (mini-redis's shape: back
//! off on accept errors, bound connections with a semaphore, track every
//! connection task), and the classification of accept errors it and the
//! metrics endpoint use. The loop keeps within the process's descriptor
//! budget ([`crate::net::fd_budget`]): it pauses rather than take the
//! descriptors kept for the control plane.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cancel::CancelWatch;
use super::contain::contain_panic;
use crate::telemetry::stats::Stats;
use crate::util::warn_limit::{DEFAULT_INTERVAL, RateLimitedWarn};

/// One warning per interval when an accept loop pauses at the budget.
static BUDGET_WARN: RateLimitedWarn = RateLimitedWarn::new(DEFAULT_INTERVAL);
/// One warning per interval for accept errors (EMFILE comes in floods).
static ACCEPT_ERROR_WARN: RateLimitedWarn = RateLimitedWarn::new(DEFAULT_INTERVAL);

/// What an accept loop needs of its listener: whose it is, where to count,
/// when to stop and where connection tasks go.
#[derive(Clone, Copy, Debug)]
pub struct Accepting<'a> {
    pub name: &'a Arc<str>,
    pub stats: &'a Arc<Stats>,
    /// Stop accepting and return.
    pub stop: &'a CancellationToken,
    /// Connection tasks are spawned here, so stop and shutdown wait for them.
    pub tracker: &'a TaskTracker,
}

/// The accept loop shared by the TCP services: accept until
/// `ctx.stop`, backing off on transient errors (mini-redis style)
/// instead of spinning; refuse clients beyond `limit` at once (counted); run
/// each accepted connection as a task on the listener's tracker, holding its
/// permit and its `connections_active` slot for as long as it lives. Returns
/// an error only when the listening socket itself fails.
pub async fn accept_loop<F, Fut>(
    listener: &tokio::net::TcpListener,
    ctx: Accepting<'_>,
    limit: &Arc<tokio::sync::Semaphore>,
    handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    accept_loop_costing(listener, ctx, limit, 1, handle).await
}

/// [`accept_loop`] for connections that hold `fds` descriptors each (a
/// proxied one holds two: the client's and the upstream's).
///
/// Before each accept the loop takes that many permits of the process's
/// descriptor budget ([`crate::net::fd_budget`]); with the budget used up it
/// pauses (clients wait in the kernel's backlog) until connections close,
/// so the descriptors kept for the control plane are never taken.
pub async fn accept_loop_costing<F, Fut>(
    listener: &tokio::net::TcpListener,
    ctx: Accepting<'_>,
    limit: &Arc<tokio::sync::Semaphore>,
    fds: u32,
    mut handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use anyhow::Context as _;
    let mut backoff = Duration::from_millis(10);
    let mut stop = CancelWatch::new(ctx.stop);
    // The budget for the next connection, taken before accepting it.
    let mut budget: Option<crate::net::fd_budget::Permit> = None;
    loop {
        if budget.is_none() {
            budget = match crate::net::fd_budget::try_acquire(fds) {
                Some(p) => Some(p),
                None => {
                    if let Some(suppressed) = BUDGET_WARN.hit() {
                        tracing::warn!(
                            listener = %ctx.name,
                            suppressed,
                            "descriptor budget used up: not accepting until connections close \
                             (the rest is kept for the control plane)"
                        );
                    }
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Ok(()),
                        p = crate::net::fd_budget::acquire(fds) => p,
                    }
                }
            };
        }
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
                if let Some(suppressed) = ACCEPT_ERROR_WARN.hit() {
                    tracing::warn!(listener = %ctx.name, error = %e, suppressed, "accept failed; backing off");
                }
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
        let fd_permit = budget.take();
        let guard = ctx.stats.connection();
        // Boxed: awaiting a future captured by an async block stores it
        // twice in the block's state; a box makes that second copy a
        // pointer (half the memory per idle connection).
        let task = Box::pin(handle(stream, peer));
        let stats = ctx.stats.clone();
        let name = ctx.name.clone();
        ctx.tracker.spawn(async move {
            let _permit = permit;
            let _fd_permit = fd_permit;
            let _guard = guard;
            contain_panic(task, &stats, &name).await;
        });
    }
}

/// The listening sockets for a kind's per-worker accept loops: loop `i`
/// takes socket `i` and runs on worker `i % workers` (on the current
/// runtime without workers). Every socket of the group gets a loop (one
/// left without would hold the connections the kernel hashes to it); a
/// group smaller than the workers (one socket with `NETD_REUSEPORT=off`,
/// or a group handed over by a netd with fewer) is shared, the workers
/// beyond it accepting on `dup(2)`s of its sockets. The sockets come out
/// of the current runtime's reactor (as std sockets), for each loop to
/// register with its own: registered there too, a socket would wake
/// that runtime for connections it does not accept.
pub fn spread(
    sockets: super::bind::Sockets<tokio::net::TcpListener>,
    workers: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut all: Vec<std::net::TcpListener> = sockets
        .into_vec()
        .into_iter()
        .map(tokio::net::TcpListener::into_std)
        .collect::<io::Result<_>>()?;
    let len = all.len();
    for i in len..workers {
        let dup = all[i % len].try_clone()?;
        all.push(dup);
    }
    Ok(all)
}

/// Accept errors that concern one connection or a passing shortage (file
/// descriptors, memory) rather than the listening socket itself: back off and
/// keep accepting.
pub fn is_transient_accept_error(e: &io::Error) -> bool {
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
