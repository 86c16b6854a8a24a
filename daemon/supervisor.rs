//! The registry of listeners and their lifecycle.
//!
//! `start` validates the spec and binds before it returns (on tokio's
//! blocking pool, with no lock held: validation may resolve names and a
//! sniffer's bind opens its pcap file); a supervising task then runs the
//! service, and if the service returns an error or panics it is marked
//! FAILED and rebound on the same address with exponential backoff (100 ms
//! doubling to 30 s; the backoff resets once a run has lasted a minute).
//! Every task of a listener — the supervising task, the service, its
//! connections — lives on the listener's `TaskTracker`, so `stop` returns
//! only once all of them have ended and the sockets are closed.
//!
//! Two tokens per listener separate "stop accepting" from "close open
//! connections": `stop` cancels both at once, `drain` and shutdown cancel
//! the first, give connections time to finish, then cancel the second.
//!
//! A listener runs one *generation* at a time: a service built from one
//! spec, on one socket, with its own stop-accepting token (a child of the
//! listener's). `update` starts a new generation — on the same socket when
//! the address and kind stay (a duplicate descriptor of it is kept for
//! this), on a newly bound one otherwise — and only then stops the old one
//! accepting; connections the old one accepted finish under its settings.
//! Counters, labels and the name stay with the listener: the base counters
//! and the faults live in the entry, and each new generation takes over
//! its kind's own counters and health state from the one it replaces
//! ([`crate::services::kind::ListenerKind::carry_over`]).
//!
//! Every change through the control plane (start, stop, update, drain,
//! apply, reload) is written to the state file before the call returns
//! (see [`crate::state`]); `apply` computes a plan against the running set
//! and carries it out with the same operations.
//!
//! While the listeners are handed to a successor (`netd --upgrade`, see
//! [`crate::process::handover`]) those calls are refused with `HandingOver`: a
//! hand-over begins only once the calls in flight are saved, and the
//! successor boots from the state file as it then is. Listening sockets
//! are also kept in systemd's fd store as they come and go
//! ([`crate::sys::fdstore`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proto::{self, EventKind, ListenerState, PlanAction, UpdateAction};
use crate::services::{BindError, Bound, Service, ServiceCtx, Settings, SpecError};
pub use crate::spec::names::{MAX_NAME_LEN, valid_name, validate_name};
use crate::state::{Desired, Overlay, Store};
use crate::telemetry::events::EventBus;
use crate::telemetry::stats::Stats;

/// Default and upper bound of `max_listeners`.
pub const DEFAULT_MAX_LISTENERS: usize = 1024;

const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Labels per listener, and the longest key and value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 255;
/// Drain timeout when the request sets none, and the longest allowed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DRAIN_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{0}")]
    InvalidSpec(#[from] SpecError),
    #[error("a listener named '{0}' already exists")]
    AlreadyExists(String),
    #[error("no listener named '{0}'")]
    NotFound(String),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("netd is shutting down")]
    ShuttingDown,
    #[error("netd is handing over to a new process; retry")]
    HandingOver,
    #[error("netd already runs {0} listeners, its limit (max_listeners in the config)")]
    TooMany(usize),
    #[error("listener '{0}' is draining or stopping")]
    Leaving(String),
    /// The state file could not be written; the message says whether the
    /// change is live (unsaved) or was undone.
    #[error("{0}")]
    Persist(String),
    #[error("listener '{0}' has no fault named '{1}'")]
    FaultNotFound(String, String),
    #[error("listener '{0}' already has a fault named '{1}'")]
    FaultExists(String, String),
    #[error("listener '{0}' is a {1}; faults can be injected into proxy and udp-proxy listeners")]
    NoFaults(String, &'static str),
}

/// Mutable part of a listener's status.
#[derive(Debug)]
struct Status {
    state: ListenerState,
    restarts: u32,
    last_error: String,
}

