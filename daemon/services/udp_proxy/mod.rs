//! The UDP proxy: datagrams from each client address go to the upstream
//! from a socket of its own, and what the upstream sends back on that
//! socket goes to that client. Impairments are faults (see
//! [`crate::fault`]), applied per datagram by [`impair`]; the client table
//! and the two directions are in [`forward`], a receive loop per socket
//! of the listener's SO_REUSEPORT group (one per per-core worker). This
//! file owns the spec and the counters.
//!
//! Safety: the datagram-source guard ([`super::source_guard`], the same
//! keys and counters as the UDP echo's) drops datagrams from netd's own UDP
//! listening addresses and from the upstream itself (a spoofed one would
//! loop: the upstream's answers would be sent back to it), from source
//! ports that may answer back (0, 7, 13, 17, 19, 37; below 1024 unless
//! `allow_privileged_sources`) and, with `rate_limit` set (off by default),
//! over a per-source token bucket. An upstream that is the proxy's own
//! bound address is refused. One source IP (IPv6: one /64) may have at most
//! `max_clients_per_source` clients, so a sender cycling its source port
//! cannot fill the table; `max_clients` may not exceed netd's descriptor
//! budget ([`crate::net::fd_budget`]), and each client's socket takes a permit of
//! it. Two udp-proxies pointed at each other still make a loop (each sees
//! the other's upstream socket as a new client); the client tables bound it.

mod forward;
pub mod impair;
pub mod metrics;
mod show;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::net::bind::Sockets;

use super::source_guard::{self, GuardCounters, SourceRules};
use super::{ListenerKind, ServiceCtx, Settings, SpecError, Transport, listen_field};
use crate::proto;
use crate::spec::FieldError;
use crate::spec::form::{self, Key, Unit};

/// Clients tracked unless configured.
pub const DEFAULT_MAX_CLIENTS: u32 = 1024;
/// Most clients a udp-proxy may track.
pub const MAX_MAX_CLIENTS: u32 = 65_536;
/// Clients of one source IP (IPv6: one /64) unless configured.
pub const DEFAULT_MAX_CLIENTS_PER_SOURCE: u32 = 64;
/// No per-source rate limit unless configured: a proxy forwards what its
/// clients send (the loop and reflector rules still apply).
pub const DEFAULT_RATE_LIMIT: &str = "off";
/// A client idle this long is forgotten unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The counters of [`proto::UdpProxyStats`].
#[derive(Debug, Default)]
struct Counters {
    clients_active: AtomicU64,
    clients_total: AtomicU64,
    clients_expired: AtomicU64,
    clients_refused: AtomicU64,
    upstream_errors: AtomicU64,
    kernel_drops: AtomicU64,
    source_clients_refused: AtomicU64,
    guard: GuardCounters,
}

#[derive(Debug)]
pub struct UdpProxy {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub max_clients: usize,
    pub max_clients_per_source: usize,
    pub idle_timeout: Duration,
    rules: SourceRules,
    own: crate::net::own_addrs::OwnAddrs,
    /// The listener's: carried from generation to generation (see
    /// [`ListenerKind::carry_over`]).
    counters: Arc<Counters>,
}

