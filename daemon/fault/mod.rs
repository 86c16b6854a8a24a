//! Fault injection: the validated form of a `Fault` ([`Compiled`]), the
//! live table of a listener's faults ([`FaultTable`]) and their counters.
//! The fault types are listed once, in [`types`] (a module per type); what
//! a compiled fault does is a TCP, UDP or HTTP [`action`]; the conditions
//! of HTTP faults on requests are [`http`].
//!
//! A listener's faults live in its spec (`ProxySpec.faults`,
//! `UdpProxySpec.faults`, `HttpProxySpec.faults`), so they are persisted, exported and applied like
//! any other setting; the supervisor keeps one [`FaultTable`] per listener
//! (across generations, like its counters) and puts each change into it, so
//! a fault added at runtime reaches open connections too. The data paths
//! read the table's version with one relaxed atomic load per read or
//! datagram and look at the faults only when it moved or is non-zero: a
//! listener that never had a fault pays nothing else.
//!
//! Per connection (TCP) or client (UDP), each fault is decided once: its
//! client network, its every-Nth count and its toxicity roll
//! ([`Active::decide`]). Its time window and after-bytes threshold are
//! checked as data flows. Faults compose in list order. HTTP faults are
//! decided per request instead ([`Active::decide_request`]).

pub mod action;
pub mod attrs;
pub mod cidr;
pub mod http;
pub mod metrics;
pub mod rng;
pub mod types;

use parking_lot::{Mutex, RwLock};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::proto;
use crate::spec::SpecError;
pub use action::{Action, ActionOn, HttpAction, Phase, TcpAction, UdpAction};
pub use cidr::Cidr;
pub use rng::Rng;

/// Faults per proxy or udp-proxy listener (each connection or client keeps
/// a decision per fault).
pub const MAX_FAULTS: usize = 32;
/// Faults per http-proxy listener: route-by-route rules are many (a
/// benchmark runs 100), and a request only walks the list.
pub const MAX_HTTP_FAULTS: usize = 128;
/// Longest latency, jitter, delay or timeout a fault may have.
pub const MAX_FAULT_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Bandwidth bounds (bytes per second).
pub const MIN_RATE: u64 = 1;
pub const MAX_RATE: u64 = 10_000_000_000;

/// Which traffic a fault is for: a TCP proxy's byte streams, a UDP
/// proxy's datagrams or an HTTP proxy's requests. Decides which types are
/// allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Tcp,
    Udp,
    Http,
}

impl Target {
    /// Every target, in the order messages list them.
    pub const ALL: [Target; 3] = [Target::Tcp, Target::Udp, Target::Http];

    /// The kind whose listeners take this target's faults, for messages.
    pub fn kind(self) -> &'static str {
        match self {
            Target::Tcp => "proxy (TCP)",
            Target::Udp => "udp-proxy",
            Target::Http => "http-proxy",
        }
    }

    /// "a proxy (TCP)", "an http-proxy".
    fn a_kind(self) -> String {
        match self {
            Target::Http => format!("an {}", self.kind()),
            _ => format!("a {}", self.kind()),
        }
    }

    /// The most faults a listener of this target holds.
    pub fn max_faults(self) -> usize {
        match self {
            Target::Tcp | Target::Udp => MAX_FAULTS,
            Target::Http => MAX_HTTP_FAULTS,
        }
    }

    fn code(self) -> u8 {
        match self {
            Target::Tcp => 0,
            Target::Udp => 1,
            Target::Http => 2,
        }
    }

    fn of_code(c: u8) -> Target {
        match c {
            1 => Target::Udp,
            2 => Target::Http,
            _ => Target::Tcp,
        }
    }
}

/// The directions a fault acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirs {
    /// Client to upstream.
    pub upstream: bool,
    /// Upstream to client.
    pub downstream: bool,
}

