//! Entries and their status: a listener's registry entry ([`Entry`]: name,
//! labels, counters, faults, tokens, tracker, status) and the generation it
//! runs ([`Generation`]), how each is shown (`to_proto`, `sample`), and the
//! registry's lookups (`entry`, `live_entry`, `entries`, `check_free`,
//! `insert`) and the building of a new entry.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proto::{self, ListenerState};
use crate::services::{Service, ServiceCtx};
use crate::state::Desired;
use crate::telemetry::events::EventBus;
use crate::telemetry::stats::Stats;

use super::{Supervisor, SupervisorError};

/// Mutable part of a listener's status.
#[derive(Debug)]
pub(super) struct Status {
    pub(super) state: ListenerState,
    pub(super) restarts: u32,
    pub(super) last_error: String,
}

/// One service instance of a listener: a spec, a service built from it,
/// and the socket it runs on.
#[derive(Debug)]
pub(super) struct Generation {
    /// As requested, secrets included (what the state file keeps).
    pub(super) spec: proto::ListenerSpec,
    /// As shown: secrets redacted, a pcap path resolved.
    pub(super) shown: proto::ListenerSpec,
    /// As in effect: `shown` with every default filled in.
    pub(super) effective: proto::ListenerSpec,
    pub(super) service: Arc<Service>,
    /// The socket address bound (rebound on restart), if any.
    pub(super) bind_addr: Option<SocketAddr>,
    /// As shown to people: the address, or a sniffer's interface.
    pub(super) bound_addr: String,
    /// The UDP address registered in the settings' `own_udp_addrs`.
    pub(super) own_udp_addr: Option<SocketAddr>,
    /// Stops this generation accepting (a child of the listener's token).
    pub(super) stop: CancellationToken,
    /// Duplicates of the listening sockets (TCP, UDP: one, or every
    /// member of a SO_REUSEPORT group, in order) for in-place updates and
    /// hand-over; replaced when a restart rebinds, dropped when the
    /// generation stops so that the port is really closed. Empty for none.
    pub(super) sockets: Mutex<Vec<OwnedFd>>,
    /// Cancelled when this generation's supervising task has ended (its
    /// socket or capture is closed).
    pub(super) ended: CancellationToken,
}

impl Generation {
    pub(super) fn sockets(&self) -> MutexGuard<'_, Vec<OwnedFd>> {
        self.sockets.lock()
    }

    /// Keep this generation's sockets in systemd's fd store as `name`
    /// (and `name@1`, ... for a group), replacing those there, or drop
    /// the entries if it has none.
    /// (The store duplicates what it keeps and queues it for a thread of
    /// its own: nothing here blocks while the lock is held.)
    pub(super) fn store_socket(&self, name: &str) {
        let sockets = self.sockets();
        if sockets.is_empty() {
            crate::sys::fdstore::remove_group(name);
        } else {
            crate::sys::fdstore::store_group(name, &sockets);
        }
    }
}

/// A listener in the registry: what stays across its generations.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) name: Arc<str>,
    pub(super) labels: Mutex<HashMap<String, String>>,
    /// Not persisted: gone after a restart.
    pub(super) ephemeral: bool,
    /// Stopping or draining: no longer part of the desired set.
    pub(super) leaving: AtomicBool,
    pub(super) current: Mutex<Arc<Generation>>,
    /// Serializes updates of this listener.
    pub(super) updating: tokio::sync::Mutex<()>,
    pub(super) started_at: SystemTime,
    pub(super) stats: Arc<Stats>,
    pub(super) status: Mutex<Status>,
    pub(super) stop_accepting: CancellationToken,
    pub(super) close_connections: CancellationToken,
    pub(super) tracker: TaskTracker,
    pub(super) events: EventBus,
    /// The live faults (proxy, udp-proxy), shared by every generation so a
    /// change reaches open connections too. Generation specs hold the
    /// faults as they were when the generation started; this holds them
    /// as they are (see [`Entry::spec`]).
    pub(super) faults: Arc<crate::fault::FaultTable>,
}

