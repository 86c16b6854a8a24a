//! Who may hold a connection to one of netd's own endpoints, and how many.
//!
//! Every endpoint netd opens for itself (the control plane on its Unix
//! socket, on TCP or TLS; the health endpoint; `/metrics`; the
//! Toxiproxy-compatible API) admits connections through one [`Gate`] with
//! the same rules:
//!
//! - **A cap on established connections** (`max`), counting only
//!   connections whose peer is known: on a Unix socket at accept
//!   (`SO_PEERCRED`), on TLS once the handshake is done. A connection
//!   still in its handshake holds no slot.
//! - **A reserve for admins**: the last `reserve` slots are only given to
//!   callers with the admin role, so a crowd of viewers (or of anything
//!   that authenticates) cannot lock the operator out.
//! - **A per-source cap** (`per_source`) for everyone but admins: a source
//!   is the peer's uid on a Unix socket, its IP address on TCP.
//! - **Handshakes apart**: at most `max_handshakes` connections at once
//!   (and [`HANDSHAKE_PER_SOURCE`] per source) may be in their TLS
//!   handshake, each for at most `handshake_timeout`. When that is full,
//!   the *oldest* handshake of the source with the most in progress is
//!   dropped for the new one: a client that opens silent connections, even
//!   from several addresses, evicts its own, not another peer's one real
//!   handshake.
//! - **Every refusal counted and logged sparingly**: a counter per
//!   endpoint and reason (`netd_endpoint_connections_refused_total`), and
//!   at most one WARN line per endpoint and reason every
//!   [`crate::util::warn_limit::DEFAULT_INTERVAL`], with the number of refusals
//!   it stands for.
//!
//! The gates register themselves in a process-wide list that `/metrics`
//! reads ([`snapshot`]).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::util::warn_limit::{DEFAULT_INTERVAL, RateLimitedWarn};

/// A TLS client must finish its handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes in progress at once, per endpoint.
pub const MAX_HANDSHAKES: usize = 32;
/// Handshakes in progress at once from one source.
pub const HANDSHAKE_PER_SOURCE: usize = 8;

/// Where a connection comes from, for the per-source caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A Unix-socket peer, by user id.
    Uid(u32),
    /// A TCP peer, by address (IPv4-mapped addresses as IPv4).
    Ip(IpAddr),
}

impl Source {
    pub fn ip(ip: IpAddr) -> Source {
        Source::Ip(ip.to_canonical())
    }

    /// A TCP peer accepted on `local`: the uid owning its socket when it is
    /// on this host ([`crate::control::peer_uid`]), else its address.
    pub fn tcp(local: Option<std::net::SocketAddr>, peer: std::net::SocketAddr) -> Source {
        local
            .and_then(|local| crate::control::peer_uid::loopback_peer_uid(local, peer))
            .map_or(Source::ip(peer.ip()), Source::Uid)
    }

