//! A fault as flat key/value attributes: how the config file writes one
//! (`[[listener.faults]]` tables), how `netctl fault add` takes one (each
//! attribute a flag of its own name) and how netd shows one. Both ways go
//! through a TOML table, so the config, export and netctl agree on every
//! name and unit.
//!
//! Keys: `name`, `type`, `direction` (upstream, downstream, both),
//! `toxicity`, the conditions `after_bytes`, `start_after`, `duration`,
//! `client` (CIDR), `every_nth`, the HTTP request conditions
//! ([`HTTP_CONDITION_KEYS`]), and each type's own keys with their units
//! ([`super::types`]); a type key of a common key's name (reset's
//! `after_bytes`) is the type's. Durations are strings ("100ms"); rates are
//! "1MB/s" (K, M, G are powers of 1000, Ki, Mi, Gi of 1024; "bit" units
//! count bits).

use std::time::Duration;

use toml::{Table, Value};

use super::types::{self, Unit, Val};
use crate::proto;

/// The attribute keys of each type (beyond the common ones).
pub fn keys_of(ty: &str) -> Option<Vec<&'static str>> {
    types::by_name(ty).map(|d| d.keys.iter().map(|k| k.name).collect())
}

/// Keys every fault may have.
pub const COMMON_KEYS: &[&str] = &[
    "name",
    "type",
    "direction",
    "toxicity",
    "after_bytes",
    "start_after",
    "duration",
    "client",
    "every_nth",
    "methods",
    "path_prefix",
    "path_exact",
    "path_regex",
    "headers",
    "grpc_service",
    "grpc_method",
];

/// The request conditions of HTTP faults (among [`COMMON_KEYS`]); lists:
/// `methods`, `headers`.
pub const HTTP_CONDITION_KEYS: &[&str] = &[
    "methods",
    "path_prefix",
    "path_exact",
    "path_regex",
    "headers",
    "grpc_service",
    "grpc_method",
];

fn duration_value(key: &str, v: &Value) -> Result<prost_types::Duration, String> {
    let d = match v {
        Value::String(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{key}: '{s}' is not a duration ({e}); e.g. \"100ms\""))?,
        Value::Integer(0) => Duration::ZERO,
        _ => {
            return Err(format!(
                "{key}: a duration string is expected, e.g. \"100ms\""
            ));
        }
    };
    prost_types::Duration::try_from(d).map_err(|_| format!("{key}: too long"))
}

fn u64_value(key: &str, v: &Value) -> Result<u64, String> {
    match v {
        Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{key} must not be negative")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{key}: '{s}' is not a whole number")),
        _ => Err(format!("{key}: a whole number is expected")),
    }
}

fn u32_value(key: &str, v: &Value) -> Result<u32, String> {
    let n = u64_value(key, v)?;
    u32::try_from(n).map_err(|_| format!("{key} is {n}; at most {}", u32::MAX))
}

fn f64_value(key: &str, v: &Value) -> Result<f64, String> {
    let f = match v {
        Value::Float(f) => *f,
        Value::Integer(n) => *n as f64,
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{key}: '{s}' is not a number"))?,
        _ => return Err(format!("{key}: a number is expected")),
    };
    if !f.is_finite() {
        return Err(format!("{key}: {f} is not a number"));
    }
    Ok(f)
}

fn string_value<'a>(key: &str, v: &'a Value) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{key}: a string is expected"))
}

/// A list of strings; one string is a list of one.
fn strings_value(key: &str, v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key}: a list of strings is expected"))
            })
            .collect(),
        _ => Err(format!("{key}: a list of strings is expected")),
    }
}

/// A rate such as "1MB/s", "250KiB/s", "8Mbit/s" or a plain number of
/// bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a rate; e.g. 1MB/s, 500KB/s, 8Mbit/s"))?;
    let unit = unit.trim();
    let (mult, bits) = match unit {
        "" | "B" => (1.0, false),
        "K" | "KB" | "kB" | "k" => (1e3, false),
        "M" | "MB" => (1e6, false),
        "G" | "GB" => (1e9, false),
        "KiB" | "Ki" => (1024.0, false),
        "MiB" | "Mi" => (1024.0 * 1024.0, false),
        "GiB" | "Gi" => (1024.0 * 1024.0 * 1024.0, false),
        "bit" | "b" => (1.0, true),
        "kbit" | "Kbit" | "kb" | "Kb" => (1e3, true),
        "Mbit" | "Mb" => (1e6, true),
        "Gbit" | "Gb" => (1e9, true),
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}'; use B, KB, MB, GB, KiB, MiB, GiB, kbit, Mbit or Gbit (per second)"
            ));
        }
    };
    let bytes = n * mult / if bits { 8.0 } else { 1.0 };
    if !(bytes.is_finite() && (1.0..=1e19).contains(&bytes)) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// A rate for people: "1MB/s", "1.5MB/s", "700B/s".
