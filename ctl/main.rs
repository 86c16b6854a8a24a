//! `netctl`: the command-line client of netd's gRPC control plane.
//!
//! Each subcommand is one or two RPCs; output is a table for people or JSON
//! (`-o json`) for programs. Errors print one line, `netctl: ...`, on stderr
//! and exit 1 (2 for usage errors).

mod escape;
mod output;
mod probe;
mod render;
mod stats;

use render::{out, outln};

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
/// Exit status: 0 success; 1 refused by netd (or a probe got no answer);
/// 2 usage (bad flags or input); 3 netd unreachable.
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
    /// Change a running listener: only the options given change.
    ///
    /// Settings that can change on the same socket do so in place (new
    /// connections get them; open ones finish under the old); a new
    /// --listen is a graceful replace (the new socket is bound first). The
    /// output says which it was.
    Update(UpdateArgs),
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
    /// Print the running listeners as a file `netctl apply -f` accepts.
    ///
    /// HTTP tokens are written as "<redacted>", which apply reads as
    /// "keep the current token".
    Export,
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
    /// Do not keep this listener in netd's state file: it is gone after
    /// netd restarts.
    #[arg(long)]
    ephemeral: bool,
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
        /// Do not keep this listener in netd's state file.
        #[arg(long)]
        ephemeral: bool,
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

/// `netctl update NAME [options]`: each option replaces one field of the
/// listener's current spec; an option the listener's kind does not have
/// is an error.
#[derive(Debug, Args)]
struct UpdateArgs {
    /// Listener name.
    name: String,
    /// New address to bind (a graceful replace).
    #[arg(short, long, value_name = "ADDR")]
    listen: Option<String>,
    /// Replace all labels with these, key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Remove every label.
    #[arg(long, conflicts_with = "labels")]
    clear_labels: bool,
    /// tcp-echo, udp-echo: prefix of every reply.
    #[arg(long)]
    prefix: Option<String>,
    /// tcp-echo, proxy, http: concurrent connections.
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// tcp-echo, proxy, http: idle timeout.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// proxy: the upstreams (repeat; replaces the list).
    #[arg(short, long = "upstream", value_name = "ADDR")]
    upstreams: Vec<String>,
    /// proxy: warm connections per upstream.
    #[arg(long, value_name = "N")]
    preconnect: Option<u32>,
    /// proxy: upstream connect timeout.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// proxy: how long a failed upstream is skipped.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    upstream_backoff: Option<Duration>,
    /// http, udp-echo: rate limit (N/s, N/m, N/h; udp-echo also "off").
    #[arg(long, value_name = "RATE")]
    rate_limit: Option<String>,
    /// http: bearer token ("" for none).
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    token: Option<String>,
    /// http: read the bearer token from this file.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// http: largest request body in bytes.
    #[arg(long, value_name = "BYTES")]
    max_body: Option<u64>,
    /// http: time to send a request's headers.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    header_timeout: Option<Duration>,
    /// http: time a request has to complete.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// http: request bodies buffered at once, in bytes.
    #[arg(long, value_name = "BYTES")]
    body_budget: Option<u64>,
    /// http: concurrent HTTP/2 streams per connection.
    #[arg(long, value_name = "N")]
    max_streams: Option<u32>,
    /// http: largest request header section in bytes.
    #[arg(long, value_name = "BYTES")]
    max_header_bytes: Option<u32>,
    /// udp-echo: sources the rate limit tracks.
    #[arg(long, value_name = "N")]
    max_sources: Option<u32>,
    /// sniffer: capture filter.
    #[arg(short, long, value_name = "EXPR")]
    filter: Option<String>,
    /// sniffer: flow table size.
    #[arg(long, value_name = "N")]
    max_flows: Option<u32>,
    /// sniffer: port-scan alert threshold (distinct ports).
    #[arg(long, value_name = "N")]
    scan_ports: Option<u32>,
    /// sniffer: port-scan alert window.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    scan_window: Option<Duration>,
    /// sniffer: SYN-rate alert threshold (SYNs per second).
    #[arg(long, value_name = "N")]
    syn_rate: Option<u32>,
}

