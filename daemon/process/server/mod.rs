//! The daemon's top level: bind or adopt netd's own endpoints (the list in
//! [`endpoints`]: control, health, `/metrics`, the Toxiproxy API), start
//! the boot listeners ([`boot`]), serve, tell systemd we are ready, reload
//! the config when asked ([`reload`]), and on a shutdown request drain and
//! return. What is asked comes as [`Signals`]: `main.rs` turns SIGTERM,
//! SIGINT, SIGHUP and SIGUSR1 into them; a test gives a shutdown future.
//! Sockets inherited from systemd's fd store or from the netd this one
//! upgrades (see [`crate::process::handover`]) are adopted by name instead
//! of bound; after handing its own sockets to a successor, netd drains and
//! returns as on SIGTERM.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

use crate::config::Config;
use crate::control::service::ControlService;
use crate::proto::{self, control_server::ControlServer};
use crate::supervisor::Supervisor;
use crate::util::addr::ControlAddr;

mod boot;
mod control;
mod endpoints;
mod reload;
mod signals;

pub use control::check_control_security;
pub use signals::{Signal, Signals};

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

/// Run the daemon until `signals` asks it to stop (or it hands its
/// sockets to a successor). Returns after a clean shutdown.
pub async fn run(
    config: Config,
    control: ControlAddr,
    config_path: Option<PathBuf>,
    startup: Startup,
    mut signals: Signals,
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
    // The successor's side of `--upgrade`: dropped (the old netd then
    // carries on) if anything fails before it says DONE.
    let (mut inherited, mut successor) = inherit(startup, handover_path.as_deref()).await?;
    // Reload RPCs are carried out by the signal loop below, one at a time,
    // on SIGHUP's code path.
    let (reload_tx, mut reload_requests) = tokio::sync::mpsc::channel(4);
    let bound = endpoints::bind_all(
        endpoints::list(&config, &control, reload_tx),
        &mut inherited,
    )
    .await?;
    // A systemd service whose control socket is in the fd store leaves the
    // file for the next process (systemctl restart), which serves on that
    // socket at that path. A successor owns the file only once the old
    // netd has let go.
    let keep_files = crate::sys::fdstore::enabled();
    let files = endpoints::socket_files(&bound);
    let mut guards: Vec<SocketFileGuard> = if keep_files || successor.is_some() {
        Vec::new()
    } else {
        files
            .iter()
            .map(|p| SocketFileGuard::new(Some(p)))
            .collect()
    };

    let supervisor = boot::boot_listeners(&config, inherited).await?;

    let (health, _) = tonic_health::server::health_reporter();
    health.set_serving::<ControlServer<ControlService>>().await;
    let stop_endpoints = CancellationToken::new();
    let shared = endpoints::Shared {
        config: &config,
        supervisor: supervisor.clone(),
        health: HealthServer::new(HealthService::from_health_reporter(health.clone())),
        socket_gid: endpoints::control_gid(&bound),
        own_endpoints: endpoints::tcp_addrs(&bound),
        stop: stop_endpoints.clone(),
    };
    let (handed_sockets, mut served) = endpoints::serve_all(bound, &shared)?;
    let stop_trim = CancellationToken::new();
    tokio::spawn(crate::process::trim::run(
        supervisor.clone(),
        stop_trim.clone(),
    ));
    log_ready(&supervisor, &config, &control);
    // Before READY=1 says netd may be sent a SIGHUP.
    signals.install()?;
    // Serve hand-over requests (a later `netd --upgrade`): once ready, or
    // for a successor once the old netd let go (until then the hand-over
    // socket file is the old one's, which carries on if this one fails).
    let handed = CancellationToken::new();
    let stop_handover = CancellationToken::new();
    let serve_handover = |sockets| {
        serve_handover(
            handover_path.clone(),
            supervisor.clone(),
            sockets,
            handed.clone(),
            stop_handover.clone(),
        )
    };
    let mut handover_guard = match successor.take() {
        None => {
            let g = serve_handover(handed_sockets).await;
            crate::process::notify::ready();
            g
        }
        Some(s) => {
            take_over(s, &supervisor, &stop_endpoints, config.shutdown_grace).await?;
            if !keep_files {
                guards = files
                    .iter()
                    .map(|p| SocketFileGuard::new(Some(p)))
                    .collect();
            }
            serve_handover(handed_sockets).await
        }
    };
    // Stops when dropped at the end of this function, after the drain.
    let _watchdog = crate::process::notify::Watchdog::start(&supervisor);

    let handed_over = match serve_until_stopped(
        &supervisor,
        &config,
        config_path.as_deref(),
        &mut signals,
        &mut reload_requests,
        &handed,
        &mut served,
    )
    .await
    {
        Ok(handed_over) => handed_over,
        Err(e) => {
            supervisor.shutdown(Duration::ZERO).await;
            return Err(e);
        }
    };

    stop_handover.cancel();
    if handed_over {
        // The successor serves on the same sockets and files now, and is
        // the one systemd hears from: stop accepting control connections
        // first so that they all reach it, and leave the files to it.
        guards.iter_mut().for_each(SocketFileGuard::disarm);
        handover_guard.disarm();
        stop_endpoints.cancel();
    } else {
        crate::process::notify::stopping();
    }
    health
        .set_not_serving::<ControlServer<ControlService>>()
        .await;
    if !drain_unless_signalled_again(&supervisor, config.shutdown_grace, &mut signals).await {
        // The guards remove the socket files on the way out.
        bail!("second signal during the shutdown grace period; exited without draining");
    }
    stop_endpoints.cancel();
    stop_trim.cancel();
    endpoints::drain(served).await?;
    crate::sys::fdstore::flushed().await;
    tracing::info!("netd stopped");
    Ok(())
}