pub fn format_rate(b: u64) -> String {
    for (m, u) in [(1e9, "GB"), (1e6, "MB"), (1e3, "KB")] {
        if b as f64 >= m {
            let v = b as f64 / m;
            return if v.fract() == 0.0 {
                format!("{v}{u}/s")
            } else {
                format!("{}{u}/s", (v * 1000.0).round() / 1000.0)
            };
        }
    }
    format!("{b}B/s")
}

fn rate_value(key: &str, v: &Value) -> Result<u64, String> {
    match v {
        Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{key} must not be negative")),
        Value::String(s) => parse_rate(s).map_err(|e| format!("{key}: {e}")),
        _ => Err(format!("{key}: a rate is expected, e.g. \"1MB/s\"")),
    }
}

/// A fault from its table. Unknown keys, and keys of another type, are
/// refused by name. Values are checked for form here and for range when
/// the fault is added ([`super::compile`]).
pub fn from_table(t: &Table) -> Result<proto::Fault, String> {
    let get = |k: &str| t.get(k);
    let ty = match get("type") {
        Some(v) => string_value("type", v)?.to_string(),
        None => {
            return Err(format!(
                "type is required: {}",
                types::all_names().join(", ")
            ));
        }
    };
    let Some(def) = types::by_name(&ty) else {
        return Err(format!("unknown fault type '{ty}'"));
    };
    for k in t.keys() {
        if !COMMON_KEYS.contains(&k.as_str()) && def.key(k).is_none() {
            return Err(if types::is_type_key(k) {
                format!("{k} does not apply to a {ty} fault")
            } else {
                format!("unknown fault key '{k}'")
            });
        }
    }
    let name = match get("name") {
        Some(v) => string_value("name", v)?.to_string(),
        None => String::new(),
    };
    let direction = match get("direction")
        .map(|v| string_value("direction", v))
        .transpose()?
    {
        None => proto::FaultDirection::Unspecified,
        Some("upstream") => proto::FaultDirection::Upstream,
        Some("downstream") => proto::FaultDirection::Downstream,
        Some("both") => proto::FaultDirection::Both,
        Some(o) => {
            return Err(format!(
                "direction: '{o}'; expected upstream, downstream or both"
            ));
        }
    };
    let toxicity = get("toxicity")
        .map(|v| f64_value("toxicity", v))
        .transpose()?;
    let dur = |k: &str| get(k).map(|v| duration_value(k, v)).transpose();
    let text = |k: &str| -> Result<String, String> {
        Ok(get(k)
            .map(|v| string_value(k, v).map(str::to_string))
            .transpose()?
            .unwrap_or_default())
    };
    let texts = |k: &str| -> Result<Vec<String>, String> {
        Ok(get(k)
            .map(|v| strings_value(k, v))
            .transpose()?
            .unwrap_or_default())
    };
    // A type's own after_bytes (reset) is not the condition.
    let own_after_bytes = def.key("after_bytes").is_some();
    let when = proto::FaultCondition {
        after_bytes: get("after_bytes")
            .filter(|_| !own_after_bytes)
            .map(|v| u64_value("after_bytes", v))
            .transpose()?
            .unwrap_or(0),
        start_after: dur("start_after")?,
        duration: dur("duration")?,
        client_cidr: get("client")
            .map(|v| string_value("client", v).map(str::to_string))
            .transpose()?
            .unwrap_or_default(),
        every_nth: get("every_nth")
            .map(|v| u32_value("every_nth", v))
            .transpose()?
            .unwrap_or(0),
        methods: texts("methods")?,
        path_prefix: text("path_prefix")?,
        path_exact: text("path_exact")?,
        path_regex: text("path_regex")?,
        headers: texts("headers")?,
        grpc_service: text("grpc_service")?,
        grpc_method: text("grpc_method")?,
    };
    let mut kind = types::default_kind(&ty).ok_or_else(|| format!("unknown fault type '{ty}'"))?;
    for key in def.keys {
        let k = key.name;
        let Some(v) = get(k) else {
            if key.required {
                return Err(format!(
                    "a {ty} fault needs a {k}, e.g. \"{}\"",
                    key.unit.example()
                ));
            }
            continue;
        };
        let val = match key.unit {
            Unit::Duration => Val::Dur(Some(duration_value(k, v)?)),
            Unit::Rate => Val::Int(rate_value(k, v)?),
            Unit::Bytes => Val::Int(u64_value(k, v)?),
            Unit::Size | Unit::Count => Val::Int(u32_value(k, v)?.into()),
            Unit::Probability => Val::Float(Some(f64_value(k, v)?)),
            Unit::Text => Val::Text(string_value(k, v)?.to_string()),
            Unit::Texts => Val::Texts(strings_value(k, v)?),
        };
        types::set(&mut kind, k, val);
    }
    Ok(proto::Fault {
        name,
        direction: direction as i32,
        toxicity,
        when: (when != proto::FaultCondition::default()).then_some(when),
        kind: Some(kind),
    })
}

