//! How netctl shows a listener of each kind: the JSON of its spec and of
//! its stats detail, the DETAIL cell of `netctl stats` and the extra lines
//! of `netctl status`. Each kind implements [`Show`] in a `show.rs` of its
//! own folder; the dispatch below is generated from the registry's
//! `kinds!` list, so a registered kind without a [`Show`] does not compile
//! and netctl (which links this library) names no kind.
//!
//! What is generic lives here too: the units netctl prints (`1.5 KiB`,
//! `1.2k`, `5m`) and whether a kind's traffic is connections or datagrams
//! (its [`Transport`]).

use std::time::Duration;

use serde_json::Value;

use crate::proto::{self, listener_spec::Kind, listener_stats::Detail};

// The kinds' modules, as the registry's list names them.
#[allow(clippy::wildcard_imports)]
use super::*;

/// A part of `netctl status` below the common lines, from a kind's stats
/// detail. netctl escapes every text and cell when it prints them.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// `label: text`, the label padded as the common lines' are.
    Line { label: &'static str, text: String },
    /// `title:` on a line of its own, then a table (cells as given; the
    /// first column indented by the kind, as the header says).
    Table {
        title: &'static str,
        header: &'static [&'static str],
        rows: Vec<Vec<String>>,
    },
}

impl Part {
    pub fn line(label: &'static str, text: String) -> Part {
        Part::Line { label, text }
    }
}

/// What netctl shows of one kind. Implemented by each kind in its own
/// folder (`services/<kind>/show.rs`).
pub trait Show: ListenerKind {
    /// The kind's arm of `ListenerStats.detail` (`()` for a kind without).
    type Stats;
    /// The key the detail goes under in a listener's JSON stats
    /// (its slug in snake case); unused by a kind without detail.
    const STATS_KEY: &'static str = "";

    /// The kind's own detail, if `detail` is its arm.
    fn stats(_detail: &Detail) -> Option<&Self::Stats> {
        None
    }

    /// The spec as `netctl -o json` shows it (`spec`), its fields in the
    /// order printed; `netctl status` prints the same as `key=value`.
    fn spec_json(spec: &Self::Spec) -> Value;

    /// The faults of the spec (each gets a row under `faults:` in `netctl
    /// status`). Default: the kind takes none.
    fn spec_faults(_spec: &Self::Spec) -> &[proto::Fault] {
        &[]
    }

    /// The detail as JSON (under [`Show::STATS_KEY`]).
    fn stats_json(_stats: &Self::Stats) -> Value {
        Value::Null
    }

    /// The parts of the DETAIL cell of `netctl stats` (joined with ", ";
    /// none reads "-").
    fn stats_cell(_stats: &Self::Stats) -> Vec<String> {
        Vec::new()
    }

    /// The lines and tables of `netctl status` after the common ones.
    fn status(_stats: &Self::Stats) -> Vec<Part> {
        Vec::new()
    }
}

/// A served TLS spec as JSON (None: plaintext, and the key is left out).
/// Paths only: a key's contents are never in a spec.
pub fn tls_server_json(tls: Option<&proto::TlsServer>) -> Option<Value> {
    let proto::TlsServer {
        cert_file,
        key_file,
        client_ca_file,
        client_auth,
        alpn,
        handshake_timeout,
    } = tls?;
    Some(serde_json::json!({
        "cert": cert_file,
        "key": key_file,
        "client_ca": client_ca_file,
        "client_auth": client_auth,
        "alpn": alpn,
        "handshake_timeout": dur(handshake_timeout),
    }))
}

/// An originated TLS spec as JSON (None: plaintext upstreams).
pub fn tls_client_json(tls: Option<&proto::TlsClient>) -> Option<Value> {
    let proto::TlsClient {
        enabled,
        sni,
        ca_file,
        cert_file,
        key_file,
        insecure,
    } = tls?;
    Some(serde_json::json!({
        "enabled": enabled,
        "sni": sni,
        "ca": ca_file,
        "cert": cert_file,
        "key": key_file,
        "insecure": insecure,
    }))
}

