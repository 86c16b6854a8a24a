//! netd's own endpoints as one list: the control plane, gRPC health,
//! `/metrics` and the Toxiproxy-compatible API. Each is an [`Endpoint`]
//! (its name in systemd's fd store and the hand-over, its address, how it
//! serves); start-up goes through the list once to bind or adopt each
//! socket and keep it in the fd store ([`bind_all`]), and once to serve
//! them ([`serve_all`]); shut-down stops them all with one token and waits
//! for each. Adding an endpoint is a module under `endpoints/`, an impl
//! here and its line in [`list`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

use crate::config::Config;
use crate::control::auth::Policy;
use crate::control::service::ReloadRequests;
use crate::supervisor::Supervisor;
use crate::util::addr::ControlAddr;

/// How long each endpoint gets to finish open calls at exit.
const DRAIN: Duration = Duration::from_secs(2);

/// A listening socket of an endpoint, bound or adopted.
pub(super) enum Socket {
    Tcp(tokio::net::TcpListener),
    /// With the path it is bound at.
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Socket {
    /// The TCP listener of an endpoint that listens on TCP only.
    pub(super) fn into_tcp(self, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
        match self {
            Socket::Tcp(l) => Ok(l),
            Socket::Unix(_, p) => bail!("the {what} endpoint cannot serve on {}", p.display()),
        }
    }

    fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Socket::Tcp(l) => l.local_addr().ok(),
            Socket::Unix(..) => None,
        }
    }

    fn file(&self) -> Option<&PathBuf> {
        match self {
            Socket::Unix(_, p) => Some(p),
            Socket::Tcp(_) => None,
        }
    }

    fn dup(&self) -> std::io::Result<OwnedFd> {
        match self {
            Socket::Tcp(l) => l.as_fd().try_clone_to_owned(),
            Socket::Unix(l, _) => l.as_fd().try_clone_to_owned(),
        }
    }
}

/// What every endpoint is served with.
pub(super) struct Shared<'a> {
    pub(super) config: &'a Config,
    pub(super) supervisor: Supervisor,
    /// The one health service (control plane and health endpoint).
    pub(super) health: HealthServer<HealthService>,
    /// The group of the control socket file, admin by default.
    pub(super) socket_gid: Option<u32>,
    /// netd's own TCP endpoints: no proxy made through the Toxiproxy API
    /// may forward to one.
    pub(super) own_endpoints: Vec<SocketAddr>,
    /// Cancelled when the endpoints stop accepting.
    pub(super) stop: CancellationToken,
}

/// One of netd's own endpoints.
pub(super) trait Endpoint: Send {
    /// Its socket's name in systemd's fd store and in the hand-over.
    fn name(&self) -> &'static str;
    /// What it is, in log and error lines ("metrics", "control").
    fn what(&self) -> &'static str;
    /// Where it listens.
    fn addr(&self) -> ControlAddr;
    /// Whether netd cannot go on without it: its task ending before
    /// shut-down ends netd (the control plane).
    fn essential(&self) -> bool {
        false
    }
    /// Serve on `socket` until `shared.stop`, on a task of its own.
    fn serve(
        self: Box<Self>,
        socket: Socket,
        shared: &Shared<'_>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>>;
}

/// The endpoints `config` asks for, the control plane at `control` first.
pub(super) fn list(
    config: &Config,
    control: &ControlAddr,
    reload: ReloadRequests,
) -> Vec<Box<dyn Endpoint>> {
    let mut list: Vec<Box<dyn Endpoint>> = vec![Box::new(super::control::Control {
        addr: control.clone(),
        reload,
    })];
    if let Some(addr) = config.metrics_listen {
        list.push(Box::new(Metrics(addr)));
    }
    if let Some(addr) = config.health_listen {
        list.push(Box::new(Health(addr)));
    }
    if let Some(addr) = config.toxiproxy_api_listen {
        list.push(Box::new(ToxiproxyApi(addr)));
    }
    list
}

/// An endpoint with its socket, kept in the fd store.
pub(super) struct Bound {
    endpoint: Box<dyn Endpoint>,
    socket: Socket,
    /// A duplicate of the socket, for a hand-over.
    fd: OwnedFd,
}

impl Bound {
    fn name(&self) -> &'static str {
        self.endpoint.name()
    }
}