fn put_text(t: &mut Table, k: &str, v: &str) {
    if !v.is_empty() {
        t.insert(k.into(), Value::String(v.to_string()));
    }
}

fn put_texts(t: &mut Table, k: &str, v: &[String]) {
    if !v.is_empty() {
        t.insert(
            k.into(),
            Value::Array(v.iter().cloned().map(Value::String).collect()),
        );
    }
}

fn dur_text(d: &prost_types::Duration) -> String {
    Duration::try_from(*d)
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_else(|_| format!("{}s", d.seconds))
}

/// A fault as its table (the inverse of [`from_table`]); keys at their
/// zero are left out.
pub fn to_table(f: &proto::Fault) -> Table {
    let mut t = Table::new();
    let s = |v: &str| Value::String(v.to_string());
    let put_dur = |t: &mut Table, k: &str, d: &Option<prost_types::Duration>| {
        if let Some(d) = d {
            t.insert(k.into(), Value::String(dur_text(d)));
        }
    };
    let put_u64 = |t: &mut Table, k: &str, v: u64| {
        if v != 0 {
            t.insert(
                k.into(),
                i64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::Integer),
            );
        }
    };
    t.insert("name".into(), s(&f.name));
    t.insert("type".into(), s(super::type_of(f)));
    match proto::FaultDirection::try_from(f.direction) {
        Ok(proto::FaultDirection::Upstream) => {
            t.insert("direction".into(), s("upstream"));
        }
        Ok(proto::FaultDirection::Downstream) => {
            t.insert("direction".into(), s("downstream"));
        }
        Ok(proto::FaultDirection::Both) => {
            t.insert("direction".into(), s("both"));
        }
        _ => {}
    }
    if let Some(x) = f.toxicity {
        t.insert("toxicity".into(), Value::Float(x));
    }
    if let Some(w) = &f.when {
        put_u64(&mut t, "after_bytes", w.after_bytes);
        put_dur(&mut t, "start_after", &w.start_after);
        put_dur(&mut t, "duration", &w.duration);
        if !w.client_cidr.is_empty() {
            t.insert("client".into(), s(&w.client_cidr));
        }
        put_u64(&mut t, "every_nth", w.every_nth.into());
        put_texts(&mut t, "methods", &w.methods);
        put_text(&mut t, "path_prefix", &w.path_prefix);
        put_text(&mut t, "path_exact", &w.path_exact);
        put_text(&mut t, "path_regex", &w.path_regex);
        put_texts(&mut t, "headers", &w.headers);
        put_text(&mut t, "grpc_service", &w.grpc_service);
        put_text(&mut t, "grpc_method", &w.grpc_method);
    }
    if let Some(kind) = &f.kind {
        for key in types::def_of(kind).keys {
            let k = key.name;
            match (key.unit, types::get(kind, k)) {
                (_, None) => {}
                (_, Some(Val::Dur(d))) => put_dur(&mut t, k, &d),
                (Unit::Rate, Some(Val::Int(r))) => {
                    t.insert(k.into(), s(&format_rate(r)));
                    // An exact figure where the short form rounds.
                    if parse_rate(&format_rate(r)).ok() != Some(r) {
                        put_u64(&mut t, k, r);
                    }
                }
                (_, Some(Val::Int(n))) => put_u64(&mut t, k, n),
                (_, Some(Val::Float(Some(x)))) => {
                    t.insert(k.into(), Value::Float(x));
                }
                (_, Some(Val::Float(None))) => {}
                (_, Some(Val::Text(v))) => put_text(&mut t, k, &v),
                (_, Some(Val::Texts(v))) => put_texts(&mut t, k, &v),
            }
        }
    }
    t
}

