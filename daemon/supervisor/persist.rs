//! Persistence: the running set's difference from the config's listeners
//! (the overlay) written to the state file after each change, by group
//! commit, on the blocking pool with a deadline.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::state::{Desired, Overlay, Store};

use super::{Supervisor, SupervisorError};

/// How long a change waits for the state file to be written.
const STATE_SAVE_DEADLINE: Duration = Duration::from_secs(10);

/// Why the state file could not be written.
#[derive(Debug)]
pub(super) struct PersistFailed {
    path: std::path::PathBuf,
    error: std::io::Error,
}

impl std::fmt::Display for PersistFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the state file {} could not be written ({})",
            self.path.display(),
            self.error
        )
    }
}

impl Supervisor {
    /// The running set's difference from the base (what the state file
    /// holds).
    pub fn overlay(&self) -> Overlay {
        let running: Vec<Desired> = self
            .entries()
            .iter()
            .filter(|e| !e.ephemeral && !e.leaving.load(Ordering::Relaxed))
            .map(|e| e.desired())
            .collect();
        let base = self.inner.base.lock().clone();
        Overlay::between(&base, &running)
    }

    /// Write the state file from the registry as it is now; returns once
    /// a write that includes the caller's change is on disk.
    ///
    /// Group commit: a write reads the whole registry, so one write covers
    /// every change made before it began. Callers queue on `persisting`;
    /// the one that gets it writes for all the calls counted so far, and
    /// those find their change covered and return without writing again.
    /// Concurrent starts of N listeners thus cost far fewer than N writes
    /// of an O(N) file. The overlay is built off the runtime too (O(N)).
    pub(super) async fn persist(&self) -> Result<(), SupervisorError> {
        self.persist_raw().await.map_err(|failed| {
            SupervisorError::Persist(format!(
                "the change is live but unsaved: {failed}; it will not survive a restart"
            ))
        })
    }

    /// [`Supervisor::persist`], with the failure described without
    /// saying what became of the change (the caller knows).
    pub(super) async fn persist_raw(&self) -> Result<(), PersistFailed> {
        let Some(_) = &self.inner.store else {
            return Ok(());
        };
        if self.inner.frozen.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Taken after this caller's change is in the registry.
        let asked = self.inner.persist_asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _one_at_a_time = self.inner.persisting.lock().await;
        if self.inner.persist_saved.load(Ordering::SeqCst) >= asked {
            return Ok(());
        }
        // Every call counted up to here changed the registry before the
        // overlay below reads it.
        let covers = self.inner.persist_asked.load(Ordering::SeqCst);
        let this = self.clone();
        // On the blocking pool with a deadline: a state directory on a hung
        // mount fails the call instead of holding every change forever.
        let r = crate::sys::safe_file::off_runtime(
            "writing the state file",
            STATE_SAVE_DEADLINE,
            move || match this.inner.store.as_ref() {
                Some(s) => s.save_with(|| this.overlay()),
                None => Ok(()),
            },
        )
        .await;
        match r {
            Ok(()) => {
                self.inner.persist_saved.fetch_max(covers, Ordering::SeqCst);
                Ok(())
            }
            Err(error) => {
                let path = self
                    .inner
                    .store
                    .as_ref()
                    .map(|s| s.path())
                    .unwrap_or_default();
                tracing::error!(path = %path.display(), error = %error, "cannot write the state file");
                Err(PersistFailed { path, error })
            }
        }
    }
}

impl Supervisor {
    /// The state file changes are persisted to; None when nothing is.
    pub fn state_file(&self) -> Option<std::path::PathBuf> {
        self.inner.store.as_ref().map(Store::path)
    }
}
