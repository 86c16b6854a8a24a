//! `netd`: the daemon binary. Parses flags, loads the config (or the
//! embedded default), sets up logging and runs [`netd::process::server::run`]
//! with the process's signals as its requests.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use netd::config::{Config, DEFAULT_CONFIG};
use netd::util::addr::{CONTROL_ENV, ControlAddr, default_control_addr};

/// netd hosts network services (TCP/UDP echo, ...) as supervised listeners
/// and is driven at runtime by `netctl` over a gRPC control plane.
///
/// With no --config, netd runs its embedded default: TCP echo on
/// 127.0.0.1:8080 (prefix "Echo: ") and UDP echo on 127.0.0.1:9090
/// (prefix "ACK: "). That demo run keeps no state: changes made with
/// netctl are gone when it stops, unless --state-dir is given.
///
/// SIGTERM or SIGINT (Ctrl-C): stop accepting, let open connections finish
/// for the config's shutdown_grace (10s), then exit 0. A second one during
/// that grace period closes them at once and exits 1.
#[derive(Debug, Parser)]
#[command(name = "netd", version)]
struct Args {
    /// TOML config file; without it the embedded default is used. It must
    /// be a regular file (or /dev/null); a FIFO or device is refused.
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Control plane address: unix:/path/to/sock or host:port. Overrides the
    /// config's `[control] listen`. Default: unix:/run/netd/netd.sock as
    /// root, else $XDG_RUNTIME_DIR/netd/netd.sock or /tmp/netd-$UID/netd.sock
    /// (a private 0700 directory). A TCP address needs [control.tls], or
    /// --control-insecure on loopback.
    #[arg(long, env = CONTROL_ENV, value_name = "ADDR")]
    control: Option<ControlAddr>,

    /// Allow a TCP --control address without TLS. Loopback addresses only;
    /// whoever can connect is admin, and netd warns at every start. Same as
    /// `[control] insecure = true`.
    #[arg(long)]
    control_insecure: bool,

    /// Directory of the state file, where changes made through the control
    /// plane are kept across restarts. Overrides the config's `state_dir`.
    /// Default: /var/lib/netd as root, else $XDG_STATE_HOME/netd or
    /// ~/.local/state/netd; with the embedded default config (no
    /// --config), none: nothing is kept. It must belong to netd's user or
    /// root (netd warns if group or others may write to it).
    #[arg(long, env = "NETD_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Validate the config and exit. Also warns (on stderr, still exit 0)
    /// when the listeners' connection and client limits add up to more than
    /// the descriptor budget: RLIMIT_NOFILE less a reserve (5%, at least
    /// 64) kept for the control plane.
    #[arg(long)]
    check_config: bool,

    /// Print the embedded default config and exit.
    #[arg(long)]
    print_default_config: bool,

    /// Take over from the netd running with the same control address (and
    /// state directory): receive its listening sockets and control socket,
    /// start serving on them, then let it drain its connections and exit.
    /// No connection is refused meanwhile. If this process fails first, the
    /// running one carries on. Sockets are taken only from a netd run by
    /// root or by this process's user.
    #[arg(long, conflicts_with_all = ["check_config", "print_default_config"])]
    upgrade: bool,

    /// Write netd(8) and netd's shell completions into DIR and exit (for
    /// packaging).
    #[arg(long, hide = true, value_name = "DIR")]
    generate_docs: Option<PathBuf>,
}

