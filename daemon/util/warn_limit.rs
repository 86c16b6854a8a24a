//! At most one warning line per interval for an event an attacker can
//! repeat at will (a dropped datagram, a refused connection, an accept
//! error): the first occurrence is logged at once, the rest of the interval
//! only counted, and the next line says how many were suppressed.
//!
//! Why: a warning per event turns a flood into a second flood, this time
//! of the log (issue 22 measured 30–40 MB in 20 s); a debug line alone
//! hides an attack from the operator. Lock-free, so it can sit on any data
//! path and in a `static`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The interval used unless a caller picks its own.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One rate-limited warning site. `const`-constructible:
/// `static W: RateLimitedWarn = RateLimitedWarn::new(DEFAULT_INTERVAL);`
#[derive(Debug)]
pub struct RateLimitedWarn {
    interval_ms: u64,
    /// Lines allowed per interval.
    burst: u64,
    /// Lines (and attempts) in the current interval.
    in_window: AtomicU64,
    /// When the next line may be written, in ms since [`epoch`] (0: now).
    next_ms: AtomicU64,
    /// Events not logged since the last line.
    suppressed: AtomicU64,
}

/// A process-wide monotonic origin, so the state fits in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that 0 always means "never logged".
    epoch().elapsed().as_millis() as u64 + 1
}

impl RateLimitedWarn {
    pub const fn new(interval: Duration) -> Self {
        RateLimitedWarn::with_burst(interval, 1)
    }

    /// Up to `burst` lines per interval (for audit lines: a few denials
    /// in a row are each worth a line; a flood is not).
    pub const fn with_burst(interval: Duration, burst: u64) -> Self {
        RateLimitedWarn {
            interval_ms: interval.as_millis() as u64,
            burst,
            in_window: AtomicU64::new(0),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Record one event. `Some(n)` if the caller should log a line now,
    /// with `n` the events suppressed since the previous line; `None` if
    /// the line is suppressed (and counted).
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(now_ms())
    }

    fn hit_at(&self, now: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.in_window.store(1, Ordering::Relaxed);
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < self.burst {
            return Some(0);
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Events suppressed since the last line (for a final summary).
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

impl Default for RateLimitedWarn {
    fn default() -> Self {
        RateLimitedWarn::new(DEFAULT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let w = RateLimitedWarn::new(Duration::from_millis(1000));
        assert_eq!(w.hit_at(1), Some(0));
        for t in 2..500 {
            assert_eq!(w.hit_at(t), None);
        }
        assert_eq!(w.suppressed(), 498);
        assert_eq!(w.hit_at(1001), Some(498));
        assert_eq!(w.hit_at(1002), None);
        assert_eq!(w.hit_at(5000), Some(1));
    }

    #[test]
    fn a_burst_then_one_line_per_interval() {
        let w = RateLimitedWarn::with_burst(Duration::from_millis(1000), 3);
        assert_eq!(w.hit_at(1), Some(0));
        assert_eq!(w.hit_at(2), Some(0));
        assert_eq!(w.hit_at(3), Some(0));
        assert_eq!(w.hit_at(4), None);
        assert_eq!(w.hit_at(5), None);
        assert_eq!(w.hit_at(1001), Some(2));
        assert_eq!(w.hit_at(1002), Some(0));
    }
}
