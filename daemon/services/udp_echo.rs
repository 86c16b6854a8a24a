//! UDP echo: each datagram is answered to its sender, optionally behind a
//! prefix. Datagrams up to 64 KiB are read whole.
//!
//! A UDP echo answers whatever address a datagram claims to come from, so
//! it is safe by default, as inetd's built-in echo is:
//!
//! - Datagrams from netd's own UDP listening addresses are dropped: a
//!   spoofed one would start a loop between two listeners (or one and
//!   itself) that never ends.
//! - Datagrams from ports that may answer back are dropped: 0, echo (7),
//!   daytime (13), qotd (17), chargen (19), time (37) always, and every
//!   port below 1024 unless `allow_privileged_sources`; so are unspecified,
//!   broadcast and multicast sources.
//! - Each source IP (an IPv6 source per /64) has a token bucket
//!   (`rate_limit`, 100/s with a burst of 100 by default); its table holds
//!   `max_sources` sources, evicting idle ones and refusing new sources
//!   when all are active.
//! - A reply is at most max(2 × request, request + 64) bytes (and 65507,
//!   the largest IPv4 UDP payload): a longer prefix is cut, so netd is no
//!   amplifier.
//! - The kernel's receive-queue drops (SO_RXQ_OVFL) are counted.
//!
//! Every dropped datagram is counted in [`UdpEchoStats`](proto::UdpEchoStats)
//! and logged at debug level only (a log line per datagram would be a flood
//! of its own).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::client_key::{DEFAULT_IPV6_PREFIX, rate_key};
use super::{ListenerKind, ServiceCtx, Settings, SpecError, Transport, listen_field};
use crate::net::cancel::CancelWatch;
use crate::net::udp::{RecvHealth, enable_rxq_ovfl, recv_msg};
use crate::own_addrs::OwnAddrs;
use crate::proto;
use crate::stats::Stats;

/// Largest datagram read; bigger than any UDP payload over IPv4 or IPv6
/// without jumbograms.
const RECV_BUF: usize = 64 * 1024;
/// Largest UDP payload that IPv4 can carry (65535 - 8 - 20).
pub const MAX_REPLY: usize = 65_507;
/// Longest prefix accepted.
pub const MAX_PREFIX: usize = 1024;
/// Rate limit per source unless configured.
pub const DEFAULT_RATE_LIMIT: &str = "100/s";
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

/// The largest reply to a request of `n` bytes: twice the request, or the
/// request plus 64 bytes for small ones, and never more than [`MAX_REPLY`].
pub fn reply_cap(n: usize) -> usize {
    n.saturating_mul(2).max(n + 64).min(MAX_REPLY)
}

#[derive(Debug, Default)]
struct Counters {
    own_source_drops: AtomicU64,
    reflector_source_drops: AtomicU64,
    rate_limited: AtomicU64,
    truncated: AtomicU64,
    kernel_drops: AtomicU64,
    sources_tracked: AtomicU64,
    sources_evicted: AtomicU64,
}

/// A per-source token bucket as GCRA: `interval` between tokens, `burst`
/// tokens at most.
#[derive(Debug, Clone, Copy)]
struct Rate {
    interval: Duration,
    burst: u32,
}

#[derive(Debug)]
pub struct UdpEcho {
    pub listen: SocketAddr,
    prefix: Box<[u8]>,
    allow_privileged_sources: bool,
    rate: Option<Rate>,
    max_sources: usize,
    own: OwnAddrs,
    /// The listener's: carried from generation to generation (see
    /// [`ListenerKind::carry_over`]).
    counters: std::sync::Arc<Counters>,
}