impl Dirs {
    pub fn has(self, d: Dir) -> bool {
        match d {
            Dir::Upstream => self.upstream,
            Dir::Downstream => self.downstream,
        }
    }
}

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Upstream,
    Downstream,
}

/// The type name of a fault's kind (empty when none is set).
pub fn type_of(f: &proto::Fault) -> &'static str {
    f.kind.as_ref().map_or("", |k| types::def_of(k).name)
}

/// A fault's conditions, checked and converted.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub after_bytes: u64,
    pub start_after: Duration,
    /// None: open-ended.
    pub duration: Option<Duration>,
    pub client: Option<Cidr>,
    pub every_nth: u32,
    /// HTTP faults: the request conditions (None: every request).
    pub http: Option<Arc<http::Match>>,
}

/// A validated fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub name: String,
    pub dirs: Dirs,
    pub toxicity: f64,
    pub when: Condition,
    pub action: Action,
}

fn err(fault: &str, msg: impl std::fmt::Display) -> SpecError {
    if fault.is_empty() {
        SpecError::new(format!("fault: {msg}"))
    } else {
        SpecError::new(format!("fault '{fault}': {msg}"))
    }
}

fn probability(fault: &str, field: &str, p: f64) -> Result<f64, SpecError> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(err(fault, format!("{field} is {p}; it must be 0 to 1")))
    }
}

/// A duration attribute: unset is `None`; negative or above
/// [`MAX_FAULT_DURATION`] is refused; zero is allowed (and means zero).
fn duration(
    fault: &str,
    field: &str,
    d: &Option<prost_types::Duration>,
) -> Result<Option<Duration>, SpecError> {
    let Some(d) = d else { return Ok(None) };
    let v =
        Duration::try_from(*d).map_err(|_| err(fault, format!("{field} must not be negative")))?;
    if v > MAX_FAULT_DURATION {
        return Err(err(
            fault,
            format!(
                "{field} is {}; at most {}",
                humantime::format_duration(v),
                humantime::format_duration(MAX_FAULT_DURATION)
            ),
        ));
    }
    Ok(Some(v))
}