/// The type's attributes as "key=value" for a one-line summary (the
/// common keys left out).
pub fn summary(f: &proto::Fault) -> String {
    to_table(f)
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "name" | "type"))
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            Value::Array(a) => format!(
                "{k}={}",
                a.iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A listener's faults written into its exported table, as an array of
/// inline tables (the config also takes `[[listener.faults]]` tables).
pub fn write_faults(t: &mut crate::spec::Table, faults: &[crate::proto::Fault]) {
    if !faults.is_empty() {
        let list = faults
            .iter()
            .map(|f| toml::Value::Table(to_table(f)))
            .collect();
        t.line("faults", toml::Value::Array(list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("1MB/s").unwrap(), 1_000_000);
        assert_eq!(parse_rate("10KB/s").unwrap(), 10_000);
        assert_eq!(parse_rate("1MiB/s").unwrap(), 1 << 20);
        assert_eq!(parse_rate("8Mbit/s").unwrap(), 1_000_000);
        assert_eq!(parse_rate("1.5GB/s").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("700").unwrap(), 700);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1XB/s").is_err());
        assert!(parse_rate("0B/s").is_err());
        assert_eq!(format_rate(1_000_000), "1MB/s");
        assert_eq!(format_rate(1_500), "1.5KB/s");
    }

    #[test]
    fn tables_round_trip_and_wrong_keys_are_named() {
        let t: Table = toml::from_str(
            r#"name = "slow"
type = "latency"
direction = "both"
toxicity = 0.5
latency = "100ms"
jitter = "10ms"
after_bytes = 10
start_after = "1s"
duration = "5s"
client = "127.0.0.2/32"
every_nth = 3"#,
        )
        .unwrap();
        let f = from_table(&t).unwrap();
        assert_eq!(from_table(&to_table(&f)).unwrap(), f);
        super::super::compile(&f, super::super::Target::Tcp).unwrap();
        let bad: Table =
            toml::from_str("name = \"x\"\ntype = \"latency\"\nrate = \"1MB/s\"").unwrap();
        assert_eq!(
            from_table(&bad).unwrap_err(),
            "rate does not apply to a latency fault"
        );
        let unknown: Table =
            toml::from_str("name = \"x\"\ntype = \"latency\"\nlatncy = \"1s\"").unwrap();
        assert!(
            from_table(&unknown)
                .unwrap_err()
                .contains("unknown fault key")
        );
        let http: Table = toml::from_str(
            r#"name = "h"
type = "header"
phase = "request"
set = ["x-a: 1", "x-b: 2"]
remove = "x-c"
methods = ["GET", "POST"]
path_regex = "^/o/[0-9]+$"
headers = ["x-test: slow"]
grpc_service = "pkg.Svc""#,
        )
        .unwrap();
        let f = from_table(&http).unwrap();
        assert_eq!(from_table(&to_table(&f)).unwrap(), f);
        assert_eq!(f.when.as_ref().unwrap().methods, ["GET", "POST"]);
        super::super::compile(&f, super::super::Target::Http).unwrap();
        // reset's after_bytes is its own, not the condition.
        let reset: Table =
            toml::from_str("name = \"r\"\ntype = \"reset\"\nafter_bytes = 100").unwrap();
        let f = from_table(&reset).unwrap();
        assert_eq!(f.when, None);
        assert_eq!(to_table(&f).get("after_bytes"), Some(&Value::Integer(100)));
        let bw: Table =
            toml::from_str("name = \"b\"\ntype = \"bandwidth\"\nrate = \"1234567B/s\"").unwrap();
        let f = from_table(&bw).unwrap();
        assert_eq!(from_table(&to_table(&f)).unwrap(), f);
    }
}
