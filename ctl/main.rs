//! `netctl`: the command-line client of netd's gRPC control plane.
//!
//! Each subcommand is one or two RPCs, in its own module under `cmd/`;
//! `dial` reaches netd; the render layer (`render`, `output`, `stats`,
//! `escape`) prints tables for people or JSON (`-o json`) for programs.
//! Errors print one line, `netctl: ...`, on stderr; the exit code says the
//! class (see `render`).

mod cmd;
mod dial;
mod escape;
mod fleet;
mod output;
mod probe;
mod render;
mod spark;
mod stats;
mod top;

use dial::Dial;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Parser, Subcommand, ValueEnum};
use netd::util::addr::{CONTROL_ENV, ControlAddr};

/// The help heading of the options every command takes (apart from the
/// command's own, which e.g. a proxy's upstream options would otherwise be
/// interleaved with).
const GLOBAL: &str = "Global options";

/// Control netd: start and stop listeners, inspect them, probe services.
///
/// Exit status: 0 success; 1 refused by netd (or a probe got no answer);
/// 2 usage (bad flags or input); 3 netd unreachable (with several
/// --control: none of them reachable).
///
/// netctl talks to the netd daemon over gRPC at --control. Without it,
/// netctl uses unix:/run/netd/netd.sock when that socket exists (root and
/// members of its group, e.g. netd, may use it), else the caller's own
/// netd at $XDG_RUNTIME_DIR/netd/netd.sock or /tmp/netd-$UID/netd.sock.
///
/// On a Unix socket netctl first checks who serves it: root, the netd
/// user or you; any other owner is refused before a byte is sent. On TCP,
/// --cacert enables TLS and --cert/--key present a client certificate.
#[derive(Debug, Parser)]
#[command(name = "netctl", version, propagate_version = true)]
struct Cli {
    /// Control plane address: unix:/path/to/sock or host:port.
    ///
    /// Repeat it (or give NETD_CONTROL a comma-separated list) to ask
    /// several daemons at once: list, stats, events and top then merge
    /// their answers under a HOST column, and a daemon that cannot be
    /// reached is a row saying so (exit 3 only when none can be reached).
    #[arg(long, global = true, env = CONTROL_ENV, value_name = "ADDR", value_delimiter = ',', help_heading = GLOBAL)]
    control: Vec<ControlAddr>,

    /// CA certificate (PEM) that signed netd's TLS certificate; turns on
    /// TLS for a TCP --control.
    #[arg(long, global = true, env = "NETD_CACERT", value_name = "PEM", help_heading = GLOBAL)]
    cacert: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for mTLS.
    #[arg(
        long,
        global = true,
        env = "NETD_CERT",
        value_name = "PEM",
        requires = "key",
        help_heading = GLOBAL
    )]
    cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(
        long,
        global = true,
        env = "NETD_KEY",
        value_name = "PEM",
        requires = "cert",
        help_heading = GLOBAL
    )]
    key: Option<std::path::PathBuf>,

    /// Give up connecting to netd after this long. Given before the
    /// command (after `start proxy` or `update`, --connect-timeout is read
    /// as the upstream's --upstream-connect-timeout, for old scripts).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, value_name = "DUR", help_heading = GLOBAL)]
    connect_timeout: Duration,

    /// Give up on a request after this long (not applied to --watch,
    /// events and sniff streams). Given before the command (`drain`,
    /// `probe` and `fault` have a --timeout of their own).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DUR", help_heading = GLOBAL)]
    timeout: Duration,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table, help_heading = GLOBAL)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