/// The line that says netd is ready, with what it runs.
fn log_ready(supervisor: &Supervisor, config: &Config, control: &ControlAddr) {
    // Every listener in the registry: the config's and those restored from
    // the state file or handed over (the rows of `netctl list`).
    let listeners = supervisor.list();
    let running = listeners
        .iter()
        .filter(|l| l.state() == proto::ListenerState::Running)
        .count();
    tracing::info!(control = %control, listeners = listeners.len(), running, config = %config.source, state = %boot::state_summary(supervisor, config), "netd ready");
}

/// The successor's side of `--upgrade`, once it serves: tell the old netd
/// DONE and wait for its OK. An error means the old netd carries on, so
/// this one has stopped its endpoints and listeners and must exit.
async fn take_over(
    s: crate::process::handover::Successor,
    supervisor: &Supervisor,
    stop_endpoints: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    crate::process::handover::notify_main_pid();
    crate::process::notify::ready();
    if let Err(e) = tokio::task::spawn_blocking(move || s.done())
        .await
        .context("hand-over")
        .and_then(|r| r)
    {
        // The old netd carries on; this one must not stay as a second.
        tracing::error!(error = %format!("{e:#}"), "the old netd did not hand over; exiting");
        stop_endpoints.cancel();
        supervisor.shutdown(grace).await;
        return Err(e.context("upgrade"));
    }
    tracing::info!("took over from the old netd");
    Ok(())
}

/// Serve until a shutdown signal (Ok(false)) or a successor took over
/// (Ok(true)), reloading the config when asked (a signal, or the `Reload`
/// RPC through `reload_requests`). Err: an essential endpoint stopped.
async fn serve_until_stopped(
    supervisor: &Supervisor,
    config: &Config,
    config_path: Option<&Path>,
    signals: &mut Signals,
    reload_requests: &mut tokio::sync::mpsc::Receiver<
        tokio::sync::oneshot::Sender<crate::control::service::ReloadOutcome>,
    >,
    handed: &CancellationToken,
    served: &mut [endpoints::Served],
) -> anyhow::Result<bool> {
    // Ends with netd: each round waits for one of these.
    loop {
        tokio::select! {
            () = handed.cancelled() => return Ok(true),
            signal = signals.next() => match signal {
                Signal::Shutdown(name) => {
                    tracing::info!("{name} received; shutting down");
                    return Ok(false);
                }
                Signal::Reload(name) => {
                    tracing::info!("{name} received; reloading the config");
                    // The outcome is logged and on the event stream.
                    let _ = reload::reload(supervisor, config, config_path).await;
                }
                Signal::ReopenLog(name) => {
                    tracing::info!("{name} received; reopening the access log");
                    crate::telemetry::access_log::reopen();
                }
            },
            Some(reply) = reload_requests.recv() => {
                tracing::info!("reload requested over the control plane (Reload)");
                let outcome = reload::reload(supervisor, config, config_path).await;
                // The caller may have gone; the reload stands either way.
                let _ = reply.send(outcome);
            }
            e = endpoints::essential_ended(served) => return Err(e),
        }
    }
}

/// The sockets this netd starts with, by name: those systemd passed and,
/// for `--upgrade`, those of the running netd (with the hand-over in
/// progress, to be finished once this one serves).
async fn inherit(
    startup: Startup,
    handover_path: Option<&Path>,
) -> anyhow::Result<(
    HashMap<String, OwnedFd>,
    Option<crate::process::handover::Successor>,
)> {
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
    if !startup.upgrade {
        return Ok((inherited, None));
    }
    let path = handover_path.map(Path::to_path_buf).context(
        "--upgrade needs the running netd's hand-over socket: a Unix control socket, or a state_dir",
    )?;
    let (s, sockets) =
        tokio::task::spawn_blocking(move || crate::process::handover::Successor::request(&path))
            .await
            .context("hand-over")??;
    tracing::info!(
        sockets = sockets.len(),
        "received the running netd's sockets"
    );
    inherited.extend(sockets);
    Ok((inherited, Some(s)))
}

/// How long closing the remaining connections may take after a second
/// signal.
const EXIT_NOW_BOUND: Duration = Duration::from_secs(2);

/// Shut the supervisor down with `grace` for open connections, unless a
/// second shutdown signal (SIGTERM/SIGINT) comes meanwhile: then close them at once (as
/// cargo, docker and most daemons take a second Ctrl-C) and return false.
async fn drain_unless_signalled_again(
    supervisor: &Supervisor,
    grace: Duration,
    signals: &mut Signals,
) -> bool {
    {
        let drain = supervisor.shutdown(grace);
        tokio::pin!(drain);
        // Reloads and log reopens wait: netd is stopping.
        let second = async {
            loop {
                if let Signal::Shutdown(name) = signals.next().await {
                    return name;
                }
            }
        };
        tokio::select! {
            () = &mut drain => return true,
            name = second => tracing::warn!(signal = name, "second signal; exiting now"),
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

pub use crate::net::fd_budget::raise_fd_limit;
