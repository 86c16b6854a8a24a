//! Persistence: each change's effect on the running set's difference from
//! the config's listeners (the overlay) made durable before the call
//! returns, by group commit, on the blocking pool with a deadline. A change
//! to one listener appends the overlay's new value for its name to the
//! state journal (O(1)); a change of the base or of many at once rewrites
//! the state file from the whole running set (see [`crate::state`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::state::{Change, Desired, Overlay, Store, change_of};

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

    /// What the overlay holds for `name` now: its entry if it runs (and
    /// differs from the config's), "removed" if it is a config listener
    /// that does not run, else nothing. O(1) in the number of listeners
    /// (a registry lookup; the base is the config's few).
    fn overlay_of(&self, name: &str) -> Change {
        let entry = self.listeners().get(name).cloned();
        let running = entry
            .filter(|e| !e.ephemeral && !e.leaving.load(Ordering::Relaxed))
            .map(|e| e.desired());
        let base = self.inner.base.lock();
        change_of(running, base.iter().find(|d| d.name == name))
    }

    /// Save the state from the registry as it is now (the whole of it:
    /// after a change of the base or of many listeners); returns once a
    /// write that includes the caller's change is on disk.
    pub(super) async fn persist(&self) -> Result<(), SupervisorError> {
        self.persist_of(None).await
    }

    /// Save the change the caller made to listener `name` (it is in the
    /// registry already).
    pub(super) async fn persist_one(&self, name: &str) -> Result<(), SupervisorError> {
        self.persist_of(Some(name)).await
    }

    async fn persist_of(&self, name: Option<&str>) -> Result<(), SupervisorError> {
        self.persist_raw(name).await.map_err(|failed| {
            SupervisorError::Persist(format!(
                "the change is live but unsaved: {failed}; it will not survive a restart"
            ))
        })
    }

    /// [`Supervisor::persist_one`] (or [`Supervisor::persist`] with None),
    /// with the failure described without saying what became of the change
    /// (the caller knows).
    ///
    /// Group commit: the caller notes its name with the store, then queues
    /// on `persisting`; the one that gets it writes every name noted so far
    /// (each as the registry holds it then, in one fdatasync), and the
    /// calls it covered find their change saved and return without
    /// writing again.
    pub(super) async fn persist_raw(&self, name: Option<&str>) -> Result<(), PersistFailed> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        if self.inner.frozen.load(Ordering::SeqCst) {
            return Ok(());
        }
        match name {
            Some(n) => store.note(n),
            None => store.note_all(),
        }
        // Taken after this caller's change is in the registry and noted.
        let asked = self.inner.persist_asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _one_at_a_time = self.inner.persisting.lock().await;
        if self.inner.persist_saved.load(Ordering::SeqCst) >= asked {
            return Ok(());
        }
        // Every call counted up to here noted its change before the write
        // below takes the notes.
        let covers = self.inner.persist_asked.load(Ordering::SeqCst);
        let this = self.clone();
        // On the blocking pool with a deadline: a state directory on a hung
        // mount fails the call instead of holding every change forever.
        let r = crate::sys::safe_file::off_runtime(
            "writing the state file",
            STATE_SAVE_DEADLINE,
            move || match this.inner.store.as_ref() {
                Some(s) => s.write_noted(|| this.overlay(), |n| this.overlay_of(n)),
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
                let path = store.path();
                tracing::error!(path = %path.display(), error = %error, "cannot write the state file");
                Err(PersistFailed { path, error })
            }
        }
    }

    /// At a clean shutdown: fold the state journal into the state file
    /// (unless the files belong to a successor now).
    pub(super) async fn compact_state(&self) {
        let Some(_) = &self.inner.store else {
            return;
        };
        if self.inner.frozen.load(Ordering::SeqCst) {
            return;
        }
        let _one_at_a_time = self.inner.persisting.lock().await;
        let this = self.clone();
        let r = crate::sys::safe_file::off_runtime(
            "compacting the state journal",
            STATE_SAVE_DEADLINE,
            move || match this.inner.store.as_ref() {
                Some(s) => s.compact_now(),
                None => Ok(()),
            },
        )
        .await;
        if let Err(error) = r {
            tracing::warn!(error = %error, "cannot fold the state journal into the state file; the next start replays it");
        }
    }
}

impl Supervisor {
    /// The state file changes are persisted to; None when nothing is.
    pub fn state_file(&self) -> Option<std::path::PathBuf> {
        self.inner.store.as_ref().map(Store::path)
    }
}
