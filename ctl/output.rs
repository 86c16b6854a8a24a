//! Rendering listeners for people (tables, key/value blocks) and for
//! programs (JSON with the .proto's snake_case field names).
//!
//! Strings from the daemon are printed only through [`table`] and
//! [`status_block`], which pass each cell and value through
//! [`escape`](crate::escape::escape).

use crate::render::outln;
use std::time::{Duration, SystemTime};

use netd::proto;
use netd::services::show::{self, Part};
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

/// The spec in effect, as netd reports it (`effective_spec`: defaults
/// filled in, secrets redacted); from a netd that predates it, the spec as
/// requested. netctl knows none of netd's defaults; each kind says how its
/// spec is shown ([`show::spec_json`]).
fn spec_json(l: &proto::Listener) -> Value {
    let spec = l.effective_spec.as_ref().or(l.spec.as_ref());
    spec.and_then(|s| s.kind.as_ref())
        .map_or(Value::Null, show::spec_json)
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
        "requests_affected": f.requests_affected,
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
    if let Some((key, detail)) = s.detail.as_ref().and_then(show::stats_json) {
        v[key] = detail;
    }
    if !s.faults.is_empty() {
        v["faults"] = Value::Array(s.faults.iter().map(fault_stats_json).collect());
    }
    if let Some(t) = &s.tls {
        v["tls"] = show::tls_stats_json(t);
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

pub use netd::services::show::bytes;

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
            let traffic = show::traffic(l.kind(), &s);
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

/// The faults of a listener's spec (kinds that take faults), as in effect.
fn spec_faults(l: &proto::Listener) -> &[proto::Fault] {
    let spec = l.effective_spec.as_ref().or(l.spec.as_ref());
    spec.and_then(|s| s.kind.as_ref())
        .map_or(&[], show::spec_faults)
}

/// The `spec:` line of `netctl status`: key=value pairs of the effective
/// spec (defaults filled in); faults by name (each has a line of its own
/// below), a nested setting as `tls.cert=...`.
fn spec_line(l: &proto::Listener) -> String {
    match spec_json(l) {
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
                // A nested setting (tls): `tls.cert=...`, unset parts left out.
                Value::Object(o) => o
                    .iter()
                    .filter(|(_, v)| {
                        !matches!(v, Value::Null)
                            && *v != ""
                            && !v.as_array().is_some_and(Vec::is_empty)
                    })
                    .map(|(sub, v)| match v {
                        Value::String(s) => format!("{k}.{sub}={s}"),
                        Value::Array(a) => format!(
                            "{k}.{sub}={}",
                            a.iter()
                                .map(|x| x.as_str().unwrap_or("?"))
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                        other => format!("{k}.{sub}={other}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
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
    }
}

pub fn status_block(l: &proto::Listener) {
    let s = l.stats.clone().unwrap_or_default();
    let mut labels: Vec<String> = l.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let spec = spec_line(l);
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
    // Kinds that count datagrams or packets have no connections: no line
    // for them.
    let has_connections = show::counts_connections(l.kind());
    for (k, v) in rows {
        if k == "connections" && !has_connections {
            continue;
        }
        outln!("{:<12} {}", format!("{k}:"), escape(&v));
    }
    // TLS (any kind's), then the kind's own lines and tables.
    let mut parts = s.tls.as_ref().map(show::tls_status).unwrap_or_default();
    parts.extend(s.detail.as_ref().map(show::status).unwrap_or_default());
    for part in parts {
        match part {
            Part::Line { label, text } => outln!("{:<12} {}", format!("{label}:"), escape(&text)),
            Part::Table {
                title,
                header,
                rows,
            } => {
                outln!("{title}:");
                table(header, &rows);
            }
        }
    }
    let faults = spec_faults(l);
    if !faults.is_empty() {
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
