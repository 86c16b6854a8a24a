//! The datagram-source guard in front of every UDP kind (udp-echo,
//! udp-proxy, and any future one): which senders a UDP listener answers or
//! forwards for. A UDP listener answers whatever address a datagram claims
//! to come from, so without it one spoofed datagram starts a loop, or
//! turns netd into a reflector. The rules, as inetd's built-in services
//! keep them:
//!
//! - **Own addresses.** Datagrams from netd's own UDP listening addresses
//!   ([`crate::net::own_addrs`]) are dropped: a spoofed one would start a loop
//!   between two listeners (or one and itself) that never ends. A kind adds
//!   the addresses that can only loop for it (a udp-proxy its upstream:
//!   what the upstream sends to the proxy's listening port is an echo of
//!   the proxy's own datagram). Counted as `own_source_drops`.
//! - **Reflector ports.** Source ports 0, echo (7), daytime (13), qotd
//!   (17), chargen (19) and time (37) always, and every port below 1024
//!   unless `allow_privileged_sources` (DNS on 53, NTP on 123 answer any
//!   datagram too); so are unspecified, broadcast and multicast sources.
//!   Counted as `reflector_source_drops`.
//! - **Per-source token bucket.** Each source IP (an IPv6 source per /64)
//!   has a bucket (`rate_limit`, e.g. "100/s"); its table holds
//!   `max_sources` sources, evicting idle ones and refusing new sources
//!   when all are active. Counted as `rate_limited`, the table as
//!   `sources_tracked` / `sources_evicted`.
//!
//! The keys (`allow_privileged_sources`, `rate_limit`, `max_sources`) and
//! the counters are the same for every kind; only the default rate differs
//! (see each kind). A drop is logged at debug level, and at most one
//! warning line per listener every 10 s says what was dropped and how many
//! lines were suppressed ([`RateLimitedWarn`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use super::SpecError;
use super::client_key::{DEFAULT_IPV6_PREFIX, rate_key};
use crate::net::own_addrs::{OwnAddrs, OwnAddrsView};
use crate::telemetry::stats::Stats;
use crate::util::warn_limit::{DEFAULT_INTERVAL, RateLimitedWarn};

/// Sources the rate limit tracks unless configured.
pub const DEFAULT_MAX_SOURCES: usize = 16_384;
/// Source ports never answered: port 0 cannot be answered, and echo,
/// daytime, qotd, chargen and time answer any datagram, so a reply to them
/// starts a loop.
pub const REFLECTOR_PORTS: [u16; 6] = [0, 7, 13, 17, 19, 37];
/// Every idle source is forgotten this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// With the table full, idle sources are looked for at most this often.
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A per-source token bucket as GCRA: `interval` between tokens, `burst`
/// tokens at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval: Duration,
    pub burst: u32,
}

/// A listener's guard settings, validated from its spec's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRules {
    pub allow_privileged_sources: bool,
    pub rate: Option<Rate>,
    pub max_sources: usize,
}

impl SourceRules {
    /// From the spec's `allow_privileged_sources`, `rate_limit` (empty
    /// for `default_rate`; "off" or "none" for no limit) and
    /// `max_sources` (0 for [`DEFAULT_MAX_SOURCES`]).
    pub fn from_keys(
        allow_privileged_sources: bool,
        rate_limit: &str,
        max_sources: u32,
        default_rate: &str,
    ) -> Result<Self, SpecError> {
        let rate = match rate_limit.trim() {
            "off" | "none" => None,
            r => {
                let r = if r.is_empty() { default_rate } else { r };
                match r {
                    "off" | "none" => None,
                    r => {
                        let q = super::http::parse_rate(r)
                            .map_err(|e| SpecError::at("rate_limit", format!("{e}, or off")))?;
                        Some(Rate {
                            interval: q.replenish_interval(),
                            burst: q.burst_size().get(),
                        })
                    }
                }
            }
        };
        Ok(SourceRules {
            allow_privileged_sources,
            rate,
            max_sources: match max_sources {
                0 => DEFAULT_MAX_SOURCES,
                n => n as usize,
            },
        })
    }

