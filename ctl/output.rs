//! Rendering listeners for people (tables, key/value blocks) and for
//! programs (JSON with the .proto's snake_case field names).
//!
//! Strings from the daemon are printed only through [`table`] and
//! [`status_block`], which pass each cell and value through
//! [`escape`](crate::escape::escape).

use crate::render::outln;
use std::time::{Duration, SystemTime};

use netd::proto::{self, listener_spec::Kind};
use serde_json::{Value, json};

use crate::escape::escape;

fn kind(l: &proto::Listener) -> &'static str {
    proto::ListenerKind::try_from(l.kind)
        .unwrap_or_default()
        .slug()
}

fn state(l: &proto::Listener) -> &'static str {
    proto::ListenerState::try_from(l.state)
        .unwrap_or_default()
        .slug()
}

fn started_at(l: &proto::Listener) -> Option<SystemTime> {
    l.started_at.and_then(|t| SystemTime::try_from(t).ok())
}

/// A duration field of the effective spec, as people write it ("5m").
fn dur(d: &Option<prost_types::Duration>) -> Value {
    d.and_then(|d| Duration::try_from(d).ok())
        .map_or(Value::Null, |d| {
            Value::String(humantime::format_duration(d).to_string())
        })
}

/// The spec in effect, as netd reports it (`effective_spec`: defaults
/// filled in, secrets redacted); from a netd that predates it, the spec as
/// requested. netctl knows none of netd's defaults.
fn spec_json(l: &proto::Listener) -> Value {
    let spec = l.effective_spec.as_ref().or(l.spec.as_ref());
    match spec.and_then(|s| s.kind.as_ref()) {
        Some(Kind::TcpEcho(s)) => json!({
            "listen": s.listen,
            "prefix": s.prefix,
            "max_connections": s.max_connections,
            "idle_timeout": dur(&s.idle_timeout),
            "access_log": s.access_log.unwrap_or(true),
        }),
        Some(Kind::UdpEcho(s)) => json!({
            "listen": s.listen,
            "prefix": s.prefix,
            "allow_privileged_sources": s.allow_privileged_sources,
            "rate_limit": s.rate_limit,
            "max_sources": s.max_sources,
            "access_log": s.access_log.unwrap_or(true),
        }),
        Some(Kind::Proxy(p)) => json!({
            "listen": p.listen,
            "upstreams": p.upstreams,
            "preconnect": p.preconnect,
            "connect_timeout": dur(&p.connect_timeout),
            "idle_timeout": dur(&p.idle_timeout),
            "max_connections": p.max_connections,
            "upstream_backoff": dur(&p.upstream_backoff),
            "resolve_interval": dur(&p.resolve_interval),
            "access_log": p.access_log.unwrap_or(true),
            "faults": faults_json(&p.faults),
        }),
        Some(Kind::UdpProxy(u)) => json!({
            "listen": u.listen,
            "upstream": u.upstream,
            "max_clients": u.max_clients,
            "max_clients_per_source": u.max_clients_per_source,
            "idle_timeout": dur(&u.idle_timeout),
            "allow_privileged_sources": u.allow_privileged_sources,
            "rate_limit": u.rate_limit,
            "max_sources": u.max_sources,
            "faults": faults_json(&u.faults),
        }),
        Some(Kind::Http(h)) => json!({
            "listen": h.listen,
            "max_body_bytes": h.max_body_bytes,
            "header_read_timeout": dur(&h.header_read_timeout),
            "request_timeout": dur(&h.request_timeout),
            "max_connections": h.max_connections,
            "auth": if h.token.is_empty() { "none" } else { "bearer token" },
            "rate_limit": if h.rate_limit.is_empty() { "none" } else { h.rate_limit.as_str() },
            "body_budget_bytes": h.body_budget_bytes,
            "max_streams": h.max_streams,
            "max_header_bytes": h.max_header_bytes,
            "idle_timeout": dur(&h.idle_timeout),
            "rate_limit_ipv6_prefix": h.rate_limit_ipv6_prefix,
            "access_log": h.access_log.unwrap_or(true),
        }),
        Some(Kind::Sniffer(f)) => json!({
            "interface": f.interface,
            "filter": f.filter,
            "pcap_path": f.pcap_path,
            "pcap_max_bytes": f.pcap_max_bytes,
            "pcap_max_files": f.pcap_max_files,
            "max_flows": f.max_flows,
            "port_scan_ports": f.port_scan_ports,
            "port_scan_window": dur(&f.port_scan_window),
            "syn_rate": f.syn_rate,
        }),
        None => Value::Null,
    }
}

