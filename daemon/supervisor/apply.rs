//! Apply and reload: a desired set compared with the running set gives a
//! plan (delete / update / replace / create / unchanged), every entry
//! validated before anything changes; the plan is then carried out with the
//! lifecycle and update operations and saved once. Reload applies the new
//! config's listeners with the state file's overlay on top.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::proto::{self, PlanAction};
use crate::services::{Service, Settings, SpecError};
use crate::state::Desired;

use super::entry::Entry;
use super::labels::validate_labels;
use super::{Supervisor, SupervisorError, blocking_failed, validate_name};

/// Apply's treatment of running listeners missing from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Leave them.
    None,
    /// Delete them all (`netctl apply --prune`).
    All,
    /// Delete those that are persisted; leave ephemeral ones (reload).
    Persistent,
}

/// One step of an apply plan.
#[derive(Debug, Clone)]
struct Step {
    item: proto::PlanItem,
    desired: Option<Desired>,
}

pub(super) fn normalize_all(list: Vec<Desired>, settings: &Settings) -> Vec<Desired> {
    list.into_iter()
        .map(|mut d| {
            d.spec = Service::normalize(d.spec, settings);
            d
        })
        .collect()
}

impl Supervisor {
    /// Compare `entries` with the running set and, unless `dry_run`, carry
    /// out the plan: deletes, then replaces and updates, then creates.
    /// Every entry is validated first; nothing changes if one is invalid.
    /// Stops at the first item that fails (it and the rest carry the
    /// error). Returns the plan and whether all of it was applied.
    pub async fn apply(
        &self,
        entries: Vec<Desired>,
        prune: Prune,
        dry_run: bool,
    ) -> Result<(Vec<proto::PlanItem>, bool), SupervisorError> {
        let _mutating = if dry_run {
            None
        } else {
            Some(self.mutating().await?)
        };
        self.apply_held(entries, prune, dry_run).await
    }

    /// [`Supervisor::apply`] for a caller that holds `mutating`.
    async fn apply_held(
        &self,
        entries: Vec<Desired>,
        prune: Prune,
        dry_run: bool,
    ) -> Result<(Vec<proto::PlanItem>, bool), SupervisorError> {
        let steps = self.plan(entries, prune).await?;
        if dry_run {
            return Ok((steps.into_iter().map(|s| s.item).collect(), false));
        }
        let mut out = Vec::with_capacity(steps.len());
        let mut failed: Option<String> = None;
        let mut changed_persistent = false;
        for mut step in steps {
            if let Some(f) = &failed {
                if step.item.action() != PlanAction::Unchanged {
                    step.item.error = format!("not applied: {f}");
                }
                out.push(step.item);
                continue;
            }
            let name = step.item.name.clone();
            let r: Result<(), SupervisorError> = match (step.item.action(), step.desired.take()) {
                (PlanAction::Delete, _) => self.stop_unsaved(&name).await.map(|(_, eph)| {
                    changed_persistent |= !eph;
                }),
                (PlanAction::Create, Some(d)) => self
                    .start_unsaved(&d.name, d.spec, d.labels, false)
                    .await
                    .map(|_| changed_persistent = true),
                (PlanAction::Update | PlanAction::Replace, Some(d)) => self
                    .update_unsaved(&d.name, d.spec, Some(d.labels))
                    .await
                    .map(|_| changed_persistent = true),
                _ => Ok(()),
            };
            if let Err(e) = r {
                step.item.error = e.to_string();
                failed = Some(format!("'{name}' failed: {e}"));
            }
            out.push(step.item);
        }
        if changed_persistent {
            self.persist().await?;
        }
        Ok((out, failed.is_none()))
    }