impl UdpEcho {
    fn validate(spec: &proto::UdpEchoSpec, settings: &Settings) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        if spec.prefix.len() > MAX_PREFIX {
            return Err(SpecError(format!(
                "prefix is {} bytes; the limit is {MAX_PREFIX}",
                spec.prefix.len()
            )));
        }
        let rate = match spec.rate_limit.trim() {
            "off" | "none" => None,
            r => {
                let r = if r.is_empty() { DEFAULT_RATE_LIMIT } else { r };
                let q =
                    super::http::parse_rate(r).map_err(|e| SpecError(format!("{e}, or off")))?;
                Some(Rate {
                    interval: q.replenish_interval(),
                    burst: q.burst_size().get(),
                })
            }
        };
        Ok(UdpEcho {
            listen,
            prefix: spec.prefix.as_bytes().into(),
            allow_privileged_sources: spec.allow_privileged_sources,
            rate,
            max_sources: match spec.max_sources {
                0 => DEFAULT_MAX_SOURCES,
                n => n as usize,
            },
            own: settings.own_udp_addrs.clone(),
            counters: Default::default(),
        })
    }

    pub fn stats(&self) -> proto::UdpEchoStats {
        let c = &self.counters;
        proto::UdpEchoStats {
            own_source_drops: c.own_source_drops.load(Relaxed),
            reflector_source_drops: c.reflector_source_drops.load(Relaxed),
            rate_limited: c.rate_limited.load(Relaxed),
            truncated: c.truncated.load(Relaxed),
            kernel_drops: c.kernel_drops.load(Relaxed),
            sources_tracked: c.sources_tracked.load(Relaxed),
            sources_evicted: c.sources_evicted.load(Relaxed),
        }
    }

    /// Whether a datagram from `src` may not be answered because its port
    /// or address may answer back.
    fn reflector_source(&self, src: SocketAddr) -> bool {
        let port = src.port();
        if REFLECTOR_PORTS.contains(&port) || (port < 1024 && !self.allow_privileged_sources) {
            return true;
        }
        match src.ip().to_canonical() {
            IpAddr::V4(a) => a.is_unspecified() || a.is_broadcast() || a.is_multicast(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
        }
    }

    async fn run_on(&self, socket: UdpSocket, ctx: ServiceCtx) -> anyhow::Result<()> {
        let fd = socket.as_raw_fd();
        if let Err(e) = enable_rxq_ovfl(fd) {
            tracing::debug!(listener = %ctx.name, error = %e, "SO_RXQ_OVFL unavailable; kernel drops not counted");
        }
        let p = self.prefix.len();
        let mut buf = vec![0u8; p + RECV_BUF];
        buf[..p].copy_from_slice(&self.prefix);
        let mut health = RecvHealth::default();
        let mut stop = CancelWatch::new(&ctx.stop_accepting);
        let mut own = self.own.view();
        let mut limiter = self.rate.map(|r| Limiter::new(r, self.max_sources));
        let c = &self.counters;
        // The counters are the listener's (kept across updates); the
        // sources tracked are this generation's table, empty so far.
        c.sources_tracked.store(0, Relaxed);
        loop {
            let received = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                r = socket.async_io(Interest::READABLE, || recv_msg(fd, &mut buf[p..])) => r,
            };
            let (n, peer, drops) = match received {
                Ok(r) => r,
                Err(e) => {
                    health.failed(e, &ctx.stats.errors, &ctx.name).await?;
                    continue;
                }
            };
            health.received(drops, &c.kernel_drops);
            Stats::add(&ctx.stats.datagrams_in, 1);
            Stats::add(&ctx.stats.bytes_in, n as u64);
            if self.reflector_source(peer) {
                Stats::add(&c.reflector_source_drops, 1);
                tracing::debug!(listener = %ctx.name, %peer, "dropped: source port or address may answer back");
                continue;
            }
            if own.contains(peer) {
                Stats::add(&c.own_source_drops, 1);
                tracing::debug!(listener = %ctx.name, %peer, "dropped: source is one of netd's own UDP listeners");
                continue;
            }
            if let Some(l) = limiter.as_mut() {
                let allowed = l.check(rate_key(peer.ip(), DEFAULT_IPV6_PREFIX), Instant::now());
                c.sources_tracked.store(l.sources.len() as u64, Relaxed);
                Stats::add(&c.sources_evicted, std::mem::take(&mut l.evicted));
                if !allowed {
                    Stats::add(&c.rate_limited, 1);
                    tracing::debug!(listener = %ctx.name, %peer, "dropped: over the per-source rate limit");
                    continue;
                }
            }
            let full = p + n;
            let len = full.min(reply_cap(n));
            if len < full {
                Stats::add(&c.truncated, 1);
            }
            match socket.send_to(&buf[..len], peer).await {
                Ok(sent) => {
                    Stats::add(&ctx.stats.datagrams_out, 1);
                    Stats::add(&ctx.stats.bytes_out, sent as u64);
                }
                Err(e) => {
                    Stats::add(&ctx.stats.errors, 1);
                    tracing::debug!(listener = %ctx.name, %peer, error = %e, "reply failed");
                }
            }
        }
    }
}

impl ListenerKind for UdpEcho {
    type Spec = proto::UdpEchoSpec;
    type Socket = UdpSocket;
    const SLUG: &'static str = "udp-echo";
    const KIND: proto::ListenerKind = proto::ListenerKind::UdpEcho;
    const TRANSPORT: Transport = Transport::Udp;
    const CONFIG_KEYS: &'static [&'static str] = &[
        "listen",
        "prefix",
        "rate_limit",
        "allow_privileged_sources",
        "max_sources",
        "access_log",
    ];

    fn write_config(spec: &Self::Spec, t: &mut crate::export::Table) -> Result<(), String> {
        let proto::UdpEchoSpec {
            listen,
            prefix,
            allow_privileged_sources,
            rate_limit,
            max_sources,
            access_log,
        } = spec;
        t.string("listen", listen);
        t.string("prefix", prefix);
        t.bool("allow_privileged_sources", *allow_privileged_sources);
        t.string("rate_limit", rate_limit);
        t.u64("max_sources", (*max_sources).into())?;
        t.opt_bool("access_log", *access_log);
        Ok(())
    }

    fn spec_listen(spec: &Self::Spec) -> Option<&str> {
        Some(&spec.listen)
    }

    fn from_spec(spec: &Self::Spec, settings: &Settings) -> Result<Self, SpecError> {
        Self::validate(spec, settings)
    }

    /// The drop counters are the listener's.
    fn carry_over(&mut self, prev: &Self) {
        self.counters = prev.counters.clone();
    }

    fn effective_spec(&self, shown: &Self::Spec) -> Self::Spec {
        proto::UdpEchoSpec {
            rate_limit: if shown.rate_limit.is_empty() {
                DEFAULT_RATE_LIMIT.to_string()
            } else {
                shown.rate_limit.clone()
            },
            max_sources: match shown.max_sources {
                0 => DEFAULT_MAX_SOURCES as u32,
                n => n,
            },
            access_log: Some(shown.access_log.unwrap_or(true)),
            ..shown.clone()
        }
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(self.listen)
    }

    async fn run(
        self: std::sync::Arc<Self>,
        socket: UdpSocket,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        self.run_on(socket, ctx).await
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::UdpEcho(self.stats()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_cap_bounds_the_ratio() {
        assert_eq!(reply_cap(0), 64);
        assert_eq!(reply_cap(29), 93);
        assert_eq!(reply_cap(100), 200);
        assert_eq!(reply_cap(65_507), MAX_REPLY);
        for n in [1usize, 10, 64, 1000, 30_000] {
            assert!(reply_cap(n) <= (2 * n).max(n + 64));
        }
    }

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
}
