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
    /// Connection tasks that panicked (also counted in `errors`).
    pub panics: AtomicU64,
    /// `panics` when a panic was last logged, and when (ms since `epoch`).
    panics_logged: AtomicU64,
    panic_logged_at_ms: AtomicU64,
    /// Most connections open at once since [`Stats::take_peak`] last ran
    /// (not exported; the heap trimmer reads it).
    peak_active: AtomicU64,
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
        #[cfg(not(feature = "bench-no-counters"))]
        {
            let open = self.connections_active.fetch_add(1, Relaxed) + 1;
            self.peak_active.fetch_max(open, Relaxed);
        }
        ConnectionGuard(self.clone())
    }

    /// Count a panic of a connection task. Returns Some(number of panics
    /// not logged since the last log line) when this one should be logged:
    /// at most once per [`PANIC_LOG_INTERVAL`], so a client that triggers
    /// a panic per request cannot flood the log.
    pub fn record_panic(&self) -> Option<u64> {
        let n = self.panics.fetch_add(1, Relaxed) + 1;
        self.errors.fetch_add(1, Relaxed);
        let now = u64::try_from(panic_epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.panic_logged_at_ms.load(Relaxed);
        let first = self.panics_logged.load(Relaxed) == 0;
        if (first || now.saturating_sub(last) >= PANIC_LOG_INTERVAL.as_millis() as u64)
            && self
                .panic_logged_at_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let before = self.panics_logged.swap(n, Relaxed);
            return Some(n.saturating_sub(before).saturating_sub(1));
        }
        None
    }

    /// The most connections open at once since the last call; starts the
    /// next period at the number open now.
    pub fn take_peak(&self) -> u64 {
        let open = self.connections_active.load(Relaxed);
        self.peak_active.swap(open, Relaxed).max(open)
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
            panics: self.panics.load(Relaxed),
            faults: Vec::new(),
            tls: None,
            detail: None,
        }
    }
}

/// A panicking connection task is logged at most once per this interval
/// per listener.
pub const PANIC_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

fn panic_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
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

/// A lock-free latency histogram: log-scale buckets, 8 per power of two
/// (about 9% apart), from 1 µs to 71 minutes (longer lands in the last). Recording is one relaxed
/// atomic add; quantiles are read from a snapshot of the buckets and are the
/// upper bound of the bucket the quantile falls in.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

const SUB_BUCKETS: u32 = 8;
const HIST_BUCKETS: usize = 32 * SUB_BUCKETS as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..HIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn index(micros: u64) -> usize {
        let v = micros.max(1);
        let log = 63 - v.leading_zeros(); // floor(log2 v)
        // Position within [2^log, 2^(log+1)) in SUB_BUCKETS linear steps.
        let frac = if log >= 3 {
            ((v >> (log - 3)) & 0b111) as u32
        } else {
            ((v << (3 - log)) & 0b111) as u32
        };
        ((log * SUB_BUCKETS + frac) as usize).min(HIST_BUCKETS - 1)
    }

    /// Upper bound, in microseconds, of bucket `i`.
    fn upper(i: usize) -> f64 {
        let log = (i as u32) / SUB_BUCKETS;
        let frac = (i as u32) % SUB_BUCKETS;
        2f64.powi(log as i32) * (1.0 + (frac + 1) as f64 / SUB_BUCKETS as f64)
    }

    #[inline]
    pub fn record(&self, d: std::time::Duration) {
        let micros = d.as_micros().min(u64::MAX as u128) as u64;
        Stats::add(&self.buckets[Self::index(micros)], 1);
    }

    /// Quantiles (each in 0..=1) in milliseconds; 0 when nothing was recorded.
    pub fn quantiles_ms<const N: usize>(&self, qs: [f64; N]) -> [f64; N] {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let mut out = [0.0; N];
        if total == 0 {
            return out;
        }
        for (o, q) in out.iter_mut().zip(qs) {
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    *o = Self::upper(i) / 1000.0;
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_quantiles_bound_the_truth() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let [p50, p90, p99] = h.quantiles_ms([0.5, 0.9, 0.99]);
        // Upper bounds within one bucket (12.5%) of the exact values.
        assert!((50.0..=50.0 * 1.125).contains(&p50), "{p50}");
        assert!((90.0..=90.0 * 1.125).contains(&p90), "{p90}");
        assert!((99.0..=99.0 * 1.125).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantiles_ms([0.5]), [0.0]);
        for micros in [1u64, 2, 7, 8, 9, 1000, 1 << 31] {
            let i = Histogram::index(micros);
            assert!(Histogram::upper(i) >= micros as f64, "{micros}");
            if i > 0 {
                assert!(Histogram::upper(i - 1) <= micros as f64, "{micros}");
            }
        }
    }
}