pub fn sniffer_json(f: &proto::SnifferStats) -> Value {
    let pc = |p: &Option<proto::ProtocolCount>| {
        let p = p.unwrap_or_default();
        json!({"packets": p.packets, "bytes": p.bytes})
    };
    json!({
        "tcp": pc(&f.tcp),
        "udp": pc(&f.udp),
        "icmp": pc(&f.icmp),
        "other": pc(&f.other),
        "flows_active": f.flows_active,
        "flows_evicted": f.flows_evicted,
        "top_flows": f.top_flows.iter().map(|t| json!({
            "protocol": t.protocol,
            "src": t.src,
            "dst": t.dst,
            "packets": t.packets,
            "bytes": t.bytes,
        })).collect::<Vec<_>>(),
        "kernel_drops": f.kernel_drops,
        "watcher_drops": f.watcher_drops,
        "pcap_packets": f.pcap_packets,
        "alerts": f.alerts,
        "fragments": f.fragments,
        "malformed": f.malformed,
    })
}

pub fn http_json(h: &proto::HttpStats) -> Value {
    json!({
        "requests": h.requests,
        "responses_2xx": h.responses_2xx,
        "responses_3xx": h.responses_3xx,
        "responses_4xx": h.responses_4xx,
        "responses_5xx": h.responses_5xx,
        "unauthorized": h.unauthorized,
        "rate_limited": h.rate_limited,
        "body_budget_refused": h.body_budget_refused,
        "idle_closed": h.idle_closed,
        "latency_p50_ms": h.latency_p50_ms,
        "latency_p90_ms": h.latency_p90_ms,
        "latency_p99_ms": h.latency_p99_ms,
    })
}

/// Faults as their attribute tables (the config's and netctl's names).
pub fn faults_json(faults: &[proto::Fault]) -> Value {
    Value::Array(
        faults
            .iter()
            .map(|f| serde_json::to_value(netd::fault::attrs::to_table(f)).unwrap_or(Value::Null))
            .collect(),
    )
}

pub fn fault_stats_json(f: &proto::FaultStats) -> Value {
    json!({
        "name": f.name,
        "type": f.r#type,
        "active": f.active,
        "connections_affected": f.connections_affected,
        "connections_closed": f.connections_closed,
        "bytes_delayed": f.bytes_delayed,
        "bytes_dropped": f.bytes_dropped,
        "datagrams_lost": f.datagrams_lost,
        "datagrams_duplicated": f.datagrams_duplicated,
        "datagrams_reordered": f.datagrams_reordered,
        "datagrams_corrupted": f.datagrams_corrupted,
        "datagrams_delayed": f.datagrams_delayed,
    })
}

pub fn udp_proxy_json(u: &proto::UdpProxyStats) -> Value {
    json!({
        "clients_active": u.clients_active,
        "clients_total": u.clients_total,
        "clients_expired": u.clients_expired,
        "clients_refused": u.clients_refused,
        "upstream_errors": u.upstream_errors,
        "kernel_drops": u.kernel_drops,
        "own_source_drops": u.own_source_drops,
        "reflector_source_drops": u.reflector_source_drops,
        "rate_limited": u.rate_limited,
        "sources_tracked": u.sources_tracked,
        "sources_evicted": u.sources_evicted,
        "source_clients_refused": u.source_clients_refused,
    })
}

pub fn udp_echo_json(u: &proto::UdpEchoStats) -> Value {
    json!({
        "own_source_drops": u.own_source_drops,
        "reflector_source_drops": u.reflector_source_drops,
        "rate_limited": u.rate_limited,
        "truncated": u.truncated,
        "kernel_drops": u.kernel_drops,
        "sources_tracked": u.sources_tracked,
        "sources_evicted": u.sources_evicted,
    })
}