impl UpdateArgs {
    /// Apply the options given to `spec`.
    fn patch(&self, spec: &mut proto::ListenerSpec) -> anyhow::Result<()> {
        let Some(kind) = spec.kind.as_mut() else {
            return Err(anyhow!("netd sent the listener without a spec"));
        };
        let slug = match kind {
            Kind::TcpEcho(_) => "tcp-echo",
            Kind::UdpEcho(_) => "udp-echo",
            Kind::Proxy(_) => "proxy",
            Kind::Http(_) => "http",
            Kind::Sniffer(_) => "sniffer",
        };
        let na = |flag: &str| anyhow!("{flag} does not apply to a {slug} listener");
        let dur = |flag: &str, d: Option<Duration>| to_proto_duration(flag, d);
        if let Some(l) = &self.listen {
            match kind {
                Kind::TcpEcho(s) => s.listen = l.clone(),
                Kind::UdpEcho(s) => s.listen = l.clone(),
                Kind::Proxy(s) => s.listen = l.clone(),
                Kind::Http(s) => s.listen = l.clone(),
                Kind::Sniffer(_) => return Err(na("--listen")),
            }
        }
        if let Some(p) = &self.prefix {
            match kind {
                Kind::TcpEcho(s) => s.prefix = p.clone(),
                Kind::UdpEcho(s) => s.prefix = p.clone(),
                _ => return Err(na("--prefix")),
            }
        }
        if let Some(n) = self.max_connections {
            match kind {
                Kind::TcpEcho(s) => s.max_connections = n,
                Kind::Proxy(s) => s.max_connections = n,
                Kind::Http(s) => s.max_connections = n,
                _ => return Err(na("--max-connections")),
            }
        }
        if self.idle_timeout.is_some() {
            let d = dur("--idle-timeout", self.idle_timeout)?;
            match kind {
                Kind::TcpEcho(s) => s.idle_timeout = d,
                Kind::Proxy(s) => s.idle_timeout = d,
                Kind::Http(s) => s.idle_timeout = d,
                _ => return Err(na("--idle-timeout")),
            }
        }
        if let Some(r) = &self.rate_limit {
            match kind {
                Kind::UdpEcho(s) => s.rate_limit = r.clone(),
                Kind::Http(s) => s.rate_limit = r.clone(),
                _ => return Err(na("--rate-limit")),
            }
        }
        match kind {
            Kind::Proxy(s) => {
                if !self.upstreams.is_empty() {
                    s.upstreams = self.upstreams.clone();
                }
                if let Some(n) = self.preconnect {
                    s.preconnect = n;
                }
                if self.connect_timeout.is_some() {
                    s.connect_timeout = dur("--connect-timeout", self.connect_timeout)?;
                }
                if self.upstream_backoff.is_some() {
                    s.upstream_backoff = dur("--upstream-backoff", self.upstream_backoff)?;
                }
            }
            _ if !self.upstreams.is_empty() => return Err(na("--upstream")),
            _ if self.preconnect.is_some() => return Err(na("--preconnect")),
            _ if self.connect_timeout.is_some() => return Err(na("--connect-timeout")),
            _ if self.upstream_backoff.is_some() => return Err(na("--upstream-backoff")),
            _ => {}
        }
        match kind {
            Kind::Http(s) => {
                if let Some(t) = &self.token {
                    s.token = t.clone();
                }
                if let Some(path) = &self.token_file {
                    s.token = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read the token file {}", path.display()))?
                        .trim()
                        .to_string();
                }
                if let Some(n) = self.max_body {
                    s.max_body_bytes = n;
                }
                if self.header_timeout.is_some() {
                    s.header_read_timeout = dur("--header-timeout", self.header_timeout)?;
                }
                if self.request_timeout.is_some() {
                    s.request_timeout = dur("--request-timeout", self.request_timeout)?;
                }
                if let Some(n) = self.body_budget {
                    s.body_budget_bytes = n;
                }
                if let Some(n) = self.max_streams {
                    s.max_streams = n;
                }
                if let Some(n) = self.max_header_bytes {
                    s.max_header_bytes = n;
                }
            }
            _ if self.token.is_some() || self.token_file.is_some() => {
                return Err(na("--token"));
            }
            _ if self.max_body.is_some() => return Err(na("--max-body")),
            _ if self.header_timeout.is_some() => return Err(na("--header-timeout")),
            _ if self.request_timeout.is_some() => return Err(na("--request-timeout")),
            _ if self.body_budget.is_some() => return Err(na("--body-budget")),
            _ if self.max_streams.is_some() => return Err(na("--max-streams")),
            _ if self.max_header_bytes.is_some() => return Err(na("--max-header-bytes")),
            _ => {}
        }
        match kind {
            Kind::UdpEcho(s) => {
                if let Some(n) = self.max_sources {
                    s.max_sources = n;
                }
            }
            _ if self.max_sources.is_some() => return Err(na("--max-sources")),
            _ => {}
        }
        match kind {
            Kind::Sniffer(s) => {
                if let Some(f) = &self.filter {
                    s.filter = f.clone();
                }
                if let Some(n) = self.max_flows {
                    s.max_flows = n;
                }
                if let Some(n) = self.scan_ports {
                    s.port_scan_ports = n;
                }
                if self.scan_window.is_some() {
                    s.port_scan_window = dur("--scan-window", self.scan_window)?;
                }
                if let Some(n) = self.syn_rate {
                    s.syn_rate = n;
                }
            }
            _ if self.filter.is_some() => return Err(na("--filter")),
            _ if self.max_flows.is_some() => return Err(na("--max-flows")),
            _ if self.scan_ports.is_some() => return Err(na("--scan-ports")),
            _ if self.scan_window.is_some() => return Err(na("--scan-window")),
            _ if self.syn_rate.is_some() => return Err(na("--syn-rate")),
            _ => {}
        }
        Ok(())
    }