fn main() -> ExitCode {
    // First, while this is the only thread: settings read by every arena.
    tune_allocator();
    // Before any thread exists: this unsets LISTEN_* in the environment.
    let listen_fds = netd::sys::fdpass::take_listen_fds();
    let args = Args::parse();
    if let Some(dir) = &args.generate_docs {
        return match netd::process::docs::write(<Args as clap::CommandFactory>::command(), "8", dir)
        {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("netd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded()),
    };
    let mut config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netd: {e}");
            return ExitCode::from(2);
        }
    };
    config.control.insecure |= args.control_insecure;
    if let Some(dir) = &args.state_dir {
        if !dir.is_absolute() {
            eprintln!("netd: --state-dir must be an absolute path");
            return ExitCode::from(2);
        }
        config.state_dir = Some(dir.clone());
    }
    let control = args
        .control
        .or_else(|| config.control.listen.clone())
        .unwrap_or_else(default_control_addr);
    if args.check_config {
        // Everything start checks short of binding: the config itself
        // (listener specs, clashing ports, log level; done by the load
        // above) and whether the control address may be served.
        let checked = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(netd::process::server::check_control_security(
                    &config, &control,
                ))
            });
        if let Err(e) = checked {
            eprintln!("netd: {e:#}");
            return ExitCode::from(2);
        }
        // The limits netd would run with: the soft limit raised to the hard.
        let budget = netd::net::fd_budget::Budget::current();
        if let Some(w) = netd::services::fd_cost::check_listeners(
            config.listeners.iter().map(|l| &l.spec),
            &budget,
        ) {
            eprintln!("netd: warning: {w}");
        }
        println!(
            "{}: ok ({} listeners)",
            config.source,
            config.listeners.len()
        );
        return ExitCode::SUCCESS;
    }
    netd::process::logging::init(&config.log);
    // Before the runtime: opening the file blocks.
    if let Err(e) = netd::telemetry::access_log::init(
        &config.access_log,
        config.log.format == netd::config::LogFormat::Json,
    ) {
        eprintln!("netd: {e:#}");
        return ExitCode::FAILURE;
    }
    let listen_fds = listen_fds.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring the sockets systemd passed (LISTEN_FDS)");
        Vec::new()
    });
    // Each connection costs a descriptor (a proxied one two); the common
    // soft default of 1024 would cap a proxy at about 500 clients.
    match netd::process::server::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    // Before the runtime: counts the descriptors open now (/proc).
    let budget = netd::net::fd_budget::Budget::current();
    let permits = netd::net::fd_budget::init();
    tracing::info!(
        limit = budget.limit,
        reserve = budget.reserve,
        data_plane = permits,
        "descriptor budget"
    );
    if let Some(w) =
        netd::services::fd_cost::check_listeners(config.listeners.iter().map(|l| &l.spec), &budget)
    {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netd: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let startup = netd::process::server::Startup {
        upgrade: args.upgrade,
        listen_fds,
    };
    let result = runtime.block_on(netd::process::server::run(
        config,
        control,
        args.config.clone(),
        startup,
        os_signals(),
    ));
    // The last lines of the connections that were drained.
    netd::telemetry::access_log::close();
    if result.is_err() {
        // E.g. a second signal cut the drain short: do not wait on tasks
        // left on the blocking pool either.
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The signals netd answers, as requests to the running daemon: SIGTERM
/// and SIGINT stop it (a second one cuts the drain short), SIGHUP reloads
/// the config, SIGUSR1 reopens the access log (logrotate's postrotate).
/// The handlers are installed when netd is about to say it is ready:
/// SIGHUP's default action kills the process.
fn os_signals() -> netd::process::server::Signals {
    use netd::process::server::{Signal, Signals};
    use tokio::signal::unix::{SignalKind, signal};
    Signals::from_stream(|| {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| anyhow::anyhow!("installing the {name} handler: {e}"))
        };
        let mut term = install(SignalKind::terminate(), "SIGTERM")?;
        let mut int = install(SignalKind::interrupt(), "SIGINT")?;
        let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
        let mut usr1 = install(SignalKind::user_defined1(), "SIGUSR1")?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            // Ends when netd no longer listens (it returned) or no signal
            // can come any more.
            loop {
                let s = tokio::select! {
                    Some(()) = term.recv() => Signal::Shutdown("SIGTERM"),
                    Some(()) = int.recv() => Signal::Shutdown("SIGINT"),
                    Some(()) = hup.recv() => Signal::Reload("SIGHUP"),
                    Some(()) = usr1.recv() => Signal::ReopenLog("SIGUSR1"),
                    else => break,
                };
                if tx.send(s).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    })
}

/// Heap blocks of `MMAP_THRESHOLD` bytes or more get pages of their own
/// (mmap), which free(3) hands straight back to the kernel.
///
/// Why: the proxy's 64 KiB forwarding buffers exist only while data is in
/// flight, but when many connections exchange data at once (a burst of
/// clients) glibc carves them from the heap between the small long-lived
/// blocks of the connections opened meanwhile (tasks, socket
/// registrations); freed, they stay resident, since glibc returns only the
/// top of a heap, until later allocations reuse them or the heap trimmer
/// runs after connections close. `bench/idle_memory.sh` with `BATCH=100`
/// (1,000 connections, 100 at a time) measured 3.1–3.2 KB per idle proxied
/// pair with 1 B messages and 4.0–5.4 KB with 12 KB messages that way;
/// with this threshold, 2.7–2.9 KB for both, as when clients arrive one by
/// one. Capping glibc's arenas (`M_ARENA_MAX` 1 or 2, against one per
/// thread) changed nothing measurable (3.1–3.3 and 4.0–5.0 KB): the cost
/// is where buffers land in a heap, not how many heaps there are.
///
/// The price: freed buffers no longer leave resident pages for later small
/// blocks to reuse, so with thousands of connections open the steady cost
/// is slightly higher (tests/it/memory.rs, 3,500 pairs in bursts: 2.74 KB per
/// pair against 2.64 KB before, release build). Kept because a burst no
/// longer leaves megabytes resident until the next trim.
///
/// The threshold is the proxy's buffer size, so only blocks that large pay
/// a map and unmap; the proxy keeps a few freed buffers per thread
/// (`services::proxy`), without which the map, unmap and page faults of
/// each exchange cost ~30% more CPU per proxied connection (128–175 µs
/// against 101–127 µs, `conn_load rate`, 3 alternating rounds). Smaller
/// blocks (the TCP echo's 17 KiB buffers, tasks) are unaffected. Setting it
/// also turns off glibc's dynamic threshold, which would otherwise move it
/// up to 32 MiB after large blocks are freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // mallopt: the binary's only unsafe call, see SAFETY.
fn tune_allocator() {
    const MMAP_THRESHOLD: libc::c_int = netd::services::proxy::BUF_SIZE as libc::c_int;
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists, so nothing allocates concurrently.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
