//! Per-listener traffic counters.
//!
//! The data path bumps relaxed atomics and never takes a lock; readers take a
//! [`snapshot`](Stats::snapshot) whenever they want one. Counters only ever
//! grow, except `connections_active`, which is a gauge kept by
//! [`ConnectionGuard`] so that an early return or a panic cannot leak it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::proto;

#[derive(Debug, Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub errors: AtomicU64,
}

impl Stats {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        #[cfg(not(feature = "bench-no-counters"))]
        counter.fetch_add(n, Relaxed);
        #[cfg(feature = "bench-no-counters")]
        let _ = (counter, n);
    }

    /// Count an accepted connection and return a guard that keeps it in
    /// `connections_active` until dropped.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        Self::add(&self.connections_total, 1);
        Self::add(&self.connections_active, 1);
        ConnectionGuard(self.clone())
    }

    pub fn snapshot(&self) -> proto::ListenerStats {
        proto::ListenerStats {
            connections_total: self.connections_total.load(Relaxed),
            connections_active: self.connections_active.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            datagrams_in: self.datagrams_in.load(Relaxed),
            datagrams_out: self.datagrams_out.load(Relaxed),
            errors: self.errors.load(Relaxed),
            detail: None,
        }
    }
}

/// Decrements `connections_active` when the connection's task ends, however
/// it ends.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Stats>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        #[cfg(not(feature = "bench-no-counters"))]
        self.0.connections_active.fetch_sub(1, Relaxed);
    }
}