    /// The source as handshakes are counted: an IPv6 address by its /64
    /// (one host has a whole prefix to pick addresses from, as the UDP
    /// guards count it), an IPv4 address by its /24 (a client with many
    /// addresses has them in a few networks), a uid as it is. Admins who
    /// share a network with a churning client keep their handshakes
    /// through [`Gate::trust`].
    fn handshake_key(self) -> Source {
        match self {
            Source::Ip(IpAddr::V6(v6)) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                Source::Ip(IpAddr::V6(o.into()))
            }
            Source::Ip(IpAddr::V4(v4)) if !v4.is_loopback() => {
                let mut o = v4.octets();
                o[3] = 0;
                Source::Ip(IpAddr::V4(o.into()))
            }
            s => s,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Uid(u) => write!(f, "uid:{u}"),
            Source::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Every slot open to this caller is taken.
    Full,
    /// This source holds as many connections as one source may.
    PerSource,
    /// Dropped during its handshake for a newer connection.
    HandshakeEvicted,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The handshake failed (bad or missing certificate, not TLS).
    HandshakeFailed,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Full,
        Reason::PerSource,
        Reason::HandshakeEvicted,
        Reason::HandshakeTimeout,
        Reason::HandshakeFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Full => "full",
            Reason::PerSource => "per_source",
            Reason::HandshakeEvicted => "handshake_evicted",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HandshakeFailed => "handshake_failed",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Reason::Full => "connection limit reached; closing a new connection",
            Reason::PerSource => "per-source connection limit reached; closing a new connection",
            Reason::HandshakeEvicted => {
                "too many handshakes in progress; dropped the oldest for a new connection"
            }
            Reason::HandshakeTimeout => "a handshake did not finish in time; closed",
            Reason::HandshakeFailed => "a handshake failed; closed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The bounds of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Established connections at once.
    pub max: usize,
    /// Of `max`, the slots only admins may take.
    pub reserve: usize,
    /// Established connections at once from one source (admins exempt).
    pub per_source: usize,
    /// Handshakes in progress at once.
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
}

impl Limits {
    /// The rules derived from an endpoint's connection cap: an eighth kept
    /// for admins (where the endpoint has admins), a quarter at most per
    /// source.
    pub fn for_max(max: usize, has_admins: bool) -> Limits {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Limits {
            max,
            reserve: if has_admins { max / 8 } else { 0 },
            per_source: (max / 4).max(1),
            max_handshakes: MAX_HANDSHAKES.min(max),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// The admission rules of one endpoint; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: &'static str,
    limits: Limits,
    /// `max - reserve` slots anyone may take.
    general: Arc<Semaphore>,
    /// `reserve` slots for admins.
    reserve: Arc<Semaphore>,
    /// Established non-admin connections per source.
    sources: Mutex<HashMap<Source, usize>>,
    pending: Mutex<Pending>,
    refused: [AtomicU64; Reason::ALL.len()],
    warn: [RateLimitedWarn; Reason::ALL.len()],
}

#[derive(Debug, Default)]
struct Pending {
    next: u64,
    /// Handshakes in progress, oldest first.
    queue: VecDeque<Pend>,
    /// Sources (exact addresses) that completed a handshake as admins,
    /// most recent last, at most [`MAX_TRUSTED`].
    trusted: VecDeque<Source>,
}

/// A handshake in progress: its id, its source as handshakes count it
/// ([`Source::handshake_key`]), whether its source is trusted, and the
/// token that tells it to give up.
#[derive(Debug)]
struct Pend {
    id: u64,
    key: Source,
    trusted: bool,
    token: CancellationToken,
}

/// Sources remembered as having completed a handshake as an admin.
pub const MAX_TRUSTED: usize = 256;

static GATES: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

impl Gate {
    /// A gate for the endpoint named `endpoint` (a metrics label:
    /// `control`, `health`, `metrics`, `toxiproxy_api`).
    pub fn new(endpoint: &'static str, limits: Limits) -> Gate {
        let inner = Arc::new(Inner {
            endpoint,
            limits,
            general: Arc::new(Semaphore::new(limits.max - limits.reserve.min(limits.max))),
            reserve: Arc::new(Semaphore::new(limits.reserve.min(limits.max))),
            sources: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            warn: std::array::from_fn(|_| RateLimitedWarn::new(DEFAULT_INTERVAL)),
        });
        let mut gates = GATES.lock();
        gates.retain(|g| g.strong_count() > 0);
        gates.push(Arc::downgrade(&inner));
        Gate { inner }
    }

    pub fn endpoint(&self) -> &'static str {
        self.inner.endpoint
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// A slot for an identified connection from `source`, or `None` (the
    /// refusal is counted and logged).
    pub fn admit(&self, source: Source, admin: bool) -> Option<Slot> {
        match self.try_admit(source, admin) {
            Ok(slot) => Some(slot),
            Err(reason) => {
                self.refuse(reason, source);
                None
            }
        }
    }

    /// [`Gate::admit`] without counting or logging a refusal, for a caller
    /// that may make room and try again.
    pub fn try_admit(&self, source: Source, admin: bool) -> Result<Slot, Reason> {
        let inner = &self.inner;
        if !admin {
            let mut sources = inner.sources.lock();
            let n = sources.entry(source).or_insert(0);
            if *n >= inner.limits.per_source {
                if *n == 0 {
                    sources.remove(&source);
                }
                return Err(Reason::PerSource);
            }
            *n += 1;
        }
        let counted = (!admin).then_some(source);
        let permit = inner.general.clone().try_acquire_owned().or_else(|_| {
            if admin {
                inner.reserve.clone().try_acquire_owned()
            } else {
                Err(tokio::sync::TryAcquireError::NoPermits)
            }
        });
        let mut slot = Slot {
            gate: self.inner.clone(),
            source: counted,
            _permit: None,
        };
        match permit {
            Ok(p) => {
                slot._permit = Some(p);
                Ok(slot)
            }
            Err(_) => {
                drop(slot); // gives the per-source count back
                Err(Reason::Full)
            }
        }
    }

    /// Established connections `source` holds now (admins' not counted).
    pub fn held_by(&self, source: Source) -> usize {
        let sources = self.inner.sources.lock();
        sources.get(&source).copied().unwrap_or(0)
    }

    /// Register a handshake from `source`; when too many are in progress
    /// (in all, or from this source), the oldest is told to give up.
    pub fn handshake(&self, peer: Source) -> Handshake {
        let source = peer.handshake_key();
        let token = CancellationToken::new();
        let inner = &self.inner;
        let mut evicted = Vec::new();
        let id = {
            let mut p = inner.pending.lock();
            let id = p.next;
            p.next += 1;
            let trusted = p.trusted.contains(&peer);
            // Too many from this source: its oldest makes way (an
            // untrusted one first, so that a trusted admin sharing a
            // prefix with a churning client keeps its place).
            let from_source = p.queue.iter().filter(|e| e.key == source).count();
            if from_source >= HANDSHAKE_PER_SOURCE {
                let i = p
                    .queue
                    .iter()
                    .position(|e| e.key == source && !e.trusted)
                    .or_else(|| p.queue.iter().position(|e| e.key == source));
                if let Some(old) = i.and_then(|i| p.queue.remove(i)) {
                    evicted.push(old.token);
                }
            }
            // When full, the oldest handshake of the source with the most
            // in progress (the new one counted) makes way: a client with a
            // few addresses churning silent connections evicts its own,
            // not a peer's single real handshake. Sources that completed a
            // handshake as admins before are passed over while there is
            // anyone else to evict.
            while p.queue.len() >= inner.limits.max_handshakes.max(1) {
                let untrusted = p.queue.iter().any(|e| !e.trusted);
                let candidate = |e: &Pend| !untrusted || !e.trusted;
                let mut counts: HashMap<Source, usize> = HashMap::new();
                for e in p.queue.iter().filter(|e| candidate(e)) {
                    *counts.entry(e.key).or_insert(0) += 1;
                }
                if !untrusted || !trusted {
                    *counts.entry(source).or_insert(0) += 1;
                }
                let most = counts.values().copied().max().unwrap_or(0);
                let i = p
                    .queue
                    .iter()
                    .position(|e| candidate(e) && counts.get(&e.key) == Some(&most))
                    .unwrap_or(0);
                match p.queue.remove(i) {
                    Some(old) => evicted.push(old.token),
                    None => break,
                }
            }
            p.queue.push_back(Pend {
                id,
                key: source,
                trusted,
                token: token.clone(),
            });
            id
        };
        for t in evicted {
            t.cancel();
        }
        Handshake {
            gate: self.clone(),
            id,
            source: peer,
            token,
        }
    }

    /// Remember `peer` as a source whose handshakes made an admin: its
    /// later handshakes are the last to make way.
    pub fn trust(&self, peer: Source) {
        let mut p = self.inner.pending.lock();
        if let Some(i) = p.trusted.iter().position(|s| *s == peer) {
            p.trusted.remove(i);
        }
        if p.trusted.len() >= MAX_TRUSTED {
            p.trusted.pop_front();
        }
        p.trusted.push_back(peer);
    }

    /// Count and (sparingly) log a refusal.
    pub fn refuse(&self, reason: Reason, source: Source) {
        self.refuse_with(reason, source, None);
    }

    fn refuse_with(&self, reason: Reason, source: Source, error: Option<&str>) {
        let inner = &self.inner;
        inner.refused[reason.index()].fetch_add(1, Relaxed);
        let limits = inner.limits;
        if let Some(suppressed) = inner.warn[reason.index()].hit() {
            tracing::warn!(
                endpoint = inner.endpoint,
                reason = reason.as_str(),
                %source,
                error = error.unwrap_or(""),
                limit = limits.max,
                per_source = limits.per_source,
                suppressed,
                "{}: {}",
                inner.endpoint,
                reason.describe()
            );
        }
    }

    /// Refusals so far, by reason.
    pub fn refused(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.inner.refused[r.index()].load(Relaxed)))
            .collect()
    }

