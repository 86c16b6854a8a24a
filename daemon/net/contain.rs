//! Panic containment for connection (and HTTP/2 stream) tasks: a panic ends
//! that task only, and is counted and logged with a rate limit.

use crate::telemetry::stats::Stats;

/// Run a connection's (or an HTTP/2 stream's) task so that a panic in it
/// ends only that task: it is counted (`panics`, and `errors`) and logged
/// at most once per [`crate::telemetry::stats::PANIC_LOG_INTERVAL`] per listener, and
/// the listener keeps serving.
pub async fn contain_panic<F: std::future::Future<Output = ()>>(
    task: F,
    stats: &Stats,
    name: &str,
) {
    use futures_util::FutureExt as _;
    if let Err(payload) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        if let Some(suppressed) = stats.record_panic() {
            tracing::error!(listener = name, panic = %what, suppressed, "a connection task panicked; the listener keeps serving");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_contained_counted_and_logged_once_per_interval() {
        let stats = Stats::new();
        for _ in 0..3 {
            contain_panic(async { panic!("boom") }, &stats, "t").await;
        }
        contain_panic(async {}, &stats, "t").await;
        assert_eq!(stats.panics.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 3);
        // Logged for the first; the next two fall in the same interval.
        let fresh = Stats::new();
        assert_eq!(fresh.record_panic(), Some(0));
        assert_eq!(fresh.record_panic(), None);
    }
}