impl Entry {
    pub(super) fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock()
    }

    pub(super) fn set_state(&self, state: ListenerState) {
        self.status().state = state;
    }

    pub(super) fn current_gen(&self) -> Arc<Generation> {
        self.current.lock().clone()
    }

    pub(super) fn labels(&self) -> HashMap<String, String> {
        self.labels.lock().clone()
    }

    pub(super) fn kind(&self) -> proto::ListenerKind {
        self.current_gen().service.kind()
    }

    /// `spec` with the live faults in place of those it was built with.
    pub(super) fn with_live_faults(&self, mut spec: proto::ListenerSpec) -> proto::ListenerSpec {
        if let Some(f) = crate::services::faults_of_mut(&mut spec) {
            *f = self.faults.specs();
        }
        spec
    }

    /// The listener's spec as requested, with its faults as they are now.
    pub(super) fn spec(&self) -> proto::ListenerSpec {
        self.with_live_faults(self.current_gen().spec.clone())
    }

    pub(super) fn desired(&self) -> Desired {
        Desired {
            name: self.name.to_string(),
            spec: self.spec(),
            labels: self.labels(),
        }
    }

    pub(super) fn to_proto(&self) -> proto::Listener {
        let g = self.current_gen();
        let stats = self.stats_of(&g);
        let st = self.status();
        proto::Listener {
            name: self.name.to_string(),
            kind: g.service.kind() as i32,
            spec: Some(self.with_live_faults(g.shown.clone())),
            effective_spec: Some(self.with_live_faults(g.effective.clone())),
            state: st.state as i32,
            bound_addr: g.bound_addr.clone(),
            started_at: Some(self.started_at.into()),
            restarts: st.restarts,
            last_error: st.last_error.clone(),
            labels: self.labels(),
            stats: Some(stats),
            ephemeral: self.ephemeral,
        }
    }

    pub(super) fn stats_of(&self, g: &Generation) -> proto::ListenerStats {
        let mut s = self.stats.snapshot();
        s.detail = g.service.detail_stats();
        s.tls = g.service.tls_stats();
        if self.faults.version() != 0 {
            s.faults = self.faults.stats();
        }
        s
    }

    pub(super) fn sample(&self) -> proto::ListenerStatsSample {
        let g = self.current_gen();
        proto::ListenerStatsSample {
            name: self.name.to_string(),
            kind: g.service.kind() as i32,
            state: self.status().state as i32,
            totals: Some(self.stats_of(&g)),
            rates: None,
        }
    }

    pub(super) fn ctx(&self, g: &Generation) -> ServiceCtx {
        ServiceCtx {
            name: self.name.clone(),
            stats: self.stats.clone(),
            stop_accepting: g.stop.clone(),
            close_connections: self.close_connections.clone(),
            tracker: self.tracker.clone(),
            events: self.events.clone(),
            faults: self.faults.clone(),
        }
    }
}