/// A listener's TLS counters as JSON (`stats.tls`), whatever its kind:
/// the fields of `TlsStats`, failures by reason under `failed`.
pub fn tls_stats_json(t: &proto::TlsStats) -> Value {
    let failed: serde_json::Map<String, Value> = tls_failures(t)
        .into_iter()
        .map(|(reason, n)| (reason.to_string(), n.into()))
        .collect();
    serde_json::json!({
        "handshakes": t.handshakes,
        "failed": failed,
        "certificate_subject": t.certificate_subject,
        "certificate_not_after": t.certificate_not_after,
        "certificate_expires": unix_time(t.certificate_not_after),
        "reloads": t.reloads,
        "reload_failures": t.reload_failures,
        "last_reload_error": t.last_reload_error,
        "last_version": t.last_version,
        "last_cipher": t.last_cipher,
        "last_alpn": t.last_alpn,
        "last_client_subject": t.last_client_subject,
        "upstream_handshakes": t.upstream_handshakes,
        "upstream_failures": t.upstream_failures,
    })
}

/// Failed handshakes by reason (the `/metrics` label values), all of them.
pub fn tls_failures(t: &proto::TlsStats) -> [(&'static str, u64); 6] {
    use crate::net::tls::Reason;
    [
        (Reason::NoSharedCipher.label(), t.failed_no_shared_cipher),
        (Reason::UnknownCa.label(), t.failed_unknown_ca),
        (Reason::BadCertificate.label(), t.failed_bad_certificate),
        (Reason::ProtocolVersion.label(), t.failed_protocol_version),
        (Reason::Timeout.label(), t.failed_timeout),
        (Reason::Other.label(), t.failed_other),
    ]
}

/// Unix seconds as RFC 3339 ("2027-03-01T12:00:00Z"); null for 0.
fn unix_time(secs: i64) -> Value {
    if secs <= 0 {
        return Value::Null;
    }
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs());
    Value::String(humantime::format_rfc3339_seconds(t).to_string())
}

/// The TLS part of the DETAIL cell of `netctl stats`: "tls 12 hs, 1 fail".
pub fn tls_cell(t: &proto::TlsStats) -> String {
    let failed: u64 = tls_failures(t).iter().map(|(_, n)| n).sum();
    let mut cell = format!("tls {} hs, {failed} fail", short(t.handshakes));
    if t.upstream_handshakes > 0 || t.upstream_failures > 0 {
        cell.push_str(&format!(
            ", up {} hs, {} fail",
            short(t.upstream_handshakes),
            t.upstream_failures
        ));
    }
    cell
}

/// The TLS lines of `netctl status`, whatever the kind.
pub fn tls_status(t: &proto::TlsStats) -> Vec<Part> {
    let failures: Vec<String> = tls_failures(t)
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let failed: u64 = tls_failures(t).iter().map(|(_, n)| n).sum();
    let mut tls = format!("{} handshakes, {failed} failed", t.handshakes);
    if !failures.is_empty() {
        tls.push_str(&format!(" ({})", failures.join(", ")));
    }
    tls.push_str(&format!(
        ", {} reloads, {} refused",
        t.reloads, t.reload_failures
    ));
    let mut parts = vec![Part::line("tls", tls)];
    if !t.certificate_subject.is_empty() {
        let expires = match unix_time(t.certificate_not_after) {
            Value::String(s) => s,
            _ => "-".into(),
        };
        parts.push(Part::line(
            "tls_cert",
            format!("{}, expires {expires}", t.certificate_subject),
        ));
    }
    if !t.last_version.is_empty() {
        let or_none = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        parts.push(Part::line(
            "tls_last",
            format!(
                "{} {} alpn={} client={}",
                t.last_version,
                t.last_cipher,
                or_none(&t.last_alpn),
                or_none(&t.last_client_subject)
            ),
        ));
    }
    if !t.last_reload_error.is_empty() {
        parts.push(Part::line("tls_refused", t.last_reload_error.clone()));
    }
    if t.upstream_handshakes > 0 || t.upstream_failures > 0 {
        parts.push(Part::line(
            "upstream_tls",
            format!(
                "{} handshakes, {} failed",
                t.upstream_handshakes, t.upstream_failures
            ),
        ));
    }
    parts
}

