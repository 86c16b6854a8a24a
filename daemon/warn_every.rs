//! Warnings on an attack path, at most one line per interval.
//!
//! A refused connection, a dropped datagram or a failed accept can happen
//! thousands of times a second when someone wants it to; a WARN line for
//! each fills the disk (30-40 MB in 20 s was seen on the control plane).
//! [`WarnEvery`] lets the first event of an interval through and counts
//! the rest, which the next line reports as `suppressed`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The interval used for the warnings of netd's own endpoints.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One rate-limited warning site.
#[derive(Debug)]
pub struct WarnEvery {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnEvery {
    pub const fn new(interval: Duration) -> WarnEvery {
        WarnEvery {
            interval,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Call `log` with the number of events suppressed since the last
    /// line if an interval has passed since then; otherwise count this
    /// event as suppressed. Returns whether `log` was called.
    pub fn warn(&self, log: impl FnOnce(u64)) -> bool {
        let now = Instant::now();
        let suppressed = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match s.last {
                Some(t) if now.duration_since(t) < self.interval => {
                    s.suppressed += 1;
                    return false;
                }
                _ => {
                    s.last = Some(now);
                    std::mem::take(&mut s.suppressed)
                }
            }
        };
        log(suppressed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_with_the_count_suppressed() {
        let w = WarnEvery::new(Duration::from_secs(10));
        let mut lines = Vec::new();
        for _ in 0..1000 {
            w.warn(|n| lines.push(n));
        }
        assert_eq!(lines, vec![0]);
        tokio::time::advance(Duration::from_secs(11)).await;
        w.warn(|n| lines.push(n));
        assert_eq!(lines, vec![0, 999]);
        assert!(!w.warn(|n| lines.push(n)));
    }
}