impl UdpProxy {
    fn validate(spec: &proto::UdpProxySpec, settings: &Settings) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        let upstream = listen_field("upstream", &spec.upstream)?;
        if upstream.port() == 0 {
            return Err(SpecError::at(
                "upstream",
                format!("upstream '{}': port 0 cannot be sent to", spec.upstream),
            ));
        }
        if upstream.ip().is_unspecified() {
            return Err(SpecError::at(
                "upstream",
                format!(
                    "upstream '{}': {} is not an address to send to",
                    spec.upstream,
                    upstream.ip()
                ),
            ));
        }
        if listen.port() != 0 && listen == upstream {
            return Err(SpecError::at(
                "upstream",
                format!("upstream '{upstream}' is this proxy's own listening address"),
            ));
        }
        // Each client holds a socket: no more than the descriptor budget,
        // and by default no more than it allows either.
        let budget = crate::net::fd_budget::Budget::current();
        let default_clients = u64::from(DEFAULT_MAX_CLIENTS).min(budget.data_plane().max(1));
        let max_clients = super::size_in(
            "max_clients",
            spec.max_clients.into(),
            default_clients,
            1..=MAX_MAX_CLIENTS.into(),
        )?;
        budget
            .check_one("max_clients", max_clients)
            .map_err(|e| SpecError::at("max_clients", e))?;
        let max_clients = max_clients as usize;
        let max_clients_per_source = super::size_in(
            "max_clients_per_source",
            spec.max_clients_per_source.into(),
            DEFAULT_MAX_CLIENTS_PER_SOURCE.into(),
            1..=MAX_MAX_CLIENTS.into(),
        )? as usize;
        let rules = SourceRules::from_keys(
            spec.allow_privileged_sources,
            &spec.rate_limit,
            spec.max_sources,
            DEFAULT_RATE_LIMIT,
        )?;
        let idle_timeout =
            super::duration_field("idle_timeout", &spec.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
        crate::fault::compile_all(&spec.faults, crate::fault::Target::Udp)?;
        Ok(UdpProxy {
            listen,
            upstream,
            max_clients,
            max_clients_per_source,
            idle_timeout,
            rules,
            own: settings.own_udp_addrs.clone(),
            counters: Arc::default(),
        })
    }

    pub fn stats(&self) -> proto::UdpProxyStats {
        let c = &self.counters;
        let g = c.guard.snapshot();
        proto::UdpProxyStats {
            clients_active: c.clients_active.load(Relaxed),
            clients_total: c.clients_total.load(Relaxed),
            clients_expired: c.clients_expired.load(Relaxed),
            clients_refused: c.clients_refused.load(Relaxed),
            upstream_errors: c.upstream_errors.load(Relaxed),
            kernel_drops: c.kernel_drops.load(Relaxed),
            source_clients_refused: c.source_clients_refused.load(Relaxed),
            own_source_drops: g.own_source_drops,
            reflector_source_drops: g.reflector_source_drops,
            rate_limited: g.rate_limited,
            sources_tracked: g.sources_tracked,
            sources_evicted: g.sources_evicted,
        }
    }
}