    /// The labels to set, if any option asks to.
    fn labels(&self) -> Option<HashMap<String, String>> {
        if self.clear_labels {
            Some(HashMap::new())
        } else if self.labels.is_empty() {
            None
        } else {
            Some(self.labels.iter().cloned().collect())
        }
    }
}

/// The listeners of an apply file, as ListenerEntry messages.
fn read_apply_file(path: &std::path::Path) -> anyhow::Result<Vec<proto::ListenerEntry>> {
    let (text, source) = if path.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .context("cannot read standard input")?;
        (t, "<stdin>".to_string())
    } else {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        (t, path.display().to_string())
    };
    // Before any connection exists, so the blocking parse (an upstream
    // name may be resolved) holds up nothing else.
    let listeners = netd::config::parse_listeners(&text, &source).map_err(|e| anyhow!("{e}"))?;
    Ok(listeners
        .into_iter()
        .map(|l| proto::ListenerEntry {
            name: l.name,
            spec: Some(l.spec),
            labels: l.labels,
        })
        .collect())
}

fn plan_action(a: proto::PlanAction) -> &'static str {
    match a {
        proto::PlanAction::Unspecified => "unspecified",
        proto::PlanAction::Create => "create",
        proto::PlanAction::Update => "update",
        proto::PlanAction::Replace => "replace",
        proto::PlanAction::Delete => "delete",
        proto::PlanAction::Unchanged => "unchanged",
    }
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
        return render::unreachable(anyhow!("{what}: {t}"));
    }
    match s.code() {
        Code::Unavailable if s.message().is_empty() => {
            render::unreachable(anyhow!("{what}: netd is unavailable"))
        }
        Code::Cancelled if s.message().contains("Timeout expired") => {
            render::unreachable(anyhow!("{what}: netd did not answer in time (--timeout)"))
        }
        Code::Unknown | Code::Internal => {
            render::refused(anyhow!("{what}: netd error: {}", s.message()))
        }
        _ => render::refused(anyhow!("{what}: {}", s.message())),
    }
}

fn to_proto_duration(
    flag: &str,
    d: Option<Duration>,
) -> anyhow::Result<Option<prost_types::Duration>> {
    d.map(prost_types::Duration::try_from)
        .transpose()
        .map_err(|_| render::usage(anyhow!("{flag} is too large")))
}

