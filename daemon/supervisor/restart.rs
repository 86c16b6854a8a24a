//! Restart with backoff: the task that runs one generation's service and,
//! when it fails or panics, marks the listener FAILED and rebinds on the
//! same address, waiting 100 ms doubling to 30 s between tries; a run that
//! lasted a minute resets the wait.

use std::sync::Arc;
use std::time::Duration;

use crate::proto::{EventKind, ListenerState};
use crate::services::Bound;

use super::entry::{Entry, Generation};
use super::{SupervisorError, blocking_failed, panic_message};

/// The first wait before a rebind, and the longest.
pub(super) const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the backoff.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Run a generation's service; on failure, mark the listener FAILED and
/// rebind with backoff until it runs again, or until this generation is
/// stopped (the listener stopped, or an update replaced the generation).
/// `first` is the bound socket, or why there is none yet (a restored
/// listener whose address was taken).
pub(super) async fn supervise(
    entry: Arc<Entry>,
    cur_gen: Arc<Generation>,
    first: Result<Bound, String>,
) {
    let _ended = cur_gen.ended.clone().drop_guard();
    let current = |entry: &Entry| Arc::ptr_eq(&entry.current_gen(), &cur_gen);
    let mut backoff = BACKOFF_INITIAL;
    let mut next = first;
    'run: loop {
        let error = match next {
            Ok(bound) => {
                // tokio's clock (the same as std's outside tests): the backoff test
                // runs on a paused clock.
                let began = tokio::time::Instant::now();
                let result = entry
                    .tracker
                    .spawn(cur_gen.service.clone().run(bound, entry.ctx(&cur_gen)))
                    .await;
                if cur_gen.stop.is_cancelled() {
                    break;
                }
                if began.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_INITIAL;
                }
                match result {
                    Ok(Ok(())) => "the service stopped unexpectedly".to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(join) => match join.try_into_panic() {
                        Ok(payload) => format!("panicked: {}", panic_message(&*payload)),
                        Err(join) => format!("task ended abnormally: {join}"),
                    },
                }
            }
            Err(e) => e,
        };
        if !current(&entry) {
            break;
        }
        tracing::error!(listener = %entry.name, error = %error, retry_in = ?backoff, "listener failed");
        entry.events.publish(
            EventKind::Failed,
            &entry.name,
            cur_gen.service.kind(),
            error.clone(),
        );
        {
            let mut st = entry.status();
            st.state = ListenerState::Failed;
            st.last_error = error;
        }
        loop {
            tokio::select! {
                _ = cur_gen.stop.cancelled() => break 'run,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // Off the runtime: a sniffer's bind opens its pcap file. A stop
            // meanwhile does not wait for it; what it binds is then dropped.
            let rebind = tokio::task::spawn_blocking({
                let (service, addr) = (cur_gen.service.clone(), cur_gen.bind_addr);
                move || service.bind(addr)
            });
            let rebound = tokio::select! {
                _ = cur_gen.stop.cancelled() => break 'run,
                r = rebind => match r {
                    Ok(r) => r.map_err(SupervisorError::from),
                    Err(e) => Err(blocking_failed(&entry.name, e)),
                },
            };
            match rebound {
                Ok(b) => {
                    *cur_gen.sockets() = b.dup_sockets().unwrap_or_default();
                    cur_gen.store_socket(&entry.name);
                    next = Ok(b);
                    let (restarts, cause) = {
                        let mut st = entry.status();
                        st.state = ListenerState::Running;
                        st.restarts += 1;
                        (st.restarts, st.last_error.clone())
                    };
                    tracing::info!(listener = %entry.name, restarts, "listener restarted");
                    entry.events.publish(
                        EventKind::Restarted,
                        &entry.name,
                        cur_gen.service.kind(),
                        format!("restart {restarts} after: {cause}"),
                    );
                    continue 'run;
                }
                Err(e) => {
                    tracing::warn!(listener = %entry.name, error = %e, retry_in = ?backoff, "restart failed");
                    entry.status().last_error = format!("restart failed: {e}");
                }
            }
        }
    }
    cur_gen.sockets().clear();
}
