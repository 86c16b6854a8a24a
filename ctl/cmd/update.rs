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
    /// proxy: upstream connect timeout.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// proxy: how long a failed upstream is skipped.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    upstream_backoff: Option<Duration>,
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
    /// udp-echo, udp-proxy: sources the rate limit tracks.
    #[arg(long, value_name = "N")]
    max_sources: Option<u32>,
    /// udp-proxy: clients tracked at once (at most netd's descriptor budget).
    #[arg(long, value_name = "N")]
    max_clients: Option<u32>,
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
                if self.connect_timeout.is_some() {
                    s.connect_timeout = dur("--connect-timeout", self.connect_timeout)?;
                }
                if self.upstream_backoff.is_some() {
                    s.upstream_backoff = dur("--upstream-backoff", self.upstream_backoff)?;
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
            Kind::UdpProxy(_) => {}
            _ if self.max_sources.is_some() => return Err(na("--max-sources")),
            _ if self.max_clients.is_some() => return Err(na("--max-clients")),
            _ if self.max_clients_per_source.is_some() => {
                return Err(na("--max-clients-per-source"));
            }
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
