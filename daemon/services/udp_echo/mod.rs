//! UDP echo: each datagram is answered to its sender, optionally behind a
//! prefix. Datagrams up to 64 KiB are read whole.
//!
//! A UDP echo answers whatever address a datagram claims to come from, so
//! it is safe by default, as inetd's built-in echo is: the datagram-source
//! guard ([`super::source_guard`], shared with the udp-proxy) drops
//! datagrams from netd's own UDP listening addresses, from ports that may
//! answer back (0, 7, 13, 17, 19, 37 always; below 1024 unless
//! `allow_privileged_sources`) and over the per-source token bucket
//! (`rate_limit`, 100/s with a burst of 100 by default; `max_sources`
//! sources tracked). Besides:
//!
//! - A reply is at most max(2 × request, request + 64) bytes (and 65507,
//!   the largest IPv4 UDP payload): a longer prefix is cut, so netd is no
//!   amplifier.
//! - The kernel's receive-queue drops (SO_RXQ_OVFL) are counted.
//!
//! Every dropped datagram is counted in [`UdpEchoStats`](proto::UdpEchoStats)
//! by reason, logged at debug level, and summed up in at most one warning
//! line per interval.
//!
//! A listener binds one socket per per-core worker (a SO_REUSEPORT group,
//! [`crate::net::workers::socket_count`]), each read by its own loop on its
//! worker; the kernel's 4-tuple hash keeps a client on one socket. The
//! counters and the rate limit's buckets are the listener's, shared.

pub mod metrics;
mod show;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::source_guard::{self, GuardCounters, SourceBuckets, SourceGuard, SourceRules};
use super::{ListenerKind, ServiceCtx, Settings, SpecError, Transport, listen_field};
use crate::net::bind::Sockets;
use crate::net::cancel::CancelWatch;
use crate::net::own_addrs::OwnAddrs;
use crate::net::udp::{RecvHealth, enable_rxq_ovfl};
use crate::net::udp_batch::{self, Gso, RecvBatch, SendBatch};
use crate::proto;
use crate::spec::FieldError;
use crate::spec::form::{self, Key, Unit};
use crate::telemetry::stats::Stats;

/// Largest UDP payload that IPv4 can carry (65535 - 8 - 20).
pub const MAX_REPLY: usize = 65_507;
/// Longest prefix accepted.
pub const MAX_PREFIX: usize = 1024;
/// Rate limit per source unless configured.
pub const DEFAULT_RATE_LIMIT: &str = "100/s";
pub use source_guard::{DEFAULT_MAX_SOURCES, REFLECTOR_PORTS};

/// The largest reply to a request of `n` bytes: twice the request, or the
/// request plus 64 bytes for small ones, and never more than [`MAX_REPLY`].
pub fn reply_cap(n: usize) -> usize {
    n.saturating_mul(2).max(n + 64).min(MAX_REPLY)
}

#[derive(Debug, Default)]
struct Counters {
    guard: GuardCounters,
    truncated: AtomicU64,
    kernel_drops: AtomicU64,
}

#[derive(Debug)]
pub struct UdpEcho {
    pub listen: SocketAddr,
    prefix: Box<[u8]>,
    rules: SourceRules,
    own: OwnAddrs,
    /// The listener's: carried from generation to generation (see
    /// [`ListenerKind::carry_over`]).
    counters: std::sync::Arc<Counters>,
}

