//! `netctl update NAME [options]`: fetch the listener's spec, change the
//! fields given, send it back.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;
use netd::proto::{self, listener_spec::Kind};

use super::*;
use crate::dial::{reply_listener, status_line};
use crate::render::{self, outln};
use crate::{escape, output};

/// `netctl update NAME [options]`: each option replaces one field of the
/// listener's current spec; an option the listener's kind does not have
/// is an error.
#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
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
    /// proxy: upstream connect timeout (--connect-timeout is still
    /// accepted here; netctl's own goes before the command).
    #[arg(long, alias = "connect-timeout", value_name = "DUR", value_parser = humantime::parse_duration)]
    upstream_connect_timeout: Option<Duration>,
    /// proxy: how long a failed upstream is skipped.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    upstream_backoff: Option<Duration>,
    /// proxy: resolve upstreams given by host name again this often.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    resolve_interval: Option<Duration>,
    /// http, udp-echo, udp-proxy: rate limit (N/s, N/m, N/h; the UDP kinds
    /// per source IP, also "off").
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
    /// http: IPv6 clients share a rate-limit bucket per prefix of this
    /// length (1-128).
    #[arg(long, value_name = "BITS")]
    rate_limit_ipv6_prefix: Option<u32>,
    /// udp-echo, udp-proxy: answer sources on ports below 1024 (alone:
    /// true; "false" turns it off).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    allow_privileged_sources: Option<bool>,
    /// udp-echo, udp-proxy: sources the rate limit tracks.
    #[arg(long, value_name = "N")]
    max_sources: Option<u32>,
    /// udp-proxy: clients tracked at once (at most netd's descriptor budget).
    #[arg(long, value_name = "N")]
    max_clients: Option<u32>,
    /// sniffer: interface to capture on (a replace).
    #[arg(short, long, value_name = "IF")]
    interface: Option<String>,
    /// sniffer: pcap file in netd's capture_dir ("" stops writing one).
    #[arg(long, value_name = "PATH")]
    pcap: Option<String>,
    /// sniffer: rotate the pcap file at this many bytes.
    #[arg(long, value_name = "BYTES")]
    pcap_max_bytes: Option<u64>,
    /// sniffer: rotated pcap files kept.
    #[arg(long, value_name = "N")]
    pcap_max_files: Option<u32>,
    /// udp-proxy: clients of one source IP (IPv6: one /64) at once.
    #[arg(long, value_name = "N")]
    max_clients_per_source: Option<u32>,
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
    /// http, proxy (and, writing nothing either way, the echo kinds): write
    /// access-log lines, true or false.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    access_log: Option<bool>,
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
            Kind::UdpProxy(_) => "udp-proxy",
        };
        let na = |flag: &str| anyhow!("{flag} does not apply to a {slug} listener");
        let dur = |flag: &str, d: Option<Duration>| to_proto_duration(flag, d);
        if let Some(l) = &self.listen {
            match kind {
                Kind::TcpEcho(s) => s.listen = l.clone(),
                Kind::UdpEcho(s) => s.listen = l.clone(),
                Kind::Proxy(s) => s.listen = l.clone(),
                Kind::Http(s) => s.listen = l.clone(),
                Kind::UdpProxy(s) => s.listen = l.clone(),
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
                Kind::UdpProxy(s) => s.idle_timeout = d,
                _ => return Err(na("--idle-timeout")),
            }
        }
        if let Some(on) = self.access_log {
            match kind {
                Kind::TcpEcho(s) => s.access_log = Some(on),
                Kind::UdpEcho(s) => s.access_log = Some(on),
                Kind::Proxy(s) => s.access_log = Some(on),
                Kind::Http(s) => s.access_log = Some(on),
                Kind::Sniffer(_) | Kind::UdpProxy(_) => return Err(na("--access-log")),
            }
        }
        if let Some(r) = &self.rate_limit {
            match kind {
                Kind::UdpEcho(s) => s.rate_limit = r.clone(),
                Kind::UdpProxy(s) => s.rate_limit = r.clone(),
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
                if self.upstream_connect_timeout.is_some() {
                    s.connect_timeout =
                        dur("--upstream-connect-timeout", self.upstream_connect_timeout)?;
                }
                if self.upstream_backoff.is_some() {
                    s.upstream_backoff = dur("--upstream-backoff", self.upstream_backoff)?;
                }
                if self.resolve_interval.is_some() {
                    s.resolve_interval = dur("--resolve-interval", self.resolve_interval)?;
                }
            }
            Kind::UdpProxy(s) => {
                match self.upstreams.as_slice() {
                    [] => {}
                    [one] => s.upstream = one.clone(),
                    _ => return Err(anyhow!("a udp-proxy has one --upstream")),
                }
                if let Some(n) = self.max_clients {
                    s.max_clients = n;
                }
                if let Some(n) = self.max_clients_per_source {
                    s.max_clients_per_source = n;
                }
                if let Some(n) = self.max_sources {
                    s.max_sources = n;
                }
            }
            _ if !self.upstreams.is_empty() => return Err(na("--upstream")),
            _ if self.preconnect.is_some() => return Err(na("--preconnect")),
            _ if self.upstream_connect_timeout.is_some() => {
                return Err(na("--upstream-connect-timeout"));
            }
            _ if self.upstream_backoff.is_some() => return Err(na("--upstream-backoff")),
            _ if self.resolve_interval.is_some() => return Err(na("--resolve-interval")),
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
                if let Some(n) = self.rate_limit_ipv6_prefix {
                    s.rate_limit_ipv6_prefix = n;
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
            _ if self.rate_limit_ipv6_prefix.is_some() => {
                return Err(na("--rate-limit-ipv6-prefix"));
            }
            _ => {}
        }
        match kind {
            Kind::UdpEcho(s) => {
                if let Some(n) = self.max_sources {
                    s.max_sources = n;
                }
                if let Some(on) = self.allow_privileged_sources {
                    s.allow_privileged_sources = on;
                }
            }
            Kind::UdpProxy(s) => {
                if let Some(on) = self.allow_privileged_sources {
                    s.allow_privileged_sources = on;
                }
            }
            _ if self.max_sources.is_some() => return Err(na("--max-sources")),
            _ if self.allow_privileged_sources.is_some() => {
                return Err(na("--allow-privileged-sources"));
            }
            _ if self.max_clients.is_some() => return Err(na("--max-clients")),
            _ if self.max_clients_per_source.is_some() => {
                return Err(na("--max-clients-per-source"));
            }
            _ => {}
        }
        match kind {
            Kind::Sniffer(s) => {
                if let Some(i) = &self.interface {
                    s.interface = i.clone();
                }
                if let Some(p) = &self.pcap {
                    // As given: netd resolves it in its capture_dir.
                    s.pcap_path = p.clone();
                }
                if let Some(n) = self.pcap_max_bytes {
                    s.pcap_max_bytes = n;
                }
                if let Some(n) = self.pcap_max_files {
                    s.pcap_max_files = n;
                }
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
            _ if self.interface.is_some() => return Err(na("--interface")),
            _ if self.pcap.is_some() => return Err(na("--pcap")),
            _ if self.pcap_max_bytes.is_some() => return Err(na("--pcap-max-bytes")),
            _ if self.pcap_max_files.is_some() => return Err(na("--pcap-max-files")),
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

pub(crate) async fn run(ctx: &Ctx, args: UpdateArgs) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    /// Options of `start KIND` that `update` does not take, and why. A new
    /// start option fails `update_takes_every_start_option` until update
    /// takes it too or it is listed here.
    const NOT_UPDATABLE: &[(&str, &str)] = &[(
        "ephemeral",
        "whether netd keeps a listener in its state is decided at start",
    )];

    /// Options a kind's start has only through the shared arguments and
    /// refuses for that kind, as update does.
    const REFUSED_BY_START: &[(&str, &str)] = &[("udp-proxy", "access-log")];

    /// An empty spec of the kind `start`'s subcommand `slug` starts.
    fn spec_of(slug: &str) -> proto::ListenerSpec {
        let kind = match slug {
            "tcp-echo" => Kind::TcpEcho(Default::default()),
            "udp-echo" => Kind::UdpEcho(Default::default()),
            "proxy" => Kind::Proxy(Default::default()),
            "http" => Kind::Http(Default::default()),
            "sniffer" => Kind::Sniffer(Default::default()),
            "udp-proxy" => Kind::UdpProxy(Default::default()),
            other => panic!("start {other}: a kind this test does not know; add it to spec_of"),
        };
        proto::ListenerSpec { kind: Some(kind) }
    }

    /// A value `--long` accepts, by its value name.
    fn sample(long: &str, value_name: &str) -> String {
        match (long, value_name) {
            ("token-file", _) => concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
            (_, "N") => "7".into(),
            (_, "DUR") => "3s".into(),
            (_, "BYTES") => "4096".into(),
            (_, "BITS") => "48".into(),
            (_, "ADDR") => "127.0.0.1:9".into(),
            (_, "KEY=VALUE") => "k=v".into(),
            (_, "BOOL") => "true".into(),
            (_, "RATE") => "5/s".into(),
            (_, "EXPR") => "tcp".into(),
            (_, "IF") => "lo".into(),
            _ => "x".into(),
        }
    }

    /// Every option `netctl start KIND` has, `netctl update` accepts for a
    /// listener of that kind and writes into its spec (the README promises
    /// "any option start takes").
    #[test]
    fn update_takes_every_start_option() {
        let cli = crate::Cli::command();
        let start = cli.find_subcommand("start").expect("start");
        let update = cli.find_subcommand("update").expect("update");
        let update_longs: Vec<&str> = update
            .get_arguments()
            .filter_map(|a| a.get_long())
            .collect();
        let mut kinds = 0;
        for kind in start.get_subcommands() {
            kinds += 1;
            let slug = kind.get_name();
            for arg in kind.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if NOT_UPDATABLE.iter().any(|(n, _)| *n == long)
                    || REFUSED_BY_START.contains(&(slug, long))
                {
                    continue;
                }
                assert!(
                    update_longs.contains(&long),
                    "`netctl start {slug} --{long}` has no `netctl update --{long}`"
                );
                let mut argv = vec!["netctl".to_string(), "update".into(), "x".into()];
                argv.push(format!("--{long}"));
                if arg.get_action().takes_values() {
                    let name = arg
                        .get_value_names()
                        .and_then(|v| v.first())
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    argv.push(sample(long, &name));
                }
                let parsed =
                    crate::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                let crate::Command::Update(args) = parsed.command else {
                    panic!("{argv:?} is not an update")
                };
                let mut spec = spec_of(slug);
                args.patch(&mut spec)
                    .unwrap_or_else(|e| panic!("update of a {slug} with --{long}: {e}"));
                if long == "label" {
                    assert!(args.labels().is_some(), "--label sets no labels");
                } else {
                    assert_ne!(
                        spec,
                        spec_of(slug),
                        "update of a {slug} with {argv:?} left the spec unchanged"
                    );
                }
            }
        }
        assert!(kinds >= 6, "start has {kinds} kinds");
    }

    /// Options of update that no kind's start has are errors for a kind
    /// that lacks them, not silently ignored.
    #[test]
    fn an_option_of_another_kind_is_refused() {
        let parsed =
            crate::Cli::try_parse_from(["netctl", "update", "x", "--interface", "lo"]).unwrap();
        let crate::Command::Update(args) = parsed.command else {
            panic!("not an update")
        };
        let mut spec = spec_of("tcp-echo");
        let e = args.patch(&mut spec).unwrap_err();
        assert!(
            e.to_string()
                .contains("--interface does not apply to a tcp-echo"),
            "{e}"
        );
    }
}
