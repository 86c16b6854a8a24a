//! Hand-over to a successor (`netd --upgrade`): sockets inherited from a
//! previous netd, duplicates of the listening sockets for the next one,
//! and the gate that refuses changes while the listeners are handed over.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use super::{Supervisor, SupervisorError};

impl Supervisor {
    /// Sockets handed over by a previous netd, by name: a listener's name,
    /// or `name@i` for the other members of its group
    /// ([`crate::sys::fdstore::member_name`]). A group is used by the
    /// first start of that name whose spec it matches.
    pub fn inherit(&self, sockets: HashMap<String, OwnedFd>) {
        let mut inherited = self.inner.inherited.lock();
        for (name, fd) in sockets {
            let (base, i) = crate::sys::fdstore::split_member(&name);
            inherited.entry(base.to_string()).or_default().insert(i, fd);
        }
    }

    /// Inherited sockets no listener took (closed by the caller), by the
    /// names they were handed over with.
    pub fn take_unused_inherited(&self) -> Vec<(String, OwnedFd)> {
        std::mem::take(&mut *self.inner.inherited.lock())
            .into_iter()
            .flat_map(|(name, members)| {
                members
                    .into_iter()
                    .map(move |(i, fd)| (crate::sys::fdstore::member_name(&name, i), fd))
            })
            .collect()
    }

    /// Duplicates of every running listener's listening sockets (TCP,
    /// UDP), by name (`name`, then `name@1`, ... for the members of a
    /// group), for handing over to a successor.
    pub fn listening_sockets(&self) -> Vec<(String, OwnedFd)> {
        let mut out = Vec::new();
        for e in self.entries() {
            if e.leaving.load(Ordering::Relaxed) {
                continue;
            }
            let g = e.current_gen();
            for (i, fd) in g.sockets().iter().enumerate() {
                if let Ok(dup) = fd.try_clone() {
                    out.push((crate::sys::fdstore::member_name(&e.name, i), dup));
                }
            }
        }
        out
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
