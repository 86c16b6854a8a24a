//! The daemon's top level: bind the control plane, start the boot
//! listeners, serve gRPC (Control, health, reflection), tell systemd we are
//! ready, on SIGHUP reload the config, and on SIGTERM/SIGINT drain and
//! exit. Sockets inherited from systemd's fd store or from the netd this
//! one upgrades (see [`crate::process::handover`]) are adopted by name instead of
//! bound; after handing its own sockets to a successor, netd drains and
//! exits as on SIGTERM.

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt as _, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::config::Config;
use crate::control::admission::{Gate, Limits};
use crate::control::auth::{AuthLayer, Policy};
use crate::control::conn::{Endpoint, incoming_tcp, incoming_unix};
use crate::control::service::ControlService;
use crate::proto::{self, control_server::ControlServer};
use crate::supervisor::Supervisor;
use crate::util::addr::ControlAddr;

/// How long the gRPC server gets to finish open calls at exit.
const CONTROL_DRAIN: Duration = Duration::from_secs(2);
/// HTTP/2 pings find control clients that vanished without a FIN.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

enum ControlSocket {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener),
}

/// Removes a socket file (control, hand-over) when the daemon exits,
/// however it exits — unless the file is no longer the one this process
/// bound (a successor replaced it) or it was disarmed (the socket was
/// handed over, or is kept in systemd's fd store for the next process).
struct SocketFileGuard(Option<(PathBuf, u64)>);