fn print_json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
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

    /// A client; `streaming` calls get no per-request deadline. Failing to
    /// reach netd is classed "unreachable" (exit 3).
    async fn client(&self, streaming: bool) -> anyhow::Result<ControlClient<Channel>> {
        self.connect(streaming).await.map_err(render::unreachable)
    }

    async fn connect(&self, streaming: bool) -> anyhow::Result<ControlClient<Channel>> {
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
    let dial = Dial::from_cli(&cli).map_err(render::usage)?;
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
                return Err(render::unreachable(anyhow!(
                    "TLS with netd at {hostport} failed: {}",
                    netd::client::with_hint(&why, true)
                )));
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
            let target = parse_listen_addr(&addr).map_err(render::usage)?;
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
                out!("{text}");
                if !text.ends_with('\n') {
                    outln!();
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
                    let idle_timeout = to_proto_duration("--idle-timeout", idle_timeout)?;
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
                            })
                            .map_err(render::usage)?
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
                    ephemeral,
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
                        ephemeral,
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
                ephemeral: common.ephemeral,
            };
            let what = format!("cannot start '{}'", common.name);
            let l = reply_listener(&what, client.start_listener(req).await, |r| r.listener)?;
            if json {
                print_json(&output::listener_json(&l));
            } else {
                outln!(
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
                outln!(
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
        Command::Update(args) => {
            let mut client = dial.client(false).await?;
            let what = format!("cannot update '{}'", args.name);
            let req = proto::GetListenerRequest {
                name: args.name.clone(),
            };
            let cur = reply_listener(&what, client.get_listener(req).await, |r| r.listener)?;
            let mut spec = cur.spec.unwrap_or_default();
            args.patch(&mut spec)
                .map_err(|e| render::usage(anyhow!("{what}: {e}")))?;
            let labels = args.labels();
            let req = proto::UpdateListenerRequest {
                name: args.name.clone(),
                spec: Some(spec),
                set_labels: labels.is_some(),
                labels: labels.unwrap_or_default(),
            };
            let r = client
                .update_listener(req)
                .await
                .map_err(|s| status_line(&what, &s))?
                .into_inner();
            let how = match r.action() {
                proto::UpdateAction::Unchanged => "unchanged",
                proto::UpdateAction::InPlace => "in_place",
                proto::UpdateAction::Replaced => "replaced",
                proto::UpdateAction::Unspecified => "unspecified",
            };
            let unchanged = r.action() == proto::UpdateAction::Unchanged;
            let l = r.listener.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({
                    "action": how,
                    "changed": r.changed,
                    "listener": output::listener_json(&l),
                }));
            } else if unchanged {
                outln!("{}: unchanged", escape::escape(&l.name));
            } else {
                outln!(
                    "updated {} ({}): {} on {}",
                    escape::escape(&l.name),
                    how.replace('_', " "),
                    escape::escape(&r.changed),
                    escape::escape(&l.bound_addr)
                );
            }
        }
        Command::Drain { name, timeout } => {
            // No request deadline: the call returns when the drain ends.
            let mut client = dial.client(true).await?;
            let what = format!("cannot drain '{name}'");
            let req = proto::DrainListenerRequest {
                name: name.clone(),
                timeout: to_proto_duration("--timeout", Some(timeout))?,
            };
            let r = client
                .drain_listener(req)
                .await
                .map_err(|s| status_line(&what, &s))?
                .into_inner();
            let l = r.listener.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({
                    "connections_closed": r.connections_closed,
                    "listener": output::listener_json(&l),
                }));
            } else {
                let s = l.stats.clone().unwrap_or_default();
                outln!(
                    "drained {} ({}; {} connections served, {} closed at the timeout)",
                    escape::escape(&l.name),
                    l.kind().slug(),
                    s.connections_total,
                    r.connections_closed
                );
            }
        }
        Command::Apply {
            file,
            dry_run,
            prune,
        } => {
            let listeners = read_apply_file(&file).map_err(render::usage)?;
            let mut client = dial.client(false).await?;
            let r = client
                .apply_listeners(proto::ApplyListenersRequest {
                    listeners,
                    prune,
                    dry_run,
                })
                .await
                .map_err(|s| status_line("cannot apply", &s))?
                .into_inner();
            let failed = r.plan.iter().find(|i| !i.error.is_empty()).cloned();
            if json {
                let items: Vec<_> = r
                    .plan
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "name": i.name,
                            "action": plan_action(i.action()),
                            "kind": i.kind().slug(),
                            "detail": i.detail,
                            "error": i.error,
                        })
                    })
                    .collect();
                print_json(&serde_json::json!({
                    "dry_run": dry_run,
                    "applied": r.applied,
                    "plan": items,
                }));
            } else {
                let rows: Vec<Vec<String>> = r
                    .plan
                    .iter()
                    .map(|i| {
                        let mut detail = i.detail.clone();
                        if !i.error.is_empty() {
                            detail = format!("FAILED: {}", i.error);
                        }
                        vec![
                            plan_action(i.action()).to_string(),
                            i.name.clone(),
                            i.kind().slug().to_string(),
                            detail,
                        ]
                    })
                    .collect();
                output::table(&["ACTION", "NAME", "KIND", "DETAIL"], &rows);
                if dry_run {
                    outln!("dry run: nothing changed");
                }
            }
            if let Some(f) = failed {
                return Err(render::refused(anyhow!(
                    "apply stopped at '{}': {}",
                    f.name,
                    f.error
                )));
            }
        }
        Command::Export => {
            let mut client = dial.client(false).await?;
            let ls = client
                .list_listeners(proto::ListListenersRequest {})
                .await
                .map_err(|s| status_line("cannot list listeners", &s))?
                .into_inner()
                .listeners;
            let entries: Vec<netd::export::ExportListener> = ls.iter().map(Into::into).collect();
            let text = netd::export::listeners_to_toml(&entries)
                .map_err(|e| render::refused(anyhow!("cannot export: {e}")))?;
            out!("{text}");
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
                    outln!("{}", stats::sample_json(&sample));
                } else {
                    stats::print_table(&sample);
                }
                return Ok(());
            }
            let req = proto::WatchStatsRequest {
                name,
                interval: Some(
                    prost_types::Duration::try_from(interval)
                        .map_err(|_| render::usage(anyhow!("--interval is too large")))?,
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
                    outln!("{}", stats::sample_json(&sample));
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
                    outln!("{}", stats::packet_json(&p));
                } else {
                    outln!("{}", stats::packet_line(&p));
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
                    outln!("{}", stats::event_json(&ev));
                } else {
                    outln!("{}", stats::event_line(&ev));
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
            ExitCode::from(render::exit_code(&e))
        }
    }
}