/// One service instance of a listener: a spec, a service built from it,
/// and the socket it runs on.
#[derive(Debug)]
struct Generation {
    /// As requested, secrets included (what the state file keeps).
    spec: proto::ListenerSpec,
    /// As shown: secrets redacted, a pcap path resolved.
    shown: proto::ListenerSpec,
    /// As in effect: `shown` with every default filled in.
    effective: proto::ListenerSpec,
    service: Arc<Service>,
    /// The socket address bound (rebound on restart), if any.
    bind_addr: Option<SocketAddr>,
    /// As shown to people: the address, or a sniffer's interface.
    bound_addr: String,
    /// The UDP address registered in the settings' `own_udp_addrs`.
    own_udp_addr: Option<SocketAddr>,
    /// Stops this generation accepting (a child of the listener's token).
    stop: CancellationToken,
    /// A duplicate of the listening socket (TCP, UDP) for in-place updates
    /// and hand-over; replaced when a restart rebinds, dropped when the
    /// generation stops so that the port is really closed.
    socket: Mutex<Option<OwnedFd>>,
    /// Cancelled when this generation's supervising task has ended (its
    /// socket or capture is closed).
    ended: CancellationToken,
}

impl Generation {
    fn socket(&self) -> MutexGuard<'_, Option<OwnedFd>> {
        self.socket.lock()
    }

    /// Keep this generation's socket in systemd's fd store as `name`
    /// (replacing the one there), or drop the entry if it has none.
    fn store_socket(&self, name: &str) {
        use std::os::fd::AsFd as _;
        match self.socket().as_ref() {
            Some(fd) => crate::sys::fdstore::store(name, fd.as_fd()),
            None => crate::sys::fdstore::remove(name),
        }
    }
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    labels: Mutex<HashMap<String, String>>,
    /// Not persisted: gone after a restart.
    ephemeral: bool,
    /// Stopping or draining: no longer part of the desired set.
    leaving: AtomicBool,
    current: Mutex<Arc<Generation>>,
    /// Serializes updates of this listener.
    updating: tokio::sync::Mutex<()>,
    started_at: SystemTime,
    stats: Arc<Stats>,
    status: Mutex<Status>,
    stop_accepting: CancellationToken,
    close_connections: CancellationToken,
    tracker: TaskTracker,
    events: EventBus,
    /// The live faults (proxy, udp-proxy), shared by every generation so a
    /// change reaches open connections too. Generation specs hold the
    /// faults as they were when the generation started; this holds them
    /// as they are (see [`Entry::spec`]).
    faults: Arc<crate::fault::FaultTable>,
}