impl SocketFileGuard {
    fn new(path: Option<&Path>) -> Self {
        SocketFileGuard(path.and_then(|p| {
            let ino = std::fs::symlink_metadata(p).ok()?.ino();
            Some((p.to_path_buf(), ino))
        }))
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        if let Some((p, ino)) = self.0.take() {
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.ino() == ino) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Removes, at exit, the control socket's directory if this netd created
/// it (e.g. /run/netd for a demo run as root) and it is empty by then: a
/// run leaves nothing behind that it did not find. A directory that holds
/// a successor's or systemd's kept socket is not empty and stays.
struct CreatedDirGuard(Option<PathBuf>);

impl CreatedDirGuard {
    /// Called before the socket is bound: notes the directory if it does
    /// not exist yet.
    fn before_bind(control: &ControlAddr) -> Self {
        CreatedDirGuard(match control {
            ControlAddr::Unix(p) => p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .filter(|d| std::fs::symlink_metadata(d).is_err())
                .map(Path::to_path_buf),
            ControlAddr::Tcp(_) => None,
        })
    }
}

impl Drop for CreatedDirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            // Fails, as it should, when anything is left in it.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// How this netd starts, besides its config.
#[derive(Debug, Default)]
pub struct Startup {
    /// Take the sockets of the netd running with the same control address
    /// (`netd --upgrade`).
    pub upgrade: bool,
    /// Sockets systemd passed (LISTEN_FDS), by name.
    pub listen_fds: Vec<(String, OwnedFd)>,
}

/// Run the daemon until SIGTERM/SIGINT. Returns after a clean shutdown.
pub async fn run(
    config: Config,
    control: ControlAddr,
    config_path: Option<PathBuf>,
    startup: Startup,
) -> anyhow::Result<()> {
    check_control_security(&config, &control).await?;
    // Declared first, so dropped last: after the socket files in it.
    let _created_dir = CreatedDirGuard::before_bind(&control);
    if control == crate::util::addr::default_control_addr()
        && control != ControlAddr::Unix(crate::util::addr::SYSTEM_CONTROL_SOCKET.into())
    {
        crate::util::addr::ensure_private_dir(&crate::util::addr::private_dir())
            .map_err(|e| anyhow::anyhow!("control socket directory: {e}"))?;
    }
    let state_dir = config
        .state_dir
        .clone()
        .or_else(|| config.fallback_state_dir());
    let handover_path = crate::process::handover::socket_path(&control, state_dir.as_deref());
    let mut inherited: HashMap<String, OwnedFd> = HashMap::new();
    for (name, fd) in startup.listen_fds {
        tracing::debug!(name = %name, "socket passed by systemd");
        inherited.insert(name, fd);
    }
    if !inherited.is_empty() {
        tracing::info!(
            sockets = inherited.len(),
            "taking the sockets kept in systemd's fd store"
        );
    }
    // The successor's side of `--upgrade`: dropped (the old netd then
    // carries on) if anything fails before it says DONE.
    let mut successor = None;
    if startup.upgrade {
        let path = handover_path.clone().context(
            "--upgrade needs the running netd's hand-over socket: a Unix control socket, or a state_dir",
        )?;
        let (s, sockets) = tokio::task::spawn_blocking(move || {
            crate::process::handover::Successor::request(&path)
        })
        .await
        .context("hand-over")??;
        tracing::info!(
            sockets = sockets.len(),
            "received the running netd's sockets"
        );
        inherited.extend(sockets);
        successor = Some(s);
    }
    let socket = match inherited.remove(crate::sys::fdstore::CONTROL_NAME) {
        Some(fd) => match adopt_control(fd, &control) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "not using the control socket handed over; binding a new one");
                bind_control(&control).await?
            }
        },
        None => bind_control(&control).await?,
    };
    let socket_gid = match &socket {
        ControlSocket::Unix(_, p) => std::fs::metadata(p).ok().map(|m| m.gid()),
        ControlSocket::Tcp(_) => None,
    };
    let control_fd = match &socket {
        ControlSocket::Unix(l, _) => l.as_fd().try_clone_to_owned(),
        ControlSocket::Tcp(l) => l.as_fd().try_clone_to_owned(),
    }
    .context("duplicating the control socket")?;
    crate::sys::fdstore::store(crate::sys::fdstore::CONTROL_NAME, control_fd.as_fd());
    // A systemd service whose control socket is in the fd store leaves the
    // file for the next process (systemctl restart), which serves on that
    // socket at that path. A successor owns the file only once the old
    // netd has let go.
    let keep_control_file = crate::sys::fdstore::enabled();
    let mut guard = match &socket {
        ControlSocket::Unix(_, p) if !keep_control_file && successor.is_none() => {
            SocketFileGuard::new(Some(p))
        }
        _ => SocketFileGuard::new(None),
    };

    let metrics_socket = match config.metrics_listen {
        None => None,
        Some(addr) => {
            let adopted = inherited
                .remove(crate::sys::fdstore::METRICS_NAME)
                .and_then(|fd| adopt_tcp(fd, addr));
            Some(match adopted {
                Some(l) => l,
                None => tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind the metrics address {addr}"))?,
            })
        }
    };
    let metrics_fd = metrics_socket
        .as_ref()
        .and_then(|l| l.as_fd().try_clone_to_owned().ok());
    if let Some(fd) = &metrics_fd {
        crate::sys::fdstore::store(crate::sys::fdstore::METRICS_NAME, fd.as_fd());
    }

    let health_socket = match config.health_listen {
        None => None,
        Some(addr) => {
            let adopted = inherited
                .remove(crate::sys::fdstore::HEALTH_NAME)
                .and_then(|fd| adopt_tcp(fd, addr));
            Some(match adopted {
                Some(l) => l,
                None => tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind the health address {addr}"))?,
            })
        }
    };
    let health_fd = health_socket
        .as_ref()
        .and_then(|l| l.as_fd().try_clone_to_owned().ok());
    if let Some(fd) = &health_fd {
        crate::sys::fdstore::store(crate::sys::fdstore::HEALTH_NAME, fd.as_fd());
    }

    let toxiproxy_socket = match config.toxiproxy_api_listen {
        None => None,
        Some(addr) => {
            let adopted = inherited
                .remove(crate::sys::fdstore::TOXIPROXY_API_NAME)
                .and_then(|fd| adopt_tcp(fd, addr));
            Some(match adopted {
                Some(l) => l,
                None => tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind the Toxiproxy API address {addr}"))?,
            })
        }
    };
    let toxiproxy_fd = toxiproxy_socket
        .as_ref()
        .and_then(|l| l.as_fd().try_clone_to_owned().ok());
    if let Some(fd) = &toxiproxy_fd {
        crate::sys::fdstore::store(crate::sys::fdstore::TOXIPROXY_API_NAME, fd.as_fd());
    }

    // netd's own TCP endpoints: no proxy made through the Toxiproxy API
    // may forward to one.
    let own_endpoints: Vec<std::net::SocketAddr> = [
        match &socket {
            ControlSocket::Tcp(l) => l.local_addr().ok(),
            ControlSocket::Unix(..) => None,
        },
        metrics_socket.as_ref().and_then(|l| l.local_addr().ok()),
        health_socket.as_ref().and_then(|l| l.local_addr().ok()),
        toxiproxy_socket.as_ref().and_then(|l| l.local_addr().ok()),
    ]
    .into_iter()
    .flatten()
    .collect();

    let supervisor = boot_listeners(&config, inherited).await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ControlServer<ControlService>>().await;
    // Reflection in both versions: grpc.reflection.v1, and v1alpha for the
    // clients that speak only that (grpcurl before 1.9, grpcui, Evans,
    // Postman, Python's grpc_reflection.v1alpha).
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
    let stop_control = CancellationToken::new();
    // Reload RPCs are carried out by the signal loop below, one at a time,
    // on SIGHUP's code path.
    let (reload_tx, mut reload_requests) = tokio::sync::mpsc::channel(4);
    let cc = &config.control;
    let builder = Server::builder()
        .max_concurrent_streams(cc.max_streams)
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    let tcp = matches!(socket, ControlSocket::Tcp(_));
    let tls = match (tcp, &cc.tls) {
        (true, Some(tls)) => Some(
            crate::control::conn::tls_acceptor(
                &tls.cert_pem,
                &tls.key_pem,
                tls.client_ca_pem.as_deref(),
            )
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
    let policy = Policy::new(cc.roles.clone(), socket_gid, tcp && cc.tls.is_none());
    let router = builder
        .layer(AuthLayer)
        .add_service(health_service.clone())
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            ControlServer::new(
                ControlService::new(supervisor.clone(), stop_control.clone())
                    .with_reload(reload_tx),
            )
            .max_decoding_message_size(cc.max_request_bytes),
        );

    let endpoint = Endpoint {
        gate: Gate::new("control", Limits::for_max(cc.max_connections, true)),
        policy: Arc::new(policy),
        tls,
        idle_timeout: cc.idle_timeout,
        idle_evict: None,
    };
    let stopped = stop_control.clone().cancelled_owned();
    let mut server = match socket {
        ControlSocket::Unix(l, _) => {
            tokio::spawn(router.serve_with_incoming_shutdown(incoming_unix(l, endpoint), stopped))
        }
        ControlSocket::Tcp(l) => {
            tokio::spawn(router.serve_with_incoming_shutdown(incoming_tcp(l, endpoint), stopped))
        }
    };
    let stop_metrics = CancellationToken::new();
    let metrics_task = metrics_socket.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        }
        tokio::spawn(crate::endpoints::metrics::serve(
            l,
            config.metrics_limits,
            supervisor.clone(),
            stop_metrics.clone(),
        ))
    });
    let health_task = health_socket.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving plaintext grpc.health.v1 (health only)");
        }
        tokio::spawn(crate::endpoints::health::serve(
            l,
            health_service.clone(),
            stop_metrics.clone(),
        ))
    });
    let toxiproxy_task = toxiproxy_socket.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving the Toxiproxy-compatible API (callers identified by uid, roles from [control.roles])");
        }
        let access = crate::endpoints::toxiproxy_api::Access::new(
            Policy::new(cc.roles.clone(), socket_gid, false),
            config.toxiproxy_api_rules.clone(),
            own_endpoints,
        )
        .with_token(config.toxiproxy_api_token.clone());
        tokio::spawn(crate::endpoints::toxiproxy_api::serve(
            l,
            config.toxiproxy_api_limits,
            supervisor.clone(),
            access,
            stop_metrics.clone(),
        ))
    });
    let stop_trim = CancellationToken::new();
    tokio::spawn(crate::process::trim::run(
        supervisor.clone(),
        stop_trim.clone(),
    ));
    // Every listener in the registry: the config's and those restored from
    // the state file or handed over (the rows of `netctl list`).
    let listeners = supervisor.list();
    let running = listeners
        .iter()
        .filter(|l| l.state() == proto::ListenerState::Running)
        .count();
    tracing::info!(control = %control, listeners = listeners.len(), running, config = %config.source, state = %state_summary(&supervisor, &config), "netd ready");
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // SIGHUP's default action kills the process: take it (a reload) before
    // READY=1 says netd may be sent one.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // logrotate's postrotate: open the access log again by name.
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    // Serve hand-over requests (a later `netd --upgrade`): once ready, or
    // for a successor once the old netd let go (until then the hand-over
    // socket file is the old one's, which carries on if this one fails).
    let handed = CancellationToken::new();
    let stop_handover = CancellationToken::new();
    let mut extra = vec![(crate::sys::fdstore::CONTROL_NAME.to_string(), control_fd)];
    if let Some(fd) = metrics_fd {
        extra.push((crate::sys::fdstore::METRICS_NAME.to_string(), fd));
    }
    if let Some(fd) = health_fd {
        extra.push((crate::sys::fdstore::HEALTH_NAME.to_string(), fd));
    }
    if let Some(fd) = toxiproxy_fd {
        extra.push((crate::sys::fdstore::TOXIPROXY_API_NAME.to_string(), fd));
    }
    let serve_handover = |extra| {
        serve_handover(
            handover_path.clone(),
            supervisor.clone(),
            extra,
            handed.clone(),
            stop_handover.clone(),
        )
    };
    let mut handover_guard = match successor.take() {
        None => {
            let g = serve_handover(extra).await;
            crate::process::notify::ready();
            g
        }
        Some(s) => {
            crate::process::handover::notify_main_pid();
            crate::process::notify::ready();
            if let Err(e) = tokio::task::spawn_blocking(move || s.done())
                .await
                .context("hand-over")
                .and_then(|r| r)
            {
                // The old netd carries on; this one must not stay as a
                // second.
                tracing::error!(error = %format!("{e:#}"), "the old netd did not hand over; exiting");
                stop_control.cancel();
                stop_metrics.cancel();
                supervisor.shutdown(config.shutdown_grace).await;
                return Err(e.context("upgrade"));
            }
            tracing::info!("took over from the old netd");
            if !keep_control_file {
                guard = SocketFileGuard::new(match &control {
                    ControlAddr::Unix(p) => Some(p.as_path()),
                    ControlAddr::Tcp(_) => None,
                });
            }
            serve_handover(extra).await
        }
    };
    // Stops when dropped at the end of this function, after the drain.
    let _watchdog = crate::process::notify::Watchdog::start(&supervisor);

    let mut handed_over = false;
    let server_result = loop {
        tokio::select! {
            _ = handed.cancelled() => { handed_over = true; break None }
            _ = term.recv() => { tracing::info!("SIGTERM received; shutting down"); break None }
            _ = int.recv() => { tracing::info!("SIGINT received; shutting down"); break None }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received; reloading the config");
                // The outcome is logged and on the event stream.
                let _ = reload(&supervisor, &config, config_path.as_deref()).await;
            }
            Some(reply) = reload_requests.recv() => {
                tracing::info!("reload requested over the control plane (Reload)");
                let outcome = reload(&supervisor, &config, config_path.as_deref()).await;
                // The caller may have gone; the reload stands either way.
                let _ = reply.send(outcome);
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1 received; reopening the access log");
                crate::telemetry::access_log::reopen();
            }
            r = &mut server => break Some(r),
        }
    };
    if let Some(r) = server_result {
        supervisor.shutdown(Duration::ZERO).await;
        r.context("control server task")?
            .context("control server")?;
        bail!("control server stopped unexpectedly");
    }

    stop_handover.cancel();
    if handed_over {
        // The successor serves on the same sockets and files now, and is
        // the one systemd hears from: stop accepting control connections
        // first so that they all reach it, and leave the files to it.
        guard.disarm();
        handover_guard.disarm();
        stop_control.cancel();
        stop_metrics.cancel();
    } else {
        crate::process::notify::stopping();
    }
    health
        .set_not_serving::<ControlServer<ControlService>>()
        .await;
    if !drain_unless_signalled_again(&supervisor, config.shutdown_grace, &mut term, &mut int).await
    {
        // The guards remove the socket files on the way out.
        bail!("second signal during the shutdown grace period; exited without draining");
    }
    stop_control.cancel();
    stop_metrics.cancel();
    stop_trim.cancel();
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(CONTROL_DRAIN, t).await;
    }
    if let Some(t) = health_task {
        let _ = tokio::time::timeout(CONTROL_DRAIN, t).await;
    }
    if let Some(t) = toxiproxy_task {
        let _ = tokio::time::timeout(CONTROL_DRAIN, t).await;
    }
    match tokio::time::timeout(CONTROL_DRAIN, &mut server).await {
        Ok(r) => r
            .context("control server task")?
            .context("control server")?,
        Err(_) => server.abort(),
    }
    crate::sys::fdstore::flushed().await;
    tracing::info!("netd stopped");
    Ok(())
}

