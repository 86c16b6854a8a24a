//! The registry of listeners and their lifecycle.
//!
//! `start` validates the spec and binds before it returns (on tokio's
//! blocking pool, with no lock held: validation may resolve names and a
//! sniffer's bind opens its pcap file); a supervising
//! task then runs the service, and if the service returns an error or
//! panics it is marked FAILED and rebound on the same address with
//! exponential backoff (100 ms doubling to 30 s; the backoff resets once a
//! run has lasted a minute). Every task of a listener — the supervising
//! task, the service, its connections — lives on the listener's
//! `TaskTracker`, so `stop` returns only once all of them have ended and the
//! sockets are closed.
//!
//! Two tokens per listener separate "stop accepting" from "close open
//! connections": `stop` cancels both at once, while shutdown cancels the
//! first, gives connections a grace period to finish, then cancels the
//! second.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::EventBus;
use crate::proto::{self, EventKind, ListenerState};
use crate::services::{BindError, Service, ServiceCtx, Settings, SpecError};
use crate::stats::Stats;

const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Longest listener name.
pub const MAX_NAME_LEN: usize = 63;
/// Labels per listener, and the longest key and value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 255;

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
    #[error("netd already runs {0} listeners, its limit (max_listeners in the config)")]
    TooMany(usize),
}

/// Mutable part of a listener's status.
#[derive(Debug)]
struct Status {
    state: ListenerState,
    restarts: u32,
    last_error: String,
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    spec: proto::ListenerSpec,
    labels: HashMap<String, String>,
    service: Arc<Service>,
    /// The socket address bound (rebound on restart), if any.
    bind_addr: Option<SocketAddr>,
    /// As shown to people: the address, or a sniffer's interface.
    bound_addr: String,
    /// The UDP address registered in the settings' `own_udp_addrs`.
    own_udp_addr: Option<SocketAddr>,
    started_at: SystemTime,
    stats: Arc<Stats>,
    status: Mutex<Status>,
    stop_accepting: CancellationToken,
    close_connections: CancellationToken,
    tracker: TaskTracker,
    events: EventBus,
}

impl Entry {
    fn status(&self) -> MutexGuard<'_, Status> {
        // A poisoned lock only means a panic while holding it; the status
        // fields are always left consistent, so keep going.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, state: ListenerState) {
        self.status().state = state;
    }

    fn to_proto(&self) -> proto::Listener {
        let st = self.status();
        proto::Listener {
            name: self.name.to_string(),
            kind: self.service.kind() as i32,
            spec: Some(self.spec.clone()),
            state: st.state as i32,
            bound_addr: self.bound_addr.clone(),
            started_at: Some(self.started_at.into()),
            restarts: st.restarts,
            last_error: st.last_error.clone(),
            labels: self.labels.clone(),
            stats: Some(self.stats()),
        }
    }

    fn stats(&self) -> proto::ListenerStats {
        let mut s = self.stats.snapshot();
        s.detail = self.service.detail_stats();
        s
    }

    fn sample(&self) -> proto::ListenerStatsSample {
        proto::ListenerStatsSample {
            name: self.name.to_string(),
            kind: self.service.kind() as i32,
            state: self.status().state as i32,
            totals: Some(self.stats()),
            rates: None,
        }
    }

    fn ctx(&self) -> ServiceCtx {
        ServiceCtx {
            name: self.name.clone(),
            stats: self.stats.clone(),
            stop_accepting: self.stop_accepting.clone(),
            close_connections: self.close_connections.clone(),
            tracker: self.tracker.clone(),
            events: self.events.clone(),
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
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new(Settings::default(), crate::config::DEFAULT_MAX_LISTENERS)
    }
}