/// Bind or adopt the socket of each endpoint in `list`, in order: one
/// handed over (systemd's fd store, `--upgrade`) under its name in
/// `inherited` if it listens where the endpoint does, else a new one.
/// Each is kept in the fd store.
pub(super) async fn bind_all(
    list: Vec<Box<dyn Endpoint>>,
    inherited: &mut HashMap<String, OwnedFd>,
) -> anyhow::Result<Vec<Bound>> {
    let mut bound = Vec::with_capacity(list.len());
    for endpoint in list {
        let (what, addr) = (endpoint.what(), endpoint.addr());
        let adopted = match inherited.remove(endpoint.name()) {
            None => None,
            Some(fd) => match adopt(fd, &addr) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "not using the {what} socket handed over; binding a new one");
                    None
                }
            },
        };
        let socket = match adopted {
            Some(s) => s,
            None => bind(what, &addr).await?,
        };
        let fd = socket
            .dup()
            .with_context(|| format!("duplicating the {what} socket"))?;
        crate::sys::fdstore::store(endpoint.name(), fd.as_fd());
        bound.push(Bound {
            endpoint,
            socket,
            fd,
        });
    }
    Ok(bound)
}

/// The socket files of the endpoints (a Unix control socket).
pub(super) fn socket_files(bound: &[Bound]) -> Vec<PathBuf> {
    bound
        .iter()
        .filter_map(|b| b.socket.file())
        .cloned()
        .collect()
}

/// The group owning the control socket's file, if it is one.
pub(super) fn control_gid(bound: &[Bound]) -> Option<u32> {
    let b = bound
        .iter()
        .find(|b| b.name() == crate::sys::fdstore::CONTROL_NAME)?;
    std::fs::metadata(b.socket.file()?).ok().map(|m| m.gid())
}

/// The TCP addresses the endpoints listen on.
pub(super) fn tcp_addrs(bound: &[Bound]) -> Vec<SocketAddr> {
    bound.iter().filter_map(|b| b.socket.tcp_addr()).collect()
}

/// A socket by its name in the fd store and the hand-over.
pub(super) type Named = (String, OwnedFd);

/// A served endpoint's task.
pub(super) struct Served {
    what: &'static str,
    essential: bool,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Serve every bound endpoint; the sockets to hand over (by name) and the
/// tasks.
pub(super) fn serve_all(
    bound: Vec<Bound>,
    shared: &Shared<'_>,
) -> anyhow::Result<(Vec<Named>, Vec<Served>)> {
    let mut sockets = Vec::with_capacity(bound.len());
    let mut served = Vec::with_capacity(bound.len());
    for b in bound {
        sockets.push((b.endpoint.name().to_string(), b.fd));
        let (what, essential) = (b.endpoint.what(), b.endpoint.essential());
        let task = b.endpoint.serve(b.socket, shared)?;
        served.push(Served {
            what,
            essential,
            task,
        });
    }
    Ok((sockets, served))
}

/// Resolves when an essential endpoint's task ends (never if none is
/// serving): the error it ended with, or that it stopped.
pub(super) async fn essential_ended(served: &mut [Served]) -> anyhow::Error {
    let mut tasks: Vec<_> = served
        .iter_mut()
        .filter(|s| s.essential)
        .map(|s| (s.what, &mut s.task))
        .collect();
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let (r, i, _) = futures_util::future::select_all(tasks.iter_mut().map(|(_, t)| &mut **t)).await;
    let what = tasks[i].0;
    match r {
        Ok(Ok(())) => anyhow::anyhow!("{what} server stopped unexpectedly"),
        Ok(Err(e)) => e.context(format!("{what} server")),
        Err(e) => anyhow::Error::from(e).context(format!("{what} server task")),
    }
}

/// Wait (each at most [`DRAIN`]) for the endpoints to finish the calls in
/// flight, once stopped; an error of an essential one is returned.
pub(super) async fn drain(served: Vec<Served>) -> anyhow::Result<()> {
    let mut result = Ok(());
    for mut s in served {
        match tokio::time::timeout(DRAIN, &mut s.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) if s.essential && result.is_ok() => {
                result = Err(e.context(format!("{} server", s.what)));
            }
            Ok(Err(e)) if s.essential && result.is_ok() => {
                result = Err(anyhow::Error::from(e).context(format!("{} server task", s.what)));
            }
            Ok(_) => {}
            Err(_) => s.task.abort(),
        }
    }
    result
}

/// Bind a new socket for the endpoint `what` at `addr`.
async fn bind(what: &str, addr: &ControlAddr) -> anyhow::Result<Socket> {
    match addr {
        ControlAddr::Unix(path) => Ok(Socket::Unix(super::control::bind_unix(path)?, path.clone())),
        ControlAddr::Tcp(hostport) => {
            let l = tokio::net::TcpListener::bind(hostport.as_str())
                .await
                .with_context(|| format!("cannot bind the {what} address {hostport}"))?;
            Ok(Socket::Tcp(l))
        }
    }
}

