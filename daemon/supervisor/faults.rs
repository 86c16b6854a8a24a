//! Faults: the RPCs that add, change, remove and list a proxy's or
//! udp-proxy's faults. A change goes to the listener's live fault table
//! (so open connections see it too), is announced, and is persisted.

use std::sync::Arc;

use crate::proto::{self, EventKind};
use crate::services::SpecError;

use super::entry::Entry;
use super::{Supervisor, SupervisorError};

fn fault_status(listener: &str, a: &crate::fault::Active) -> proto::FaultStatus {
    proto::FaultStatus {
        listener: listener.to_string(),
        fault: Some(a.spec.clone()),
        stats: Some(a.stats(tokio::time::Instant::now())),
    }
}

impl Supervisor {
    /// The live entry `name`, if its kind takes faults.
    fn fault_entry(&self, name: &str) -> Result<Arc<Entry>, SupervisorError> {
        let e = self.live_entry(name)?;
        if crate::services::target_of(&e.current_gen().spec).is_none() {
            return Err(SupervisorError::NoFaults(name.to_string(), e.kind().slug()));
        }
        Ok(e)
    }

    fn fault_error(name: &str, e: crate::fault::TableError) -> SupervisorError {
        use crate::fault::TableError as T;
        match e {
            T::Exists(f) => SupervisorError::FaultExists(name.into(), f),
            T::NotFound(f) => SupervisorError::FaultNotFound(name.into(), f),
            T::Full | T::Invalid(_) => SupervisorError::InvalidSpec(SpecError::new(e.to_string())),
        }
    }

    /// Persist a fault change, and announce it.
    async fn fault_changed(
        &self,
        entry: &Entry,
        kind: EventKind,
        what: &str,
    ) -> Result<(), SupervisorError> {
        tracing::info!(listener = %entry.name, "{what}");
        self.inner
            .events
            .publish(kind, &entry.name, entry.kind(), what.to_string());
        if entry.ephemeral {
            return Ok(());
        }
        self.persist_one(&entry.name).await
    }

    /// Add a fault at the end of a proxy's or udp-proxy's list; it applies
    /// at once, to open connections too.
    pub async fn add_fault(
        &self,
        name: &str,
        fault: proto::Fault,
    ) -> Result<proto::FaultStatus, SupervisorError> {
        self.put_fault(name, fault, false).await
    }

    /// Replace a fault by name (keeping its counters; its window starts
    /// again).
    pub async fn update_fault(
        &self,
        name: &str,
        fault: proto::Fault,
    ) -> Result<proto::FaultStatus, SupervisorError> {
        self.put_fault(name, fault, true).await
    }

    async fn put_fault(
        &self,
        name: &str,
        fault: proto::Fault,
        update: bool,
    ) -> Result<proto::FaultStatus, SupervisorError> {
        let _mutating = self.mutating().await?;
        let entry = self.fault_entry(name)?;
        let _one_at_a_time = entry.updating.lock().await;
        let (put, kind, verb) = if update {
            (
                entry.faults.update(fault),
                EventKind::FaultUpdated,
                "changed",
            )
        } else {
            (entry.faults.add(fault), EventKind::FaultAdded, "added")
        };
        let a = put.map_err(|e| Self::fault_error(name, e))?;
        let what = format!(
            "fault {} ({}) {verb}",
            a.fault.name,
            a.fault.action.type_name()
        );
        self.fault_changed(&entry, kind, &what).await?;
        Ok(fault_status(name, &a))
    }

    /// Remove a fault by name, or all of them (`fault` None); their final
    /// counters.
    pub async fn remove_fault(
        &self,
        name: &str,
        fault: Option<&str>,
    ) -> Result<Vec<proto::FaultStats>, SupervisorError> {
        let _mutating = self.mutating().await?;
        let entry = self.fault_entry(name)?;
        let _one_at_a_time = entry.updating.lock().await;
        let gone = entry
            .faults
            .remove(fault)
            .map_err(|e| Self::fault_error(name, e))?;
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = gone.iter().map(|a| a.fault.name.as_str()).collect();
        let what = format!("fault {} removed", names.join(", "));
        self.fault_changed(&entry, EventKind::FaultRemoved, &what)
            .await?;
        let now = tokio::time::Instant::now();
        Ok(gone.iter().map(|a| a.stats(now)).collect())
    }

    /// The faults of one listener (`name`), or of every listener that can
    /// have them, with their counters.
    pub fn list_faults(&self, name: &str) -> Result<Vec<proto::FaultStatus>, SupervisorError> {
        let entries = if name.is_empty() {
            self.entries()
                .into_iter()
                .filter(|e| crate::services::target_of(&e.current_gen().spec).is_some())
                .collect()
        } else {
            vec![self.fault_entry(name)?]
        };
        Ok(entries
            .iter()
            .flat_map(|e| {
                e.faults
                    .current()
                    .faults
                    .iter()
                    .map(|a| fault_status(&e.name, a))
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}