impl Supervisor {
    /// A registry whose services are built with `settings` (from the
    /// config: where pcap files may go) and that holds at most
    /// `max_listeners` listeners.
    pub fn new(settings: Settings, max_listeners: usize) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                settings,
                listeners: Mutex::new(BTreeMap::new()),
                shutdown_accepting: CancellationToken::new(),
                shutdown_connections: CancellationToken::new(),
                events: EventBus::new(),
                max_listeners,
            }),
        }
    }

    fn listeners(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Take and release the registry lock: the watchdog's proof
    /// ([`crate::notify::Watchdog`]) that the registry is not wedged.
    pub fn heartbeat(&self) {
        drop(self.listeners());
    }

    /// Validate, bind and start a listener. Must be called within a tokio
    /// runtime.
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
    ) -> Result<proto::Listener, SupervisorError> {
        validate_name(name)?;
        validate_labels(&labels)?;
        self.check_free(&self.listeners(), name)?;
        let settings = self.inner.settings.clone();
        let (service, bound, spec) = tokio::task::spawn_blocking(move || {
            let service = Arc::new(Service::from_spec(&spec, &settings)?);
            let bound = service.bind(None)?;
            service.check_bound(&bound)?;
            let spec = service.shown_spec(spec);
            Ok::<_, SupervisorError>((service, bound, spec))
        })
        .await
        .map_err(|e| blocking_failed(name, e))??;
        let bind_addr = match bound.local_addr() {
            Ok(a) => a,
            Err(e) => {
                let asked = service
                    .listen_addr()
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                return Err(BindError::Other(asked, e).into());
            }
        };
        let bound_addr = service.describe_bound(bind_addr);
        let own_udp_addr = bind_addr.filter(|_| matches!(bound, crate::services::Bound::Udp(_)));
        let entry = Arc::new(Entry {
            name: name.into(),
            spec,
            labels,
            service,
            bind_addr,
            bound_addr: bound_addr.clone(),
            own_udp_addr,
            started_at: SystemTime::now(),
            stats: Stats::new(),
            status: Mutex::new(Status {
                state: ListenerState::Running,
                restarts: 0,
                last_error: String::new(),
            }),
            stop_accepting: self.inner.shutdown_accepting.child_token(),
            close_connections: self.inner.shutdown_connections.child_token(),
            tracker: TaskTracker::new(),
            events: self.inner.events.clone(),
        });
        let mut listeners = self.listeners();
        // Taken meanwhile: `bound` is dropped on return, closing the socket.
        self.check_free(&listeners, name)?;
        listeners.insert(name.to_string(), entry.clone());
        drop(listeners);
        if let Some(a) = own_udp_addr {
            self.inner.settings.own_udp_addrs.insert(a);
        }
        tracing::info!(listener = name, kind = entry.service.kind().slug(), addr = %bound_addr, "listener started");
        self.inner.events.publish(
            EventKind::Started,
            name,
            entry.service.kind(),
            format!("listening on {bound_addr}"),
        );
        entry
            .tracker
            .spawn(supervise(entry.clone(), self.inner.events.clone(), bound));
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
        if listeners.contains_key(name) {
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

    /// Every entry, sorted by name, cloned out of the registry.
    fn entries(&self) -> Vec<Arc<Entry>> {
        self.listeners().values().cloned().collect()
    }

    /// Stop a listener, close its sockets and connections, wait for all of
    /// its tasks, and remove it. Returns its final status.
    pub async fn stop(&self, name: &str) -> Result<proto::Listener, SupervisorError> {
        let entry = self.entry(name)?;
        entry.set_state(ListenerState::Stopping);
        entry.stop_accepting.cancel();
        entry.close_connections.cancel();
        entry.tracker.close();
        entry.tracker.wait().await;
        entry.set_state(ListenerState::Stopped);
        if let Some(a) = entry.own_udp_addr {
            self.inner.settings.own_udp_addrs.remove(a);
        }
        let mut listeners = self.listeners();
        if listeners.get(name).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            listeners.remove(name);
        }
        drop(listeners);
        tracing::info!(listener = name, "listener stopped");
        let l = entry.to_proto();
        let s = l.stats.clone().unwrap_or_default();
        self.inner.events.publish(
            EventKind::Stopped,
            name,
            entry.service.kind(),
            format!(
                "{} connections, {} datagrams, {} bytes in, {} bytes out",
                s.connections_total, s.datagrams_in, s.bytes_in, s.bytes_out
            ),
        );
        Ok(l)
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
        match &*entry.service {
            Service::Sniffer(s) => Ok(s.watch()),
            other => Err(SpecError(format!(
                "'{name}' is a {} listener, not a sniffer",
                other.kind().slug()
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
            e.tracker.close();
        }
        let active: u64 = entries
            .iter()
            .map(|e| {
                e.stats
                    .connections_active
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
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
            if let Some(a) = e.own_udp_addr {
                self.inner.settings.own_udp_addrs.remove(a);
            }
        }
        self.listeners().clear();
    }
}

/// Names are `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`: safe in file names, URLs,
/// metric labels and terminals, and never `.` or `..`.
fn validate_name(name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError("a listener needs a name".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(SpecError(format!(
            "listener name is longer than {MAX_NAME_LEN} characters"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(SpecError(format!(
            "listener name {name:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(SpecError(format!(
            "listener name {name:?} must start with a letter or a digit"
        )));
    }
    Ok(())
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

/// Run the service; on failure, mark FAILED and rebind with backoff until it
/// runs again or the listener is stopped.
async fn supervise(entry: Arc<Entry>, events: EventBus, mut bound: crate::services::Bound) {
    let mut backoff = BACKOFF_INITIAL;
    'run: loop {
        let began = Instant::now();
        let result = entry
            .tracker
            .spawn(entry.service.clone().run(bound, entry.ctx()))
            .await;
        if entry.stop_accepting.is_cancelled() {
            break;
        }
        let error = match result {
            Ok(Ok(())) => "the service stopped unexpectedly".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(join) => match join.try_into_panic() {
                Ok(payload) => format!("panicked: {}", panic_message(&*payload)),
                Err(join) => format!("task ended abnormally: {join}"),
            },
        };
        if began.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_INITIAL;
        }
        tracing::error!(listener = %entry.name, error = %error, retry_in = ?backoff, "listener failed");
        events.publish(
            EventKind::Failed,
            &entry.name,
            entry.service.kind(),
            error.clone(),
        );
        {
            let mut st = entry.status();
            st.state = ListenerState::Failed;
            st.last_error = error;
        }
        loop {
            tokio::select! {
                _ = entry.stop_accepting.cancelled() => break 'run,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // Off the runtime: a sniffer's bind opens its pcap file. A stop
            // meanwhile does not wait for it; what it binds is then dropped.
            let rebind = tokio::task::spawn_blocking({
                let (service, addr) = (entry.service.clone(), entry.bind_addr);
                move || service.bind(addr)
            });
            let rebound = tokio::select! {
                _ = entry.stop_accepting.cancelled() => break 'run,
                r = rebind => match r {
                    Ok(r) => r.map_err(SupervisorError::from),
                    Err(e) => Err(blocking_failed(&entry.name, e)),
                },
            };
            match rebound {
                Ok(b) => {
                    bound = b;
                    let (restarts, cause) = {
                        let mut st = entry.status();
                        st.state = ListenerState::Running;
                        st.restarts += 1;
                        (st.restarts, st.last_error.clone())
                    };
                    tracing::info!(listener = %entry.name, restarts, "listener restarted");
                    events.publish(
                        EventKind::Restarted,
                        &entry.name,
                        entry.service.kind(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
