//! The `[[listener]]` tables of a config or apply file: each table's
//! `name`, `kind` and `labels` are read here, the rest is the kind's flat
//! form, read by the kind itself
//! ([`crate::services::ListenerKind::read_config`]); then the listeners are
//! checked against each other (names, ports) and every error is given its
//! `file:line`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::Spanned;

use super::{BootListener, ConfigError, Entries, addrs_clash};
use crate::proto;
use crate::services::{KINDS, KindInfo, Service, Settings, Transport};
use crate::spec::form::{Class, FieldError, ReadOptions};

/// A `[[listener]]` table as written: where it is, and each key and value
/// with where they are.
pub(super) type RawListener = Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>;

/// Turn `[[listener]]` tables into validated listeners; `text` and
/// `source` are for `file:line` in errors, `metrics_listen` is the
/// `/metrics` address no TCP listener may clash with.
pub(super) fn read(
    raw: Vec<RawListener>,
    text: &str,
    source: &str,
    settings: &Settings,
    metrics_listen: Option<std::net::SocketAddr>,
    entries: Entries,
) -> Result<Vec<BootListener>, ConfigError> {
    // Everything per listener is O(1) or O(its own size), so a file of
    // 100,000 listeners is read in linear time: line numbers come from
    // an index of line starts, names and ports from hash maps.
    let lines = LineIndex::new(text);
    let mut listeners: Vec<BootListener> = Vec::with_capacity(raw.len());
    let mut names: std::collections::HashSet<String> =
        std::collections::HashSet::with_capacity(raw.len());
    // Listeners with a fixed port, to refuse two that would bind the
    // same one.
    let mut bound_addrs = BoundAddrs::default();
    for l in raw {
        let entry = Entry::read(l, &lines, text, source)?;
        let Entry {
            name,
            kind,
            labels,
            origin,
            table,
            spans,
        } = entry;
        let at = |key: &str| {
            spans.get(key).map_or(origin.clone(), |s| {
                format!("{source}:{}", lines.line(s.start))
            })
        };
        if !names.insert(name.clone()) {
            return Err(ConfigError(format!(
                "{origin}: a listener named '{name}' is defined twice"
            )));
        }
        let opts = ReadOptions {
            placeholders: entries == Entries::ApplyFile,
        };
        let read = crate::services::read_config(kind.kind, &table, &opts);
        // A value of the wrong type first (as TOML reports it), then a
        // required key left out, then the rest.
        if !matches!(&read, Err(e) if e.class == Class::Type) {
            let missing = kind
                .keys
                .iter()
                .find(|k| k.required.is_some() && !table.contains_key(k.key))
                .and_then(|k| k.required);
            if let Some(what) = missing {
                return Err(ConfigError(format!("{origin}: listener '{name}': {what}")));
            }
        }
        let arm = read.map_err(|e| {
            let place = match e.class {
                Class::Type => spans
                    .get(&e.field)
                    .map_or(origin.clone(), |s| position(text, source, &lines, s.start)),
                Class::Value | Class::Listener => at(&e.field),
            };
            match e.class {
                Class::Listener => ConfigError(format!("{place}: listener '{name}': {e}")),
                Class::Type | Class::Value => ConfigError(format!("{place}: {e}")),
            }
        })?;
        let spec = proto::ListenerSpec { kind: Some(arm) };
        // An apply file is read by netctl, whose capture_dir is not
        // netd's: where a pcap file may go is checked by netd.
        let checked = match entries {
            Entries::ApplyFile => std::borrow::Cow::Owned(Service::clear_netd_paths(spec.clone())),
            Entries::BootConfig => std::borrow::Cow::Borrowed(&spec),
        };
        if let Err(e) = Service::from_spec(&checked, settings) {
            // Point at the line of the key the refusal is about, when the
            // entry has that key; else at the entry.
            let line = e
                .field
                .as_deref()
                .filter(|k| kind.keys.iter().any(|key| key.key == *k) && spans.contains_key(*k))
                .map_or(origin.clone(), at);
            return Err(ConfigError(format!("{line}: listener '{name}': {e}")));
        }
        if let Some((addr, transport)) = Service::spec_listen_addr(&spec) {
            let udp = transport == Transport::Udp;
            let line = at("listen");
            if let Some(other) = bound_addrs.clash(addr, udp) {
                return Err(ConfigError(format!(
                    "{line}: listener '{name}': {} {addr} clashes with listener '{other}' \
                     (both would bind the same {} port)",
                    if udp { "UDP" } else { "TCP" },
                    if udp { "UDP" } else { "TCP" },
                )));
            }
            if let Some(m) = metrics_listen.filter(|m| !udp && addrs_clash(*m, addr)) {
                return Err(ConfigError(format!(
                    "{line}: listener '{name}': TCP {addr} clashes with [metrics] listen {m}"
                )));
            }
            bound_addrs.insert(&name, addr, udp);
        }
        listeners.push(BootListener {
            name,
            spec,
            labels,
            origin,
        });
    }
    Ok(listeners)
}

/// One `[[listener]]` table taken apart: what the config reads itself,
/// and the kind's flat form with the span of each of its keys.
struct Entry {
    name: String,
    kind: KindInfo,
    labels: HashMap<String, String>,
    /// `file:line` of `name`.
    origin: String,
    table: toml::Table,
    spans: HashMap<String, Range<usize>>,
}