    /// The plan for `apply`, every entry validated.
    async fn plan(
        &self,
        entries: Vec<Desired>,
        prune: Prune,
    ) -> Result<Vec<Step>, SupervisorError> {
        self.check_entries(&entries)?;
        // Specs, with "<redacted>" tokens resolved against the running
        // listener of the same name.
        let running: BTreeMap<String, Arc<Entry>> = self.listeners().clone();
        let entries: Vec<Desired> = entries
            .into_iter()
            .map(|mut d| {
                if let Some(e) = running.get(&d.name) {
                    d.spec = Service::keep_secrets(d.spec, &e.current_gen().spec);
                }
                d.spec = Service::normalize(d.spec, &self.inner.settings);
                d
            })
            .collect();
        self.check_specs(&entries).await?;

        let mut deletes = Vec::new();
        let mut changes = Vec::new();
        let mut creates = Vec::new();
        let mut unchanged = Vec::new();
        let kind_of = |spec: &proto::ListenerSpec| Service::spec_kind(spec) as i32;
        for d in entries {
            let item = |action: PlanAction, detail: String| proto::PlanItem {
                name: d.name.clone(),
                action: action as i32,
                kind: kind_of(&d.spec),
                detail,
                error: String::new(),
            };
            match running.get(&d.name) {
                None => creates.push(Step {
                    item: item(PlanAction::Create, String::new()),
                    desired: Some(d),
                }),
                Some(e) if e.leaving.load(Ordering::Relaxed) => {
                    return Err(SupervisorError::Leaving(d.name.clone()));
                }
                Some(e) => {
                    let cur = e.current_gen();
                    let mut changed = crate::spec::diff::changed_fields(&e.spec(), &d.spec);
                    if e.labels() != d.labels {
                        changed.push("labels".into());
                    }
                    if changed.is_empty() {
                        unchanged.push(Step {
                            item: item(PlanAction::Unchanged, String::new()),
                            desired: None,
                        });
                    } else {
                        let action = if Service::same_socket(&cur.spec, &d.spec) {
                            PlanAction::Update
                        } else {
                            PlanAction::Replace
                        };
                        changes.push(Step {
                            item: item(action, changed.join(", ")),
                            desired: Some(d),
                        });
                    }
                }
            }
        }
        if prune != Prune::None {
            let wanted: std::collections::HashSet<String> = changes
                .iter()
                .chain(&creates)
                .chain(&unchanged)
                .map(|s| s.item.name.clone())
                .collect();
            for (name, e) in &running {
                if wanted.contains(name) || e.leaving.load(Ordering::Relaxed) {
                    continue;
                }
                if prune == Prune::Persistent && e.ephemeral {
                    continue;
                }
                deletes.push(Step {
                    item: proto::PlanItem {
                        name: name.clone(),
                        action: PlanAction::Delete as i32,
                        kind: e.kind() as i32,
                        detail: String::new(),
                        error: String::new(),
                    },
                    desired: None,
                });
            }
        }
        Ok(deletes
            .into_iter()
            .chain(changes)
            .chain(creates)
            .chain(unchanged)
            .collect())
    }

    /// The plan's first step: the count, the names and the labels of
    /// `entries`, each name given once.
    fn check_entries(&self, entries: &[Desired]) -> Result<(), SupervisorError> {
        if entries.len() > self.inner.max_listeners {
            return Err(SpecError::new(format!(
                "{} listeners given; max_listeners is {}",
                entries.len(),
                self.inner.max_listeners
            ))
            .into());
        }
        let mut seen = std::collections::HashSet::new();
        for d in entries {
            validate_name(&d.name)?;
            validate_labels(&d.labels)?;
            if !seen.insert(d.name.clone()) {
                return Err(SpecError::new(format!("listener '{}' is given twice", d.name)).into());
            }
        }
        Ok(())
    }

    /// The plan's second step, on the blocking pool (a name may be
    /// resolved): every spec builds a service, and no two listen addresses
    /// clash.
    async fn check_specs(&self, entries: &[Desired]) -> Result<(), SupervisorError> {
        let settings = self.inner.settings.clone();
        let check = entries.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut addrs: Vec<(&str, SocketAddr, bool)> = Vec::new();
            for d in &check {
                Service::from_spec(&d.spec, &settings)
                    .map_err(|e| SpecError::new(format!("listener '{}': {e}", d.name)))?;
                if let Some((a, transport)) = Service::spec_listen_addr(&d.spec) {
                    let udp = transport == crate::services::Transport::Udp;
                    if let Some((other, ..)) = addrs
                        .iter()
                        .find(|(_, b, u)| *u == udp && crate::net::bind::addrs_clash(*b, a))
                    {
                        return Err(SpecError::new(format!(
                            "listener '{}': {a} clashes with listener '{other}'",
                            d.name
                        )));
                    }
                    addrs.push((&d.name, a, udp));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| blocking_failed("apply", e))??;
        Ok(())
    }

    /// Re-read configuration: make the running set the new config's
    /// listeners with the runtime changes (the state file's overlay) on
    /// top; ephemeral listeners are left alone. `base` becomes the new
    /// base. Returns the plan as carried out.
    pub async fn reload(
        &self,
        base: Vec<Desired>,
    ) -> Result<(Vec<proto::PlanItem>, bool), SupervisorError> {
        let _mutating = self.mutating().await?;
        let base = normalize_all(base, &self.inner.settings);
        let overlay = self.overlay();
        let desired = overlay.on(&base);
        // Validate (and plan) before the base changes.
        self.plan(desired.clone(), Prune::Persistent).await?;
        let old_base = std::mem::replace(&mut *self.inner.base.lock(), base);
        let r = self.apply_held(desired, Prune::Persistent, false).await;
        if r.is_err() {
            // Nothing of this plan could be checked as applied; keep the
            // old base so the state file stays relative to what runs.
            *self.inner.base.lock() = old_base;
        } else {
            // Unchanged plans still move the base: save the new overlay.
            self.persist().await?;
        }
        r
    }
}