impl Entry {
    fn status(&self) -> MutexGuard<'_, Status> {
        // A poisoned lock only means a panic while holding it; the status
        // fields are always left consistent, so keep going.
        self.status.lock()
    }

    fn set_state(&self, state: ListenerState) {
        self.status().state = state;
    }

    fn current_gen(&self) -> Arc<Generation> {
        self.current
            .lock()
            .clone()
    }

    fn labels(&self) -> HashMap<String, String> {
        self.labels
            .lock()
            .clone()
    }

    fn kind(&self) -> proto::ListenerKind {
        self.current_gen().service.kind()
    }

    /// `spec` with the live faults in place of those it was built with.
    fn with_live_faults(&self, mut spec: proto::ListenerSpec) -> proto::ListenerSpec {
        if let Some(f) = crate::fault::faults_of_mut(&mut spec) {
            *f = self.faults.specs();
        }
        spec
    }

    /// The listener's spec as requested, with its faults as they are now.
    fn spec(&self) -> proto::ListenerSpec {
        self.with_live_faults(self.current_gen().spec.clone())
    }

    fn desired(&self) -> Desired {
        Desired {
            name: self.name.to_string(),
            spec: self.spec(),
            labels: self.labels(),
        }
    }

    fn to_proto(&self) -> proto::Listener {
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

    fn stats_of(&self, g: &Generation) -> proto::ListenerStats {
        let mut s = self.stats.snapshot();
        s.detail = g.service.detail_stats();
        if self.faults.version() != 0 {
            s.faults = self.faults.stats();
        }
        s
    }

    fn sample(&self) -> proto::ListenerStatsSample {
        let g = self.current_gen();
        proto::ListenerStatsSample {
            name: self.name.to_string(),
            kind: g.service.kind() as i32,
            state: self.status().state as i32,
            totals: Some(self.stats_of(&g)),
            rates: None,
        }
    }

    fn ctx(&self, g: &Generation) -> ServiceCtx {
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

/// The listener registry. Cheap to clone; all clones share state.
#[derive(Clone, Debug)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    listeners: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Parent of every listener's `stop_accepting`.
    shutdown_accepting: CancellationToken,
    /// Parent of every listener's `close_connections`.
    shutdown_connections: CancellationToken,
    events: EventBus,
    /// Handed to every `Service::from_spec`.
    settings: Settings,
    max_listeners: usize,
    /// Where changes are persisted; None when nothing is.
    store: Option<Store>,
    /// The config file's listeners: the base the state file is relative to.
    base: Mutex<Vec<Desired>>,
    /// Serializes state-file writes (each writes the registry as it is).
    persisting: tokio::sync::Mutex<()>,
    /// Group commit of the state file: persist calls so far (each taken
    /// after its change is in the registry), and how many of them the last
    /// successful write covered.
    persist_asked: AtomicU64,
    persist_saved: AtomicU64,
    /// Set once the listeners were handed to a successor (`--upgrade`):
    /// from then on this process no longer writes the state file.
    frozen: AtomicBool,
    /// Listening sockets handed over by a previous netd, by listener name,
    /// taken by the first start of that name.
    inherited: Mutex<HashMap<String, OwnedFd>>,
    /// Set while the listeners are being handed to a successor: mutating
    /// calls are refused (they would not reach the successor).
    handing_over: AtomicBool,
    /// Mutating calls hold it shared; a hand-over takes it exclusively, so
    /// that it begins only once the changes in flight are saved.
    mutations: tokio::sync::RwLock<()>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new(Settings::default(), DEFAULT_MAX_LISTENERS)
    }
}

/// How a listener's socket is obtained for a new generation.
enum Source {
    /// Bind where the spec says.
    Bind,
    /// The socket of the generation this one replaces in place.
    Same(OwnedFd),
    /// A socket handed over by a previous netd, if bound where the spec
    /// says.
    Inherited(OwnedFd),
}

/// A generation ready to run: built and bound, not yet registered.
struct Prepared {
    service: Arc<Service>,
    bound: Bound,
    spec: proto::ListenerSpec,
    shown: proto::ListenerSpec,
    /// Runs on the socket of the generation it replaces.
    reused: bool,
}

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

impl Supervisor {
    /// A registry whose services are built with `settings` (from the
    /// config: where pcap files may go) and that holds at most
    /// `max_listeners` listeners. Nothing is persisted.
    pub fn new(settings: Settings, max_listeners: usize) -> Self {
        Self::with_store(settings, max_listeners, None, Vec::new())
    }

    /// As [`Supervisor::new`], persisting every change to `store` relative
    /// to `base` (the config file's listeners).
    pub fn with_store(
        settings: Settings,
        max_listeners: usize,
        store: Option<Store>,
        base: Vec<Desired>,
    ) -> Self {
        let base = normalize_all(base, &settings);
        Supervisor {
            inner: Arc::new(Inner {
                settings,
                listeners: Mutex::new(BTreeMap::new()),
                shutdown_accepting: CancellationToken::new(),
                shutdown_connections: CancellationToken::new(),
                events: EventBus::new(),
                max_listeners,
                store,
                base: Mutex::new(base),
                persisting: tokio::sync::Mutex::new(()),
                persist_asked: AtomicU64::new(0),
                persist_saved: AtomicU64::new(0),
                frozen: AtomicBool::new(false),
                inherited: Mutex::new(HashMap::new()),
                handing_over: AtomicBool::new(false),
                mutations: tokio::sync::RwLock::new(()),
            }),
        }
    }

    fn listeners(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.inner
            .listeners
            .lock()
    }

    /// Sockets handed over by a previous netd, by listener name: each is
    /// used by the first start of that name whose spec it matches.
    pub fn inherit(&self, sockets: HashMap<String, OwnedFd>) {
        self.inner
            .inherited
            .lock()
            .extend(sockets);
    }