impl ListenerKind for UdpProxy {
    type Spec = proto::UdpProxySpec;
    type Socket = Sockets<UdpSocket>;
    const SLUG: &'static str = "udp-proxy";
    const KIND: proto::ListenerKind = proto::ListenerKind::UdpProxy;
    const TRANSPORT: Transport = Transport::Udp;
    const ABOUT: &'static str = "UDP proxy: each client's datagrams go to the upstream from a socket of their own, and the answers come back, except datagrams from netd's own UDP listeners, the upstream itself or ports that may answer back; add impairments with `netctl fault add`.";
    const KEYS: &'static [Key] = &[
        form::LISTEN,
        Key::new("upstream", "upstream", Unit::Addr, "Upstream host:port.")
            .short('u')
            .start_required(),
        Key::new(
            "max_clients",
            "max-clients",
            Unit::Count,
            "Clients tracked at once (default 1024); each holds a socket, so at most netd's descriptor budget (RLIMIT_NOFILE less a reserve for the control plane).",
        ),
        Key::new(
            "idle_timeout",
            "idle-timeout",
            Unit::Duration,
            "Forget a client idle this long (default 60s).",
        ),
        form::FAULTS,
        Key::new(
            "allow_privileged_sources",
            "allow-privileged-sources",
            Unit::Switch,
            "Forward for sources on ports below 1024 (0, 7, 13, 17, 19 and 37 never are; nor netd's own UDP addresses or the upstream itself).",
        ),
        Key::new(
            "rate_limit",
            "rate-limit",
            Unit::Rate,
            "Per-source-IP (IPv6: per /64) rate limit: N/s, N/m or N/h, the burst one period's worth, or \"off\" (the default).",
        ),
        Key::new(
            "max_sources",
            "max-sources",
            Unit::Count,
            "Sources the rate limit tracks (default 16384).",
        ),
        Key::new(
            "max_clients_per_source",
            "max-clients-per-source",
            Unit::Count,
            "Clients of one source IP (IPv6: one /64) at once (default 64).",
        ),
    ];
    const FAMILIES: &'static dyn crate::telemetry::families::DetailFamilies = &metrics::FAMILIES;

    fn read_config(t: &toml::Table, _opts: &form::ReadOptions) -> Result<Self::Spec, FieldError> {
        Ok(proto::UdpProxySpec {
            listen: form::text(t, "listen")?,
            upstream: form::text(t, "upstream")?,
            max_clients: form::u32(t, "max_clients")?,
            idle_timeout: form::duration(t, "idle_timeout")?,
            faults: super::read_faults(t)?,
            allow_privileged_sources: form::bool(t, "allow_privileged_sources")?,
            rate_limit: form::text(t, "rate_limit")?,
            max_sources: form::u32(t, "max_sources")?,
            max_clients_per_source: form::u32(t, "max_clients_per_source")?,
        })
    }

    fn write_config(spec: &Self::Spec, t: &mut crate::spec::Table) -> Result<(), String> {
        let proto::UdpProxySpec {
            listen,
            upstream,
            max_clients,
            idle_timeout,
            faults,
            allow_privileged_sources,
            rate_limit,
            max_sources,
            max_clients_per_source,
        } = spec;
        t.string("listen", listen);
        t.string("upstream", upstream);
        t.u64("max_clients", (*max_clients).into())?;
        t.duration("idle_timeout", idle_timeout)?;
        t.bool("allow_privileged_sources", *allow_privileged_sources);
        t.string("rate_limit", rate_limit);
        t.u64("max_sources", (*max_sources).into())?;
        t.u64("max_clients_per_source", (*max_clients_per_source).into())?;
        crate::fault::attrs::write_faults(t, faults);
        Ok(())
    }

    fn spec_listen(spec: &Self::Spec) -> Option<&str> {
        Some(&spec.listen)
    }

    fn from_spec(spec: &Self::Spec, settings: &Settings) -> Result<Self, SpecError> {
        Self::validate(spec, settings)
    }

    /// The counters are the listener's. `clients_active` is the table of
    /// the generation running: a new one starts empty (the old one's
    /// clients end with it).
    fn carry_over(&mut self, prev: &Self) {
        self.counters = prev.counters.clone();
    }

    fn effective_spec(&self, shown: &Self::Spec) -> Self::Spec {
        proto::UdpProxySpec {
            max_clients: self.max_clients as u32,
            max_clients_per_source: self.max_clients_per_source as u32,
            rate_limit: source_guard::effective_rate_limit(&shown.rate_limit, DEFAULT_RATE_LIMIT),
            max_sources: source_guard::effective_max_sources(shown.max_sources),
            idle_timeout: super::effective_duration(&shown.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            ..shown.clone()
        }
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(self.listen)
    }

    /// Refuse an upstream that is the address the proxy was bound to
    /// (port 0 resolved): every datagram would come back to the proxy.
    fn check_bound(&self, local: SocketAddr) -> Result<(), SpecError> {
        super::proxy::check_not_self(local, std::iter::once(self.upstream))
    }

    async fn run(
        self: Arc<Self>,
        sockets: Sockets<UdpSocket>,
        ctx: ServiceCtx,
    ) -> anyhow::Result<()> {
        forward::run(self, sockets.into_vec(), ctx).await
    }

    /// One per per-core worker (a SO_REUSEPORT group; one with
    /// `NETD_REUSEPORT=off`): each has a receive loop on its worker, with
    /// the clients the kernel hashes to its socket.
    fn sockets(&self) -> usize {
        crate::net::workers::socket_count()
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::UdpProxy(self.stats()))
    }

    /// One per client (its socket toward the upstream); the default
    /// `max_clients` is capped by the `budget`.
    fn descriptors(spec: &Self::Spec, budget: &crate::net::fd_budget::Budget) -> u64 {
        match spec.max_clients {
            0 => u64::from(DEFAULT_MAX_CLIENTS).min(budget.data_plane()),
            n => u64::from(n),
        }
    }

    fn faults(spec: &Self::Spec) -> Option<(&Vec<proto::Fault>, crate::fault::Target)> {
        Some((&spec.faults, crate::fault::Target::Udp))
    }

    fn faults_mut(spec: &mut Self::Spec) -> Option<&mut Vec<proto::Fault>> {
        Some(&mut spec.faults)
    }
}