    /// Whether a datagram from `src` may not be answered because its port
    /// or address may answer back.
    pub fn reflector_source(&self, src: SocketAddr) -> bool {
        let port = src.port();
        if REFLECTOR_PORTS.contains(&port) || (port < 1024 && !self.allow_privileged_sources) {
            return true;
        }
        match src.ip().to_canonical() {
            IpAddr::V4(a) => a.is_unspecified() || a.is_broadcast() || a.is_multicast(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
        }
    }
}

/// The `rate_limit` key as in effect: `default_rate` when unset.
pub fn effective_rate_limit(shown: &str, default_rate: &str) -> String {
    if shown.trim().is_empty() {
        default_rate.to_string()
    } else {
        shown.to_string()
    }
}

/// The `max_sources` key as in effect.
pub fn effective_max_sources(shown: u32) -> u32 {
    match shown {
        0 => DEFAULT_MAX_SOURCES as u32,
        n => n,
    }
}

/// The guard's counters, the same fields in every kind's stats.
#[derive(Debug, Default)]
pub struct GuardCounters {
    pub own_source_drops: AtomicU64,
    pub reflector_source_drops: AtomicU64,
    pub rate_limited: AtomicU64,
    pub sources_tracked: AtomicU64,
    pub sources_evicted: AtomicU64,
}

/// A snapshot of [`GuardCounters`], to copy into a kind's stats message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuardStats {
    pub own_source_drops: u64,
    pub reflector_source_drops: u64,
    pub rate_limited: u64,
    pub sources_tracked: u64,
    pub sources_evicted: u64,
}

impl GuardCounters {
    pub fn snapshot(&self) -> GuardStats {
        GuardStats {
            own_source_drops: self.own_source_drops.load(Relaxed),
            reflector_source_drops: self.reflector_source_drops.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            sources_tracked: self.sources_tracked.load(Relaxed),
            sources_evicted: self.sources_evicted.load(Relaxed),
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    OwnSource,
    ReflectorSource,
    RateLimited,
}

impl Dropped {
    /// The `reason` label of the drop counters.
    pub fn reason(self) -> &'static str {
        match self {
            Dropped::OwnSource => "own_source",
            Dropped::ReflectorSource => "reflector_source",
            Dropped::RateLimited => "rate_limited",
        }
    }

    fn says(self) -> &'static str {
        match self {
            Dropped::OwnSource => "source is one of netd's own UDP sockets or would loop back",
            Dropped::ReflectorSource => "source port or address may answer back",
            Dropped::RateLimited => "over the per-source rate limit",
        }
    }
}

/// One receive loop's guard: the rules, a cached view of netd's own
/// addresses, the token buckets and the warning's rate limit.
#[derive(Debug)]
pub struct SourceGuard<'a> {
    rules: &'a SourceRules,
    own: OwnAddrsView,
    /// Sources that can only be a loop for this listener.
    never: Vec<SocketAddr>,
    limiter: Option<std::sync::Arc<parking_lot::Mutex<Limiter>>>,
    counters: &'a GuardCounters,
    listener: &'a str,
    warn: std::sync::Arc<RateLimitedWarn>,
}

impl<'a> SourceGuard<'a> {
    pub fn new(
        rules: &'a SourceRules,
        own: &OwnAddrs,
        counters: &'a GuardCounters,
        listener: &'a str,
    ) -> Self {
        let SourceBuckets { limiter, warn } = SourceBuckets::new(rules);
        SourceGuard {
            rules,
            own: own.view(),
            never: Vec::new(),
            limiter,
            counters,
            listener,
            warn,
        }
    }

    /// Treat `addr` as an own address too (a udp-proxy's upstream).
    pub fn never_from(mut self, addr: SocketAddr) -> Self {
        self.never
            .push(SocketAddr::new(addr.ip().to_canonical(), addr.port()));
        self
    }

    /// Use `buckets` (shared with the listener's other receive loops)
    /// rather than a table and a warning limit of its own.
    pub fn sharing(mut self, buckets: &SourceBuckets) -> Self {
        self.limiter = buckets.limiter.clone();
        self.warn = buckets.warn.clone();
        self
    }

    /// Whether a datagram from `peer` may be answered (or forwarded); a
    /// drop is counted and logged (rate-limited) here.
    pub fn admit(&mut self, peer: SocketAddr, now: Instant) -> bool {
        match self.check(peer, now) {
            Ok(()) => true,
            Err(why) => {
                let c = match why {
                    Dropped::OwnSource => &self.counters.own_source_drops,
                    Dropped::ReflectorSource => &self.counters.reflector_source_drops,
                    Dropped::RateLimited => &self.counters.rate_limited,
                };
                Stats::add(c, 1);
                tracing::debug!(listener = self.listener, %peer, "dropped: {}", why.says());
                if let Some(suppressed) = self.warn.hit() {
                    tracing::warn!(
                        listener = self.listener,
                        %peer,
                        reason = why.reason(),
                        suppressed,
                        "dropping datagrams: {} (one line per {}s; the rest are counted)",
                        why.says(),
                        DEFAULT_INTERVAL.as_secs()
                    );
                }
                false
            }
        }
    }

