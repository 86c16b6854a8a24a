//! A fault as flat key/value attributes: how the config file writes one
//! (`[[listener.faults]]` tables), how `netctl fault add` takes one (each
//! attribute a flag of its own name) and how netd shows one. Both ways go
//! through a TOML table, so the config, export and netctl agree on every
//! name and unit.
//!
//! Keys: `name`, `type`, `direction` (upstream, downstream, both),
//! `toxicity`, the conditions `after_bytes`, `start_after`, `duration`,
//! `client` (CIDR), `every_nth`, and per type: latency `latency`,
//! `jitter`; bandwidth `rate` ("1MB/s"; K, M, G are powers of 1000, Ki, Mi,
//! Gi of 1024; "bit" units count bits); slow_close `delay`; timeout and
//! reset_peer `timeout`; slicer `average_size`, `size_variation`, `delay`;
//! limit_data `bytes`; loss `probability`, `burst_enter`, `burst_exit`,
//! `bad_loss`, `good_loss`; duplicate and corrupt `probability`; reorder
//! `probability`, `gap`, `max_hold`. Durations are strings ("100ms").

use std::time::Duration;

use toml::{Table, Value};

use crate::proto::{self, fault::Kind};

/// The attribute keys of each type (beyond the common ones).
pub fn keys_of(ty: &str) -> Option<&'static [&'static str]> {
    Some(match ty {
        "latency" => &["latency", "jitter"],
        "bandwidth" => &["rate"],
        "slow_close" => &["delay"],
        "timeout" | "reset_peer" => &["timeout"],
        "slicer" => &["average_size", "size_variation", "delay"],
        "limit_data" => &["bytes"],
        "down" => &[],
        "loss" => &[
            "probability",
            "burst_enter",
            "burst_exit",
            "bad_loss",
            "good_loss",
        ],
        "duplicate" | "corrupt" => &["probability"],
        "reorder" => &["probability", "gap", "max_hold"],
        _ => return None,
    })
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
                super::TCP_TYPES
                    .iter()
                    .chain(
                        super::UDP_TYPES
                            .iter()
                            .filter(|t| !super::TCP_TYPES.contains(t))
                    )
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    let Some(own) = keys_of(&ty) else {
        return Err(format!("unknown fault type '{ty}'"));
    };
    for k in t.keys() {
        if !COMMON_KEYS.contains(&k.as_str()) && !own.contains(&k.as_str()) {
            return Err(if keys_of_any(k) {
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
    let prob = |k: &str| get(k).map(|v| f64_value(k, v)).transpose();
    let when = proto::FaultCondition {
        after_bytes: get("after_bytes")
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
    };
    let u32k = |k: &str| get(k).map(|v| u32_value(k, v)).transpose();
    let kind = match ty.as_str() {
        "latency" => Kind::Latency(proto::LatencyFault {
            latency: dur("latency")?,
            jitter: dur("jitter")?,
        }),
        "bandwidth" => Kind::Bandwidth(proto::BandwidthFault {
            rate_bytes_per_sec: match get("rate") {
                Some(v) => rate_value("rate", v)?,
                None => return Err("a bandwidth fault needs a rate, e.g. \"1MB/s\"".into()),
            },
        }),
        "slow_close" => Kind::SlowClose(proto::SlowCloseFault {
            delay: dur("delay")?,
        }),
        "timeout" => Kind::Timeout(proto::TimeoutFault {
            timeout: dur("timeout")?,
        }),
        "reset_peer" => Kind::ResetPeer(proto::ResetPeerFault {
            timeout: dur("timeout")?,
        }),
        "slicer" => Kind::Slicer(proto::SlicerFault {
            average_size: u32k("average_size")?.unwrap_or(0),
            size_variation: u32k("size_variation")?.unwrap_or(0),
            delay: dur("delay")?,
        }),
        "limit_data" => Kind::LimitData(proto::LimitDataFault {
            bytes: get("bytes")
                .map(|v| u64_value("bytes", v))
                .transpose()?
                .unwrap_or(0),
        }),
        "down" => Kind::Down(proto::DownFault {}),
        "loss" => Kind::Loss(proto::LossFault {
            probability: prob("probability")?.unwrap_or(0.0),
            burst_enter: prob("burst_enter")?.unwrap_or(0.0),
            burst_exit: prob("burst_exit")?.unwrap_or(0.0),
            bad_loss: prob("bad_loss")?,
            good_loss: prob("good_loss")?.unwrap_or(0.0),
        }),
        "duplicate" => Kind::Duplicate(proto::DuplicateFault {
            probability: prob("probability")?.unwrap_or(0.0),
        }),
        "corrupt" => Kind::Corrupt(proto::CorruptFault {
            probability: prob("probability")?.unwrap_or(0.0),
        }),
        "reorder" => Kind::Reorder(proto::ReorderFault {
            probability: prob("probability")?.unwrap_or(0.0),
            gap: u32k("gap")?.unwrap_or(0),
            max_hold: dur("max_hold")?,
        }),
        _ => unreachable!("checked by keys_of"),
    };
    Ok(proto::Fault {
        name,
        direction: direction as i32,
        toxicity,
        when: (when != proto::FaultCondition::default()).then_some(when),
        kind: Some(kind),
    })
}

fn keys_of_any(k: &str) -> bool {
    super::TCP_TYPES
        .iter()
        .chain(super::UDP_TYPES)
        .filter_map(|t| keys_of(t))
        .any(|ks| ks.contains(&k))
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
    let put_f = |t: &mut Table, k: &str, v: f64| {
        if v != 0.0 {
            t.insert(k.into(), Value::Float(v));
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
    }
    match &f.kind {
        None => {}
        Some(Kind::Latency(l)) => {
            put_dur(&mut t, "latency", &l.latency);
            put_dur(&mut t, "jitter", &l.jitter);
        }
        Some(Kind::Bandwidth(b)) => {
            t.insert("rate".into(), s(&format_rate(b.rate_bytes_per_sec)));
            // An exact figure where the short form rounds.
            if parse_rate(&format_rate(b.rate_bytes_per_sec)).ok() != Some(b.rate_bytes_per_sec) {
                put_u64(&mut t, "rate", b.rate_bytes_per_sec);
            }
        }
        Some(Kind::SlowClose(x)) => put_dur(&mut t, "delay", &x.delay),
        Some(Kind::Timeout(x)) => put_dur(&mut t, "timeout", &x.timeout),
        Some(Kind::ResetPeer(x)) => put_dur(&mut t, "timeout", &x.timeout),
        Some(Kind::Slicer(x)) => {
            put_u64(&mut t, "average_size", x.average_size.into());
            put_u64(&mut t, "size_variation", x.size_variation.into());
            put_dur(&mut t, "delay", &x.delay);
        }
        Some(Kind::LimitData(x)) => put_u64(&mut t, "bytes", x.bytes),
        Some(Kind::Down(_)) => {}
        Some(Kind::Loss(x)) => {
            put_f(&mut t, "probability", x.probability);
            put_f(&mut t, "burst_enter", x.burst_enter);
            put_f(&mut t, "burst_exit", x.burst_exit);
            if let Some(b) = x.bad_loss {
                t.insert("bad_loss".into(), Value::Float(b));
            }
            put_f(&mut t, "good_loss", x.good_loss);
        }
        Some(Kind::Duplicate(x)) => put_f(&mut t, "probability", x.probability),
        Some(Kind::Corrupt(x)) => put_f(&mut t, "probability", x.probability),
        Some(Kind::Reorder(x)) => {
            put_f(&mut t, "probability", x.probability);
            put_u64(&mut t, "gap", x.gap.into());
            put_dur(&mut t, "max_hold", &x.max_hold);
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
        let bw: Table =
            toml::from_str("name = \"b\"\ntype = \"bandwidth\"\nrate = \"1234567B/s\"").unwrap();
        let f = from_table(&bw).unwrap();
        assert_eq!(from_table(&to_table(&f)).unwrap(), f);
    }
}