impl Entry {
    fn read(
        raw: RawListener,
        lines: &LineIndex,
        text: &str,
        source: &str,
    ) -> Result<Entry, ConfigError> {
        let table_at = raw.span().start;
        let type_error = |e: FieldError, at: usize| {
            ConfigError(format!("{}: {e}", position(text, source, lines, at)))
        };
        let missing = |field: &str| {
            ConfigError(format!(
                "{}: missing field `{field}`",
                position(text, source, lines, table_at)
            ))
        };
        let mut name = None;
        let mut kind = None;
        let mut labels = HashMap::new();
        let mut table = toml::Table::new();
        let mut spans = HashMap::new();
        // Keys in the order they are written, so that the first wrong one
        // is the one reported.
        let mut keys: Vec<(Spanned<String>, Spanned<toml::Value>)> =
            raw.into_inner().into_iter().collect();
        keys.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in keys {
            let key_at = key.span().start;
            let key = key.into_inner();
            let span = value.span();
            let value = value.into_inner();
            match key.as_str() {
                "name" => match value {
                    toml::Value::String(s) => name = Some((s, span)),
                    other => {
                        return Err(type_error(
                            FieldError::wrong_type("name", &other, "a string"),
                            span.start,
                        ));
                    }
                },
                "kind" => {
                    let toml::Value::String(slug) = &value else {
                        return Err(type_error(
                            FieldError::wrong_type("kind", &value, "a string"),
                            span.start,
                        ));
                    };
                    let Some(k) = crate::services::kind_by_slug(slug) else {
                        let expected = crate::services::SLUGS
                            .iter()
                            .map(|s| format!("`{s}`"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        return Err(ConfigError(format!(
                            "{}: unknown variant `{slug}`, expected one of {expected}",
                            position(text, source, lines, span.start)
                        )));
                    };
                    kind = Some(k);
                }
                "labels" => labels = read_labels(value).map_err(|e| type_error(e, span.start))?,
                _ => {
                    if !KINDS.iter().any(|k| k.takes(&key)) {
                        return Err(ConfigError(format!(
                            "{}: unknown field `{key}`, expected one of {}",
                            position(text, source, lines, key_at),
                            known_keys()
                        )));
                    }
                    spans.insert(key.clone(), span);
                    table.insert(key, value);
                }
            }
        }
        let (name, name_span) = name.ok_or_else(|| missing("name"))?;
        let kind = kind.ok_or_else(|| missing("kind"))?;
        let origin = format!("{source}:{}", lines.line(name_span.start));
        // The first key written that the kind does not take.
        let mut written: Vec<(&String, &Range<usize>)> = spans.iter().collect();
        written.sort_by_key(|(_, s)| s.start);
        if let Some((key, span)) = written.into_iter().find(|(k, _)| !kind.takes(k)) {
            return Err(ConfigError(format!(
                "{source}:{}: {key} does not apply to a {} listener",
                lines.line(span.start),
                kind.slug
            )));
        }
        Ok(Entry {
            name,
            kind,
            labels,
            origin,
            table,
            spans,
        })
    }
}

/// `labels = { key = "value", ... }`.
fn read_labels(value: toml::Value) -> Result<HashMap<String, String>, FieldError> {
    let toml::Value::Table(t) = value else {
        return Err(FieldError::wrong_type("labels", &value, "a map"));
    };
    t.into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            other => Err(FieldError::wrong_type("labels", &other, "a string")),
        })
        .collect()
}

/// Every key a `[[listener]]` table may have, for "expected one of".
fn known_keys() -> String {
    let mut keys: Vec<&str> = vec!["name", "kind"];
    for k in KINDS.iter().flat_map(|k| k.keys.iter()) {
        if !keys.contains(&k.key) {
            keys.push(k.key);
        }
    }
    keys.push("labels");
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `file:line:column` of byte `pos`, as TOML's own errors give it.
fn position(text: &str, source: &str, lines: &LineIndex, pos: usize) -> String {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..pos].chars().count() + 1;
    format!("{source}:{}:{column}", lines.line(pos))
}

/// Line numbers of byte offsets in a text, by binary search over its line
/// starts (O(log n) each, where counting newlines would be O(n)).
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The 1-based line of byte `pos` (as [`line_of`]).
    fn line(&self, pos: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < pos) + 1
    }
}

/// The fixed ports listeners of a file bind, to find a clash
/// ([`addrs_clash`]) in O(1): per (port, UDP, IPv4), the listener on the
/// unspecified address, the first one on a specific address, and those by
/// address.
#[derive(Default)]
struct BoundAddrs {
    by_port: HashMap<(u16, bool, bool), PortUsers>,
}

#[derive(Default)]
struct PortUsers {
    unspecified: Option<String>,
    first_specific: Option<String>,
    by_ip: HashMap<std::net::IpAddr, String>,
}

impl BoundAddrs {
    /// The listener `addr` clashes with, if any.
    fn clash(&self, addr: std::net::SocketAddr, udp: bool) -> Option<&str> {
        if addr.port() == 0 {
            return None;
        }
        let users = self.by_port.get(&(addr.port(), udp, addr.is_ipv4()))?;
        if let Some(u) = &users.unspecified {
            return Some(u);
        }
        if addr.ip().is_unspecified() {
            users.first_specific.as_deref()
        } else {
            users.by_ip.get(&addr.ip()).map(String::as_str)
        }
    }

    fn insert(&mut self, name: &str, addr: std::net::SocketAddr, udp: bool) {
        if addr.port() == 0 {
            return;
        }
        let users = self
            .by_port
            .entry((addr.port(), udp, addr.is_ipv4()))
            .or_default();
        if addr.ip().is_unspecified() {
            users.unspecified.get_or_insert_with(|| name.to_string());
        } else {
            users.first_specific.get_or_insert_with(|| name.to_string());
            users
                .by_ip
                .entry(addr.ip())
                .or_insert_with(|| name.to_string());
        }
    }
}
