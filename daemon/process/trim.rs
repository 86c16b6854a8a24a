//! Handing freed heap back to the OS after a burst of connections.
//!
//! Each connection's task and buffers come from the allocator; when a burst
//! of thousands of connections closes, glibc keeps the freed memory in its
//! arenas and the daemon's resident size stays at its peak for good. Every
//! few seconds this task compares the connections open across all listeners
//! with the most open at once since the last trim (each listener keeps its
//! peak as connections open, so a burst between two ticks is not missed);
//! when at least `MIN_CLOSED` have gone, it calls `malloc_trim(0)`, which
//! returns free pages (also from the middle of the heap) to the kernel. It
//! costs a walk over the arenas, at most once per tick and only after a
//! burst, never under a steady load. The same goes for control-plane calls:
//! thousands of watch streams closing (up to `max_connections` ×
//! `max_streams` can be open) trigger a trim too, and so do thousands of
//! data-plane descriptors given back to the budget ([`crate::net::fd_budget`]),
//! e.g. a udp-proxy's clients when it stops. A no-op without glibc.
#![allow(unsafe_code)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;

/// How often the open-connection count is looked at.
const TICK: Duration = Duration::from_secs(5);
/// Closed connections (below the peak) that make a trim worthwhile.
const MIN_CLOSED: u64 = 256;

pub async fn run(supervisor: Supervisor, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (open, recent_peak) = supervisor.connections_open_and_peak();
        peak = peak.max(recent_peak);
        let calls_closed = crate::control::conn::take_calls_closed();
        let released = crate::net::fd_budget::take_released();
        if calls_closed >= MIN_CLOSED {
            tracing::debug!(calls_closed, "control calls closed; trimming the heap");
            trim();
        } else if released >= MIN_CLOSED && peak.saturating_sub(open) < MIN_CLOSED {
            // udp-proxy clients (not connections) going away in a burst.
            tracing::debug!(released, "descriptors released; trimming the heap");
            trim();
        } else if peak.saturating_sub(open) >= MIN_CLOSED {
            tracing::debug!(
                peak,
                open,
                "connections closed since the peak; trimming the heap"
            );
            trim();
            peak = open;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only reorganises the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