    /// Established connections holding a slot now.
    pub fn open(&self) -> usize {
        let l = self.inner.limits;
        let free = self.inner.general.available_permits() + self.inner.reserve.available_permits();
        l.max.saturating_sub(free)
    }
}

/// An established connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Inner>,
    source: Option<Source>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(source) = self.source.take() {
            let mut sources = self.gate.sources.lock();
            if let Some(n) = sources.get_mut(&source) {
                *n -= 1;
                if *n == 0 {
                    sources.remove(&source);
                }
            }
        }
    }
}

/// A handshake in progress; leaves the queue when dropped.
#[derive(Debug)]
pub struct Handshake {
    gate: Gate,
    id: u64,
    source: Source,
    token: CancellationToken,
}

impl Handshake {
    /// Run `handshake` until it finishes, the deadline passes or a newer
    /// connection takes its place. A failure is counted and logged here.
    pub async fn run<T, E: std::fmt::Display>(
        self,
        handshake: impl Future<Output = Result<T, E>>,
    ) -> Option<T> {
        let timeout = self.gate.inner.limits.handshake_timeout;
        let outcome = tokio::select! {
            _ = self.token.cancelled() => Err((Reason::HandshakeEvicted, None)),
            r = tokio::time::timeout(timeout, handshake) => match r {
                Err(_) => Err((Reason::HandshakeTimeout, None)),
                Ok(Err(e)) => Err((Reason::HandshakeFailed, Some(e.to_string()))),
                Ok(Ok(t)) => Ok(t),
            },
        };
        match outcome {
            Ok(t) => Some(t),
            Err((reason, error)) => {
                self.gate.refuse_with(reason, self.source, error.as_deref());
                None
            }
        }
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut p = self
            .gate
            .inner
            .pending
            .lock();
        if let Some(i) = p.queue.iter().position(|e| e.id == self.id) {
            p.queue.remove(i);
        }
    }
}

