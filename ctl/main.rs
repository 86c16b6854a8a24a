//! `netctl`: the command-line client of netd's gRPC control plane.
//!
//! Each subcommand is one or two RPCs; output is a table for people or JSON
//! (`-o json`) for programs. Errors print one line, `netctl: ...`, on stderr
//! and exit 1 (2 for usage errors).

mod escape;
mod output;
mod probe;
mod stats;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};
use netd::addr::{
    CONTROL_ENV, ControlAddr, check_private_dir, default_control_addr, dial_candidates,
    parse_listen_addr,
};
use netd::client::{DialOptions, TlsFiles, control_client_with};
use netd::proto::control_client::ControlClient;
use netd::proto::{self, listener_spec::Kind};
use tonic::Code;
use tonic::transport::Channel;

/// Control netd: start and stop listeners, inspect them, probe services.
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
    #[arg(long, global = true, env = CONTROL_ENV, value_name = "ADDR")]
    control: Option<ControlAddr>,

    /// CA certificate (PEM) that signed netd's TLS certificate; turns on
    /// TLS for a TCP --control.
    #[arg(long, global = true, env = "NETD_CACERT", value_name = "PEM")]
    cacert: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for mTLS.
    #[arg(
        long,
        global = true,
        env = "NETD_CERT",
        value_name = "PEM",
        requires = "key"
    )]
    cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(
        long,
        global = true,
        env = "NETD_KEY",
        value_name = "PEM",
        requires = "cert"
    )]
    key: Option<std::path::PathBuf>,

    /// Give up connecting to netd after this long.
    #[arg(long, global = true, default_value = "3s", value_parser = humantime::parse_duration, value_name = "DUR")]
    connect_timeout: Duration,

    /// Give up on a request after this long (not applied to --watch,
    /// events and sniff streams).
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DUR")]
    timeout: Duration,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a listener (binds before returning: a port in use is an error).
    #[command(subcommand)]
    Start(StartKind),
    /// Stop a listener, closing its socket and connections.
    Stop {
        /// Listener name.
        name: String,
    },
    /// List all listeners with their state, bound address and traffic.
    List,
    /// Show one listener in detail.
    Status {
        /// Listener name.
        name: String,
    },
    /// Show traffic stats: totals, and per-second rates with --watch.
    ///
    /// With --watch, the table is redrawn every interval until Ctrl-C (when
    /// stdout is not a terminal, one line per listener per sample is printed
    /// instead). With -o json, one JSON object per sample (JSON lines).
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
    /// Send one message to a TCP or UDP service and print the reply.
    ///
    /// Exits non-zero if the connection is refused or no reply comes within
    /// the timeout.
    Probe {
        #[arg(value_enum)]
        protocol: ProbeProtocol,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProbeProtocol {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
struct Common {
    /// Unique listener name: 1-63 letters, digits, '-', '_', '.', starting with a letter or digit.
    name: String,
    /// Address to bind, host:port; port 0 picks a free one.
    #[arg(short, long, value_name = "ADDR")]
    listen: String,
    /// Label to attach, key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
enum StartKind {
    /// TCP echo (RFC 862): echoes everything until the client closes.
    TcpEcho {
        #[command(flatten)]
        common: Common,
        /// Prepended to every chunk echoed, e.g. "Echo: ".
        #[arg(long, default_value = "")]
        prefix: String,
        /// Concurrent connections; more are refused (default 1024).
        #[arg(long, value_name = "N")]
        max_connections: Option<u32>,
        /// Close connections idle this long, e.g. 30s, 5m (default 5m).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        idle_timeout: Option<Duration>,
    },
    /// Monitored TCP proxy: forwards each client to an upstream (round robin
    /// over the healthy ones), with an optional pool of warm connections.
    Proxy {
        #[command(flatten)]
        common: Common,
        /// Upstream host:port (repeat for several; round robin). The
        /// proxy's own listening address is refused.
        #[arg(short, long = "upstream", value_name = "ADDR", required = true)]
        upstreams: Vec<String>,
        /// Keep N established connections warm per upstream (bb8 pool).
        #[arg(long, value_name = "N", default_value_t = 0)]
        preconnect: u32,
        /// Upstream connect timeout (default 5s).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        connect_timeout: Option<Duration>,
        /// Close connections idle in both directions this long (default 5m).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        idle_timeout: Option<Duration>,
        /// Concurrent client connections; more are refused (default 1024).
        #[arg(long, value_name = "N")]
        max_connections: Option<u32>,
        /// Skip an upstream whose connect failed for this long (default 10s).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        upstream_backoff: Option<Duration>,
        /// Resolve upstreams given by host name again this often; a failed
        /// lookup keeps the last address (default 30s).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        resolve_interval: Option<Duration>,
    },
    /// HTTP JSON echo service (httpbin-like): GET echoes method, path and
    /// query; POST echoes a JSON body.
    Http {
        #[command(flatten)]
        common: Common,
        /// Largest request body in bytes; larger gets 413 (default 1 MiB).
        #[arg(long, value_name = "BYTES")]
        max_body: Option<u64>,
        /// Time a client has to send a request's headers (default 10s).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        header_timeout: Option<Duration>,
        /// Time a request has to complete (default 30s); slower gets 408.
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        request_timeout: Option<Duration>,
        /// Concurrent connections; more are refused (default 1024).
        #[arg(long, value_name = "N")]
        max_connections: Option<u32>,
        /// Require `Authorization: Bearer TOKEN` (prefer --token-file: a
        /// command line is visible to other local users).
        #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
        token: Option<String>,
        /// Read the bearer token from this file (surrounding whitespace is
        /// trimmed).
        #[arg(long, value_name = "PATH")]
        token_file: Option<std::path::PathBuf>,
        /// Per-client-IP rate limit: N/s, N/m or N/h, e.g. 100/s; over it
        /// gets 429 with Retry-After.
        #[arg(long, value_name = "RATE")]
        rate_limit: Option<String>,
        /// Request bodies buffered at once across all connections, in
        /// bytes (default 64 MiB, at least --max-body); beyond it: 503.
        #[arg(long, value_name = "BYTES")]
        body_budget: Option<u64>,
        /// Concurrent HTTP/2 streams per connection, 1-1000 (default 32).
        #[arg(long, value_name = "N")]
        max_streams: Option<u32>,
        /// Largest request header section in bytes, 1024 to 1 MiB (default
        /// 16 KiB); larger gets 431.
        #[arg(long, value_name = "BYTES")]
        max_header_bytes: Option<u32>,
        /// Close an HTTP/2 connection with no open stream this long, 1ms to
        /// 24h (default 60s).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        idle_timeout: Option<Duration>,
        /// IPv6 clients share a rate-limit bucket per prefix of this length
        /// (1-128, default 64).
        #[arg(long, value_name = "BITS")]
        rate_limit_ipv6_prefix: Option<u32>,
    },
    /// Packet sniffer on an interface (needs CAP_NET_RAW): per-protocol
    /// counts, flows, live packets (`netctl sniff`), pcap export, alerts.
    Sniffer {
        /// Listener name.
        name: String,
        /// Interface to capture on, e.g. lo.
        #[arg(short, long, value_name = "IF")]
        interface: String,
        /// Filter: terms joined by "and": tcp | udp | icmp | port N | host IP.
        /// As in tcpdump, tcp/udp/icmp match every fragment and port N only
        /// a first fragment; IPv6 extension headers are walked; malformed
        /// packets match only an empty or a host filter.
        #[arg(short, long, value_name = "EXPR", default_value = "")]
        filter: String,
        /// Write captured packets to this pcap file, in the daemon's
        /// capture_dir (default /var/lib/netd/captures as root): a file
        /// name, or an absolute path directly in that directory; anything
        /// else is refused. Rotated files are PATH.1 ... PATH.N.
        #[arg(long, value_name = "PATH")]
        pcap: Option<String>,
        /// Rotate the pcap file at this many bytes (default 100 MiB).
        #[arg(long, value_name = "BYTES")]
        pcap_max_bytes: Option<u64>,
        /// Rotated pcap files kept (default 3).
        #[arg(long, value_name = "N")]
        pcap_max_files: Option<u32>,
        /// Flow table size (default 4096).
        #[arg(long, value_name = "N")]
        max_flows: Option<u32>,
        /// Port-scan alert: distinct destination ports per source (default 50).
        #[arg(long, value_name = "N")]
        scan_ports: Option<u32>,
        /// Port-scan alert window (default 10s).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        scan_window: Option<Duration>,
        /// SYN-rate alert: SYNs per second (default 1000).
        #[arg(long, value_name = "N")]
        syn_rate: Option<u32>,
        /// Label to attach, key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// UDP echo: answers each datagram to its sender, except datagrams from
    /// netd's own UDP listeners or from ports that may answer back, within a
    /// per-source rate limit.
    UdpEcho {
        #[command(flatten)]
        common: Common,
        /// Prepended to every reply, e.g. "ACK: ". A reply is at most
        /// max(2 x request, request + 64) bytes; a longer prefix is cut.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Answer sources on ports below 1024 (0, 7, 13, 17, 19 and 37 are
        /// never answered).
        #[arg(long)]
        allow_privileged_sources: bool,
        /// Per-source-IP (IPv6: per /64) rate limit: N/s, N/m or N/h, the
        /// burst one period's worth, or "off" (default 100/s).
        #[arg(long, value_name = "RATE")]
        rate_limit: Option<String>,
        /// Sources the rate limit tracks (default 16384).
        #[arg(long, value_name = "N")]
        max_sources: Option<u32>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// A gRPC status as one line: the daemon's message, which already names the
/// problem; a code prefix only where the message alone would be unclear.
/// The listener a Start/Stop/Get reply carries, or an error saying what
/// could not be done.
fn reply_listener<R>(
    what: &str,
    reply: Result<tonic::Response<R>, tonic::Status>,
    listener: impl FnOnce(R) -> Option<proto::Listener>,
) -> anyhow::Result<proto::Listener> {
    let reply = reply.map_err(|s| status_line(what, &s))?.into_inner();
    listener(reply).ok_or_else(|| anyhow!("{what}: netd sent an empty reply"))
}

fn status_line(what: &str, s: &tonic::Status) -> anyhow::Error {
    if let (Code::Unknown | Code::Unavailable | Code::Internal, Some(t)) =
        (s.code(), netd::client::transport_failure(s))
    {
        return anyhow!("{what}: {t}");
    }
    match s.code() {
        Code::Unavailable if s.message().is_empty() => anyhow!("{what}: netd is unavailable"),
        Code::Cancelled if s.message().contains("Timeout expired") => {
            anyhow!("{what}: netd did not answer in time (--timeout)")
        }
        Code::Unknown | Code::Internal => anyhow!("{what}: netd error: {}", s.message()),
        _ => anyhow!("{what}: {}", s.message()),
    }
}

fn to_proto_duration(
    flag: &str,
    d: Option<Duration>,
) -> anyhow::Result<Option<prost_types::Duration>> {
    d.map(prost_types::Duration::try_from)
        .transpose()
        .map_err(|_| anyhow!("{flag} is too large"))
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Where and how to reach netd, from the global flags.
struct Dial {
    control: Option<ControlAddr>,
    opts: DialOptions,
}

impl Dial {
    fn from_cli(cli: &Cli) -> anyhow::Result<Dial> {
        let read = |flag: &str,
                    p: &Option<std::path::PathBuf>|
         -> anyhow::Result<Option<Vec<u8>>> {
            p.as_ref()
                .map(|p| {
                    std::fs::read(p).with_context(|| format!("cannot read {flag} {}", p.display()))
                })
                .transpose()
        };
        let tls = match (&cli.cacert, &cli.cert) {
            (None, None) => None,
            _ => Some(TlsFiles {
                ca_pem: read("--cacert", &cli.cacert)?,
                cert_pem: read("--cert", &cli.cert)?,
                key_pem: read("--key", &cli.key)?,
            }),
        };
        Ok(Dial {
            control: cli.control.clone(),
            opts: DialOptions {
                connect_timeout: cli.connect_timeout,
                request_timeout: Some(cli.timeout),
                tls,
            },
        })
    }

    /// A client; `streaming` calls get no per-request deadline.
    async fn client(&self, streaming: bool) -> anyhow::Result<ControlClient<Channel>> {
        let mut opts = self.opts.clone();
        if streaming {
            opts.request_timeout = None;
        }
        if let Some(a) = &self.control {
            return control_client_with(a, &opts).await;
        }
        let mut first_error = None;
        for addr in dial_candidates() {
            let attempt = async {
                if addr == default_control_addr() {
                    if let Some(dir) = private_dir_of(&addr) {
                        if dir.exists() {
                            check_private_dir(&dir).map_err(|e| anyhow!("{e}"))?;
                        }
                    }
                }
                control_client_with(&addr, &opts).await
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| anyhow!("no control address to try")))
    }
}

fn private_dir_of(addr: &ControlAddr) -> Option<std::path::PathBuf> {
    match addr {
        ControlAddr::Unix(p) if p.parent() == Some(netd::addr::private_dir().as_path()) => {
            Some(netd::addr::private_dir())
        }
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dial = Dial::from_cli(&cli)?;
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
                netd::client::diagnose_tls(hostport, tls, dial.opts.connect_timeout).await
            {
                return Err(anyhow!(
                    "TLS with netd at {hostport} failed: {}",
                    netd::client::with_hint(&why, true)
                ));
            }
        }
    }
    Err(e)
}

async fn run_command(cli: Cli, dial: &Dial) -> anyhow::Result<()> {
    let json = cli.output == Format::Json;
    match cli.command {
        Command::Probe {
            protocol,
            addr,
            message,
            timeout,
        } => {
            let target = parse_listen_addr(&addr)?;
            let reply = match protocol {
                ProbeProtocol::Tcp => probe::tcp(target, message.as_bytes(), timeout).await,
                ProbeProtocol::Udp => probe::udp(target, message.as_bytes(), timeout).await,
            }
            .with_context(|| {
                format!(
                    "probe {} {addr}",
                    if protocol == ProbeProtocol::Tcp {
                        "tcp"
                    } else {
                        "udp"
                    }
                )
            })?;
            let text = String::from_utf8_lossy(&reply.bytes);
            if json {
                print_json(&serde_json::json!({
                    "protocol": if protocol == ProbeProtocol::Tcp { "tcp" } else { "udp" },
                    "addr": target.to_string(),
                    "sent_bytes": message.len(),
                    "reply": text,
                    "reply_bytes": reply.bytes.len(),
                    "rtt_ms": reply.rtt.as_secs_f64() * 1000.0,
                }));
            } else {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
            }
            return Ok(());
        }
        Command::Start(kind) => {
            let (common, kind) = match kind {
                StartKind::TcpEcho {
                    common,
                    prefix,
                    max_connections,
                    idle_timeout,
                } => {
                    let idle_timeout = idle_timeout
                        .map(prost_types::Duration::try_from)
                        .transpose()
                        .map_err(|_| anyhow!("--idle-timeout is too large"))?;
                    let spec = proto::TcpEchoSpec {
                        listen: common.listen.clone(),
                        prefix,
                        max_connections: max_connections.unwrap_or(0),
                        idle_timeout,
                    };
                    (common, Kind::TcpEcho(spec))
                }
                StartKind::Proxy {
                    common,
                    upstreams,
                    preconnect,
                    connect_timeout,
                    idle_timeout,
                    max_connections,
                    upstream_backoff,
                    resolve_interval,
                } => {
                    let spec = proto::ProxySpec {
                        listen: common.listen.clone(),
                        upstreams,
                        preconnect,
                        connect_timeout: to_proto_duration("--connect-timeout", connect_timeout)?,
                        idle_timeout: to_proto_duration("--idle-timeout", idle_timeout)?,
                        max_connections: max_connections.unwrap_or(0),
                        upstream_backoff: to_proto_duration(
                            "--upstream-backoff",
                            upstream_backoff,
                        )?,
                        resolve_interval: to_proto_duration(
                            "--resolve-interval",
                            resolve_interval,
                        )?,
                    };
                    (common, Kind::Proxy(spec))
                }
                StartKind::Http {
                    common,
                    max_body,
                    header_timeout,
                    request_timeout,
                    max_connections,
                    token,
                    token_file,
                    rate_limit,
                    body_budget,
                    max_streams,
                    max_header_bytes,
                    idle_timeout,
                    rate_limit_ipv6_prefix,
                } => {
                    let token = match (token, token_file) {
                        (Some(t), _) => t,
                        (None, Some(path)) => std::fs::read_to_string(&path)
                            .with_context(|| {
                                format!("cannot read the token file {}", path.display())
                            })?
                            .trim()
                            .to_string(),
                        (None, None) => String::new(),
                    };
                    let spec = proto::HttpSpec {
                        listen: common.listen.clone(),
                        max_body_bytes: max_body.unwrap_or(0),
                        header_read_timeout: to_proto_duration("--header-timeout", header_timeout)?,
                        request_timeout: to_proto_duration("--request-timeout", request_timeout)?,
                        max_connections: max_connections.unwrap_or(0),
                        token,
                        rate_limit: rate_limit.unwrap_or_default(),
                        body_budget_bytes: body_budget.unwrap_or(0),
                        max_streams: max_streams.unwrap_or(0),
                        max_header_bytes: max_header_bytes.unwrap_or(0),
                        idle_timeout: to_proto_duration("--idle-timeout", idle_timeout)?,
                        rate_limit_ipv6_prefix: rate_limit_ipv6_prefix.unwrap_or(0),
                    };
                    (common, Kind::Http(spec))
                }
                StartKind::Sniffer {
                    name,
                    interface,
                    filter,
                    pcap,
                    pcap_max_bytes,
                    pcap_max_files,
                    max_flows,
                    scan_ports,
                    scan_window,
                    syn_rate,
                    labels,
                } => {
                    // Sent as given: the daemon resolves a file name in
                    // its capture_dir, not in this directory.
                    let pcap_path = pcap.unwrap_or_default();
                    let spec = proto::SnifferSpec {
                        interface,
                        filter,
                        pcap_path,
                        pcap_max_bytes: pcap_max_bytes.unwrap_or(0),
                        pcap_max_files: pcap_max_files.unwrap_or(0),
                        max_flows: max_flows.unwrap_or(0),
                        port_scan_ports: scan_ports.unwrap_or(0),
                        port_scan_window: to_proto_duration("--scan-window", scan_window)?,
                        syn_rate: syn_rate.unwrap_or(0),
                    };
                    let common = Common {
                        name,
                        listen: String::new(),
                        labels,
                    };
                    (common, Kind::Sniffer(spec))
                }
                StartKind::UdpEcho {
                    common,
                    prefix,
                    allow_privileged_sources,
                    rate_limit,
                    max_sources,
                } => {
                    let spec = proto::UdpEchoSpec {
                        listen: common.listen.clone(),
                        prefix,
                        allow_privileged_sources,
                        rate_limit: rate_limit.unwrap_or_default(),
                        max_sources: max_sources.unwrap_or(0),
                    };
                    (common, Kind::UdpEcho(spec))
                }
            };
            let mut client = dial.client(false).await?;
            let req = proto::StartListenerRequest {
                name: common.name.clone(),
                spec: Some(proto::ListenerSpec { kind: Some(kind) }),
                labels: common.labels.into_iter().collect::<HashMap<_, _>>(),
            };
            let what = format!("cannot start '{}'", common.name);
            let l = reply_listener(&what, client.start_listener(req).await, |r| r.listener)?;
            if json {
                print_json(&output::listener_json(&l));
            } else {
                println!(
                    "started {} ({}) on {}",
                    escape::escape(&l.name),
                    l.kind().slug(),
                    escape::escape(&l.bound_addr)
                );
            }
        }
        Command::Stop { name } => {
            let mut client = dial.client(false).await?;
            let what = format!("cannot stop '{name}'");
            let req = proto::StopListenerRequest { name: name.clone() };
            let l = reply_listener(&what, client.stop_listener(req).await, |r| r.listener)?;
            if json {
                print_json(&output::listener_json(&l));
            } else {
                let s = l.stats.clone().unwrap_or_default();
                println!(
                    "stopped {} ({}; {} connections, {} datagrams, {} in, {} out)",
                    escape::escape(&l.name),
                    l.kind().slug(),
                    s.connections_total,
                    s.datagrams_in,
                    output::bytes(s.bytes_in),
                    output::bytes(s.bytes_out)
                );
            }
        }
        Command::List => {
            let mut client = dial.client(false).await?;
            let ls = client
                .list_listeners(proto::ListListenersRequest {})
                .await
                .map_err(|s| status_line("cannot list listeners", &s))?
                .into_inner()
                .listeners;
            if json {
                let items: Vec<_> = ls.iter().map(output::listener_json).collect();
                print_json(&serde_json::json!({ "listeners": items }));
            } else {
                output::list_table(&ls);
            }
        }
        Command::Stats {
            name,
            watch,
            interval,
            count,
        } => {
            let mut client = dial.client(watch).await?;
            let what = match &name {
                Some(n) => format!("cannot get stats of '{n}'"),
                None => "cannot get stats".to_string(),
            };
            let name = name.unwrap_or_default();
            if !watch {
                let sample = client
                    .get_stats(proto::GetStatsRequest { name })
                    .await
                    .map_err(|s| status_line(&what, &s))?
                    .into_inner();
                if json {
                    println!("{}", stats::sample_json(&sample));
                } else {
                    stats::print_table(&sample);
                }
                return Ok(());
            }
            let req = proto::WatchStatsRequest {
                name,
                interval: Some(
                    prost_types::Duration::try_from(interval)
                        .map_err(|_| anyhow!("--interval is too large"))?,
                ),
            };
            let mut stream = client
                .watch_stats(req)
                .await
                .map_err(|s| status_line(&what, &s))?
                .into_inner();
            let mut watcher = stats::Watcher::new(interval);
            let mut seen = 0u64;
            while let Some(sample) = stream
                .message()
                .await
                .map_err(|s| status_line("stats stream", &s))?
            {
                if json {
                    println!("{}", stats::sample_json(&sample));
                } else {
                    watcher.show(&sample);
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        Command::Sniff { name, count } => {
            let mut client = dial.client(true).await?;
            let mut stream = client
                .watch_packets(proto::WatchPacketsRequest { name: name.clone() })
                .await
                .map_err(|s| status_line(&format!("cannot sniff '{name}'"), &s))?
                .into_inner();
            let mut seen = 0u64;
            while let Some(p) = stream
                .message()
                .await
                .map_err(|s| status_line("packet stream", &s))?
            {
                if json {
                    println!("{}", stats::packet_json(&p));
                } else {
                    println!("{}", stats::packet_line(&p));
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        Command::Events { name } => {
            let mut client = dial.client(true).await?;
            let mut stream = client
                .watch_events(proto::WatchEventsRequest {
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(|s| status_line("cannot watch events", &s))?
                .into_inner();
            while let Some(ev) = stream
                .message()
                .await
                .map_err(|s| status_line("event stream", &s))?
            {
                if json {
                    println!("{}", stats::event_json(&ev));
                } else {
                    println!("{}", stats::event_line(&ev));
                }
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
            }
        }
        Command::Status { name } => {
            let mut client = dial.client(false).await?;
            let what = format!("cannot get '{name}'");
            let req = proto::GetListenerRequest { name: name.clone() };
            let l = reply_listener(&what, client.get_listener(req).await, |r| r.listener)?;
            if json {
                print_json(&output::listener_json(&l));
            } else {
                output::status_block(&l);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            ExitCode::FAILURE
        }
    }
}
