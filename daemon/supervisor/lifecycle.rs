//! Lifecycle: start (validate and bind on the blocking pool, then register
//! and run), boot and restore from the state file, stop, drain and
//! shutdown; and the building of a generation from a spec and a socket
//! (bound, kept from the generation it replaces, or handed over).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::proto::{self, EventKind, ListenerState};
use crate::services::{BindError, Bound, Service};
use crate::state::Desired;

use super::entry::{Entry, Generation};
use super::labels::validate_labels;
use super::restart::supervise;
use super::{Supervisor, SupervisorError, blocking_failed, validate_name};

/// How a listener's socket is obtained for a new generation.
pub(super) enum Source {
    /// Bind where the spec says.
    Bind,
    /// The sockets of the generation this one replaces in place.
    Same(Vec<OwnedFd>),
    /// Sockets handed over by a previous netd (a group's members in
    /// order), if bound where the spec says.
    Inherited(Vec<OwnedFd>),
}

/// A generation ready to run: built and bound, not yet registered.
pub(super) struct Prepared {
    pub(super) service: Arc<Service>,
    pub(super) bound: Bound,
    pub(super) spec: proto::ListenerSpec,
    pub(super) shown: proto::ListenerSpec,
    /// Runs on the socket of the generation it replaces.
    pub(super) reused: bool,
}

impl Supervisor {
    /// Validate, bind and start a listener, then persist (unless
    /// `ephemeral`). Must be called within a tokio runtime.
    ///
    /// Validation and bind may block (a name is resolved, a pcap file
    /// opened), so they run on the blocking pool with no lock held; the name
    /// is checked before (fast path) and again when the listener is
    /// inserted, and a start that loses a race for the name drops what it
    /// bound and returns AlreadyExists.
    pub async fn start(
        &self,
        name: &str,
        spec: proto::ListenerSpec,
        labels: HashMap<String, String>,
        ephemeral: bool,
    ) -> Result<proto::Listener, SupervisorError> {
        let _mutating = self.mutating().await?;
        let l = self.start_unsaved(name, spec, labels, ephemeral).await?;
        if !ephemeral {
            if let Err(failed) = self.persist_raw(Some(name)).await {
                // Not saved: undo, so that what runs is what a restart
                // brings back, and say which of the two is true.
                return Err(SupervisorError::Persist(
                    match self.stop_unsaved(name).await {
                        Ok(_) => format!(
                            "listener '{name}' was not started (the start was undone): {failed}"
                        ),
                        Err(e) => format!(
                            "listener '{name}' is running but unsaved: {failed}, and undoing the \
                         start failed too ({e}); it will not survive a restart"
                        ),
                    },
                ));
            }
        }
        Ok(l)
    }

    /// Start a config listener at boot (nothing to persist: it is the
    /// base).
    pub async fn start_boot(&self, d: &Desired) -> Result<proto::Listener, SupervisorError> {
        self.start_unsaved(&d.name, d.spec.clone(), d.labels.clone(), false)
            .await
    }

    /// Start a listener restored from the state file. A bind that fails
    /// (the port is taken now) leaves it FAILED and retrying with backoff,
    /// like a listener whose socket failed; a spec that no longer
    /// validates is an error.
    pub async fn restore(&self, d: &Desired) -> Result<proto::Listener, SupervisorError> {
        match self
            .start_unsaved(&d.name, d.spec.clone(), d.labels.clone(), false)
            .await
        {
            Err(SupervisorError::Bind(e)) => {
                let settings = self.inner.settings.clone();
                let spec = d.spec.clone();
                let service = tokio::task::spawn_blocking(move || {
                    Service::from_spec(&spec, &settings).map(Arc::new)
                })
                .await
                .map_err(|e| blocking_failed(&d.name, e))??;
                let spec = Service::normalize(d.spec.clone(), &self.inner.settings);
                let shown = service.shown_spec(spec.clone());
                let entry = self.new_entry(
                    &d.name,
                    d.labels.clone(),
                    false,
                    service.clone(),
                    spec,
                    shown,
                    None,
                    String::new(),
                );
                entry.set_state(ListenerState::Failed);
                self.insert(&d.name, &entry)?;
                let g = entry.current_gen();
                let why = format!("restoring: {e}");
                entry.status().last_error = why.clone();
                entry.tracker.spawn(supervise(entry.clone(), g, Err(why)));
                Ok(entry.to_proto())
            }
            other => other,
        }
    }

