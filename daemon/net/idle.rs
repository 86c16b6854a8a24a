//! The per-connection idle timer that is re-armed lazily.

use std::time::Duration;

/// For a per-connection idle timer that is re-armed only when it fires
/// (reads and writes just note the time): true if the connection really
/// has been idle for `limit` since `last`; otherwise the timer is re-armed
/// for `last + limit`.
pub fn idle_expired(
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    last: tokio::time::Instant,
    limit: Duration,
) -> bool {
    let due = last + limit;
    if tokio::time::Instant::now() >= due {
        return true;
    }
    timer.reset(due);
    false
}