    fn check(&mut self, peer: SocketAddr, now: Instant) -> Result<(), Dropped> {
        if self.rules.reflector_source(peer) {
            return Err(Dropped::ReflectorSource);
        }
        let canonical = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if self.never.contains(&canonical) || self.own.contains(peer) {
            return Err(Dropped::OwnSource);
        }
        if let Some(l) = self.limiter.as_ref() {
            // Held for one lookup, never across an await.
            let mut l = l.lock();
            let allowed = l.check(rate_key(peer.ip(), DEFAULT_IPV6_PREFIX), now);
            self.counters
                .sources_tracked
                .store(l.sources.len() as u64, Relaxed);
            Stats::add(
                &self.counters.sources_evicted,
                std::mem::take(&mut l.evicted),
            );
            if !allowed {
                return Err(Dropped::RateLimited);
            }
        }
        Ok(())
    }
}

/// The per-source token buckets of a listener and its warning's rate
/// limit, shared by its receive loops (one per socket of a SO_REUSEPORT
/// group): the kernel spreads one source IP's ports over the sockets, and
/// the limit is per IP, so the loops take tokens from one table (a short
/// lock per datagram, only with `rate_limit` on); and the listener writes
/// at most one warning line per interval, whichever loop drops.
#[derive(Debug, Clone)]
pub struct SourceBuckets {
    /// None without a rate limit.
    limiter: Option<std::sync::Arc<parking_lot::Mutex<Limiter>>>,
    warn: std::sync::Arc<RateLimitedWarn>,
}

impl SourceBuckets {
    pub fn new(rules: &SourceRules) -> Self {
        SourceBuckets {
            limiter: rules.rate.map(|r| {
                std::sync::Arc::new(parking_lot::Mutex::new(Limiter::new(r, rules.max_sources)))
            }),
            warn: std::sync::Arc::new(RateLimitedWarn::new(DEFAULT_INTERVAL)),
        }
    }
}

/// Token buckets per source key, bounded to `max` sources. A bucket is kept
/// as GCRA's theoretical arrival time `tat`: the bucket is full (the source
/// idle) once `tat` has passed.
#[derive(Debug)]
struct Limiter {
    rate: Rate,
    tolerance: Duration,
    max: usize,
    sources: HashMap<IpAddr, Instant>,
    next_sweep: Instant,
    next_full_sweep: Instant,
    /// Evicted since the caller last took it.
    evicted: u64,
}

impl Limiter {
    fn new(rate: Rate, max: usize) -> Self {
        let now = Instant::now();
        Limiter {
            rate,
            tolerance: rate.interval.saturating_mul(rate.burst),
            max: max.max(1),
            sources: HashMap::new(),
            next_sweep: now + SWEEP_EVERY,
            next_full_sweep: now,
            evicted: 0,
        }
    }

    fn sweep(&mut self, now: Instant) {
        let before = self.sources.len();
        self.sources.retain(|_, tat| *tat > now);
        self.evicted += (before - self.sources.len()) as u64;
        if self.sources.capacity() > 2 * self.sources.len().max(64) {
            self.sources.shrink_to_fit();
        }
    }

    /// Whether `key` may be answered now; takes a token if so.
    fn check(&mut self, key: IpAddr, now: Instant) -> bool {
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + SWEEP_EVERY;
        }
        if !self.sources.contains_key(&key) && self.sources.len() >= self.max {
            if now < self.next_full_sweep {
                return false;
            }
            self.sweep(now);
            self.next_full_sweep = now + FULL_SWEEP_EVERY;
            if self.sources.len() >= self.max {
                return false;
            }
        }
        let tat = self.sources.entry(key).or_insert(now);
        let start = (*tat).max(now);
        let next = start + self.rate.interval;
        if next.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        *tat = next;
        true
    }
}

/// The guard's Prometheus families, declared by every UDP kind's table
/// with its own reader (one family across kinds, told apart by the `kind`
/// label; see [`crate::telemetry::families`]).
pub mod families {
    use crate::telemetry::families::Desc;

