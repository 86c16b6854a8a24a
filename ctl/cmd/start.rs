//! `netctl start KIND NAME ...`: the kinds' arguments and the spec each
//! builds.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use netd::proto::{self, listener_spec::Kind};

use super::*;
use crate::dial::reply_listener;
use crate::render::{self, outln};
use crate::{escape, output};

#[derive(Debug, Args)]
pub(crate) struct Common {
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
    /// Write a line to netd's access log per request (http) or per closed
    /// connection (proxy): true or false (default true). The echo kinds
    /// write none either way.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    access_log: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StartKind {
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
        /// Upstream connect timeout (default 5s). --connect-timeout is
        /// still accepted here; netctl's own goes before the command.
        #[arg(long, alias = "connect-timeout", value_name = "DUR", value_parser = humantime::parse_duration)]
        upstream_connect_timeout: Option<Duration>,
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
        /// Time a client has to send a request's headers, and an HTTP/2
        /// connection its first request (default 10s).
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
        /// Close an HTTP/2 connection with no open stream this long once it
        /// has made a request, 1ms to 24h (default 60s).
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
    /// UDP proxy: each client's datagrams go to the upstream from a socket
    /// of their own, and the answers come back, except datagrams from
    /// netd's own UDP listeners, the upstream itself or ports that may
    /// answer back; add impairments with `netctl fault add`.
    UdpProxy {
        #[command(flatten)]
        common: Common,
        /// Upstream host:port.
        #[arg(short, long, value_name = "ADDR")]
        upstream: String,
        /// Clients tracked at once (default 1024); each holds a socket, so
        /// at most netd's descriptor budget (RLIMIT_NOFILE less a reserve
        /// for the control plane).
        #[arg(long, value_name = "N")]
        max_clients: Option<u32>,
        /// Clients of one source IP (IPv6: one /64) at once (default 64).
        #[arg(long, value_name = "N")]
        max_clients_per_source: Option<u32>,
        /// Forget a client idle this long (default 60s).
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        idle_timeout: Option<Duration>,
        /// Forward for sources on ports below 1024 (0, 7, 13, 17, 19 and 37
        /// never are; nor netd's own UDP addresses or the upstream itself).
        #[arg(long)]
        allow_privileged_sources: bool,
        /// Per-source-IP (IPv6: per /64) rate limit: N/s, N/m or N/h, the
        /// burst one period's worth, or "off" (the default).
        #[arg(long, value_name = "RATE")]
        rate_limit: Option<String>,
        /// Sources the rate limit tracks (default 16384).
        #[arg(long, value_name = "N")]
        max_sources: Option<u32>,
    },
}

pub(crate) async fn run(ctx: &Ctx, kind: StartKind) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
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
                access_log: common.access_log,
            };
            (common, Kind::TcpEcho(spec))
        }
        StartKind::Proxy {
            common,
            upstreams,
            preconnect,
            upstream_connect_timeout,
            idle_timeout,
            max_connections,
            upstream_backoff,
            resolve_interval,
        } => {
            let spec = proto::ProxySpec {
                listen: common.listen.clone(),
                upstreams,
                preconnect,
                connect_timeout: to_proto_duration(
                    "--upstream-connect-timeout",
                    upstream_connect_timeout,
                )?,
                idle_timeout: to_proto_duration("--idle-timeout", idle_timeout)?,
                max_connections: max_connections.unwrap_or(0),
                upstream_backoff: to_proto_duration("--upstream-backoff", upstream_backoff)?,
                resolve_interval: to_proto_duration("--resolve-interval", resolve_interval)?,
                access_log: common.access_log,
                faults: Vec::new(),
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
                    .with_context(|| format!("cannot read the token file {}", path.display()))
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
                access_log: common.access_log,
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
                access_log: None,
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
                access_log: common.access_log,
            };
            (common, Kind::UdpEcho(spec))
        }
        StartKind::UdpProxy {
            common,
            upstream,
            max_clients,
            max_clients_per_source,
            idle_timeout,
            allow_privileged_sources,
            rate_limit,
            max_sources,
        } => {
            if common.access_log.is_some() {
                return Err(render::usage(anyhow::anyhow!(
                    "--access-log does not apply to a udp-proxy listener (it logs no lines)"
                )));
            }
            let spec = proto::UdpProxySpec {
                listen: common.listen.clone(),
                upstream,
                max_clients: max_clients.unwrap_or(0),
                idle_timeout: to_proto_duration("--idle-timeout", idle_timeout)?,
                faults: Vec::new(),
                allow_privileged_sources,
                rate_limit: rate_limit.unwrap_or_default(),
                max_sources: max_sources.unwrap_or(0),
                max_clients_per_source: max_clients_per_source.unwrap_or(0),
            };
            (common, Kind::UdpProxy(spec))
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
    Ok(())
}