    /// Build and bind a generation; `prev`, the listener's current
    /// generation's service on an update, hands over what belongs to the
    /// listener (its kind's counters, upstream health).
    pub(super) async fn prepare(
        &self,
        name: &str,
        spec: proto::ListenerSpec,
        source: Source,
        prev: Option<Arc<Service>>,
    ) -> Result<Prepared, SupervisorError> {
        let settings = self.inner.settings.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let service = Arc::new(match &prev {
                Some(prev) => Service::from_spec_after(&spec, &settings, prev)?,
                None => Service::from_spec(&spec, &settings)?,
            });
            let mut reused = false;
            let bound = match source {
                Source::Bind => service.bind(None)?,
                // The old socket may be dead (the listener failed and is
                // waiting to rebind): then bind where the spec says.
                Source::Same(fds) => match service.adopt(fds, false) {
                    Ok(b) => {
                        reused = true;
                        b
                    }
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e, "the current socket cannot be kept; binding a new one");
                        service.bind(None)?
                    }
                },
                Source::Inherited(fds) => match service.adopt(fds, true) {
                    Ok(b) => {
                        let sockets = b.socket_count();
                        tracing::info!(listener = %name, sockets, "took over the listening socket handed over by the previous netd");
                        b
                    }
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e, "not using the socket handed over; binding a new one");
                        service.bind(None)?
                    }
                },
            };
            service.check_bound(&bound)?;
            let spec = Service::normalize(spec, &settings);
            let shown = service.shown_spec(spec.clone());
            Ok::<_, SupervisorError>(Prepared {
                service,
                bound,
                spec,
                shown,
                reused,
            })
        })
        .await
        .map_err(|e| blocking_failed("listener", e))?
    }

    /// The sockets handed over for `name`, its group's members in order.
    fn take_inherited(&self, name: &str) -> Option<Vec<OwnedFd>> {
        let members = self.inner.inherited.lock().remove(name)?;
        Some(members.into_values().collect())
    }

    /// A generation for `entry` from a prepared service and socket.
    pub(super) fn generation(
        &self,
        entry: &Entry,
        p: Prepared,
    ) -> Result<(Arc<Generation>, Bound), SupervisorError> {
        let Prepared {
            service,
            bound,
            spec,
            shown,
            reused: _,
        } = p;
        let bind_addr = match bound.local_addr() {
            Ok(a) => a,
            Err(e) => {
                let asked = service
                    .listen_addr()
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                return Err(BindError::Other(asked, e).into());
            }
        };
        let sockets = bound.dup_sockets().unwrap_or_default();
        let bound_addr = service.describe_bound(bind_addr);
        let own_udp_addr = bind_addr.filter(|_| matches!(bound, Bound::Udp(_)));
        Ok((
            Arc::new(Generation {
                spec,
                effective: service.effective_spec(&shown),
                shown,
                service,
                bind_addr,
                bound_addr,
                own_udp_addr,
                stop: entry.stop_accepting.child_token(),
                sockets: Mutex::new(sockets),
                ended: CancellationToken::new(),
            }),
            bound,
        ))
    }

    pub(super) async fn start_unsaved(
        &self,
        name: &str,
        spec: proto::ListenerSpec,
        labels: HashMap<String, String>,
        ephemeral: bool,
    ) -> Result<proto::Listener, SupervisorError> {
        validate_name(name)?;
        validate_labels(&labels)?;
        self.check_free(&self.listeners(), name)?;
        let source = match self.take_inherited(name) {
            Some(fds) => Source::Inherited(fds),
            None => Source::Bind,
        };
        let p = self.prepare(name, spec, source, None).await?;
        let entry = self.new_entry(
            name,
            labels,
            ephemeral,
            p.service.clone(),
            p.spec.clone(),
            p.shown.clone(),
            None,
            String::new(),
        );
        let (cur_gen, bound) = self.generation(&entry, p)?;
        *entry.current.lock() = cur_gen.clone();
        self.insert(name, &entry)?;
        if let Some(a) = cur_gen.own_udp_addr {
            self.inner.settings.own_udp_addrs.insert(a);
        }
        cur_gen.store_socket(name);
        let kind = cur_gen.service.kind();
        tracing::info!(listener = name, kind = kind.slug(), addr = %cur_gen.bound_addr, "listener started");
        self.inner.events.publish(
            EventKind::Started,
            name,
            kind,
            format!("listening on {}", cur_gen.bound_addr),
        );
        entry
            .tracker
            .spawn(supervise(entry.clone(), cur_gen, Ok(bound)));
        Ok(entry.to_proto())
    }

    /// Stop a listener, close its sockets and connections, wait for all of
    /// its tasks, remove it, and persist. Returns its final status.
    pub async fn stop(&self, name: &str) -> Result<proto::Listener, SupervisorError> {
        let _mutating = self.mutating().await?;
        let (l, ephemeral) = self.stop_unsaved(name).await?;
        if !ephemeral {
            self.persist_one(name).await?;
        }
        Ok(l)
    }

    pub(super) async fn stop_unsaved(
        &self,
        name: &str,
    ) -> Result<(proto::Listener, bool), SupervisorError> {
        let entry = self.live_entry(name)?;
        if entry.leaving.swap(true, Ordering::SeqCst) {
            return Err(SupervisorError::Leaving(name.to_string()));
        }
        entry.set_state(ListenerState::Stopping);
        entry.current_gen().sockets().clear();
        crate::sys::fdstore::remove_group(name);
        entry.stop_accepting.cancel();
        entry.close_connections.cancel();
        entry.tracker.close();
        entry.tracker.wait().await;
        // Under systemd, the port closes once the store lets go of it.
        crate::sys::fdstore::flushed().await;
        Ok((self.finish(&entry), entry.ephemeral))
    }

    /// Remove a stopped entry and report it.
    fn finish(&self, entry: &Arc<Entry>) -> proto::Listener {
        entry.set_state(ListenerState::Stopped);
        if let Some(a) = entry.current_gen().own_udp_addr {
            self.inner.settings.own_udp_addrs.remove(a);
        }
        let name = &*entry.name;
        let mut listeners = self.listeners();
        if listeners.get(name).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            listeners.remove(name);
        }
        drop(listeners);
        tracing::info!(listener = name, "listener stopped");
        let l = entry.to_proto();
        let s = l.stats.clone().unwrap_or_default();
        self.inner.events.publish(
            EventKind::Stopped,
            name,
            entry.kind(),
            format!(
                "{} connections, {} datagrams, {} bytes in, {} bytes out",
                s.connections_total, s.datagrams_in, s.bytes_in, s.bytes_out
            ),
        );
        l
    }

    /// Stop accepting, wait up to `timeout` for open connections to
    /// finish, close those left, remove the listener. The listener leaves
    /// the persisted set when the drain begins. Returns its final status
    /// and how many connections were closed at the timeout.
    pub async fn drain(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<(proto::Listener, u64), SupervisorError> {
        // Held until the drain is saved, not for the drain itself.
        let mutating = self.mutating().await?;
        let entry = self.live_entry(name)?;
        if entry.leaving.swap(true, Ordering::SeqCst) {
            return Err(SupervisorError::Leaving(name.to_string()));
        }
        entry.set_state(ListenerState::Draining);
        entry.current_gen().sockets().clear();
        crate::sys::fdstore::remove_group(name);
        entry.stop_accepting.cancel();
        entry.tracker.close();
        let open = entry.stats.connections_active.load(Ordering::Relaxed);
        tracing::info!(listener = name, connections = open, timeout = %humantime::format_duration(timeout), "draining");
        self.inner.events.publish(
            EventKind::Draining,
            name,
            entry.kind(),
            format!(
                "stopped accepting; {open} connections open, closed after {}",
                humantime::format_duration(timeout)
            ),
        );
        let saved = if entry.ephemeral {
            Ok(())
        } else {
            self.persist_one(name).await
        };
        drop(mutating);
        let mut closed = 0;
        if tokio::time::timeout(timeout, entry.tracker.wait())
            .await
            .is_err()
        {
            closed = entry.stats.connections_active.load(Ordering::Relaxed);
            tracing::info!(
                listener = name,
                connections = closed,
                "drain timeout; closing what is left"
            );
            entry.close_connections.cancel();
            entry.tracker.wait().await;
        }
        let l = self.finish(&entry);
        saved?;
        Ok((l, closed))
    }

    /// Stop accepting everywhere, let open connections finish for up to
    /// `grace`, then close what is left and wait for every task.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown_accepting.cancel();
        let entries = self.entries();
        for e in &entries {
            e.set_state(ListenerState::Stopping);
            e.current_gen().sockets().clear();
            e.tracker.close();
        }
        let active: u64 = entries
            .iter()
            .map(|e| e.stats.connections_active.load(Ordering::Relaxed))
            .sum();
        if active > 0 {
            tracing::info!(connections = active, grace = %humantime::format_duration(grace), "draining connections");
        }
        let wait_all = || async {
            for e in &entries {
                e.tracker.wait().await;
            }
        };
        if tokio::time::timeout(grace, wait_all()).await.is_err() {
            tracing::warn!("grace period over; closing remaining connections");
            self.inner.shutdown_connections.cancel();
            wait_all().await;
        }
        for e in &entries {
            e.set_state(ListenerState::Stopped);
            if let Some(a) = e.current_gen().own_udp_addr {
                self.inner.settings.own_udp_addrs.remove(a);
            }
        }
        // Dropped (sockets closed) after the lock is released.
        let all = std::mem::take(&mut *self.listeners());
        drop(all);
        self.compact_state().await;
    }
}