/// How long closing the remaining connections may take after a second
/// signal.
const EXIT_NOW_BOUND: Duration = Duration::from_secs(2);

/// Shut the supervisor down with `grace` for open connections, unless a
/// second SIGTERM/SIGINT comes meanwhile: then close them at once (as
/// cargo, docker and most daemons take a second Ctrl-C) and return false.
async fn drain_unless_signalled_again(
    supervisor: &Supervisor,
    grace: Duration,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> bool {
    {
        let drain = supervisor.shutdown(grace);
        tokio::pin!(drain);
        tokio::select! {
            () = &mut drain => return true,
            _ = term.recv() => tracing::warn!(signal = "SIGTERM", "second signal; exiting now"),
            _ = int.recv() => tracing::warn!(signal = "SIGINT", "second signal; exiting now"),
        }
    }
    // No grace: the remaining connections are closed now.
    if tokio::time::timeout(EXIT_NOW_BOUND, supervisor.shutdown(Duration::ZERO))
        .await
        .is_err()
    {
        tracing::warn!("connections still closing; exiting anyway");
    }
    false
}

/// Where runtime changes go, for the ready line: the state file, or why
/// there is none.
fn state_summary(supervisor: &Supervisor, config: &Config) -> String {
    match supervisor.state_file() {
        Some(path) => path.display().to_string(),
        None if !config.use_default_state_dir => {
            "none (embedded default; use --state-dir to keep changes)".into()
        }
        None => "none (changes are not kept across restarts)".into(),
    }
}

/// Bind the hand-over socket at `path` and serve it; the guard removes the
/// file at exit.
async fn serve_handover(
    path: Option<PathBuf>,
    supervisor: Supervisor,
    extra: Vec<(String, OwnedFd)>,
    handed: CancellationToken,
    stop: CancellationToken,
) -> SocketFileGuard {
    let Some(path) = path else {
        tracing::info!(
            "no hand-over socket (TCP control address and no state_dir): netd --upgrade will not work"
        );
        return SocketFileGuard::new(None);
    };
    let p = path.clone();
    match tokio::task::spawn_blocking(move || crate::process::handover::bind(&p)).await {
        Ok(Ok(l)) => {
            tokio::spawn(crate::process::handover::serve(
                l, supervisor, extra, handed, stop,
            ));
            SocketFileGuard::new(Some(&path))
        }
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot bind the hand-over socket; netd --upgrade will not work");
            SocketFileGuard::new(None)
        }
        Err(e) => {
            tracing::warn!(error = %e, "binding the hand-over socket");
            SocketFileGuard::new(None)
        }
    }
}

