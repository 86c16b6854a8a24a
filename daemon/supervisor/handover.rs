//! Hand-over to a successor (`netd --upgrade`): sockets inherited from a
//! previous netd, duplicates of the listening sockets for the next one,
//! and the gate that refuses changes while the listeners are handed over.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use super::{Supervisor, SupervisorError};

impl Supervisor {
    /// Sockets handed over by a previous netd, by listener name: each is
    /// used by the first start of that name whose spec it matches.
    pub fn inherit(&self, sockets: HashMap<String, OwnedFd>) {
        self.inner.inherited.lock().extend(sockets);
    }

    /// Inherited sockets no listener took (closed by the caller).
    pub fn take_unused_inherited(&self) -> HashMap<String, OwnedFd> {
        std::mem::take(&mut *self.inner.inherited.lock())
    }

    /// Duplicates of every running listener's listening socket (TCP, UDP),
    /// by name, for handing over to a successor.
    pub fn listening_sockets(&self) -> Vec<(String, OwnedFd)> {
        self.entries()
            .iter()
            .filter(|e| !e.leaving.load(Ordering::Relaxed))
            .filter_map(|e| {
                let g = e.current_gen();
                let dup = g.socket().as_ref().and_then(|fd| fd.try_clone().ok());
                dup.map(|fd| (e.name.to_string(), fd))
            })
            .collect()
    }

    /// Stop writing the state file (the listeners now belong to a
    /// successor process that writes it).
    pub fn freeze_state(&self) {
        self.inner.frozen.store(true, Ordering::SeqCst);
    }

    /// Begin handing the listeners to a successor: wait for the mutating
    /// calls in flight (their changes are then saved), then refuse new ones
    /// with [`SupervisorError::HandingOver`] and stop writing the state
    /// file. Ended by [`Supervisor::abort_handover`] if the successor fails.
    pub async fn begin_handover(&self) -> Result<(), SupervisorError> {
        let _exclusive = self.inner.mutations.write().await;
        if self.inner.shutdown_accepting.is_cancelled() {
            return Err(SupervisorError::ShuttingDown);
        }
        if self.inner.handing_over.swap(true, Ordering::SeqCst) {
            return Err(SupervisorError::HandingOver);
        }
        self.freeze_state();
        Ok(())
    }

    /// The successor failed: carry on, accepting changes and saving them.
    pub fn abort_handover(&self) {
        // The successor may have written the state files meanwhile.
        if let Some(s) = &self.inner.store {
            s.resync();
        }
        self.inner.frozen.store(false, Ordering::SeqCst);
        self.inner.handing_over.store(false, Ordering::SeqCst);
    }
}
