//! Per-core event loops for the proxy's data path: one thread per core,
//! each running a current-thread tokio runtime with its own epoll instance
//! (the model of HAProxy's threads and Envoy's workers). A proxy listener
//! runs one accept loop on each, on a duplicate of its listening socket;
//! a connection accepted by a worker lives on it until it closes, so its
//! task is never stolen by another thread, its wakeups never cross threads
//! and its timer sits in that worker's own wheel. The control plane, the
//! supervisor and everything else stay on the main runtime.
//!
//! A kind with an accept loop per worker asks the supervisor for
//! [`socket_count`] sockets: a SO_REUSEPORT group with one socket per
//! worker (see [`crate::net::bind::Sockets`]), so the kernel hands each
//! new connection to one worker's socket and wakes that worker only.
//! `NETD_REUSEPORT=off` in netd's environment turns the groups off: one
//! socket, shared by the workers' loops as `dup(2)`s. The workers exist
//! for the life of the process; they start on the first such listener and
//! hold no state of their own.

use std::sync::OnceLock;

use tokio::runtime::Handle;

/// The workers' runtimes, started on first use; empty when there is a
/// single core (the main runtime does as well there) or when they could
/// not be started (logged once; the caller falls back to the main runtime).
pub fn handles() -> &'static [Handle] {
    static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();
    WORKERS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            return Vec::new();
        }
        match (0..cores).map(start).collect::<std::io::Result<Vec<_>>>() {
            Ok(handles) => handles,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the per-core proxy workers; proxies run on the main runtime");
                Vec::new()
            }
        }
    })
}

/// How many sockets a listener with a loop per worker binds: one per
/// worker (at least one), or one when `NETD_REUSEPORT` is `off` (or `0`,
/// `false`, `no`) in the environment.
pub fn socket_count() -> usize {
    static OFF: OnceLock<bool> = OnceLock::new();
    let off = *OFF.get_or_init(|| {
        std::env::var("NETD_REUSEPORT").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "off" | "0" | "false" | "no"
            )
        })
    });
    if off { 1 } else { handles().len().max(1) }
}

/// Run one loop per item of `items` until all have ended: loop `i` is
/// `run(i, items[i], stop)`, spawned on worker `i % workers` (on the
/// current runtime without workers), so whatever it registers or spawns
/// stays on that thread. `stop` is a child of `stop`, cancelled when this
/// future ends however it ends: the first error (or panic, reported as
/// "`what` ended: ...") ends them all and is returned, and no loop
/// outlives the caller. Items that hold sockets should be std sockets,
/// registered by the loop on its own runtime.
pub async fn run_each<T, F, Fut>(
    items: Vec<T>,
    stop: &tokio_util::sync::CancellationToken,
    what: &str,
    run: F,
) -> anyhow::Result<()>
where
    F: Fn(usize, T, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let stop = stop.child_token();
    let _stop_all = stop.clone().drop_guard();
    let workers = handles();
    let mut loops = tokio::task::JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let fut = run(i, item, stop.clone());
        match workers.get(i % workers.len().max(1)) {
            Some(worker) => loops.spawn_on(fut, worker),
            None => loops.spawn(fut),
        };
    }
    while let Some(ended) = loops.join_next().await {
        ended.map_err(|e| anyhow::anyhow!("{what} ended: {e}"))??;
    }
    Ok(())
}

/// How often an otherwise idle worker wakes up; see [`start`].
const TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// One worker thread with its runtime, parked on a future that never ends.
///
/// That future is a timer firing every [`TICK`], for this reason: when a
/// task arms a timer earlier than any in the worker's timer wheel, tokio
/// wakes the driver (a write to its eventfd and one more epoll_wait) so it
/// sleeps no longer than that timer. Each proxied connection arms its
/// connect timeout and idle timer; with nothing else in the wheel, every
/// new connection paid that wake-up (`strace -c -f`: 0.46 eventfd writes
/// and 1.09 epoll_wait per connection under conn_load). With a timer always
/// due within [`TICK`], no connection's timers come first, and the cost is
/// two wake-ups a second per worker.
fn start(i: usize) -> std::io::Result<Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name(format!("netd-worker-{i}"))
        .spawn(move || {
            rt.block_on(async {
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                }
            })
        })?;
    Ok(handle)
}