    pub const DROPS: Desc = Desc::counter(
        "netd_udp_echo_drops",
        "Datagrams a UDP echo or udp-proxy received but did not answer or forward, by reason (own_source, reflector_source, rate_limited; a udp-proxy also source_clients) or dropped by the kernel (kernel).",
    )
    .by(&["reason"]);
    pub const SOURCES: Desc = Desc::gauge(
        "netd_udp_echo_sources",
        "Sources in a UDP echo's or udp-proxy's rate-limit table.",
    );
    pub const SOURCES_EVICTED: Desc = Desc::counter(
        "netd_udp_echo_sources_evicted",
        "Idle sources evicted from a UDP echo's or udp-proxy's rate-limit table.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let rate = Rate {
            interval: Duration::from_millis(10),
            burst: 5,
        };
        let mut l = Limiter::new(rate, 2);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!((0..10).filter(|_| l.check(a, t0)).count(), 5);
        assert!(l.check(a, t0 + Duration::from_millis(10)));
        assert!(!l.check(a, t0 + Duration::from_millis(10)));
        assert_eq!((0..5).filter(|_| l.check(b, t0)).count(), 5);
        // Full of active sources: a new one is refused...
        assert!(!l.check(c, t0 + Duration::from_millis(20)));
        // ...until one has gone idle and is evicted.
        assert!(l.check(c, t0 + Duration::from_secs(1)));
        assert_eq!(l.evicted, 2);
    }

    #[test]
    fn own_never_reflector_and_rate_drops_are_counted_by_reason() {
        let rules = SourceRules::from_keys(false, "2/h", 0, "off").unwrap();
        let own = OwnAddrs::default();
        own.insert("127.0.0.1:4000".parse().unwrap());
        let counters = GuardCounters::default();
        let up: SocketAddr = "127.0.0.9:5000".parse().unwrap();
        let mut g = SourceGuard::new(&rules, &own, &counters, "t").never_from(up);
        let now = Instant::now();
        for (src, ok) in [
            ("127.0.0.1:4000", false),
            ("127.0.0.9:5000", false),
            ("[::ffff:127.0.0.9]:5000", false),
            ("127.0.0.2:7", false),
            ("127.0.0.2:53", false),
            ("127.0.0.2:0", false),
            ("0.0.0.0:5000", false),
            ("127.0.0.2:40000", true),
            ("127.0.0.2:40001", true),
            ("127.0.0.2:40002", false),
        ] {
            assert_eq!(g.admit(src.parse().unwrap(), now), ok, "{src}");
        }
        let s = counters.snapshot();
        assert_eq!(s.own_source_drops, 3);
        assert_eq!(s.reflector_source_drops, 4);
        assert_eq!(s.rate_limited, 1);
        assert_eq!(s.sources_tracked, 1);
    }

    #[test]
    fn guards_sharing_buckets_take_tokens_from_one_table() {
        // Two receive loops of one listener: 3 an hour per source IP in
        // all, whichever loop its ports reach.
        let rules = SourceRules::from_keys(false, "3/h", 0, "off").unwrap();
        let own = OwnAddrs::default();
        let counters = GuardCounters::default();
        let buckets = SourceBuckets::new(&rules);
        let mut a = SourceGuard::new(&rules, &own, &counters, "t").sharing(&buckets);
        let mut b = SourceGuard::new(&rules, &own, &counters, "t").sharing(&buckets);
        let now = Instant::now();
        let admitted = (0..6)
            .filter(|i| {
                let g = if i % 2 == 0 { &mut a } else { &mut b };
                g.admit(format!("127.0.0.2:{}", 40000 + i).parse().unwrap(), now)
            })
            .count();
        assert_eq!(admitted, 3);
        let s = counters.snapshot();
        assert_eq!((s.rate_limited, s.sources_tracked), (3, 1));
    }

    #[test]
    fn keys_default_and_refuse_nonsense() {
        let off = SourceRules::from_keys(false, "", 0, "off").unwrap();
        assert_eq!(off.rate, None);
        assert_eq!(off.max_sources, DEFAULT_MAX_SOURCES);
        let on = SourceRules::from_keys(true, "", 7, "100/s").unwrap();
        assert_eq!(on.rate.map(|r| r.burst), Some(100));
        assert_eq!(on.max_sources, 7);
        assert!(!on.reflector_source("127.0.0.1:53".parse().unwrap()));
        assert!(on.reflector_source("127.0.0.1:19".parse().unwrap()));
        assert!(SourceRules::from_keys(false, "fast", 0, "off").is_err());
    }
}