    /// Inherited sockets no listener took (closed by the caller).
    pub fn take_unused_inherited(&self) -> HashMap<String, OwnedFd> {
        std::mem::take(
            &mut *self
                .inner
                .inherited
                .lock(),
        )
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

    /// Take and release the registry lock: the watchdog's proof
    /// ([`crate::process::notify::Watchdog`]) that the registry is not wedged.
    pub fn heartbeat(&self) {
        drop(self.listeners());
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
        self.inner.frozen.store(false, Ordering::SeqCst);
        self.inner.handing_over.store(false, Ordering::SeqCst);
    }

    /// Held for the duration of a mutating call; refused during a
    /// hand-over.
    async fn mutating(&self) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, SupervisorError> {
        let shared = self.inner.mutations.read().await;
        if self.inner.handing_over.load(Ordering::SeqCst) {
            return Err(SupervisorError::HandingOver);
        }
        Ok(shared)
    }

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
            if let Err(failed) = self.persist_raw().await {
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
    async fn prepare(
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
                Source::Same(fd) => match service.adopt(fd, false) {
                    Ok(b) => {
                        reused = true;
                        b
                    }
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e, "the current socket cannot be kept; binding a new one");
                        service.bind(None)?
                    }
                },
                Source::Inherited(fd) => match service.adopt(fd, true) {
                    Ok(b) => {
                        tracing::info!(listener = %name, "took over the listening socket handed over by the previous netd");
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

    fn take_inherited(&self, name: &str) -> Option<OwnedFd> {
        self.inner
            .inherited
            .lock()
            .remove(name)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_entry(
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
            crate::fault::target_of(&spec).unwrap_or(crate::fault::Target::Tcp),
        ));
        if let Some(f) = crate::fault::faults_of(&spec) {
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
            socket: Mutex::new(None),
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

    /// A generation for `entry` from a prepared service and socket.
    fn generation(
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
        let socket = bound.dup_socket().ok().flatten();
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
                socket: Mutex::new(socket),
                ended: CancellationToken::new(),
            }),
            bound,
        ))
    }

    fn insert(&self, name: &str, entry: &Arc<Entry>) -> Result<(), SupervisorError> {
        let mut listeners = self.listeners();
        // Taken meanwhile: the caller drops what it bound.
        self.check_free(&listeners, name)?;
        listeners.insert(name.to_string(), entry.clone());
        Ok(())
    }