pub fn proxy_json(p: &proto::ProxyStats) -> Value {
    json!({
        "connect_failures": p.connect_failures,
        "connect_timeouts": p.connect_timeouts,
        "pool_hits": p.pool_hits,
        "pool_misses": p.pool_misses,
        "pool_stale": p.pool_stale,
        "resolve_failures": p.resolve_failures,
        "resolves": p.resolves,
        "upstreams": p.upstreams.iter().map(|u| json!({
            "addr": u.addr,
            "healthy": u.healthy,
            "connections": u.connections,
            "connect_failures": u.connect_failures,
            "last_error": u.last_error,
            "pool_idle": u.pool_idle,
        })).collect::<Vec<_>>(),
    })
}

pub fn stats_json(s: &proto::ListenerStats) -> Value {
    let mut v = json!({
        "connections_total": s.connections_total,
        "connections_active": s.connections_active,
        "connections_refused": s.connections_refused,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "datagrams_in": s.datagrams_in,
        "datagrams_out": s.datagrams_out,
        "errors": s.errors,
        "panics": s.panics,
    });
    match &s.detail {
        Some(proto::listener_stats::Detail::Proxy(p)) => v["proxy"] = proxy_json(p),
        Some(proto::listener_stats::Detail::Http(h)) => v["http"] = http_json(h),
        Some(proto::listener_stats::Detail::Sniffer(f)) => v["sniffer"] = sniffer_json(f),
        Some(proto::listener_stats::Detail::UdpEcho(u)) => v["udp_echo"] = udp_echo_json(u),
        Some(proto::listener_stats::Detail::UdpProxy(u)) => v["udp_proxy"] = udp_proxy_json(u),
        None => {}
    }
    if !s.faults.is_empty() {
        v["faults"] = Value::Array(s.faults.iter().map(fault_stats_json).collect());
    }
    v
}

pub fn listener_json(l: &proto::Listener) -> Value {
    json!({
        "name": l.name,
        "kind": kind(l),
        "state": state(l),
        "bound_addr": l.bound_addr,
        "started_at": started_at(l).map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "restarts": l.restarts,
        "last_error": l.last_error,
        "labels": l.labels,
        "ephemeral": l.ephemeral,
        "spec": spec_json(l),
        "stats": stats_json(&l.stats.clone().unwrap_or_default()),
    })
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn uptime(l: &proto::Listener) -> String {
    match started_at(l).and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
        None => "-".into(),
    }
}

/// Print rows with columns padded to the widest cell. Cells are escaped
/// here (control characters written as `\x1b`, `\n`...): pass them raw.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// The columns of `netctl list`.
pub const LIST_HEADER: [&str; 9] = [
    "NAME",
    "KIND",
    "STATE",
    "BOUND_ADDR",
    "TRAFFIC",
    "IN",
    "OUT",
    "RESTARTS",
    "UPTIME",
];

pub fn list_table(listeners: &[proto::Listener]) {
    if listeners.is_empty() {
        outln!("no listeners (start one with `netctl start ...`)");
        return;
    }
    table(&LIST_HEADER, &list_rows(listeners));
}

/// One row of [`LIST_HEADER`] cells per listener.
pub fn list_rows(listeners: &[proto::Listener]) -> Vec<Vec<String>> {
    listeners
        .iter()
        .map(|l| {
            let s = l.stats.clone().unwrap_or_default();
            let traffic = match l.kind() {
                proto::ListenerKind::UdpEcho | proto::ListenerKind::UdpProxy => {
                    count(s.datagrams_in, "dgram", "dgrams")
                }
                proto::ListenerKind::Sniffer => count(s.datagrams_in, "packet", "packets"),
                proto::ListenerKind::TcpEcho
                | proto::ListenerKind::Proxy
                | proto::ListenerKind::Http
                | proto::ListenerKind::Unspecified => format!(
                    "{} active, {} total",
                    s.connections_active, s.connections_total
                ),
            };
            let state = match l.state() {
                proto::ListenerState::Draining => {
                    format!("draining ({} left)", s.connections_active)
                }
                _ => state(l).into(),
            };
            vec![
                l.name.clone(),
                kind(l).into(),
                state,
                l.bound_addr.clone(),
                traffic,
                bytes(s.bytes_in),
                bytes(s.bytes_out),
                l.restarts.to_string(),
                uptime(l),
            ]
        })
        .collect()
}

