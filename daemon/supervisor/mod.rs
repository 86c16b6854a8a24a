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
//!
//! # Files, one job each
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the registry ([`Supervisor`]), its errors and limits, the gate mutating calls pass |
//! | `entry.rs` | a listener's entry and generations, its status as shown, registry lookups |
//! | `labels.rs` | what labels may hold |
//! | `lifecycle.rs` | start, boot, restore, stop, drain, shutdown; building a generation |
//! | `update.rs` | changing a running listener, in place or by a graceful replace |
//! | `apply.rs` | plans against the running set, apply and reload |
//! | `persist.rs` | the state file: overlay, group commit |
//! | `faults.rs` | the fault RPCs on a listener's live fault table |
//! | `restart.rs` | the supervising task: restart with backoff |
//! | `handover.rs` | sockets to and from another netd, the hand-over gate |
//! | `queries.rs` | status, lists and pages, counters, packet streams |
//! | `tests.rs` | unit tests |

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::services::{BindError, Settings, SpecError};
pub use crate::spec::names::{MAX_NAME_LEN, valid_name, validate_name};
use crate::state::{Desired, Store};
use crate::telemetry::events::EventBus;

mod apply;
mod entry;
mod faults;
mod handover;
mod labels;
mod lifecycle;
mod persist;
mod queries;
mod restart;
mod update;

pub use apply::Prune;
use apply::normalize_all;
use entry::Entry;
pub use labels::{MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS};

/// Default and upper bound of `max_listeners`.
pub const DEFAULT_MAX_LISTENERS: usize = 1024;

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
    #[error(
        "listener '{0}' is a {1}; faults can be injected into {kinds} listeners",
        kinds = fault_kinds_text()
    )]
    NoFaults(String, &'static str),
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
    /// Listening sockets handed over by a previous netd, by listener name
    /// and member index (a SO_REUSEPORT group has several), taken by the
    /// first start of that name.
    inherited: Mutex<HashMap<String, BTreeMap<usize, OwnedFd>>>,
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

    /// Take and release the registry lock: the watchdog's proof
    /// ([`crate::process::notify::Watchdog`]) that the registry is not wedged.
    pub fn heartbeat(&self) {
        drop(self.listeners());
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

    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> &CancellationToken {
        &self.inner.shutdown_accepting
    }
}

/// A blocking-pool task that panicked or was cancelled, as an error.
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

/// The kinds that take faults, for messages: "proxy and udp-proxy".
fn fault_kinds_text() -> String {
    let all: Vec<&str> = crate::fault::Target::ALL
        .into_iter()
        .flat_map(crate::services::fault_kinds)
        .collect();
    match all.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => all.join(""),
    }
}

#[cfg(test)]
mod tests;
