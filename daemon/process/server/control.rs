//! The control plane as one of netd's endpoints: `netd.v1.Control`, health
//! and reflection over gRPC on the control socket (Unix, or TCP with TLS or
//! `insecure` on loopback), and the checks made before it is bound.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::task::JoinHandle;
use tonic::transport::Server;

use super::endpoints::{Endpoint, Shared, Socket};
use crate::config::Config;
use crate::control::admission::{Gate, Limits};
use crate::control::auth::{AuthLayer, Policy};
use crate::control::conn::{self, incoming_tcp, incoming_unix};
use crate::control::service::{ControlService, ReloadRequests};
use crate::proto::{self, control_server::ControlServer};
use crate::util::addr::ControlAddr;

/// HTTP/2 pings find control clients that vanished without a FIN.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane at `addr`; `Reload` calls are queued on `reload`.
pub(super) struct Control {
    pub(super) addr: ControlAddr,
    pub(super) reload: ReloadRequests,
}

impl Endpoint for Control {
    fn name(&self) -> &'static str {
        crate::sys::fdstore::CONTROL_NAME
    }
    fn what(&self) -> &'static str {
        "control"
    }
    fn addr(&self) -> ControlAddr {
        self.addr.clone()
    }
    fn essential(&self) -> bool {
        true
    }
    fn serve(
        self: Box<Self>,
        socket: Socket,
        shared: &Shared<'_>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        // Reflection in both versions: grpc.reflection.v1, and v1alpha for
        // the clients that speak only that (grpcurl before 1.9, grpcui,
        // Evans, Postman, Python's grpc_reflection.v1alpha).
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflection_builder()
            .build_v1()
            .context("building the reflection service (v1)")?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .context("building the reflection service (v1alpha)")?;
        let cc = &shared.config.control;
        let builder = Server::builder()
            .max_concurrent_streams(cc.max_streams)
            .http2_max_header_list_size(16 * 1024)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        let tcp = matches!(socket, Socket::Tcp(_));
        let tls = match (tcp, &cc.tls) {
            (true, Some(tls)) => Some(
                conn::tls_acceptor(&tls.cert_pem, &tls.key_pem, tls.client_ca_pem.as_deref())
                    .with_context(|| format!("control TLS ({})", tls.cert_path))?,
            ),
            (false, Some(_)) => {
                tracing::warn!(
                    "[control.tls] applies to a TCP control address; the Unix socket is served without it"
                );
                None
            }
            _ => None,
        };
        let policy = Policy::new(cc.roles.clone(), shared.socket_gid, tcp && cc.tls.is_none());
        let router = builder
            .layer(AuthLayer)
            .add_service(shared.health.clone())
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(
                ControlServer::new(
                    ControlService::new(shared.supervisor.clone(), shared.stop.clone())
                        .with_reload(self.reload),
                )
                .max_decoding_message_size(cc.max_request_bytes),
            );
        let endpoint = conn::Endpoint {
            gate: Gate::new("control", Limits::for_max(cc.max_connections, true)),
            policy: Arc::new(policy),
            tls,
            idle_timeout: cc.idle_timeout,
            idle_evict: None,
        };
        let stopped = shared.stop.clone().cancelled_owned();
        Ok(match socket {
            Socket::Unix(l, _) => tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming_unix(l, endpoint), stopped)
                    .await
                    .map_err(anyhow::Error::from)
            }),
            Socket::Tcp(l) => tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming_tcp(l, endpoint), stopped)
                    .await
                    .map_err(anyhow::Error::from)
            }),
        })
    }
}

/// Refuse a TCP control address without TLS unless the operator said
/// `insecure`, and even then anything but loopback.
/// Refuse a control address that would expose netd (TCP without TLS
/// beyond loopback). Also run by `netd --check-config`.
pub async fn check_control_security(config: &Config, control: &ControlAddr) -> anyhow::Result<()> {
    let ControlAddr::Tcp(hostport) = control else {
        return Ok(());
    };
    let cc = &config.control;
    match &cc.tls {
        Some(tls) if tls.client_ca_pem.is_none() => {
            tracing::warn!(control = %hostport, "control plane on TLS without client certificates ([control.tls] client_ca unset): every client is at most a viewer");
        }
        Some(_) => {}
        None if !cc.insecure => bail!(
            "refusing to serve the control plane on TCP {hostport} without TLS: anyone who can \
             connect could drive netd. Configure [control.tls] (cert, key, client_ca), use a Unix \
             socket, or for a loopback address accept the risk with --control-insecure \
             ([control] insecure = true)"
        ),
        None => {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(hostport.as_str())
                .await
                .with_context(|| format!("cannot resolve the control address {hostport}"))?
                .collect();
            if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                bail!(
                    "refusing to serve the control plane on {hostport} ({a}) without TLS: \
                     --control-insecure is for loopback addresses only; configure [control.tls]"
                );
            }
            tracing::warn!(control = %hostport, "control plane on TCP WITHOUT TLS (--control-insecure): callers are told apart only by the local user owning their socket, and the traffic is not encrypted");
        }
    }
    Ok(())
}

/// Bind a Unix control socket with mode 0660, replacing a stale socket file
/// left by a crash but never one a running netd still answers on.
pub(super) fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the control socket directory {}",
                dir.display()
            )
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another netd is running there (use --control for a second one)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| {
            format!("cannot remove the stale control socket {}", path.display())
        })?;
        tracing::info!(path = %path.display(), "replaced a stale control socket");
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set permissions on {}", path.display()))?;
    Ok(listener)
}
