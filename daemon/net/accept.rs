//! The accept loop shared by the TCP services (mini-redis's shape: back
//! off on accept errors, bound connections with a semaphore, track every
//! connection task), and the classification of accept errors it and the
//! metrics endpoint use.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cancel::CancelWatch;
use super::contain::contain_panic;
use crate::stats::Stats;

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
    mut handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use anyhow::Context as _;
    let mut backoff = Duration::from_millis(10);
    let mut stop = CancelWatch::new(ctx.stop);
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
