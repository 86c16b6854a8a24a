//! Update: a running listener changed to a new spec (and labels). Faults
//! or labels alone change in place with no new generation; otherwise the
//! next generation is built and bound — on the current socket when the kind
//! and address stay, on a new one otherwise — and only then is the old one
//! stopped accepting; its connections finish under its settings.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::{self, EventKind, ListenerState, UpdateAction};
use crate::services::{BindError, Service, SpecError};

use super::entry::{Entry, Generation};
use super::labels::validate_labels;
use super::lifecycle::{Prepared, Source};
use super::restart::supervise;
use super::{Supervisor, SupervisorError, blocking_failed};

impl Supervisor {
    /// Change a running listener to `spec` (and `labels`, when given), in
    /// place when the kind and address stay, else by a graceful replace.
    /// An HTTP token of `"<redacted>"` keeps the current one.
    pub async fn update(
        &self,
        name: &str,
        spec: proto::ListenerSpec,
        labels: Option<HashMap<String, String>>,
    ) -> Result<(proto::Listener, UpdateAction, Vec<String>), SupervisorError> {
        let _mutating = self.mutating().await?;
        let (l, action, changed, ephemeral) = self.update_unsaved(name, spec, labels).await?;
        if action != UpdateAction::Unchanged && !ephemeral {
            self.persist_one(name).await?;
        }
        Ok((l, action, changed))
    }

    pub(super) async fn update_unsaved(
        &self,
        name: &str,
        spec: proto::ListenerSpec,
        labels: Option<HashMap<String, String>>,
    ) -> Result<(proto::Listener, UpdateAction, Vec<String>, bool), SupervisorError> {
        let entry = self.live_entry(name)?;
        let _one_at_a_time = entry.updating.lock().await;
        if let Some(l) = &labels {
            validate_labels(l)?;
        }
        let cur = entry.current_gen();
        let cur_spec = entry.spec();
        let spec = Service::normalize(Service::keep_secrets(spec, &cur.spec), &self.inner.settings);
        let mut changed = crate::spec::diff::changed_fields(&cur_spec, &spec);
        let labels_change = labels.as_ref().is_some_and(|l| *l != entry.labels());
        if labels_change {
            changed.push("labels".into());
        }
        if changed.is_empty() {
            return Ok((
                entry.to_proto(),
                UpdateAction::Unchanged,
                changed,
                entry.ephemeral,
            ));
        }
        let faults_only =
            crate::services::without_faults(&cur.spec) == crate::services::without_faults(&spec);
        let action = if faults_only {
            // Labels or faults only: the faults change in the live table,
            // for open connections too; no new generation.
            if let Some(f) = crate::services::faults_of(&spec) {
                if let Some(t) = crate::services::target_of(&spec) {
                    crate::fault::compile_all(f, t)?;
                }
                entry
                    .faults
                    .replace_all(f)
                    .map_err(|e| SpecError::new(e.to_string()))?;
            }
            UpdateAction::InPlace
        } else {
            let new_faults = crate::services::faults_of(&spec)
                .cloned()
                .unwrap_or_default();
            let new_target = crate::services::target_of(&spec);
            let p = self.prepare_update(&entry, &cur, spec).await?;
            let action = self.switch(&entry, &cur, p)?;
            // Checked when the new generation was built; the kind may have
            // changed (a proxy replaced by a udp-proxy).
            if let Err(e) = entry.faults.reset(new_target, &new_faults) {
                tracing::error!(listener = name, error = %e, "faults not applied");
            }
            // Return once the old generation has stopped accepting (after a
            // replace, its address is free again).
            let _ = tokio::time::timeout(Duration::from_secs(10), cur.ended.cancelled()).await;
            action
        };
        if let Some(l) = labels {
            *entry.labels.lock() = l;
        }
        let how = match action {
            UpdateAction::InPlace => "in place",
            _ => "replaced",
        };
        tracing::info!(listener = name, how, changed = %changed.join(", "), "listener updated");
        self.inner.events.publish(
            EventKind::Updated,
            name,
            entry.kind(),
            format!("{how}: {}", changed.join(", ")),
        );
        Ok((entry.to_proto(), action, changed, entry.ephemeral))
    }