// Parsed once per run, so the size of its largest variant costs nothing
// worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Start a listener (binds before returning: a port in use is an error).
    #[command(subcommand)]
    Start(cmd::start::StartKind),
    /// Stop a listener, closing its socket and connections.
    Stop {
        /// Listener name.
        name: String,
    },
    /// Change a running listener: only the options given change.
    ///
    /// Every option `start KIND` takes (but --ephemeral) is accepted for a
    /// listener of that kind; one its kind lacks is an error.
    ///
    /// Settings that can change on the same socket do so in place (new
    /// connections get them; open ones finish under the old); a new
    /// --listen is a graceful replace (the new socket is bound first). The
    /// output says which it was. Either way the listener keeps its
    /// counters (its kind's too) and a proxy upstream its health.
    Update(cmd::update::UpdateArgs),
    /// Stop accepting, let open connections finish, then remove the
    /// listener; connections still open at --timeout are closed.
    Drain {
        /// Listener name.
        name: String,
        /// Close connections still open after this long (1ms to 24h).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DUR")]
        timeout: Duration,
    },
    /// Make netd's listeners match a file of [[listener]] entries (the
    /// config file's format, e.g. from `netctl export`).
    ///
    /// Prints the plan (create, update, replace, delete, unchanged) and
    /// carries it out in one call; every entry is validated before
    /// anything changes.
    Apply {
        /// The file; `-` reads standard input.
        #[arg(short, long, value_name = "FILE")]
        file: std::path::PathBuf,
        /// Show the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete listeners that are not in the file.
        #[arg(long)]
        prune: bool,
    },
    /// Have netd re-read its config file and apply its [[listener]]
    /// entries; returns once the change is applied.
    ///
    /// Prints what changed (created, updated, replaced, deleted). A config
    /// with errors, or a change that cannot be carried out, exits 1 with
    /// the reason, and netd keeps serving the running config. The same as
    /// SIGHUP (`kill -HUP`), but synchronous: the systemd unit's
    /// ExecReload=, so `systemctl reload netd` fails when the reload does.
    /// Every served TLS certificate is read again too; one that cannot be
    /// used exits 1 with the reason while the old one keeps serving.
    /// Needs the admin role.
    Reload,
    /// Inject faults into a proxy or udp-proxy: add, update, rm, ls.
    #[command(subcommand)]
    Fault(cmd::fault::FaultCmd),
    /// Print the running listeners as a file `netctl apply -f` accepts.
    ///
    /// HTTP tokens are written as "<redacted>", which apply reads as
    /// "keep the current token". Always TOML: with -o json it is refused
    /// (`netctl -o json list` gives the listeners as JSON).
    Export,
    /// List all listeners with their state, bound address and traffic.
    List,
    /// Show one listener in detail: its spec in effect, its counters, a
    /// proxy's upstreams, and its faults with their counters.
    Status {
        /// Listener name.
        name: String,
    },
    /// Show traffic stats: totals, and per-second rates with --watch.
    ///
    /// With --watch, the table is redrawn every interval until Ctrl-C, with
    /// a LAST 1m column: each listener's bytes/s over the last minute as a
    /// sparkline (--no-spark leaves it out). When stdout is not a terminal,
    /// one line per listener per sample is printed instead (no sparkline).
    /// With -o json, one JSON object per sample (JSON lines, no sparkline).
    /// For a full-screen live view, see `netctl top`.
    Stats {
        /// Only this listener.
        name: Option<String>,
        /// Keep streaming samples.
        #[arg(short, long)]
        watch: bool,
        /// Sampling interval with --watch, 100ms to 1h.
        #[arg(short, long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many samples (with --watch).
        #[arg(short = 'n', long, value_name = "N")]
        count: Option<u64>,
        /// With --watch on a terminal, leave out the LAST 1m column (a
        /// sparkline of each listener's traffic over the last minute).
        #[arg(long)]
        no_spark: bool,
    },
    /// A full-screen live view of the listeners (like top): rates, a
    /// sparkline of the last minute, faults firing, a detail pane.
    ///
    /// One row per listener, sortable by any column and filtered by name,
    /// kind or label; the selected listener's own figures and recent events
    /// in a detail pane; drain, stop and fault on/off keys (with a y/n
    /// confirmation) for an admin. With several --control, one row set per
    /// daemon under a HOST column; a daemon that cannot be reached is a row
    /// with its error, retried. Press ? for the keys, q to quit. Needs a
    /// terminal: for a stream to a pipe, use `stats --watch`.
    Top {
        /// Sampling interval, 100ms to 1h.
        #[arg(short, long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Print a sniffer's packets as it captures them, one line each.
    Sniff {
        /// Sniffer listener name.
        name: String,
        /// Stop after this many packets.
        #[arg(short = 'c', long, value_name = "N")]
        count: Option<u64>,
    },
    /// Follow lifecycle events (started, stopped, failed, restarted) and
    /// alerts.
    Events {
        /// Only events of this listener.
        name: Option<String>,
    },
    /// Write netctl(1) and netctl's shell completions into DIR (for
    /// packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        dir: std::path::PathBuf,
    },
    /// Send one message to a TCP or UDP service and print the reply.
    ///
    /// Exits non-zero if the connection is refused or no reply comes within
    /// the timeout.
    Probe {
        /// tcp or udp.
        #[arg(value_enum)]
        protocol: cmd::probe::ProbeProtocol,
        /// host:port to probe.
        addr: String,
        /// Message to send.
        #[arg(short, long, default_value = "hello\n")]
        message: String,
        /// Connect and read timeout, e.g. 500ms, 2s.
        #[arg(short, long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dial = Dial::from_cli(&cli).map_err(render::usage)?;
    if let Command::Top { interval } = cli.command {
        if cli.output == Format::Json {
            return Err(render::usage(anyhow!(
                "netctl top is a screen for people and has no JSON form; use `netctl -o json stats --watch` for JSON lines"
            )));
        }
        return top::run(top_hosts(&cli.control, &dial), interval).await;
    }
    if cli.control.len() > 1 {
        return fleet::run(cli, &dial).await;
    }
    let result = run_command(cli, &dial).await;
    let Err(e) = result else { return Ok(()) };
    // A call over TLS that died without a reason: ask the TLS layer why
    // (e.g. netd rejected our certificate after the handshake).
    if let (Some(ControlAddr::Tcp(hostport)), Some(tls)) = (&dial.control, &dial.opts.tls) {
        let text = format!("{e:#}").to_lowercase();
        if [
            "transport error",
            "canceled",
            "connection",
            "broken pipe",
            "h2 protocol",
        ]
        .iter()
        .any(|w| text.contains(w))
        {
            if let Some(why) =
                netd::control::client::diagnose_tls(hostport, tls, dial.opts.connect_timeout).await
            {
                return Err(render::unreachable(anyhow!(
                    "TLS with netd at {hostport} failed: {}",
                    netd::control::client::with_hint(&why, true)
                )));
            }
        }
    }
    Err(e)
}