/// One endpoint's figures, for `/metrics`.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub endpoint: &'static str,
    pub open: usize,
    pub refused: Vec<(Reason, u64)>,
}

/// Every live endpoint's figures (several gates of one name are summed).
pub fn snapshot() -> Vec<EndpointStats> {
    let gates: Vec<Gate> = GATES
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .map(|inner| Gate { inner })
        .collect();
    let mut out: Vec<EndpointStats> = Vec::new();
    for g in gates {
        let refused = g.refused();
        match out.iter_mut().find(|e| e.endpoint == g.endpoint()) {
            Some(e) => {
                e.open += g.open();
                for (acc, (_, n)) in e.refused.iter_mut().zip(refused) {
                    acc.1 += n;
                }
            }
            None => out.push(EndpointStats {
                endpoint: g.endpoint(),
                open: g.open(),
                refused,
            }),
        }
    }
    out.sort_by_key(|e| e.endpoint);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Source {
        Source::ip(s.parse().unwrap())
    }

    #[test]
    fn reserve_is_for_admins_and_per_source_spares_them() {
        let g = Gate::new(
            "test",
            Limits {
                max: 4,
                reserve: 1,
                per_source: 2,
                max_handshakes: 2,
                handshake_timeout: HANDSHAKE_TIMEOUT,
            },
        );
        let a1 = g.admit(ip("10.0.0.1"), false).expect("first");
        let _a2 = g.admit(ip("10.0.0.1"), false).expect("second");
        assert!(g.admit(ip("10.0.0.1"), false).is_none(), "per-source cap");
        let _b1 = g.admit(ip("10.0.0.2"), false).expect("other source");
        assert!(g.admit(ip("10.0.0.3"), false).is_none(), "reserve kept");
        let admin = g
            .admit(ip("10.0.0.1"), true)
            .expect("admin takes the reserve");
        assert!(g.admit(ip("10.0.0.4"), true).is_none(), "full");
        drop(a1);
        let _a3 = g
            .admit(ip("10.0.0.1"), false)
            .expect("slot and count given back");
        drop(admin);
        let refused: u64 = g.refused().iter().map(|(_, n)| n).sum();
        assert_eq!(refused, 3);
        assert_eq!(g.open(), 3);
    }

    #[tokio::test]
    async fn the_oldest_handshake_makes_way() {
        let g = Gate::new(
            "test",
            Limits {
                max: 8,
                reserve: 0,
                per_source: 8,
                max_handshakes: 2,
                handshake_timeout: Duration::from_secs(60),
            },
        );
        let first = g.handshake(ip("10.0.0.1"));
        let second = g.handshake(ip("10.0.0.2"));
        let third = g.handshake(ip("10.0.0.3"));
        let never = std::future::pending::<Result<(), String>>();
        assert!(first.run(never).await.is_none(), "the oldest is evicted");
        assert!(!second.token.is_cancelled());
        let done = third.run(async { Ok::<_, String>(7) }).await;
        assert_eq!(done, Some(7));
        drop(second);
        assert!(g.inner.pending.lock().queue.is_empty());
        let evicted = g.refused()[Reason::HandshakeEvicted.index()].1;
        assert_eq!(evicted, 1);
    }

    #[tokio::test]
    async fn addresses_of_one_ipv4_network_are_one_source_for_handshakes() {
        let g = Gate::new("test", Limits::for_max(128, true));
        let admin = g.handshake(ip("192.0.2.1"));
        let attacker: Vec<Handshake> = (1..=4 * MAX_HANDSHAKES)
            .map(|i| g.handshake(ip(&format!("10.0.0.{}", i % 250 + 1))))
            .collect();
        assert!(!admin.token.is_cancelled());
        let live = attacker.iter().filter(|h| !h.token.is_cancelled()).count();
        assert_eq!(live, HANDSHAKE_PER_SOURCE);
    }

    #[tokio::test]
    async fn a_trusted_admin_keeps_its_handshake_among_its_neighbours_churn() {
        let g = Gate::new(
            "test",
            Limits {
                max: 64,
                reserve: 8,
                per_source: 16,
                max_handshakes: 4,
                handshake_timeout: Duration::from_secs(60),
            },
        );
        let admin = ip("10.0.0.9");
        g.trust(admin);
        let mine = g.handshake(admin);
        // Thirty-one addresses of the admin's /24 and of others churn.
        let churn: Vec<Handshake> = (1..32)
            .map(|i| g.handshake(ip(&format!("10.0.{}.{i}", i % 3))))
            .collect();
        assert!(!mine.token.is_cancelled(), "the trusted handshake went");
        assert!(churn.iter().filter(|h| !h.token.is_cancelled()).count() <= 3);
        // An untrusted neighbour of the same /24 is just one of the crowd.
        let stranger = g.handshake(ip("10.0.0.10"));
        let _more: Vec<Handshake> = (0..8).map(|_| g.handshake(ip("10.0.0.11"))).collect();
        assert!(stranger.token.is_cancelled());
        assert!(!mine.token.is_cancelled());
    }

    #[tokio::test]
    async fn one_source_cannot_hold_every_handshake() {
        let g = Gate::new("test", Limits::for_max(128, true));
        let held: Vec<Handshake> = (0..HANDSHAKE_PER_SOURCE)
            .map(|_| g.handshake(ip("10.0.0.1")))
            .collect();
        let other = g.handshake(ip("10.0.1.2"));
        let again = g.handshake(ip("10.0.0.1"));
        assert!(held[0].token.is_cancelled(), "the source's oldest went");
        assert!(!held[1].token.is_cancelled());
        assert!(!other.token.is_cancelled());
        drop(again);
    }

    /// Sources with several handshakes make way before one with a single
    /// one, however old it is: an admin's handshake from afar is not
    /// evicted by a client churning silent connections from a few
    /// addresses.
    #[tokio::test]
    async fn the_busiest_source_makes_way() {
        let g = Gate::new("test", Limits::for_max(128, true));
        let admin = g.handshake(ip("192.0.2.1"));
        let mut attacker = Vec::new();
        for round in 0..4 * MAX_HANDSHAKES {
            // Five networks (a /24 is one source for handshakes).
            let a = ["10.0.1.1", "10.0.2.1", "10.0.3.1", "10.0.4.1", "10.0.5.1"][round % 5];
            attacker.push(g.handshake(ip(a)));
        }
        assert!(
            !admin.token.is_cancelled(),
            "the admin's handshake was evicted"
        );
        let evicted = attacker.iter().filter(|h| h.token.is_cancelled()).count();
        assert_eq!(evicted, 4 * MAX_HANDSHAKES - (MAX_HANDSHAKES - 1));
    }

    /// One host has a whole IPv6 prefix: addresses of one /64 count as
    /// one source for handshakes, so a client picking a new address for
    /// each connection cannot pass for 32 sources.
    #[tokio::test]
    async fn an_ipv6_prefix_is_one_source_for_handshakes() {
        let g = Gate::new("test", Limits::for_max(128, true));
        let admin = g.handshake(ip("2001:db8:1::9"));
        let attacker: Vec<Handshake> = (1..=4 * MAX_HANDSHAKES)
            .map(|i| g.handshake(ip(&format!("2001:db8:2::{i:x}"))))
            .collect();
        assert!(
            !admin.token.is_cancelled(),
            "the admin's handshake was evicted"
        );
        let alive = attacker.iter().filter(|h| !h.token.is_cancelled()).count();
        assert_eq!(alive, HANDSHAKE_PER_SOURCE);
    }
}