    async fn start_unsaved(
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
            Some(fd) => Source::Inherited(fd),
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

    /// AlreadyExists if `name` is taken, ShuttingDown once shutdown began.
    fn check_free(
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
    fn entry(&self, name: &str) -> Result<Arc<Entry>, SupervisorError> {
        self.listeners()
            .get(name)
            .cloned()
            .ok_or_else(|| SupervisorError::NotFound(name.to_string()))
    }

    /// An entry that is not stopping or draining.
    fn live_entry(&self, name: &str) -> Result<Arc<Entry>, SupervisorError> {
        let e = self.entry(name)?;
        if e.leaving.load(Ordering::Relaxed) {
            return Err(SupervisorError::Leaving(name.to_string()));
        }
        Ok(e)
    }

    /// Every entry, sorted by name, cloned out of the registry.
    fn entries(&self) -> Vec<Arc<Entry>> {
        self.listeners().values().cloned().collect()
    }

    /// Stop a listener, close its sockets and connections, wait for all of
    /// its tasks, remove it, and persist. Returns its final status.
    pub async fn stop(&self, name: &str) -> Result<proto::Listener, SupervisorError> {
        let _mutating = self.mutating().await?;
        let (l, ephemeral) = self.stop_unsaved(name).await?;
        if !ephemeral {
            self.persist().await?;
        }
        Ok(l)
    }

    async fn stop_unsaved(&self, name: &str) -> Result<(proto::Listener, bool), SupervisorError> {
        let entry = self.live_entry(name)?;
        if entry.leaving.swap(true, Ordering::SeqCst) {
            return Err(SupervisorError::Leaving(name.to_string()));
        }
        entry.set_state(ListenerState::Stopping);
        entry.current_gen().socket().take();
        crate::sys::fdstore::remove(name);
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
        entry.current_gen().socket().take();
        crate::sys::fdstore::remove(name);
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
            self.persist().await
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

    /// Change a running listener to `spec` (and `labels`, when given), in
    /// place when the kind and address stay, else by a graceful replace.
    /// An HTTP token of "<redacted>" keeps the current one.
    pub async fn update(
        &self,
        name: &str,
        spec: proto::ListenerSpec,
        labels: Option<HashMap<String, String>>,
    ) -> Result<(proto::Listener, UpdateAction, Vec<String>), SupervisorError> {
        let _mutating = self.mutating().await?;
        let (l, action, changed, ephemeral) = self.update_unsaved(name, spec, labels).await?;
        if action != UpdateAction::Unchanged && !ephemeral {
            self.persist().await?;
        }
        Ok((l, action, changed))
    }

    async fn update_unsaved(
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
            crate::fault::without_faults(&cur.spec) == crate::fault::without_faults(&spec);
        let action = if faults_only {
            // Labels or faults only: the faults change in the live table,
            // for open connections too; no new generation.
            if let Some(f) = crate::fault::faults_of(&spec) {
                if let Some(t) = crate::fault::target_of(&spec) {
                    crate::fault::compile_all(f, t)?;
                }
                entry
                    .faults
                    .replace_all(f)
                    .map_err(|e| SpecError(e.to_string()))?;
            }
            UpdateAction::InPlace
        } else {
            let new_faults = crate::fault::faults_of(&spec).cloned().unwrap_or_default();
            let new_target = crate::fault::target_of(&spec);
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
        let source = match cur.socket().as_ref() {
            Some(fd) if same_socket => Source::Same(fd.try_clone().map_err(|e| {
                BindError::Precondition(format!("cannot duplicate the socket: {e}"))
            })?),
            _ => Source::Bind,
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
        old.socket().take();
        old.stop.cancel();
        Ok(if same_socket {
            UpdateAction::InPlace
        } else {
            UpdateAction::Replaced
        })
    }

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
        if entries.len() > self.inner.max_listeners {
            return Err(SpecError(format!(
                "{} listeners given; max_listeners is {}",
                entries.len(),
                self.inner.max_listeners
            ))
            .into());
        }
        let mut seen = std::collections::HashSet::new();
        for d in &entries {
            validate_name(&d.name)?;
            validate_labels(&d.labels)?;
            if !seen.insert(d.name.clone()) {
                return Err(SpecError(format!("listener '{}' is given twice", d.name)).into());
            }
        }
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
        let settings = self.inner.settings.clone();
        let check = entries.clone();
        tokio::task::spawn_blocking(move || {
            let mut addrs: Vec<(&str, SocketAddr, bool)> = Vec::new();
            for d in &check {
                Service::from_spec(&d.spec, &settings)
                    .map_err(|e| SpecError(format!("listener '{}': {e}", d.name)))?;
                if let Some((a, transport)) = Service::spec_listen_addr(&d.spec) {
                    let udp = transport == crate::services::Transport::Udp;
                    if let Some((other, ..)) = addrs
                        .iter()
                        .find(|(_, b, u)| *u == udp && crate::net::bind::addrs_clash(*b, a))
                    {
                        return Err(SpecError(format!(
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
        let old_base = std::mem::replace(
            &mut *self.inner.base.lock(),
            base,
        );
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

    /// The running set's difference from the base (what the state file
    /// holds).
    pub fn overlay(&self) -> Overlay {
        let running: Vec<Desired> = self
            .entries()
            .iter()
            .filter(|e| !e.ephemeral && !e.leaving.load(Ordering::Relaxed))
            .map(|e| e.desired())
            .collect();
        let base = self
            .inner
            .base
            .lock()
            .clone();
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
    async fn persist(&self) -> Result<(), SupervisorError> {
        self.persist_raw().await.map_err(|failed| {
            SupervisorError::Persist(format!(
                "the change is live but unsaved: {failed}; it will not survive a restart"
            ))
        })
    }

    /// [`Supervisor::persist`], with the failure described without
    /// saying what became of the change (the caller knows).
    async fn persist_raw(&self) -> Result<(), PersistFailed> {
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

    /// The live entry `name`, if its kind takes faults.
    fn fault_entry(&self, name: &str) -> Result<Arc<Entry>, SupervisorError> {
        let e = self.live_entry(name)?;
        if crate::fault::target_of(&e.current_gen().spec).is_none() {
            return Err(SupervisorError::NoFaults(name.to_string(), e.kind().slug()));
        }
        Ok(e)
    }

    fn fault_error(name: &str, e: crate::fault::TableError) -> SupervisorError {
        use crate::fault::TableError as T;
        match e {
            T::Exists(f) => SupervisorError::FaultExists(name.into(), f),
            T::NotFound(f) => SupervisorError::FaultNotFound(name.into(), f),
            T::Full | T::Invalid(_) => SupervisorError::InvalidSpec(SpecError(e.to_string())),
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
        self.persist().await
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
                .filter(|e| crate::fault::target_of(&e.current_gen().spec).is_some())
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

    pub fn get(&self, name: &str) -> Result<proto::Listener, SupervisorError> {
        Ok(self.entry(name)?.to_proto())
    }

    /// Connections open now across all listeners, and the sum of each
    /// listener's most open at once since the last call.
    pub fn connections_open_and_peak(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.listeners().values().fold((0, 0), |(open, peak), e| {
            let p = e.stats.take_peak();
            (open + e.stats.connections_active.load(Relaxed), peak + p)
        })
    }

    /// All listeners, sorted by name.
    pub fn list(&self) -> Vec<proto::Listener> {
        self.entries().iter().map(|e| e.to_proto()).collect()
    }

    /// Up to `page.size` entries after `page.after` (sorted by name), and
    /// whether more follow. The registry lock is held only for the range
    /// walk over the ordered map (O(page + log n)); building the protos
    /// happens unlocked.
    fn entries_page(&self, page: &crate::util::page::Page) -> (Vec<Arc<Entry>>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let listeners = self.listeners();
        let from = match &page.after {
            Some(a) => (Excluded(a.as_str()), Unbounded),
            None => (Unbounded, Unbounded),
        };
        let mut it = listeners.range::<str, _>(from);
        let entries: Vec<Arc<Entry>> = it
            .by_ref()
            .take(page.size)
            .map(|(_, e)| e.clone())
            .collect();
        let more = it.next().is_some();
        (entries, more)
    }

    /// One page of listeners, and the name to resume after if more follow.
    pub fn list_page(
        &self,
        page: &crate::util::page::Page,
    ) -> (Vec<proto::Listener>, Option<String>) {
        let (entries, more) = self.entries_page(page);
        let next = more
            .then(|| entries.last().map(|e| e.name.to_string()))
            .flatten();
        (entries.iter().map(|e| e.to_proto()).collect(), next)
    }

    /// One page of counters, and the name to resume after if more follow.
    pub fn samples_page(
        &self,
        page: &crate::util::page::Page,
    ) -> (Vec<proto::ListenerStatsSample>, Option<String>) {
        let (entries, more) = self.entries_page(page);
        let next = more
            .then(|| entries.last().map(|e| e.name.to_string()))
            .flatten();
        (entries.iter().map(|e| e.sample()).collect(), next)
    }

    /// Counters of every listener (sorted by name), or of one.
    pub fn samples(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<proto::ListenerStatsSample>, SupervisorError> {
        match name {
            None => Ok(self.entries().iter().map(|e| e.sample()).collect()),
            Some(n) => Ok(vec![self.entry(n)?.sample()]),
        }
    }

    /// For a stats watch: the counters of every listener (or of the one
    /// named; none if it is gone) are read and handed to `changed` with
    /// the name and state, and a sample is built only for those it says
    /// changed. Each tick of a watch reads every listener, so the idle
    /// ones must cost no allocation.
    pub fn changed_samples(
        &self,
        name: Option<&str>,
        mut changed: impl FnMut(&str, i32, &proto::ListenerStats) -> bool,
    ) -> Vec<proto::ListenerStatsSample> {
        let entries = match name {
            None => self.entries(),
            Some(n) => self.entry(n).map(|e| vec![e]).unwrap_or_default(),
        };
        let mut out = Vec::new();
        for e in &entries {
            let g = e.current_gen();
            let state = e.status().state as i32;
            let totals = e.stats_of(&g);
            if changed(&e.name, state, &totals) {
                out.push(proto::ListenerStatsSample {
                    name: e.name.to_string(),
                    kind: g.service.kind() as i32,
                    state,
                    totals: Some(totals),
                    rates: None,
                });
            }
        }
        out
    }

    /// Subscribe to a sniffer's packet summaries.
    pub fn packets(
        &self,
        name: &str,
    ) -> Result<
        (
            tokio::sync::broadcast::Receiver<proto::PacketSummary>,
            Arc<crate::services::sniffer::SnifferCounters>,
        ),
        SupervisorError,
    > {
        let entry = self.entry(name)?;
        let g = entry.current_gen();
        match g.service.as_sniffer() {
            Some(s) => Ok(s.watch()),
            None => Err(SpecError(format!(
                "'{name}' is a {} listener, not a sniffer",
                g.service.kind().slug()
            ))
            .into()),
        }
    }

    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> &CancellationToken {
        &self.inner.shutdown_accepting
    }

    /// Stop accepting everywhere, let open connections finish for up to
    /// `grace`, then close what is left and wait for every task.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown_accepting.cancel();
        let entries = self.entries();
        for e in &entries {
            e.set_state(ListenerState::Stopping);
            e.current_gen().socket().take();
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
    }
}

impl Supervisor {
    /// The state file changes are persisted to; None when nothing is.
    pub fn state_file(&self) -> Option<std::path::PathBuf> {
        self.inner.store.as_ref().map(Store::path)
    }
}

fn normalize_all(list: Vec<Desired>, settings: &Settings) -> Vec<Desired> {
    list.into_iter()
        .map(|mut d| {
            d.spec = Service::normalize(d.spec, settings);
            d
        })
        .collect()
}

fn fault_status(listener: &str, a: &crate::fault::Active) -> proto::FaultStatus {
    proto::FaultStatus {
        listener: listener.to_string(),
        fault: Some(a.spec.clone()),
        stats: Some(a.stats(tokio::time::Instant::now())),
    }
}

/// At most [`MAX_LABELS`]; keys like names (plus `/`), up to 63
/// characters; values up to 255 printable characters (no control or
/// bidirectional-override characters, which could rewrite a terminal or
/// the order of what an admin reads).
fn validate_labels(labels: &HashMap<String, String>) -> Result<(), SpecError> {
    if labels.len() > MAX_LABELS {
        return Err(SpecError(format!(
            "{} labels; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY_LEN
            && k.starts_with(|c: char| c.is_ascii_alphanumeric())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(SpecError(format!(
                "label key {k:?}: 1-{MAX_LABEL_KEY_LEN} characters of letters, digits, '-', '_', '.' and '/', starting with a letter or digit"
            )));
        }
        if v.chars().count() > MAX_LABEL_VALUE_LEN {
            return Err(SpecError(format!(
                "label '{k}': the value is longer than {MAX_LABEL_VALUE_LEN} characters"
            )));
        }
        if let Some(c) = v.chars().find(|&c| !printable(c)) {
            return Err(SpecError(format!(
                "label '{k}': the value contains {c:?}; only printable characters are allowed"
            )));
        }
    }
    Ok(())
}

/// Not a control character, nor a bidirectional override/isolate.
fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Run a generation's service; on failure, mark the listener FAILED and
/// rebind with backoff until it runs again, or until this generation is
/// stopped (the listener stopped, or an update replaced the generation).
/// `first` is the bound socket, or why there is none yet (a restored
/// listener whose address was taken).
async fn supervise(entry: Arc<Entry>, cur_gen: Arc<Generation>, first: Result<Bound, String>) {
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
                    *cur_gen.socket() = b.dup_socket().ok().flatten();
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
    cur_gen.socket().take();
}

/// A blocking-pool task that panicked or was cancelled, as an error.
/// How long a change waits for the state file to be written.
const STATE_SAVE_DEADLINE: Duration = Duration::from_secs(10);

/// Why the state file could not be written.
#[derive(Debug)]
struct PersistFailed {
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

fn blocking_failed(name: &str, e: tokio::task::JoinError) -> SupervisorError {
    let why = match e.try_into_panic() {
        Ok(payload) => format!("panicked: {}", panic_message(&*payload)),
        Err(e) => e.to_string(),
    };
    BindError::Precondition(format!("internal error: binding '{name}' {why}")).into()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Make a running TCP listener fail: shut its listening socket down
    /// (through the supervisor's duplicate of it), so that accept(2) fails
    /// with EINVAL, which the accept loop reports as the socket's failure.
    fn break_socket(sup: &Supervisor, name: &str) {
        let g = sup.entry(name).expect("listener exists").current_gen();
        let fd = g.socket();
        let fd = fd.as_ref().expect("a TCP listener keeps its socket");
        socket2::SockRef::from(fd)
            .shutdown(std::net::Shutdown::Read)
            .expect("shutdown of the listening socket");
    }

    /// The next event of `kind` for `name`, and the (paused) clock then.
    async fn next_event(
        rx: &mut tokio::sync::broadcast::Receiver<proto::Event>,
        kind: EventKind,
    ) -> tokio::time::Instant {
        loop {
            let e = rx.recv().await.expect("event bus open");
            if e.kind == kind as i32 {
                return tokio::time::Instant::now();
            }
        }
    }

    /// Restart backoff on the paused clock: a listener that fails again
    /// right after each restart waits 100ms, 200ms, 400ms, ... up to 30s;
    /// once it has run for STABLE_AFTER, the next failure waits 100ms again.
    #[tokio::test(start_paused = true)]
    async fn restart_backoff_doubles_to_its_cap_and_resets_once_stable() {
        let sup = Supervisor::new(Settings::default(), 8);
        let mut events = sup.events().subscribe();
        let spec = proto::ListenerSpec {
            kind: Some(proto::listener_spec::Kind::TcpEcho(proto::TcpEchoSpec {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            })),
        };
        sup.start("flaky", spec, HashMap::new(), true)
            .await
            .expect("start");
        let mut expected = BACKOFF_INITIAL;
        let mut waits = Vec::new();
        for restart in 1..=12u32 {
            break_socket(&sup, "flaky");
            let failed = next_event(&mut events, EventKind::Failed).await;
            let restarted = next_event(&mut events, EventKind::Restarted).await;
            assert_eq!(restarted - failed, expected, "restart {restart}");
            waits.push(restarted - failed);
            let l = sup.get("flaky").expect("status");
            assert_eq!(l.restarts, restart);
            assert_eq!(l.state, ListenerState::Running as i32);
            expected = (expected * 2).min(BACKOFF_MAX);
        }
        assert_eq!(waits.last(), Some(&BACKOFF_MAX), "capped: {waits:?}");
        // Stable for long enough: the backoff starts over.
        tokio::time::sleep(STABLE_AFTER).await;
        break_socket(&sup, "flaky");
        let failed = next_event(&mut events, EventKind::Failed).await;
        let restarted = next_event(&mut events, EventKind::Restarted).await;
        assert_eq!(restarted - failed, BACKOFF_INITIAL);
        sup.stop("flaky").await.expect("stop");
    }

    #[test]
    fn names() {
        for ok in ["a", "echo-1", "A.b_c", "0", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "_x",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        let one = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert!(validate_labels(&one("team", "net ops")).is_ok());
        assert!(validate_labels(&one("app.kubernetes.io/name", "netd")).is_ok());
        assert!(validate_labels(&one("k", "\u{1b}[2J")).is_err());
        assert!(validate_labels(&one("k", "a\nb")).is_err());
        assert!(validate_labels(&one("k", "\u{202e}txt")).is_err());
        assert!(validate_labels(&one("k", &"v".repeat(256))).is_err());
        assert!(validate_labels(&one(&"k".repeat(64), "v")).is_err());
        assert!(validate_labels(&one("", "v")).is_err());
        let many: HashMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_labels(&many).is_err());
    }
}