/// The faults of a listener's spec (proxy and udp-proxy), as in effect.
fn spec_faults(l: &proto::Listener) -> Option<&[proto::Fault]> {
    let spec = l.effective_spec.as_ref().or(l.spec.as_ref());
    match spec.and_then(|s| s.kind.as_ref()) {
        Some(Kind::Proxy(p)) => Some(&p.faults),
        Some(Kind::UdpProxy(u)) => Some(&u.faults),
        Some(Kind::TcpEcho(_) | Kind::UdpEcho(_) | Kind::Http(_) | Kind::Sniffer(_)) | None => None,
    }
}

/// "1 dgram", "2 dgrams".
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn status_block(l: &proto::Listener) {
    let s = l.stats.clone().unwrap_or_default();
    let mut labels: Vec<String> = l.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    // key=value pairs of the effective spec (defaults filled in); faults by
    // name (each has a line of its own below).
    let spec = match spec_json(l) {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) if k == "prefix" => format!("{k}=\"{s}\""),
                Value::String(s) => format!("{k}={s}"),
                Value::Array(a) if k == "faults" => {
                    let names: Vec<&str> = a
                        .iter()
                        .filter_map(|f| f.get("name").and_then(Value::as_str))
                        .collect();
                    if names.is_empty() {
                        format!("{k}=none")
                    } else {
                        format!("{k}={}", names.join(","))
                    }
                }
                Value::Array(a) => format!(
                    "{k}={}",
                    a.iter()
                        .map(|x| x.as_str().unwrap_or("?"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => "-".into(),
    };
    let started = started_at(l)
        .map(|t| {
            format!(
                "{} (up {})",
                humantime::format_rfc3339_seconds(t),
                uptime(l)
            )
        })
        .unwrap_or_else(|| "-".into());
    let connections = format!(
        "{} active, {} total, {} refused",
        s.connections_active, s.connections_total, s.connections_refused
    );
    let rows = [
        ("name", l.name.clone()),
        ("kind", kind(l).into()),
        ("state", state(l).into()),
        ("bound_addr", l.bound_addr.clone()),
        ("started_at", started),
        ("restarts", l.restarts.to_string()),
        (
            "last_error",
            if l.last_error.is_empty() {
                "-".into()
            } else {
                l.last_error.clone()
            },
        ),
        (
            "labels",
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(", ")
            },
        ),
        ("spec", spec),
        ("connections", connections),
        (
            "datagrams",
            format!("{} in, {} out", s.datagrams_in, s.datagrams_out),
        ),
        (
            "bytes",
            format!("{} in, {} out", bytes(s.bytes_in), bytes(s.bytes_out)),
        ),
        ("errors", s.errors.to_string()),
    ];
    // UDP kinds and the sniffer have no connections: no line for them.
    let has_connections = crate::stats::has_connections(l.kind());
    for (k, v) in rows {
        if k == "connections" && !has_connections {
            continue;
        }
        outln!("{:<12} {}", format!("{k}:"), escape(&v));
    }
    if let Some(proto::listener_stats::Detail::Http(h)) = &s.detail {
        outln!(
            "{:<12} {} total: {} 2xx, {} 3xx, {} 4xx ({} unauthorized, {} rate limited), {} 5xx ({} over the body budget)",
            "requests:",
            h.requests,
            h.responses_2xx,
            h.responses_3xx,
            h.responses_4xx,
            h.unauthorized,
            h.rate_limited,
            h.responses_5xx,
            h.body_budget_refused
        );
        outln!(
            "{:<12} p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
            "latency:",
            h.latency_p50_ms,
            h.latency_p90_ms,
            h.latency_p99_ms
        );
    }
    if let Some(proto::listener_stats::Detail::UdpEcho(u)) = &s.detail {
        outln!(
            "{:<12} {} own source, {} reflector source, {} rate limited, {} by the kernel; {} truncated",
            "dropped:",
            u.own_source_drops,
            u.reflector_source_drops,
            u.rate_limited,
            u.kernel_drops,
            u.truncated
        );
        outln!(
            "{:<12} {} tracked, {} evicted",
            "sources:",
            u.sources_tracked,
            u.sources_evicted
        );
    }
    if let Some(proto::listener_stats::Detail::UdpProxy(u)) = &s.detail {
        outln!(
            "{:<12} {} active, {} total, {} expired, {} refused (table full), {} refused (per-source cap)",
            "clients:",
            u.clients_active,
            u.clients_total,
            u.clients_expired,
            u.clients_refused,
            u.source_clients_refused
        );
        outln!(
            "{:<12} {} own source, {} reflector source, {} rate limited, {} by the kernel; {} upstream errors",
            "dropped:",
            u.own_source_drops,
            u.reflector_source_drops,
            u.rate_limited,
            u.kernel_drops,
            u.upstream_errors
        );
        outln!(
            "{:<12} {} tracked, {} evicted",
            "sources:",
            u.sources_tracked,
            u.sources_evicted
        );
    }
    if let Some(proto::listener_stats::Detail::Sniffer(f)) = &s.detail {
        let pc = |p: &Option<proto::ProtocolCount>| {
            let p = p.unwrap_or_default();
            format!("{} packets, {}", p.packets, bytes(p.bytes))
        };
        outln!(
            "{:<12} tcp {}; udp {}; icmp {}; other {} (of these: {} later fragments, {} malformed)",
            "captured:",
            pc(&f.tcp),
            pc(&f.udp),
            pc(&f.icmp),
            pc(&f.other),
            f.fragments,
            f.malformed
        );
        outln!(
            "{:<12} {} active, {} evicted; kernel drops {}, watcher drops {}, pcap {} packets, alerts {}",
            "flows:",
            f.flows_active,
            f.flows_evicted,
            f.kernel_drops,
            f.watcher_drops,
            f.pcap_packets,
            f.alerts
        );
        if !f.top_flows.is_empty() {
            outln!("top flows:");
            let rows: Vec<Vec<String>> = f
                .top_flows
                .iter()
                .map(|t| {
                    vec![
                        format!("  {}", t.protocol),
                        t.src.clone(),
                        t.dst.clone(),
                        t.packets.to_string(),
                        bytes(t.bytes),
                    ]
                })
                .collect();
            table(&["  PROTO", "SRC", "DST", "PACKETS", "BYTES"], &rows);
        }
    }
    if let Some(proto::listener_stats::Detail::Proxy(p)) = &s.detail {
        outln!(
            "{:<12} {} failed, {} timed out; pool {} hits, {} misses, {} stale",
            "connects:",
            p.connect_failures,
            p.connect_timeouts,
            p.pool_hits,
            p.pool_misses,
            p.pool_stale
        );
        if p.resolve_failures > 0 {
            outln!(
                "{:<12} {} failed (last good addresses kept)",
                "lookups:",
                p.resolve_failures
            );
        }
        outln!("upstreams:");
        let rows: Vec<Vec<String>> = p
            .upstreams
            .iter()
            .map(|u| {
                vec![
                    format!("  {}", u.addr),
                    if u.healthy {
                        "healthy".into()
                    } else {
                        "down".into()
                    },
                    u.connections.to_string(),
                    u.connect_failures.to_string(),
                    u.pool_idle.to_string(),
                    if u.last_error.is_empty() {
                        "-".into()
                    } else {
                        u.last_error.clone()
                    },
                ]
            })
            .collect();
        table(
            &[
                "  ADDR",
                "HEALTH",
                "CONNS",
                "FAILURES",
                "WARM",
                "LAST_ERROR",
            ],
            &rows,
        );
    }
    if let Some(faults) = spec_faults(l).filter(|f| !f.is_empty()) {
        fault_rows(faults, &s.faults);
    }
}

/// The `faults:` part of `netctl status`: each fault of the spec with its
/// settings, whether it is in its window now, and its counters (as in
/// `netctl fault ls`).
fn fault_rows(faults: &[proto::Fault], stats: &[proto::FaultStats]) {
    outln!("faults:");
    let rows: Vec<Vec<String>> = faults
        .iter()
        .map(|f| {
            let st = stats.iter().find(|s| s.name == f.name);
            vec![
                format!("  {}", f.name),
                netd::fault::type_of(f).to_string(),
                netd::fault::attrs::summary(f),
                match st {
                    Some(s) if s.active => "yes".into(),
                    Some(_) => "no".into(),
                    None => "-".into(),
                },
                st.map_or_else(|| "-".into(), crate::cmd::fault::counters),
            ]
        })
        .collect();
    table(&["  NAME", "TYPE", "SETTINGS", "ACTIVE", "COUNTERS"], &rows);
}
