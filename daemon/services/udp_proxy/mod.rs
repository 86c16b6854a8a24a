//! The UDP proxy: datagrams from each client address go to the upstream
//! from a socket of its own, and what the upstream sends back on that
//! socket goes to that client. Impairments are faults (see
//! [`crate::fault`]), applied per datagram by [`impair`]; the client table
//! and the two directions are in [`forward`]. This file owns the spec and
//! the counters.
//!
//! Safety, as for the UDP echo: datagrams from netd's own UDP listening
//! addresses are dropped (a spoofed one would loop), and an upstream that
//! is the proxy's own bound address is refused. Two udp-proxies pointed at
//! each other still make a loop (each sees the other's upstream socket as a
//! new client); the client tables bound it.

mod forward;
pub mod impair;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{ListenerKind, ServiceCtx, Settings, SpecError, Transport, listen_field};
use crate::proto;

/// Clients tracked unless configured.
pub const DEFAULT_MAX_CLIENTS: u32 = 1024;
/// Most clients a udp-proxy may track.
pub const MAX_MAX_CLIENTS: u32 = 65_536;
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
    own_source_drops: AtomicU64,
}

#[derive(Debug)]
pub struct UdpProxy {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub max_clients: usize,
    pub idle_timeout: Duration,
    own: crate::own_addrs::OwnAddrs,
    /// The listener's: carried from generation to generation (see
    /// [`ListenerKind::carry_over`]).
    counters: Arc<Counters>,
}

impl UdpProxy {
    fn validate(spec: &proto::UdpProxySpec, settings: &Settings) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        let upstream = listen_field("upstream", &spec.upstream)?;
        if upstream.port() == 0 {
            return Err(SpecError(format!(
                "upstream '{}': port 0 cannot be sent to",
                spec.upstream
            )));
        }
        if upstream.ip().is_unspecified() {
            return Err(SpecError(format!(
                "upstream '{}': {} is not an address to send to",
                spec.upstream,
                upstream.ip()
            )));
        }
        if listen.port() != 0 && listen == upstream {
            return Err(SpecError(format!(
                "upstream '{upstream}' is this proxy's own listening address"
            )));
        }
        let max_clients = super::size_in(
            "max_clients",
            spec.max_clients.into(),
            DEFAULT_MAX_CLIENTS.into(),
            1..=MAX_MAX_CLIENTS.into(),
        )? as usize;
        let idle_timeout =
            super::duration_field("idle_timeout", &spec.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
        crate::fault::compile_all(&spec.faults, crate::fault::Target::Udp)?;
        Ok(UdpProxy {
            listen,
            upstream,
            max_clients,
            idle_timeout,
            own: settings.own_udp_addrs.clone(),
            counters: Arc::default(),
        })
    }

    pub fn stats(&self) -> proto::UdpProxyStats {
        let c = &self.counters;
        proto::UdpProxyStats {
            clients_active: c.clients_active.load(Relaxed),
            clients_total: c.clients_total.load(Relaxed),
            clients_expired: c.clients_expired.load(Relaxed),
            clients_refused: c.clients_refused.load(Relaxed),
            upstream_errors: c.upstream_errors.load(Relaxed),
            kernel_drops: c.kernel_drops.load(Relaxed),
            own_source_drops: c.own_source_drops.load(Relaxed),
        }
    }
}

impl ListenerKind for UdpProxy {
    type Spec = proto::UdpProxySpec;
    type Socket = UdpSocket;
    const SLUG: &'static str = "udp-proxy";
    const KIND: proto::ListenerKind = proto::ListenerKind::UdpProxy;
    const TRANSPORT: Transport = Transport::Udp;
    const CONFIG_KEYS: &'static [&'static str] = &[
        "listen",
        "upstream",
        "max_clients",
        "idle_timeout",
        "faults",
    ];

    fn write_config(spec: &Self::Spec, t: &mut crate::export::Table) -> Result<(), String> {
        let proto::UdpProxySpec {
            listen,
            upstream,
            max_clients,
            idle_timeout,
            faults,
        } = spec;
        t.string("listen", listen);
        t.string("upstream", upstream);
        t.u64("max_clients", (*max_clients).into())?;
        t.duration("idle_timeout", idle_timeout)?;
        t.faults(faults);
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

    async fn run(self: Arc<Self>, socket: UdpSocket, ctx: ServiceCtx) -> anyhow::Result<()> {
        forward::run(&self, socket, ctx).await
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::UdpProxy(self.stats()))
    }
}