/// Check a fault for a listener of `target`.
pub fn compile(f: &proto::Fault, target: Target) -> Result<Compiled, SpecError> {
    let name = f.name.as_str();
    if name.is_empty() {
        return Err(err(name, "a name is required"));
    }
    if !crate::spec::names::valid_name(name) {
        return Err(err(
            name,
            "names are 1-63 characters of [A-Za-z0-9._-], starting with a letter or digit",
        ));
    }
    let dirs = match proto::FaultDirection::try_from(f.direction) {
        Ok(proto::FaultDirection::Unspecified | proto::FaultDirection::Downstream) => Dirs {
            upstream: false,
            downstream: true,
        },
        Ok(proto::FaultDirection::Upstream) => Dirs {
            upstream: true,
            downstream: false,
        },
        Ok(proto::FaultDirection::Both) => Dirs {
            upstream: true,
            downstream: true,
        },
        Err(_) => return Err(err(name, format!("unknown direction {}", f.direction))),
    };
    let toxicity = probability(name, "toxicity", f.toxicity.unwrap_or(1.0))?;
    let c = f.when.clone().unwrap_or_default();
    let client = if c.client_cidr.trim().is_empty() {
        None
    } else {
        Some(Cidr::parse(&c.client_cidr).map_err(|e| err(name, format!("client_cidr: {e}")))?)
    };
    let http_match = http::Match::compile(&c).map_err(|e| err(name, e))?;
    let when = Condition {
        after_bytes: c.after_bytes,
        start_after: duration(name, "start_after", &c.start_after)?.unwrap_or_default(),
        duration: duration(name, "duration", &c.duration)?,
        client,
        every_nth: c.every_nth,
        http: http_match.map(Arc::new),
    };
    if when.duration == Some(Duration::ZERO) {
        return Err(err(
            name,
            "duration must be greater than zero (unset: for good)",
        ));
    }
    let Some(kind) = &f.kind else {
        return Err(err(
            name,
            format!(
                "a type is required: {}",
                Target::ALL
                    .iter()
                    .map(|t| format!("{} ({})", types::names_for(*t).join(", "), t.kind()))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    };
    let def = types::def_of(kind);
    let on = types::compile(kind, &types::Cx { name, target })?;
    if !def.takes(target) {
        let takers: Vec<String> = Target::ALL
            .iter()
            .filter(|t| def.takes(**t))
            .map(|t| t.a_kind())
            .collect();
        return Err(err(
            name,
            format!(
                "type {} is for {} listener; {} takes {}",
                def.name,
                takers.join(" or "),
                target.a_kind(),
                types::names_for(target).join(", ")
            ),
        ));
    }
    let action = Action { ty: def.name, on };
    if when.after_bytes != 0 {
        if target == Target::Udp {
            return Err(err(name, "after_bytes applies to TCP proxies only"));
        }
        if def.http {
            return Err(err(
                name,
                "after_bytes (a condition on TCP bytes) does not apply to HTTP faults; a reset fault has an after_bytes of its own",
            ));
        }
    }
    if when.http.is_some() && !def.http {
        return Err(err(
            name,
            format!(
                "methods, path_prefix, path_exact, path_regex, headers, grpc_service and grpc_method are conditions of HTTP faults (an http-proxy's {}), not of a {} fault",
                types::names_for(Target::Http)
                    .into_iter()
                    .filter(|n| types::by_name(n).is_some_and(|d| d.http))
                    .collect::<Vec<_>>()
                    .join(", "),
                def.name
            ),
        ));
    }
    Ok(Compiled {
        name: f.name.clone(),
        dirs,
        toxicity,
        when,
        action,
    })
}

/// Check a whole list: each fault, the count, unique names.
pub fn compile_all(faults: &[proto::Fault], target: Target) -> Result<Vec<Compiled>, SpecError> {
    let max = target.max_faults();
    if faults.len() > max {
        return Err(SpecError::new(format!(
            "{} faults; at most {max} per {} listener",
            faults.len(),
            target.kind()
        )));
    }
    let mut out: Vec<Compiled> = Vec::with_capacity(faults.len());
    for f in faults {
        let c = compile(f, target)?;
        if out.iter().any(|o| o.name == c.name) {
            return Err(err(&c.name, "two faults have this name"));
        }
        out.push(c);
    }
    Ok(out)
}

/// A fault's counters (see `FaultStats` in the proto).
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub connections_affected: AtomicU64,
    pub bytes_delayed: AtomicU64,
    pub bytes_dropped: AtomicU64,
    pub connections_closed: AtomicU64,
    pub datagrams_lost: AtomicU64,
    pub datagrams_duplicated: AtomicU64,
    pub datagrams_reordered: AtomicU64,
    pub datagrams_corrupted: AtomicU64,
    pub datagrams_delayed: AtomicU64,
    pub requests_affected: AtomicU64,
}

impl FaultCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// One fault as it is in effect: the validated fault, its counters, when
/// its window began, and its count of connections for every-Nth.
#[derive(Debug)]
pub struct Active {
    pub fault: Compiled,
    pub spec: proto::Fault,
    pub counters: Arc<FaultCounters>,
    /// When the fault was added or last updated: its window counts from
    /// here.
    pub since: Instant,
    /// Connections (clients) that have asked [`Active::decide`].
    seen: AtomicU64,
    /// Unique per version of a fault: a connection's decisions are kept
    /// by it (a new id means decide again).
    pub id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Active {
    fn new(fault: Compiled, spec: proto::Fault, counters: Arc<FaultCounters>) -> Self {
        Active {
            fault,
            spec,
            counters,
            since: Instant::now(),
            seen: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Relaxed),
        }
    }

    /// Whether the fault applies to a new connection (or client) from
    /// `peer`: its network, its every-Nth count, its toxicity. Counted in
    /// `connections_affected` when it does.
    pub fn decide(&self, peer: IpAddr, rng: &mut Rng) -> bool {
        let w = &self.fault.when;
        if let Some(c) = &w.client {
            if !c.contains(peer) {
                return false;
            }
        }
        let n = self.seen.fetch_add(1, Relaxed) + 1;
        if w.every_nth > 1 && n % u64::from(w.every_nth) != 0 {
            return false;
        }
        let hit = self.fault.toxicity >= 1.0 || rng.chance(self.fault.toxicity);
        if hit {
            self.counters.connections_affected.fetch_add(1, Relaxed);
        }
        hit
    }

    /// Whether an HTTP fault applies to a request (its window is checked
    /// by the caller): the client's network, the request conditions, the
    /// every-Nth count of the requests that got so far, the toxicity as a
    /// per-request probability. Counted in `requests_affected` when it
    /// does.
    pub fn decide_request(&self, peer: IpAddr, req: &http::Request<'_>, rng: &mut Rng) -> bool {
        let w = &self.fault.when;
        if w.client.as_ref().is_some_and(|c| !c.contains(peer)) {
            return false;
        }
        if w.http.as_ref().is_some_and(|m| !m.matches(req)) {
            return false;
        }
        if w.every_nth > 1 {
            let n = self.seen.fetch_add(1, Relaxed) + 1;
            if n % u64::from(w.every_nth) != 0 {
                return false;
            }
        }
        let hit = self.fault.toxicity >= 1.0 || rng.chance(self.fault.toxicity);
        if hit {
            self.counters.requests_affected.fetch_add(1, Relaxed);
        }
        hit
    }

    /// Whether `now` is inside the fault's time window.
    pub fn in_window(&self, now: Instant) -> bool {
        let w = &self.fault.when;
        let start = self.since + w.start_after;
        if now < start {
            return false;
        }
        match w.duration {
            None => true,
            Some(d) => now < start + d,
        }
    }

    /// When the window opens next (None: it is open, or closed for good).
    pub fn opens_at(&self, now: Instant) -> Option<Instant> {
        let start = self.since + self.fault.when.start_after;
        (now < start).then_some(start)
    }

    /// When the window closes (None: never, or not yet open).
    pub fn closes_at(&self) -> Option<Instant> {
        let w = &self.fault.when;
        w.duration.map(|d| self.since + w.start_after + d)
    }

    pub fn stats(&self, now: Instant) -> proto::FaultStats {
        let c = &*self.counters;
        proto::FaultStats {
            name: self.fault.name.clone(),
            r#type: self.fault.action.type_name().into(),
            connections_affected: c.connections_affected.load(Relaxed),
            bytes_delayed: c.bytes_delayed.load(Relaxed),
            bytes_dropped: c.bytes_dropped.load(Relaxed),
            connections_closed: c.connections_closed.load(Relaxed),
            datagrams_lost: c.datagrams_lost.load(Relaxed),
            datagrams_duplicated: c.datagrams_duplicated.load(Relaxed),
            datagrams_reordered: c.datagrams_reordered.load(Relaxed),
            datagrams_corrupted: c.datagrams_corrupted.load(Relaxed),
            datagrams_delayed: c.datagrams_delayed.load(Relaxed),
            active: self.in_window(now),
            requests_affected: c.requests_affected.load(Relaxed),
        }
    }
}

/// The faults in effect at one moment, in order.
#[derive(Debug, Default)]
pub struct FaultSet {
    pub faults: Vec<Arc<Active>>,
}

impl FaultSet {
    /// Faults acting on direction `d`.
    pub fn on(&self, d: Dir) -> impl Iterator<Item = &Arc<Active>> {
        self.faults.iter().filter(move |f| f.fault.dirs.has(d))
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Why a fault operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    Exists(String),
    NotFound(String),
    Full,
    Invalid(String),
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::Exists(n) => write!(f, "a fault named '{n}' exists already"),
            TableError::NotFound(n) => write!(f, "no fault named '{n}'"),
            TableError::Full => write!(
                f,
                "the listener has as many faults as it may: {MAX_FAULTS} on a proxy or udp-proxy, {MAX_HTTP_FAULTS} on an http-proxy"
            ),
            TableError::Invalid(e) => f.write_str(e),
        }
    }
}

/// A listener's live faults. Readers on the data path check
/// [`FaultTable::version`] (one relaxed load) and call
/// [`FaultTable::current`] only when it changed.
#[derive(Debug)]
pub struct FaultTable {
    /// The [`Target`]'s code (see [`FaultTable::target`]); changes when
    /// an update replaces the listener with one of another kind.
    target: std::sync::atomic::AtomicU8,
    /// 0 while the listener never had a fault; bumped on every change.
    version: AtomicU64,
    set: RwLock<Arc<FaultSet>>,
    /// Serializes changes (read-modify-write of `set`).
    changing: Mutex<()>,
    /// Woken on every change, for connections waiting on a fault's timer
    /// (only those already on the faulty path wait on it).
    changes: tokio::sync::Notify,
}

impl FaultTable {
    pub fn new(target: Target) -> Self {
        FaultTable {
            target: std::sync::atomic::AtomicU8::new(target.code()),
            version: AtomicU64::new(0),
            set: RwLock::new(Arc::new(FaultSet::default())),
            changing: Mutex::new(()),
            changes: tokio::sync::Notify::new(),
        }
    }

    /// Resolves at the next change after it is created (enable it before
    /// checking [`Watch::changed`] to miss none).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.changes.notified()
    }

    pub fn target(&self) -> Target {
        Target::of_code(self.target.load(Relaxed))
    }

    /// After a replace: the listener's kind may have changed (a proxy
    /// became a udp-proxy, or a kind without faults); hold exactly
    /// `faults` for `target` (none for a kind without faults).
    pub fn reset(&self, target: Option<Target>, faults: &[proto::Fault]) -> Result<(), TableError> {
        let target = target.unwrap_or(Target::Tcp);
        if target != self.target() {
            compile_all(faults, target).map_err(|e| TableError::Invalid(e.message))?;
            self.remove(None)?;
            self.target.store(target.code(), Relaxed);
        }
        self.replace_all(faults)
    }

    /// 0 if no fault was ever set; else changes with every change.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The faults now (a cheap clone of an `Arc`).
    pub fn current(&self) -> Arc<FaultSet> {
        self.set.read().clone()
    }

    fn publish(&self, set: FaultSet) {
        *self.set.write() = Arc::new(set);
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.changes.notify_waiters();
    }

    /// The faults as specs, in order.
    pub fn specs(&self) -> Vec<proto::Fault> {
        self.current()
            .faults
            .iter()
            .map(|a| a.spec.clone())
            .collect()
    }

    /// Make the table hold exactly `faults` (already checked by
    /// [`compile_all`]). A fault whose spec did not change is kept as it
    /// is (window, decisions); one that changed keeps its counters.
    pub fn replace_all(&self, faults: &[proto::Fault]) -> Result<(), TableError> {
        let compiled =
            compile_all(faults, self.target()).map_err(|e| TableError::Invalid(e.message))?;
        let _one = self.changing.lock();
        let cur = self.current();
        if cur.faults.is_empty() && compiled.is_empty() {
            return Ok(());
        }
        let same = cur.faults.len() == faults.len()
            && cur.faults.iter().zip(faults).all(|(a, f)| a.spec == *f);
        if same {
            return Ok(());
        }
        let mut next = Vec::with_capacity(compiled.len());
        for (c, spec) in compiled.into_iter().zip(faults) {
            match cur.faults.iter().find(|a| a.fault.name == c.name) {
                Some(a) if a.spec == *spec => next.push(a.clone()),
                Some(a) => next.push(Arc::new(Active::new(c, spec.clone(), a.counters.clone()))),
                None => next.push(Arc::new(Active::new(c, spec.clone(), Arc::default()))),
            }
        }
        self.publish(FaultSet { faults: next });
        Ok(())
    }

    /// Add a fault at the end.
    pub fn add(&self, spec: proto::Fault) -> Result<Arc<Active>, TableError> {
        let c = compile(&spec, self.target()).map_err(|e| TableError::Invalid(e.message))?;
        let _one = self.changing.lock();
        let cur = self.current();
        if cur.faults.iter().any(|a| a.fault.name == c.name) {
            return Err(TableError::Exists(c.name));
        }
        if cur.faults.len() >= self.target().max_faults() {
            return Err(TableError::Full);
        }
        let a = Arc::new(Active::new(c, spec, Arc::default()));
        let mut next = cur.faults.clone();
        next.push(a.clone());
        self.publish(FaultSet { faults: next });
        Ok(a)
    }

    /// Replace the fault of the same name, in its place, keeping its
    /// counters; its window starts again.
    pub fn update(&self, spec: proto::Fault) -> Result<Arc<Active>, TableError> {
        let c = compile(&spec, self.target()).map_err(|e| TableError::Invalid(e.message))?;
        let _one = self.changing.lock();
        let cur = self.current();
        let Some(i) = cur.faults.iter().position(|a| a.fault.name == c.name) else {
            return Err(TableError::NotFound(c.name));
        };
        let a = Arc::new(Active::new(c, spec, cur.faults[i].counters.clone()));
        let mut next = cur.faults.clone();
        next[i] = a.clone();
        self.publish(FaultSet { faults: next });
        Ok(a)
    }

    /// Remove one fault by name, or all (`name` None); the removed ones.
    pub fn remove(&self, name: Option<&str>) -> Result<Vec<Arc<Active>>, TableError> {
        let _one = self.changing.lock();
        let cur = self.current();
        let (gone, kept): (Vec<_>, Vec<_>) = cur
            .faults
            .iter()
            .cloned()
            .partition(|a| name.is_none_or(|n| a.fault.name == n));
        if let Some(n) = name {
            if gone.is_empty() {
                return Err(TableError::NotFound(n.to_string()));
            }
        }
        if !gone.is_empty() {
            self.publish(FaultSet { faults: kept });
        }
        Ok(gone)
    }

    /// Counters of every fault, in order.
    pub fn stats(&self) -> Vec<proto::FaultStats> {
        let now = Instant::now();
        self.current().faults.iter().map(|a| a.stats(now)).collect()
    }
}

/// A connection's view of a table: the set it last read, re-read when the
/// table's version moves.
#[derive(Debug)]
pub struct Watch<'a> {
    table: &'a FaultTable,
    seen: u64,
    set: Option<Arc<FaultSet>>,
}

impl<'a> Watch<'a> {
    pub fn new(table: &'a FaultTable) -> Self {
        Watch {
            table,
            seen: 0,
            set: None,
        }
    }

    /// The faults now, or None while the listener has never had one (the
    /// fast path: one atomic load).
    #[inline]
    pub fn get(&mut self) -> Option<&Arc<FaultSet>> {
        // Benchmark-only build: the fault layer compiled out.
        if cfg!(feature = "bench-no-faults") {
            return None;
        }
        let v = self.table.version();
        if v == 0 {
            return None;
        }
        if v != self.seen || self.set.is_none() {
            self.seen = v;
            self.set = Some(self.table.current());
        }
        self.set.as_ref()
    }

    /// Whether the table changed since the last [`Watch::get`].
    pub fn changed(&self) -> bool {
        self.table.version() != self.seen
    }
}

#[cfg(test)]
mod tests;