/// `netctl top`'s daemons: each --control (labelled as given), or the
/// default one.
fn top_hosts(control: &[ControlAddr], dial: &Dial) -> Vec<(String, Dial)> {
    if control.is_empty() {
        return vec![("default".into(), dial.clone())];
    }
    control
        .iter()
        .map(|a| {
            let d = Dial {
                control: Some(a.clone()),
                opts: dial.opts.clone(),
            };
            (a.to_string(), d)
        })
        .collect()
}

/// Run the command `cli` names.
async fn run_command(cli: Cli, dial: &Dial) -> anyhow::Result<()> {
    let ctx = cmd::Ctx {
        dial: dial.clone(),
        json: cli.output == Format::Json,
    };
    let ctx = &ctx;
    match cli.command {
        Command::Probe {
            protocol,
            addr,
            message,
            timeout,
        } => cmd::probe::run(ctx, protocol, addr, message, timeout).await,
        Command::Start(kind) => cmd::start::run(ctx, kind).await,
        Command::Stop { name } => cmd::listeners::stop(ctx, name).await,
        Command::Update(args) => cmd::update::run(ctx, args).await,
        Command::Drain { name, timeout } => cmd::listeners::drain(ctx, name, timeout).await,
        Command::Apply {
            file,
            dry_run,
            prune,
        } => cmd::apply::apply(ctx, file, dry_run, prune).await,
        Command::Export => cmd::apply::export(ctx).await,
        Command::Reload => cmd::reload::run(ctx).await,
        Command::GenerateDocs { .. } => Err(render::usage(anyhow!(
            "generate-docs runs before netctl connects to netd"
        ))),
        Command::Fault(f) => cmd::fault::run(ctx, f).await,
        Command::List => cmd::listeners::list(ctx).await,
        Command::Stats {
            name,
            watch,
            interval,
            count,
            no_spark,
        } => cmd::watch::stats(ctx, name, watch, interval, count, !no_spark).await,
        Command::Sniff { name, count } => cmd::watch::sniff(ctx, name, count).await,
        Command::Events { name } => cmd::watch::events(ctx, name).await,
        Command::Status { name } => cmd::listeners::status(ctx, name).await,
        Command::Top { .. } => Err(render::usage(anyhow!("top runs before this"))),
    }
}