impl UdpEcho {
    fn validate(spec: &proto::UdpEchoSpec, settings: &Settings) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        if spec.prefix.len() > MAX_PREFIX {
            return Err(SpecError::at(
                "prefix",
                format!(
                    "prefix is {} bytes; the limit is {MAX_PREFIX}",
                    spec.prefix.len()
                ),
            ));
        }
        let rules = SourceRules::from_keys(
            spec.allow_privileged_sources,
            &spec.rate_limit,
            spec.max_sources,
            DEFAULT_RATE_LIMIT,
        )?;
        Ok(UdpEcho {
            listen,
            prefix: spec.prefix.as_bytes().into(),
            rules,
            own: settings.own_udp_addrs.clone(),
            counters: Default::default(),
        })
    }

    pub fn stats(&self) -> proto::UdpEchoStats {
        let c = &self.counters;
        let g = c.guard.snapshot();
        proto::UdpEchoStats {
            truncated: c.truncated.load(Relaxed),
            kernel_drops: c.kernel_drops.load(Relaxed),
            own_source_drops: g.own_source_drops,
            reflector_source_drops: g.reflector_source_drops,
            rate_limited: g.rate_limited,
            sources_tracked: g.sources_tracked,
            sources_evicted: g.sources_evicted,
        }
    }

    /// Serve `sockets` (bound at the listen address; several with
    /// SO_REUSEPORT) with one receive loop each, on the per-core workers
    /// ([`crate::net::udp::serve_each`]). The kernel keeps a client on one
    /// socket, so its replies come from the socket it sent to; the counters
    /// and the rate limit's buckets are the listener's, shared by the loops.
    async fn serve(
        self: std::sync::Arc<Self>,
        sockets: Vec<UdpSocket>,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        // The counters are the listener's (kept across updates); the
        // sources tracked are this generation's table, empty so far.
        self.counters.guard.sources_tracked.store(0, Relaxed);
        let buckets = SourceBuckets::new(&self.rules);
        let stop = ctx.stop_accepting.clone();
        crate::net::udp::serve_each(sockets, &stop, move |_, socket, stop| {
            let (echo, ctx, buckets) = (self.clone(), ctx.clone(), buckets.clone());
            async move { echo.run_on(socket, &ctx, &stop, &buckets).await }
        })
        .await
    }

    /// One socket's loop: reads a batch of datagrams per call
    /// ([`crate::net::udp_batch`]), puts each through the guard and queues
    /// its reply, then sends the replies in as few calls as the kernel
    /// allows, until `stop`.
    async fn run_on(
        &self,
        socket: UdpSocket,
        ctx: &ServiceCtx,
        stop: &CancellationToken,
        buckets: &SourceBuckets,
    ) -> anyhow::Result<()> {
        let fd = socket.as_raw_fd();
        if let Err(e) = enable_rxq_ovfl(fd) {
            tracing::debug!(listener = %ctx.name, error = %e, "SO_RXQ_OVFL unavailable; kernel drops not counted");
        }
        let fast = udp_batch::fast_path();
        let gro = udp_batch::enable_gro(fd);
        let mut rx = RecvBatch::new(fast.batch)?;
        let gso = Gso::new();
        tracing::info!(listener = %ctx.name, batch = fast.batch, gro, gso = gso.on(), "udp fast path");
        let mut tx = SendBatch::new(gso);
        let mut health = RecvHealth::default();
        let mut stop = CancelWatch::new(stop);
        let c = &self.counters;
        let mut guard =
            SourceGuard::new(&self.rules, &self.own, &c.guard, &ctx.name).sharing(buckets);
        loop {
            let received = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                r = socket.async_io(Interest::READABLE, || rx.recv(fd)) => r,
            };
            if let Err(e) = received {
                health.failed(e, &ctx.stats.errors, &ctx.name).await?;
                continue;
            }
            health.received(rx.drops(), &c.kernel_drops);
            Stats::add(&ctx.stats.errors, rx.without_source() as u64);
            let now = Instant::now();
            // The listener's counters (shared by its loops) once per batch,
            // before any of its datagrams is forwarded or dropped.
            let (count, bytes) = rx
                .datagrams()
                .fold((0, 0), |(n, b), (_, d)| (n + 1, b + d.len() as u64));
            Stats::add(&ctx.stats.datagrams_in, count);
            Stats::add(&ctx.stats.bytes_in, bytes);
            for (peer, data) in rx.datagrams() {
                self.answer(peer, data, now, &mut guard, &mut tx);
            }
            if !tx.is_empty() {
                let sent = tx.flush(&socket).await;
                Stats::add(&ctx.stats.datagrams_out, sent.datagrams);
                Stats::add(&ctx.stats.bytes_out, sent.bytes);
                if sent.failed > 0 {
                    Stats::add(&ctx.stats.errors, sent.failed);
                    if let Some(e) = sent.last_error {
                        tracing::debug!(listener = %ctx.name, error = %e, failed = sent.failed, "replies failed");
                    }
                }
            }
        }
    }

    /// One datagram (counted by the caller, per batch): checked by the
    /// guard, and its reply (the prefix and the datagram, cut to
    /// [`reply_cap`]) queued.
    fn answer(
        &self,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
        guard: &mut SourceGuard<'_>,
        tx: &mut SendBatch,
    ) {
        let n = data.len();
        if !guard.admit(peer, now) {
            return;
        }
        let full = self.prefix.len() + n;
        let len = full.min(reply_cap(n));
        if len < full {
            Stats::add(&self.counters.truncated, 1);
        }
        tx.push_with(Some(peer), |out| {
            let p = self.prefix.len().min(len);
            out.extend_from_slice(&self.prefix[..p]);
            out.extend_from_slice(&data[..len - p]);
        });
    }
}