/// Open the state directory, restore the runtime state on top of the
/// config's listeners and start them all. A config listener that cannot
/// start is fatal (as it always was); a listener restored from the state
/// that cannot bind now is kept FAILED and retried; one whose spec no
/// longer validates is reported and left out.
/// How long a start waits for the state directory to open and the state
/// file to be read (a hung mount fails the start instead of hanging it).
const BOOT_STATE_DEADLINE: Duration = Duration::from_secs(30);

async fn boot_listeners(
    config: &Config,
    inherited: HashMap<String, OwnedFd>,
) -> anyhow::Result<Supervisor> {
    use crate::state::{Desired, Store};
    let base: Vec<Desired> = config.listeners.iter().map(Desired::from).collect();
    let explicit = config.state_dir.is_some();
    let store = match config
        .state_dir
        .clone()
        .or_else(|| config.fallback_state_dir())
    {
        None if !config.use_default_state_dir => {
            tracing::info!(
                "the embedded default config keeps no state: changes made with netctl last until netd stops (use --state-dir to keep them)"
            );
            None
        }
        None => {
            tracing::warn!(
                "no state_dir (set it in the config or with --state-dir): changes made with netctl will not survive a restart"
            );
            None
        }
        Some(dir) => {
            let d = dir.clone();
            let opened = crate::sys::safe_file::off_runtime(
                "opening the state directory",
                BOOT_STATE_DEADLINE,
                move || Store::open(&d, explicit),
            )
            .await;
            match opened {
                Ok(store) => Some(store),
                Err(e) if explicit => {
                    return Err(e).with_context(|| {
                        format!("cannot use the state directory {}", dir.display())
                    });
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot use the default state directory (set state_dir or --state-dir): changes made with netctl will not survive a restart");
                    None
                }
            }
        }
    };
    let (store, loaded) = match store {
        None => (None, None),
        Some(s) => {
            // A state file that cannot be read in time stops the start:
            // running without it would drop its changes at the next save.
            let (s, loaded) = crate::sys::safe_file::off_runtime(
                "reading the state file",
                BOOT_STATE_DEADLINE,
                move || {
                    let loaded = s.load();
                    Ok((s, loaded))
                },
            )
            .await
            .context("cannot read the state file")?;
            (Some(s), Some(loaded))
        }
    };
    let overlay = match (&store, loaded) {
        (Some(s), Some(loaded)) => {
            if let Some((why, moved)) = &loaded.problem {
                let aside = moved
                    .as_ref()
                    .map(|p| format!("it was moved aside to {}", p.display()))
                    .unwrap_or_else(|| "it could not be moved aside".into());
                tracing::error!(path = %s.path().display(), "the state file is unusable ({why}); {aside}; starting with the config's listeners only");
            } else if !loaded.overlay.is_empty() {
                tracing::info!(
                    path = %s.path().display(),
                    changed = loaded.overlay.listeners.len(),
                    removed = loaded.overlay.removed.len(),
                    "restoring runtime changes"
                );
            }
            loaded.overlay
        }
        _ => crate::state::Overlay::default(),
    };
    let desired = overlay.on(&base);
    let supervisor =
        Supervisor::with_store(config.settings(), config.max_listeners, store, base.clone());
    supervisor.inherit(inherited);
    for d in &desired {
        match config.listeners.iter().find(|l| l.name == d.name) {
            Some(l) if base.iter().any(|b| b == d) => {
                if let Err(e) = supervisor.start_boot(d).await {
                    // Let connections the listeners started so far (on
                    // sockets a predecessor may still share) finish.
                    supervisor.shutdown(config.shutdown_grace).await;
                    bail!("{}: listener '{}': {e}", l.origin, l.name);
                }
            }
            _ => {
                if let Err(e) = supervisor.restore(d).await {
                    tracing::error!(listener = %d.name, error = %e, "cannot restore a listener from the state file; it is left out (and dropped from the state at the next change)");
                }
            }
        }
    }
    for (name, _) in supervisor.take_unused_inherited() {
        tracing::info!(name = %name, "a socket handed over matches no listener; closed");
        if supervisor.get(&name).is_err() {
            crate::sys::fdstore::remove(&name);
        }
    }
    Ok(supervisor)
}