impl Supervisor {
    pub(super) fn listeners(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.inner.listeners.lock()
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_entry(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        ephemeral: bool,
        service: Arc<Service>,
        spec: proto::ListenerSpec,
        shown: proto::ListenerSpec,
        bind_addr: Option<SocketAddr>,
        bound_addr: String,
    ) -> Arc<Entry> {
        let stop_accepting = self.inner.shutdown_accepting.child_token();
        let faults = Arc::new(crate::fault::FaultTable::new(
            crate::services::target_of(&spec).unwrap_or(crate::fault::Target::Tcp),
        ));
        if let Some(f) = crate::services::faults_of(&spec) {
            // Checked when the service was built from this spec.
            if let Err(e) = faults.replace_all(f) {
                tracing::error!(listener = name, error = %e, "faults not applied");
            }
        }
        let cur_gen = Arc::new(Generation {
            spec,
            effective: service.effective_spec(&shown),
            shown,
            service,
            bind_addr,
            bound_addr,
            own_udp_addr: None,
            stop: stop_accepting.child_token(),
            sockets: Mutex::new(Vec::new()),
            ended: CancellationToken::new(),
        });
        Arc::new(Entry {
            name: name.into(),
            labels: Mutex::new(labels),
            ephemeral,
            leaving: AtomicBool::new(false),
            current: Mutex::new(cur_gen),
            updating: tokio::sync::Mutex::new(()),
            started_at: SystemTime::now(),
            stats: Stats::new(),
            status: Mutex::new(Status {
                state: ListenerState::Running,
                restarts: 0,
                last_error: String::new(),
            }),
            stop_accepting,
            close_connections: self.inner.shutdown_connections.child_token(),
            tracker: TaskTracker::new(),
            events: self.inner.events.clone(),
            faults,
        })
    }

    pub(super) fn insert(&self, name: &str, entry: &Arc<Entry>) -> Result<(), SupervisorError> {
        let mut listeners = self.listeners();
        // Taken meanwhile: the caller drops what it bound.
        self.check_free(&listeners, name)?;
        check_addr_free(&listeners, name, &entry.current_gen())?;
        listeners.insert(name.to_string(), entry.clone());
        Ok(())
    }

    /// [`check_addr_free`] under the registry lock: for an update that
    /// binds `g` anew.
    pub(super) fn check_addr_free(
        &self,
        name: &str,
        g: &Generation,
    ) -> Result<(), SupervisorError> {
        check_addr_free(&self.listeners(), name, g)
    }

    /// AlreadyExists if `name` is taken, ShuttingDown once shutdown began.
    pub(super) fn check_free(
        &self,
        listeners: &BTreeMap<String, Arc<Entry>>,
        name: &str,
    ) -> Result<(), SupervisorError> {
        if self.inner.shutdown_accepting.is_cancelled() {
            return Err(SupervisorError::ShuttingDown);
        }
        if let Some(e) = listeners.get(name) {
            if e.leaving.load(Ordering::Relaxed) {
                return Err(SupervisorError::Leaving(name.to_string()));
            }
            return Err(SupervisorError::AlreadyExists(name.to_string()));
        }
        if listeners.len() >= self.inner.max_listeners {
            return Err(SupervisorError::TooMany(listeners.len()));
        }
        Ok(())
    }

    /// The entry named `name`, cloned out of the registry so that building
    /// its status (a sniffer sorts its flow table) happens unlocked.
    pub(super) fn entry(&self, name: &str) -> Result<Arc<Entry>, SupervisorError> {
        self.listeners()
            .get(name)
            .cloned()
            .ok_or_else(|| SupervisorError::NotFound(name.to_string()))
    }

    /// An entry that is not stopping or draining.
    pub(super) fn live_entry(&self, name: &str) -> Result<Arc<Entry>, SupervisorError> {
        let e = self.entry(name)?;
        if e.leaving.load(Ordering::Relaxed) {
            return Err(SupervisorError::Leaving(name.to_string()));
        }
        Ok(e)
    }

    /// Every entry, sorted by name, cloned out of the registry.
    pub(super) fn entries(&self) -> Vec<Arc<Entry>> {
        self.listeners().values().cloned().collect()
    }
}

/// The transport of the generation's kind, for address clashes (None for
/// a capture).
fn ip_transport(g: &Generation) -> Option<crate::services::kind::Transport> {
    use crate::services::kind::Transport;
    let t = crate::services::info(g.spec.kind.as_ref()?).transport;
    (t != Transport::Packet).then_some(t)
}

/// Whether the generation holds a SO_REUSEPORT group (more than one
/// socket).
fn grouped(g: &Generation) -> bool {
    g.sockets().len() > 1
}

/// InUse if a listener other than `name` holds an address that the one
/// `g` is bound at clashes with ([`crate::net::bind::addrs_clash`]: same
/// port and protocol, same IP or a wildcard). The kernel refuses such a
/// bind when either side is a plain socket, but two SO_REUSEPORT groups
/// of netd's (same user) would share the port: this refuses that too, so
/// the rule is the same as without groups. Only groups are compared (the
/// kernel has checked the rest), and listeners leaving are not counted
/// (their sockets are closing).
fn check_addr_free(
    listeners: &BTreeMap<String, Arc<Entry>>,
    name: &str,
    g: &Generation,
) -> Result<(), SupervisorError> {
    let (Some(addr), Some(t)) = (g.bind_addr, ip_transport(g)) else {
        return Ok(());
    };
    if !grouped(g) {
        return Ok(());
    }
    for (other, e) in listeners {
        if other == name || e.leaving.load(Ordering::Relaxed) {
            continue;
        }
        let og = e.current_gen();
        if !grouped(&og) {
            continue;
        }
        if let (Some(b), Some(ot)) = (og.bind_addr, ip_transport(&og)) {
            if ot == t && crate::net::bind::addrs_clash(b, addr) {
                return Err(crate::net::bind::BindError::InUse(addr).into());
            }
        }
    }
    Ok(())
}