    /// Build and bind the next generation: on the current socket when the
    /// kind and address stay, else on a new one (bound before the old one
    /// stops, so a failure leaves the listener as it was).
    async fn prepare_update(
        &self,
        entry: &Arc<Entry>,
        cur: &Generation,
        spec: proto::ListenerSpec,
    ) -> Result<Prepared, SupervisorError> {
        let same_socket = Service::same_socket(&cur.spec, &spec);
        let source = {
            let sockets = cur.sockets();
            if same_socket && !sockets.is_empty() {
                Source::Same(
                    sockets
                        .iter()
                        .map(OwnedFd::try_clone)
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            BindError::Precondition(format!("cannot duplicate the socket: {e}"))
                        })?,
                )
            } else {
                Source::Bind
            }
        };
        // A new generation that needs what the old one holds (a sniffer
        // writing the same pcap file) can start only once the old one has
        // closed it; else the old one runs until the new one is ready.
        if !Service::needs_old_closed(&cur.spec, &spec) {
            return self
                .prepare(&entry.name, spec, source, Some(cur.service.clone()))
                .await;
        }
        // Validate before stopping anything.
        let settings = self.inner.settings.clone();
        let check = spec.clone();
        tokio::task::spawn_blocking(move || Service::from_spec(&check, &settings).map(|_| ()))
            .await
            .map_err(|e| blocking_failed(&entry.name, e))??;
        cur.stop.cancel();
        // The old capture closes its pcap file when its run ends.
        let _ = tokio::time::timeout(Duration::from_secs(10), cur.ended.cancelled()).await;
        match self
            .prepare(&entry.name, spec, Source::Bind, Some(cur.service.clone()))
            .await
        {
            Ok(p) => Ok(p),
            Err(e) => {
                // Put the old capture back.
                let old = Prepared {
                    service: cur.service.clone(),
                    bound: {
                        let svc = cur.service.clone();
                        tokio::task::spawn_blocking(move || svc.bind(None))
                            .await
                            .map_err(|j| blocking_failed(&entry.name, j))??
                    },
                    spec: cur.spec.clone(),
                    shown: cur.shown.clone(),
                    reused: false,
                };
                let (cur_gen, bound) = self.generation(entry, old)?;
                *entry.current.lock() = cur_gen.clone();
                entry
                    .tracker
                    .spawn(supervise(entry.clone(), cur_gen, Ok(bound)));
                Err(e)
            }
        }
    }

    /// Make `p` the current generation and stop `old` accepting.
    fn switch(
        &self,
        entry: &Arc<Entry>,
        old: &Arc<Generation>,
        p: Prepared,
    ) -> Result<UpdateAction, SupervisorError> {
        let same_socket = p.reused;
        let (cur_gen, bound) = self.generation(entry, p)?;
        if !same_socket {
            // New sockets: a group must not share another listener's port.
            self.check_addr_free(&entry.name, &cur_gen)?;
        }
        // The new registration first, then the old one's removal (even when
        // both are the same address: registrations are counted, and one left
        // behind kept a stopped listener's address in the set).
        if let Some(a) = cur_gen.own_udp_addr {
            self.inner.settings.own_udp_addrs.insert(a);
        }
        if let Some(a) = old.own_udp_addr {
            self.inner.settings.own_udp_addrs.remove(a);
        }
        *entry.current.lock() = cur_gen.clone();
        if !same_socket {
            cur_gen.store_socket(&entry.name);
        }
        {
            let mut st = entry.status();
            if st.state == ListenerState::Failed {
                st.state = ListenerState::Running;
            }
        }
        entry
            .tracker
            .spawn(supervise(entry.clone(), cur_gen, Ok(bound)));
        old.sockets().clear();
        old.stop.cancel();
        Ok(if same_socket {
            UpdateAction::InPlace
        } else {
            UpdateAction::Replaced
        })
    }
}