/// Serve the control plane on a socket handed over (fd store, upgrade):
/// one listening on `addr` (for a Unix socket, at that path, which must
/// still exist: clients find it there).
fn adopt_control(fd: OwnedFd, addr: &ControlAddr) -> anyhow::Result<ControlSocket> {
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
            Ok(ControlSocket::Unix(
                tokio::net::UnixListener::from_std(l)?,
                path.clone(),
            ))
        }
        ControlAddr::Tcp(hostport) => {
            let Some(a) = local.as_socket() else {
                bail!("it is not a TCP socket");
            };
            if let Ok(want) = hostport.parse::<std::net::SocketAddr>() {
                if want.ip() != a.ip() || (want.port() != 0 && want.port() != a.port()) {
                    bail!("it is bound to {a}, not {hostport}");
                }
            }
            let l = std::net::TcpListener::from(OwnedFd::from(s));
            Ok(ControlSocket::Tcp(tokio::net::TcpListener::from_std(l)?))
        }
    }
}

/// A listening TCP socket handed over, if bound at `want` (port 0: any).
fn adopt_tcp(fd: OwnedFd, want: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
    let s = socket2::Socket::from(fd);
    let a = s.local_addr().ok()?.as_socket()?;
    let ok = s.is_listener().ok()?
        && a.ip() == want.ip()
        && (want.port() == 0 || want.port() == a.port());
    if !ok {
        tracing::warn!(socket = %a, want = %want, "not using the socket handed over (it is bound elsewhere)");
        return None;
    }
    s.set_nonblocking(true).ok()?;
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(OwnedFd::from(s))).ok()
}