/// Generates the dispatch over `listener_spec::Kind` and over the kinds'
/// stats details from the registry's list.
macro_rules! dispatch {
    ($($arm:ident => $ty:ty),+ $(,)?) => {
        /// A spec arm as JSON (see [`Show::spec_json`]).
        pub fn spec_json(kind: &Kind) -> Value {
            match kind {
                $(Kind::$arm(s) => <$ty as Show>::spec_json(s),)+
            }
        }

        /// The faults of a spec arm (empty for kinds that take none).
        pub fn spec_faults(kind: &Kind) -> &[proto::Fault] {
            match kind {
                $(Kind::$arm(s) => <$ty as Show>::spec_faults(s),)+
            }
        }

        /// A stats detail as JSON, with the key it goes under.
        pub fn stats_json(detail: &Detail) -> Option<(&'static str, Value)> {
            $(if let Some(s) = <$ty as Show>::stats(detail) {
                return Some((<$ty as Show>::STATS_KEY, <$ty as Show>::stats_json(s)));
            })+
            None
        }

        /// The parts of the DETAIL cell of `netctl stats`.
        pub fn stats_cell(detail: &Detail) -> Vec<String> {
            $(if let Some(s) = <$ty as Show>::stats(detail) {
                return <$ty as Show>::stats_cell(s);
            })+
            Vec::new()
        }

        /// A default spec arm of every kind, in registry order.
        #[cfg(test)]
        fn default_specs() -> Vec<Kind> {
            vec![$(Kind::$arm(Default::default()),)+]
        }

        /// The stats key of every kind that has a stats detail, with its
        /// slug.
        #[cfg(test)]
        fn stats_keys() -> Vec<(&'static str, &'static str)> {
            vec![$((<$ty as ListenerKind>::SLUG, <$ty as Show>::STATS_KEY),)+]
        }

        /// The kind's parts of `netctl status`.
        pub fn status(detail: &Detail) -> Vec<Part> {
            $(if let Some(s) = <$ty as Show>::stats(detail) {
                return <$ty as Show>::status(s);
            })+
            Vec::new()
        }
    };
}

super::kinds!(dispatch);

/// Whether a kind counts connections (TCP kinds); else it counts datagrams
/// or packets. An unknown kind counts connections.
pub fn counts_connections(kind: proto::ListenerKind) -> bool {
    !matches!(transport(kind), Some(Transport::Udp | Transport::Packet))
}

fn transport(kind: proto::ListenerKind) -> Option<Transport> {
    KINDS.iter().find(|k| k.kind == kind).map(|k| k.transport)
}

/// The TRAFFIC cell of `netctl list`: connections, datagrams or packets.
pub fn traffic(kind: proto::ListenerKind, s: &proto::ListenerStats) -> String {
    match transport(kind) {
        Some(Transport::Udp) => count(s.datagrams_in, "dgram", "dgrams"),
        Some(Transport::Packet) => count(s.datagrams_in, "packet", "packets"),
        Some(Transport::Tcp) | None => format!(
            "{} active, {} total",
            s.connections_active, s.connections_total
        ),
    }
}

/// "1 dgram", "2 dgrams".
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
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

/// A count, short: 1234 -> "1.2k".
pub fn short(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// A duration field of a spec, as people write it ("5m"); null if unset.
pub fn dur(d: &Option<prost_types::Duration>) -> Value {
    d.and_then(|d| Duration::try_from(d).ok())
        .map_or(Value::Null, |d| {
            Value::String(humantime::format_duration(d).to_string())
        })
}

/// Faults as their attribute tables (the config's and netctl's names).
pub fn faults_json(faults: &[proto::Fault]) -> Value {
    Value::Array(
        faults
            .iter()
            .map(|f| serde_json::to_value(crate::fault::attrs::to_table(f)).unwrap_or(Value::Null))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind shows its spec as an object (the `status` line is made
    /// of its keys), with no key twice.
    #[test]
    fn every_kind_shows_its_spec_as_an_object() {
        let specs = default_specs();
        assert_eq!(specs.len(), KINDS.len());
        for (spec, k) in specs.iter().zip(KINDS) {
            let Value::Object(m) = spec_json(spec) else {
                panic!("{}: the spec is not shown as an object", k.slug)
            };
            assert!(!m.is_empty(), "{}", k.slug);
            assert!(spec_faults(spec).is_empty(), "{}", k.slug);
        }
    }

    /// A kind's stats go under its slug in snake case ("a-b" is "a_b"), or
    /// under nothing if it has none.
    #[test]
    fn stats_keys_are_the_slugs() {
        for (slug, key) in stats_keys() {
            assert!(
                key.is_empty() || key == slug.replace('-', "_"),
                "{slug}: {key}"
            );
        }
    }

    #[test]
    fn units() {
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(short(999), "999");
        assert_eq!(short(1234), "1.2k");
        assert_eq!(short(5_000_000_000), "5.0G");
        let five_min = Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        });
        assert_eq!(dur(&five_min), Value::String("5m".into()));
        assert_eq!(dur(&None), Value::Null);
        assert_eq!(count(1, "dgram", "dgrams"), "1 dgram");
        assert!(counts_connections(proto::ListenerKind::Unspecified));
    }
}