/// Serve on a socket handed over (fd store, upgrade): one listening on
/// `addr` (port 0: any port; for a Unix socket, at that path, which must
/// still exist: clients find it there).
fn adopt(fd: OwnedFd, addr: &ControlAddr) -> anyhow::Result<Socket> {
    let s = socket2::Socket::from(fd);
    if !s.is_listener().context("inspecting the socket")? {
        bail!("it is not listening");
    }
    let local = s.local_addr().context("inspecting the socket")?;
    s.set_nonblocking(true)?;
    match addr {
        ControlAddr::Unix(path) => {
            if local.as_pathname() != Some(path.as_path()) {
                bail!(
                    "it is bound to {:?}, not {}",
                    local.as_pathname(),
                    path.display()
                );
            }
            let meta = std::fs::symlink_metadata(path)
                .with_context(|| format!("{} is gone", path.display()))?;
            if !meta.file_type().is_socket() {
                bail!("{} is not a socket", path.display());
            }
            let l = std::os::unix::net::UnixListener::from(OwnedFd::from(s));
            Ok(Socket::Unix(
                tokio::net::UnixListener::from_std(l)?,
                path.clone(),
            ))
        }
        ControlAddr::Tcp(hostport) => {
            let Some(a) = local.as_socket() else {
                bail!("it is not a TCP socket");
            };
            if let Ok(want) = hostport.parse::<SocketAddr>() {
                if want.ip() != a.ip() || (want.port() != 0 && want.port() != a.port()) {
                    bail!("it is bound to {a}, not {hostport}");
                }
            }
            let l = std::net::TcpListener::from(OwnedFd::from(s));
            Ok(Socket::Tcp(tokio::net::TcpListener::from_std(l)?))
        }
    }
}

/// `GET /metrics` ([`crate::endpoints::metrics`]), `[metrics] listen`.
struct Metrics(SocketAddr);

impl Endpoint for Metrics {
    fn name(&self) -> &'static str {
        crate::sys::fdstore::METRICS_NAME
    }
    fn what(&self) -> &'static str {
        "metrics"
    }
    fn addr(&self) -> ControlAddr {
        ControlAddr::Tcp(self.0.to_string())
    }
    fn serve(
        self: Box<Self>,
        socket: Socket,
        shared: &Shared<'_>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let l = socket.into_tcp(self.what())?;
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        }
        let served = crate::endpoints::metrics::serve(
            l,
            shared.config.metrics_limits,
            shared.supervisor.clone(),
            shared.stop.clone(),
        );
        Ok(spawn_served(served))
    }
}

/// An endpoint's serving future, which cannot fail, as the task `serve`
/// returns.
fn spawn_served(
    served: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        served.await;
        Ok(())
    })
}

/// Plaintext `grpc.health.v1` ([`crate::endpoints::health`]),
/// `[health] listen`.
struct Health(SocketAddr);

impl Endpoint for Health {
    fn name(&self) -> &'static str {
        crate::sys::fdstore::HEALTH_NAME
    }
    fn what(&self) -> &'static str {
        "health"
    }
    fn addr(&self) -> ControlAddr {
        ControlAddr::Tcp(self.0.to_string())
    }
    fn serve(
        self: Box<Self>,
        socket: Socket,
        shared: &Shared<'_>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let l = socket.into_tcp(self.what())?;
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving plaintext grpc.health.v1 (health only)");
        }
        let served = crate::endpoints::health::serve(l, shared.health.clone(), shared.stop.clone());
        Ok(spawn_served(served))
    }
}

/// The Toxiproxy-compatible API ([`crate::endpoints::toxiproxy_api`]),
/// `[toxiproxy_api] listen`.
struct ToxiproxyApi(SocketAddr);

impl Endpoint for ToxiproxyApi {
    fn name(&self) -> &'static str {
        crate::sys::fdstore::TOXIPROXY_API_NAME
    }
    fn what(&self) -> &'static str {
        "Toxiproxy API"
    }
    fn addr(&self) -> ControlAddr {
        ControlAddr::Tcp(self.0.to_string())
    }
    fn serve(
        self: Box<Self>,
        socket: Socket,
        shared: &Shared<'_>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let l = socket.into_tcp(self.what())?;
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving the Toxiproxy-compatible API (callers identified by uid, roles from [control.roles])");
        }
        let config = shared.config;
        let access = crate::endpoints::toxiproxy_api::Access::new(
            Policy::new(config.control.roles.clone(), shared.socket_gid, false),
            config.toxiproxy_api_rules.clone(),
            shared.own_endpoints.clone(),
        )
        .with_token(config.toxiproxy_api_token.clone());
        let served = crate::endpoints::toxiproxy_api::serve(
            l,
            config.toxiproxy_api_limits,
            shared.supervisor.clone(),
            access,
            shared.stop.clone(),
        );
        Ok(spawn_served(served))
    }
}
