//! The descriptor budget: how many file descriptors the data plane
//! (accepted connections, proxied upstream connections, udp-proxy client
//! sockets) may hold, so that netd's control plane always has some left.
//!
//! Why: with `RLIMIT_NOFILE` reached by data-plane clients, `netctl list`
//! and `netctl stop` could not even be accepted, so the operator could not
//! stop the listener being abused (issue 22). netd raises its soft limit to
//! the hard one at start ([`raise_fd_limit`]), keeps a
//! [`reserve`](Budget::reserve) of that for the control socket, health,
//! metrics, the Toxiproxy API, state and pcap files and listening sockets
//! started later, and hands the rest to the data plane as permits of one
//! process-wide semaphore ([`data_plane`]). An accept loop takes a permit
//! *before* accepting, so at the budget it pauses (clients wait in the
//! kernel's backlog) instead of taking the reserve; a udp-proxy refuses a
//! new client it has no permit for.
//!
//! A listener's own limits (`max_connections`, `max_clients`) are checked
//! against the budget too: a udp-proxy's `max_clients` may not exceed it
//! (refused as an invalid spec), and a configuration whose listeners'
//! limits add up to more than the budget is warned about at start and by
//! `netd --check-config` ([`crate::services::fd_cost`]; the semaphore keeps
//! it safe either way; the warning says that some listener will pause
//! before its own limit). A leaf: it knows no kind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The smallest reserve kept for the control plane.
pub const MIN_RESERVE: u64 = 64;
/// The reserve as a share of the limit, when that is more than
/// [`MIN_RESERVE`]: 1/20 (5%).
pub const RESERVE_DIVISOR: u64 = 20;
/// What the limit counts as when it is unlimited (Linux caps it at
/// `fs.nr_open`, 1048576 by default).
const UNLIMITED: u64 = 1 << 20;

/// The process's descriptor limit and the share kept for the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// RLIMIT_NOFILE as netd runs with it (the hard limit: netd raises its
    /// soft limit to it at start).
    pub limit: u64,
    /// Kept for the control plane; never handed to the data plane.
    pub reserve: u64,
}

impl Budget {
    /// The budget for a limit of `limit` descriptors: the reserve is 5% of
    /// it, at least [`MIN_RESERVE`], and at most half of it.
    pub fn of(limit: u64) -> Budget {
        let reserve = (limit / RESERVE_DIVISOR).max(MIN_RESERVE).min(limit / 2);
        Budget { limit, reserve }
    }

    /// The budget of this process, from its hard RLIMIT_NOFILE (or its
    /// soft one if the hard one cannot be read).
    pub fn current() -> Budget {
        Budget::of(hard_limit())
    }

    /// Descriptors the data plane may hold, all listeners together.
    pub fn data_plane(&self) -> u64 {
        self.limit.saturating_sub(self.reserve)
    }

    /// Why `wanted` descriptors for one listener's `what` do not fit, if
    /// they do not.
    pub fn check_one(&self, what: &str, wanted: u64) -> Result<(), String> {
        if wanted <= self.data_plane() {
            return Ok(());
        }
        Err(format!(
            "{what} is {wanted}; netd's descriptor budget allows at most {} \
             (RLIMIT_NOFILE {} minus {} kept for the control plane): lower \
             it or raise netd's open-file limit (LimitNOFILE= in the unit)",
            self.data_plane(),
            self.limit,
            self.reserve
        ))
    }
}

/// The hard RLIMIT_NOFILE.
fn hard_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(UNLIMITED)
}

/// Lift the soft limit on open files to the hard limit and return it. The
/// systemd unit sets `LimitNOFILE=65536`; this covers netd started any
/// other way.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim)?;
    }
    // Unlimited (RLIM_INFINITY) reads as u64::MAX, as libc's rlim_t.
    Ok(lim.current.unwrap_or(u64::MAX))
}

static DATA_PLANE: OnceLock<Arc<Semaphore>> = OnceLock::new();
/// The permits [`DATA_PLANE`] was created with.
static CAPACITY: AtomicU64 = AtomicU64::new(0);

/// Size the data plane's semaphore: the budget less the descriptors open
/// now (netd's own: stdio, the runtime, the log). Called once at start,
/// before the runtime, after the soft limit was raised; without it the
/// first use sizes it without that count.
pub fn init() -> u64 {
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let permits = Budget::current().data_plane().saturating_sub(open);
    if DATA_PLANE.get().is_none() {
        let _ = DATA_PLANE.set(semaphore(permits));
    }
    capacity()
}

fn semaphore(permits: u64) -> Arc<Semaphore> {
    let n = usize::try_from(permits)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS);
    CAPACITY.store(n as u64, Ordering::Relaxed);
    Arc::new(Semaphore::new(n))
}

/// Descriptors the data plane may hold in all (`/metrics`
/// `netd_descriptor_budget`).
pub fn capacity() -> u64 {
    data_plane();
    CAPACITY.load(Ordering::Relaxed)
}

/// Descriptors of the budget not held now (`/metrics`
/// `netd_descriptor_budget_available`; 0 means accept loops are paused).
pub fn available() -> u64 {
    data_plane().available_permits() as u64
}

/// The process-wide permits of the data plane: one per descriptor.
pub fn data_plane() -> &'static Arc<Semaphore> {
    DATA_PLANE.get_or_init(|| semaphore(Budget::current().data_plane()))
}

/// Descriptors' worth of the budget, held for as long as they are open;
/// returned (and counted as released) when dropped.
#[derive(Debug)]
pub struct Permit(OwnedSemaphorePermit);

impl Drop for Permit {
    fn drop(&mut self) {
        RELEASED.fetch_add(self.0.num_permits() as u64, Ordering::Relaxed);
    }
}

/// Descriptors given back since the last [`take_released`].
static RELEASED: AtomicU64 = AtomicU64::new(0);

/// Descriptors the data plane gave back since the previous call: after a
/// burst (thousands of udp-proxy clients gone with a stop, which no
/// connection count shows) the heap is worth trimming ([`crate::process::trim`]).
pub fn take_released() -> u64 {
    RELEASED.swap(0, Ordering::Relaxed)
}

/// Wait for `n` descriptors' worth of the budget (an accept loop's
/// pause). None only if the semaphore were closed, which it never is.
pub async fn acquire(n: u32) -> Option<Permit> {
    data_plane()
        .clone()
        .acquire_many_owned(n)
        .await
        .ok()
        .map(Permit)
}

/// `n` descriptors' worth of the budget if there is that much left now.
pub fn try_acquire(n: u32) -> Option<Permit> {
    data_plane()
        .clone()
        .try_acquire_many_owned(n)
        .ok()
        .map(Permit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_five_percent_at_least_64_at_most_half() {
        assert_eq!(Budget::of(256).reserve, 64);
        assert_eq!(Budget::of(256).data_plane(), 192);
        assert_eq!(Budget::of(65_536).reserve, 3276);
        assert_eq!(Budget::of(100).reserve, 50);
        assert!(Budget::of(1024).check_one("max_clients", 960).is_ok());
        let e = Budget::of(1024)
            .check_one("max_clients", 65_536)
            .unwrap_err();
        assert!(e.contains("at most 960"), "{e}");
    }
}