/// How long a reload waits for the config file (and the token and TLS
/// files it names) to be read.
const RELOAD_READ_DEADLINE: Duration = Duration::from_secs(10);

/// Re-read the config file and apply the difference: SIGHUP and the
/// `Reload` RPC (`netctl reload`, the unit's ExecReload=) both come here.
/// A config with errors changes nothing; either way the outcome is logged,
/// sent on the event stream and returned (the RPC's answer), and systemd
/// hears RELOADING=1 then READY=1.
async fn reload(
    supervisor: &Supervisor,
    running: &Config,
    path: Option<&Path>,
) -> Result<proto::ReloadResponse, String> {
    use crate::proto::{EventKind, ListenerKind, PlanAction};
    crate::process::notify::reloading();
    let outcome: Result<proto::ReloadResponse, String> = async {
        let Some(path) = path else {
            return Err("netd runs the embedded default config; there is no file to re-read".to_string());
        };
        let p = path.to_path_buf();
        // Off the runtime and bounded: a FIFO is refused at once, a hung
        // mount fails this reload (the next SIGHUP tries again).
        let config = crate::sys::safe_file::off_runtime("reading the config", RELOAD_READ_DEADLINE, move || {
            Ok(Config::load(&p))
        })
        .await
        .map_err(|e| format!("the config could not be read; keeping the running one: {e}"))?
            .map_err(|e| format!("the new config cannot be used; keeping the running one: {e}"))?;
        let mut restart_needed = Vec::new();
        for (what, changed) in [
            ("control", format!("{:?}", config.control.listen) != format!("{:?}", running.control.listen)),
            ("metrics", config.metrics_listen != running.metrics_listen),
            ("health", config.health_listen != running.health_listen),
            ("toxiproxy_api", config.toxiproxy_api_listen != running.toxiproxy_api_listen
                || config.toxiproxy_api_rules != running.toxiproxy_api_rules
                || config.toxiproxy_api_token != running.toxiproxy_api_token),
            ("log", config.log.level != running.log.level || config.log.format != running.log.format),
            ("max_listeners", config.max_listeners != running.max_listeners),
            ("capture_dir", config.capture_dir != running.capture_dir),
            ("shutdown_grace", config.shutdown_grace != running.shutdown_grace),
        ] {
            if changed {
                tracing::warn!(setting = what, "changed in the config; takes effect at the next restart (reload applies [[listener]] entries)");
                restart_needed.push(what.to_string());
            }
        }
        let base = config.listeners.iter().map(crate::state::Desired::from).collect();
        let (plan, applied) = supervisor.reload(base).await.map_err(|e| e.to_string())?;
        let count = |a: PlanAction| plan.iter().filter(|i| i.action() == a && i.error.is_empty()).count();
        let summary = format!(
            "{} created, {} updated, {} replaced, {} deleted, {} unchanged",
            count(PlanAction::Create),
            count(PlanAction::Update),
            count(PlanAction::Replace),
            count(PlanAction::Delete),
            count(PlanAction::Unchanged)
        );
        if applied {
            Ok(proto::ReloadResponse {
                plan,
                summary,
                restart_needed,
                config: path.display().to_string(),
            })
        } else {
            let errors: Vec<String> = plan
                .iter()
                .filter(|i| !i.error.is_empty())
                .map(|i| format!("{}: {}", i.name, i.error))
                .collect();
            Err(format!("reload incomplete ({summary}); {}", errors.join("; ")))
        }
    }
    .await;
    match &outcome {
        Ok(r) => {
            tracing::info!(summary = %r.summary, "config reloaded");
            supervisor.events().publish(
                EventKind::Reloaded,
                "",
                ListenerKind::Unspecified,
                r.summary.clone(),
            );
        }
        Err(why) => {
            tracing::error!(error = %why, "reload failed");
            supervisor.events().publish(
                EventKind::ReloadFailed,
                "",
                ListenerKind::Unspecified,
                why.clone(),
            );
        }
    }
    crate::process::notify::ready();
    outcome
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

async fn bind_control(addr: &ControlAddr) -> anyhow::Result<ControlSocket> {
    match addr {
        ControlAddr::Unix(path) => {
            let l = bind_unix(path)?;
            Ok(ControlSocket::Unix(l, path.clone()))
        }
        ControlAddr::Tcp(hostport) => {
            let l = tokio::net::TcpListener::bind(hostport.as_str())
                .await
                .with_context(|| format!("cannot bind the control address {hostport}"))?;
            Ok(ControlSocket::Tcp(l))
        }
    }
}

/// Bind a Unix control socket with mode 0660, replacing a stale socket file
/// left by a crash but never one a running netd still answers on.
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
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

/// Lift the soft limit on open files to the hard limit and return it. The
/// systemd unit sets `LimitNOFILE=65536`; this covers netd started any
/// other way.
#[allow(unsafe_code)] // getrlimit/setrlimit; see the SAFETY note.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur != lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}
