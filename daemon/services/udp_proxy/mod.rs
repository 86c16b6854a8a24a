//! The UDP proxy: datagrams from each client address go to the upstream
//! from a socket of its own, and what the upstream sends back on that
//! socket goes to that client. Impairments are faults (see
//! [`crate::fault`]).
//!
//! SKELETON: spec validation and binding are here; forwarding and the
//! impairments are being written (issue #13).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{ListenerKind, ServiceCtx, Settings, SpecError, Transport, listen_field};
use crate::net::bind::{self, BindError};
use crate::proto;

/// Clients tracked unless configured.
pub const DEFAULT_MAX_CLIENTS: u32 = 1024;
/// Most clients a udp-proxy may track.
pub const MAX_MAX_CLIENTS: u32 = 65_536;
/// A client idle this long is forgotten unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct UdpProxy {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub max_clients: usize,
    pub idle_timeout: Duration,
}

impl UdpProxy {
    fn validate(spec: &proto::UdpProxySpec) -> Result<Self, SpecError> {
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
        })
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

    fn from_spec(spec: &Self::Spec, _settings: &Settings) -> Result<Self, SpecError> {
        Self::validate(spec)
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

    fn bind(&self, addr: Option<SocketAddr>) -> Result<UdpSocket, BindError> {
        bind::bind(addr.unwrap_or(self.listen))
    }

    fn adopt(&self, fd: std::os::fd::OwnedFd, expect_addr: bool) -> Result<UdpSocket, BindError> {
        bind::adopt(fd, self.listen, expect_addr)
    }

    async fn run(self: Arc<Self>, socket: UdpSocket, ctx: ServiceCtx) -> anyhow::Result<()> {
        // SKELETON: forwarding comes with the udp-proxy work.
        let _ = socket;
        ctx.stop_accepting.cancelled().await;
        Ok(())
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::UdpProxy(
            proto::UdpProxyStats::default(),
        ))
    }
}