/// `--connect-timeout` after `start proxy` or `update` is the upstream's
/// (the old spelling of --upstream-connect-timeout, kept for scripts), not
/// netctl's own: say so on stderr rather than let it pass silently.
fn note_old_connect_timeout(matches: &clap::ArgMatches) {
    use clap::parser::ValueSource;
    let sub = match matches.subcommand() {
        Some(("start", m)) => m.subcommand_matches("proxy").map(|m| (m, "start proxy")),
        Some(("update", m)) => Some((m, "update")),
        _ => None,
    };
    let Some((sub, name)) = sub else { return };
    if sub.value_source("upstream-connect-timeout") != Some(ValueSource::CommandLine) {
        return;
    }
    let top = matches.value_source("connect_timeout") == Some(ValueSource::CommandLine);
    let old = std::env::args_os()
        .filter(|a| {
            a.to_str()
                .is_some_and(|a| a == "--connect-timeout" || a.starts_with("--connect-timeout="))
        })
        .count();
    if old > usize::from(top) {
        eprintln!(
            "netctl: note: --connect-timeout after `{name}` sets the upstream connect timeout (now spelled --upstream-connect-timeout); netctl's own --connect-timeout goes before the command"
        );
    }
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    note_old_connect_timeout(&matches);
    if let Command::GenerateDocs { dir } = &cli.command {
        return match netd::process::docs::write(<Cli as clap::CommandFactory>::command(), "1", dir)
        {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("netctl: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netctl: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors carry the daemon's messages, which can quote what a
            // listener's creator chose: escaped, and one line.
            eprintln!("netctl: {}", escape::escape(&format!("{e:#}")));
            ExitCode::from(render::exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every argument of every command says what it is in `--help`
    /// (`fault update/rm/ls` once showed bare `<LISTENER> <NAME>`).
    #[test]
    fn every_argument_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.is_hide_set() || a.get_help().is_some() {
                    continue;
                }
                missing.push(format!("{path} {}", a.get_id()));
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "netctl", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// In a command's help, the options every command takes are listed
    /// apart from the command's own.
    #[test]
    fn global_options_have_their_own_heading() {
        let mut cli = Cli::command();
        cli.build();
        let start = cli.find_subcommand("start").expect("start");
        let proxy = start.find_subcommand("proxy").expect("start proxy");
        for id in ["control", "cacert", "cert", "key", "output"] {
            let a = proxy
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("start proxy has no --{id}"));
            assert_eq!(a.get_help_heading(), Some(GLOBAL), "--{id}");
        }
        let own = proxy
            .get_arguments()
            .find(|a| a.get_id() == "upstream-connect-timeout")
            .expect("start proxy --upstream-connect-timeout");
        assert_eq!(own.get_help_heading(), None);
    }
}