impl ListenerKind for UdpEcho {
    type Spec = proto::UdpEchoSpec;
    type Socket = Sockets<UdpSocket>;
    const SLUG: &'static str = "udp-echo";
    const KIND: proto::ListenerKind = proto::ListenerKind::UdpEcho;
    const TRANSPORT: Transport = Transport::Udp;
    const ABOUT: &'static str = "UDP echo: answers each datagram to its sender, except datagrams from netd's own UDP listeners or from ports that may answer back, within a per-source rate limit.";
    const KEYS: &'static [Key] = &[
        form::LISTEN,
        Key::new(
            "prefix",
            "prefix",
            Unit::Text,
            "Prepended to every reply, e.g. \"ACK: \". A reply is at most max(2 x request, request + 64) bytes; a longer prefix is cut.",
        ),
        Key::new(
            "rate_limit",
            "rate-limit",
            Unit::Rate,
            "Per-source-IP (IPv6: per /64) rate limit: N/s, N/m or N/h, the burst one period's worth, or \"off\" (default 100/s).",
        ),
        Key::new(
            "allow_privileged_sources",
            "allow-privileged-sources",
            Unit::Switch,
            "Answer sources on ports below 1024 (0, 7, 13, 17, 19 and 37 are never answered).",
        ),
        Key::new(
            "max_sources",
            "max-sources",
            Unit::Count,
            "Sources the rate limit tracks (default 16384).",
        ),
        form::ACCESS_LOG,
    ];
    const FAMILIES: &'static dyn crate::telemetry::families::DetailFamilies = &metrics::FAMILIES;

    fn read_config(t: &toml::Table, _opts: &form::ReadOptions) -> Result<Self::Spec, FieldError> {
        Ok(proto::UdpEchoSpec {
            listen: form::text(t, "listen")?,
            prefix: form::text(t, "prefix")?,
            allow_privileged_sources: form::bool(t, "allow_privileged_sources")?,
            rate_limit: form::text(t, "rate_limit")?,
            max_sources: form::u32(t, "max_sources")?,
            access_log: form::opt_bool(t, "access_log")?,
        })
    }

    fn write_config(spec: &Self::Spec, t: &mut crate::spec::Table) -> Result<(), String> {
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
            rate_limit: source_guard::effective_rate_limit(&shown.rate_limit, DEFAULT_RATE_LIMIT),
            max_sources: source_guard::effective_max_sources(shown.max_sources),
            access_log: Some(shown.access_log.unwrap_or(true)),
            ..shown.clone()
        }
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(self.listen)
    }

    async fn run(
        self: std::sync::Arc<Self>,
        sockets: Sockets<UdpSocket>,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        self.serve(sockets.into_vec(), ctx).await
    }

    /// One per per-core worker (a SO_REUSEPORT group; one with
    /// `NETD_REUSEPORT=off`): each has a receive loop on its worker.
    fn sockets(&self) -> usize {
        crate::net::workers::socket_count()
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::UdpEcho(self.stats()))
    }

    /// None: it answers on its listening sockets.
    fn descriptors(_spec: &Self::Spec, _budget: &crate::net::fd_budget::Budget) -> u64 {
        0
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
}
