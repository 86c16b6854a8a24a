//! Listener specs written back as config TOML: the inverse of the
//! `[[listener]]` half of [`crate::config`], for `netctl export`.
//!
//! What it writes, [`crate::config::parse_listeners`] reads back to the
//! same names, specs and labels (round trip tested below, for every field
//! of every kind), with one deliberate exception: an HTTP token is written
//! as the placeholder [`crate::services::http::REDACTED`], never as the secret; netd reads the
//! placeholder in an apply as "keep the current token", and a boot config
//! refuses it.
//!
//! Each kind writes its own keys in its module
//! ([`crate::services::ListenerKind::write_config`]), destructuring its
//! spec without `..`, so a field added to the proto does not compile there
//! until it is written (and the round-trip
//! tests, which build every spec field by field, do not compile until they
//! set it). Fields at their zero value (0, "", false, unset duration, no
//! upstreams) are left out, as the parser reads a missing key as zero.
//! Values are encoded by the `toml` crate, never by hand.

use crate::proto;
use crate::spec::Table;
use std::collections::{BTreeMap, HashMap};

/// The first line of every export.
pub const HEADER: &str =
    "# netd listeners, exported by netctl export; apply with: netctl apply -f FILE";

/// One listener to export: what the config's `[[listener]]` table holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportListener {
    pub name: String,
    pub spec: proto::ListenerSpec,
    pub labels: HashMap<String, String>,
}

impl From<&proto::Listener> for ExportListener {
    fn from(l: &proto::Listener) -> Self {
        ExportListener {
            name: l.name.clone(),
            spec: l.spec.clone().unwrap_or_default(),
            labels: l.labels.clone(),
        }
    }
}

impl From<crate::spec::BootListener> for ExportListener {
    fn from(b: crate::spec::BootListener) -> Self {
        ExportListener {
            name: b.name,
            spec: b.spec,
            labels: b.labels,
        }
    }
}

/// A listener the config format cannot express exactly; the message names
/// the listener and the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ExportError(String);

/// `listeners` as an apply file: [`HEADER`], then one `[[listener]]` table
/// per listener, sorted by name. Refuses (rather than writing something
/// that would read back differently) a spec without a kind, two listeners
/// of one name, a negative or non-normalised duration, and a number
/// larger than a TOML integer.
pub fn listeners_to_toml(listeners: &[ExportListener]) -> Result<String, ExportError> {
    let mut sorted: Vec<&ExportListener> = listeners.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(ExportError(format!(
            "two listeners are named '{}'",
            w[0].name.escape_debug()
        )));
    }
    let mut out = String::from(HEADER);
    out.push('\n');
    for l in sorted {
        out.push('\n');
        out += &table(l)
            .map_err(|e| ExportError(format!("listener '{}': {e}", l.name.escape_debug())))?;
    }
    Ok(out)
}

/// One `[[listener]]` table, with its labels as `[listener.labels]`.
fn table(l: &ExportListener) -> Result<String, String> {
    let mut t = Table::default();
    t.line("name", toml::Value::String(l.name.clone()));
    let Some(kind) = &l.spec.kind else {
        return Err("the spec names no kind".into());
    };
    t.line("kind", crate::services::info(kind).slug.into());
    crate::services::write_config(kind, &mut t)?;
    let mut out = String::from("[[listener]]\n");
    out += t.text();
    if !l.labels.is_empty() {
        // The serializer quotes keys that need it; sorted for a stable file.
        let labels: BTreeMap<&String, &String> = l.labels.iter().collect();
        let body = toml::to_string(&labels).map_err(|e| format!("labels: {e}"))?;
        out += "[listener.labels]\n";
        out += &body;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Config};
    use crate::proto::listener_spec::Kind;
    use crate::services::http::REDACTED;
    use crate::spec::table::duration_text;

    const SOURCE: &str = "export.toml";

    fn d(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos })
    }

    /// A certificate and key on disk, for the TLS fields: the config
    /// reader validates specs, and so loads them. The key's name needs
    /// quoting in TOML.
    struct TlsFiles {
        _dir: tempfile::TempDir,
        cert: String,
        key: String,
    }

    fn tls_files() -> &'static TlsFiles {
        use std::os::unix::fs::PermissionsExt;
        static FILES: std::sync::OnceLock<TlsFiles> = std::sync::OnceLock::new();
        FILES.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let c = dir.path().join("cert.pem");
            let k = dir.path().join("key \"q\".pem");
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
            TlsFiles {
                cert: c.to_str().unwrap().to_string(),
                key: k.to_str().unwrap().to_string(),
                _dir: dir,
            }
        })
    }

    fn listener(name: &str, kind: Kind) -> ExportListener {
        ExportListener {
            name: name.into(),
            spec: proto::ListenerSpec { kind: Some(kind) },
            labels: HashMap::new(),
        }
    }

    /// Write `listeners`, read the text back as an apply file.
    fn round_trip(listeners: &[ExportListener]) -> Vec<ExportListener> {
        let text = listeners_to_toml(listeners).unwrap();
        let parsed = config::parse_listeners(&text, SOURCE)
            .unwrap_or_else(|e| panic!("{e}\n--- exported text:\n{text}"));
        parsed.into_iter().map(ExportListener::from).collect()
    }

    /// What a round trip must give back: the listeners sorted by name, a
    /// token replaced by the placeholder.
    pub(super) fn expected(listeners: &[ExportListener]) -> Vec<ExportListener> {
        let mut want = listeners.to_vec();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        for l in &mut want {
            if let Some(Kind::Http(h)) = &mut l.spec.kind {
                if !h.token.is_empty() {
                    h.token = REDACTED.into();
                }
            }
        }
        want
    }

    fn fault(
        name: &str,
        direction: proto::FaultDirection,
        kind: proto::fault::Kind,
    ) -> proto::Fault {
        proto::Fault {
            name: name.into(),
            direction: direction as i32,
            toxicity: Some(0.25),
            when: Some(proto::FaultCondition {
                after_bytes: 10,
                start_after: d(1, 5),
                duration: d(60, 0),
                client_cidr: "127.0.0.0/8".into(),
                every_nth: 3,
                ..Default::default()
            }),
            kind: Some(kind),
        }
    }

    /// A fault of every TCP type, every attribute set.
    fn every_tcp_fault() -> Vec<proto::Fault> {
        use proto::FaultDirection as D;
        use proto::fault::Kind as F;
        vec![
            fault(
                "lat",
                D::Both,
                F::Latency(proto::LatencyFault {
                    latency: d(0, 100_000_000),
                    jitter: d(0, 7_000_001),
                }),
            ),
            fault(
                "bw",
                D::Upstream,
                F::Bandwidth(proto::BandwidthFault {
                    rate_bytes_per_sec: 1_234_567,
                }),
            ),
            fault(
                "sc",
                D::Downstream,
                F::SlowClose(proto::SlowCloseFault { delay: d(2, 0) }),
            ),
            fault(
                "to",
                D::Both,
                F::Timeout(proto::TimeoutFault { timeout: d(3, 0) }),
            ),
            fault(
                "rp",
                D::Both,
                F::ResetPeer(proto::ResetPeerFault { timeout: d(0, 500) }),
            ),
            fault(
                "sl",
                D::Both,
                F::Slicer(proto::SlicerFault {
                    average_size: 64,
                    size_variation: 8,
                    delay: d(0, 10_000),
                }),
            ),
            fault(
                "ld",
                D::Both,
                F::LimitData(proto::LimitDataFault { bytes: 1 << 40 }),
            ),
            fault("dn", D::Both, F::Down(proto::DownFault {})),
        ]
    }

    /// A fault of every UDP-only type, every attribute set.
    fn every_udp_fault() -> Vec<proto::Fault> {
        use proto::FaultDirection as D;
        use proto::fault::Kind as F;
        let mut v: Vec<proto::Fault> = vec![
            fault(
                "loss",
                D::Both,
                F::Loss(proto::LossFault {
                    probability: 0.0,
                    burst_enter: 0.05,
                    burst_exit: 0.5,
                    bad_loss: Some(0.9),
                    good_loss: 0.001,
                }),
            ),
            fault(
                "dup",
                D::Upstream,
                F::Duplicate(proto::DuplicateFault { probability: 0.1 }),
            ),
            fault(
                "reo",
                D::Downstream,
                F::Reorder(proto::ReorderFault {
                    probability: 0.3,
                    gap: 2,
                    max_hold: d(0, 50_000_000),
                }),
            ),
            fault(
                "cor",
                D::Both,
                F::Corrupt(proto::CorruptFault { probability: 1e-3 }),
            ),
        ];
        for f in &mut v {
            if let Some(w) = &mut f.when {
                w.after_bytes = 0;
            }
        }
        v
    }

    /// The http-proxy of [`every_field_of_every_kind`].
    fn every_http_proxy_field() -> ExportListener {
        listener(
            "hp",
            Kind::HttpProxy(proto::HttpProxySpec {
                listen: "127.0.0.1:0".into(),
                upstreams: vec!["127.0.0.1:9".into(), "[::1]:7".into()],
                connect_timeout: d(0, 1_000_000),
                upstream_backoff: d(3, 999_999_999),
                max_connections: 1_000_000,
                max_idle_per_upstream: 1024,
                upstream_protocol: "http1".into(),
                forwarded: "both".into(),
                routes: vec!["/api".into(), "/api/orders\"'q'".into(), "/".into()],
                retries: 8,
                max_body_bytes: 4096,
                header_read_timeout: d(1, 500_000_000),
                request_timeout: d(3600, 0),
                idle_timeout: d(86_399, 123_456_789),
                max_streams: 1000,
                max_header_bytes: 1024,
                access_log: Some(false),
                // HTTP faults round-trip with the fault types' tests.
                faults: Vec::new(),
                envoy_fault_headers: true,
                tls: Some(proto::TlsServer {
                    cert_file: tls_files().cert.clone(),
                    key_file: tls_files().key.clone(),
                    client_ca_file: tls_files().cert.clone(),
                    client_auth: "request".into(),
                    alpn: vec!["h2".into(), "http/1.1".into()],
                    handshake_timeout: d(2, 500_000_000),
                }),
                upstream_tls: Some(proto::TlsClient {
                    enabled: true,
                    sni: "api.internal".into(),
                    ca_file: tls_files().cert.clone(),
                    cert_file: tls_files().cert.clone(),
                    key_file: tls_files().key.clone(),
                    insecure: false,
                }),
            }),
        )
    }

    /// One spec of each kind with every field set to something other than
    /// its zero value. Struct literals without `..`: a new proto field
    /// does not compile here until it is set (and so round-tripped).
    fn every_field_of_every_kind() -> Vec<ExportListener> {
        let mut v = vec![
            listener(
                "t",
                Kind::TcpEcho(proto::TcpEchoSpec {
                    listen: "127.0.0.1:0".into(),
                    prefix: "Echo \"quoted\" \\ back\nslash ünï 🦀: ".into(),
                    max_connections: 7,
                    idle_timeout: d(90, 1_000_001),
                    access_log: Some(false),
                    tls: Some(proto::TlsServer {
                        cert_file: tls_files().cert.clone(),
                        key_file: tls_files().key.clone(),
                        client_ca_file: tls_files().cert.clone(),
                        client_auth: "request".into(),
                        alpn: vec!["h2".into(), "http/1.1".into()],
                        handshake_timeout: d(2, 500_000_000),
                    }),
                }),
            ),
            listener(
                "u",
                Kind::UdpEcho(proto::UdpEchoSpec {
                    listen: "[::1]:0".into(),
                    prefix: "ACK\r\n'''\"\"\"\t\u{1b}: ".into(),
                    allow_privileged_sources: true,
                    rate_limit: "600/m".into(),
                    max_sources: 12,
                    access_log: None,
                }),
            ),
            listener(
                "p",
                Kind::Proxy(proto::ProxySpec {
                    listen: "127.0.0.1:0".into(),
                    upstreams: vec!["127.0.0.1:9".into(), "[::1]:7".into()],
                    preconnect: 3,
                    connect_timeout: d(0, 1_000_000),
                    idle_timeout: d(7 * 24 * 3600, 0),
                    max_connections: 1_000_000,
                    upstream_backoff: d(3, 999_999_999),
                    resolve_interval: d(90, 5),
                    access_log: Some(true),
                    faults: every_tcp_fault(),
                    tls: Some(proto::TlsServer {
                        cert_file: tls_files().cert.clone(),
                        key_file: tls_files().key.clone(),
                        client_ca_file: tls_files().cert.clone(),
                        client_auth: "request".into(),
                        alpn: vec!["h2".into(), "http/1.1".into()],
                        handshake_timeout: d(2, 500_000_000),
                    }),
                    upstream_tls: Some(proto::TlsClient {
                        enabled: true,
                        sni: "api.internal".into(),
                        ca_file: tls_files().cert.clone(),
                        cert_file: tls_files().cert.clone(),
                        key_file: tls_files().key.clone(),
                        insecure: false,
                    }),
                }),
            ),
            listener(
                "up",
                Kind::UdpProxy(proto::UdpProxySpec {
                    listen: "127.0.0.1:0".into(),
                    upstream: "127.0.0.1:53".into(),
                    max_clients: 77,
                    idle_timeout: d(5, 0),
                    faults: every_udp_fault(),
                    allow_privileged_sources: true,
                    rate_limit: "50/s".into(),
                    max_sources: 99,
                    max_clients_per_source: 3,
                }),
            ),
            listener(
                "h",
                Kind::Http(proto::HttpSpec {
                    listen: "127.0.0.1:0".into(),
                    max_body_bytes: 4096,
                    header_read_timeout: d(1, 500_000_000),
                    request_timeout: d(3600, 0),
                    max_connections: 9,
                    token: "s3cret-token".into(),
                    rate_limit: "5/s".into(),
                    body_budget_bytes: 64 << 30,
                    max_streams: 1000,
                    max_header_bytes: 1024,
                    idle_timeout: d(86_399, 123_456_789),
                    rate_limit_ipv6_prefix: 56,
                    access_log: Some(false),
                    tls: Some(proto::TlsServer {
                        cert_file: tls_files().cert.clone(),
                        key_file: tls_files().key.clone(),
                        client_ca_file: tls_files().cert.clone(),
                        client_auth: "request".into(),
                        alpn: vec!["h2".into(), "http/1.1".into()],
                        handshake_timeout: d(2, 500_000_000),
                    }),
                }),
            ),
            every_http_proxy_field(),
            listener(
                "s",
                Kind::Sniffer(proto::SnifferSpec {
                    interface: "lo".into(),
                    filter: "tcp and port 8080 and host ::1".into(),
                    pcap_path: "/var/lib/netd/captures/a \"b\" c.pcap".into(),
                    pcap_max_bytes: 1 << 40,
                    pcap_max_files: 1000,
                    max_flows: 1_000_000,
                    port_scan_ports: u32::MAX,
                    port_scan_window: d(61, 1),
                    syn_rate: 1,
                }),
            ),
        ];
        v[0].labels.insert("team".into(), "net \"ops\"".into());
        v[0].labels
            .insert("with space".into(), "line\nbreak".into());
        v[0].labels.insert(String::new(), String::new());
        v[0].labels.insert("ünï\\code".into(), "🦀".into());
        v
    }

    #[test]
    fn every_field_of_every_kind_round_trips() {
        let listeners = every_field_of_every_kind();
        // A kind added to the registry is round-tripped here too.
        for k in crate::services::KINDS {
            assert!(
                listeners
                    .iter()
                    .any(|l| crate::services::Service::spec_kind(&l.spec) == k.kind),
                "{}: no spec in every_field_of_every_kind",
                k.slug
            );
        }
        assert_eq!(round_trip(&listeners), expected(&listeners));
    }

    #[test]
    fn the_token_is_written_as_the_placeholder_only() {
        let text = listeners_to_toml(&every_field_of_every_kind()).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("token = \"<redacted>\"\n"), "{text}");
        // A boot config refuses what export wrote in place of the token.
        let e = Config::parse(&text, SOURCE).unwrap_err().to_string();
        assert!(
            e.contains("listener 'h'") && e.contains("placeholder written by netctl export"),
            "{e}"
        );
    }

    #[test]
    fn embedded_default_config_round_trips() {
        let listeners: Vec<ExportListener> = Config::embedded()
            .listeners
            .into_iter()
            .map(ExportListener::from)
            .collect();
        assert!(!listeners.is_empty());
        assert_eq!(round_trip(&listeners), expected(&listeners));
    }

    #[test]
    fn zero_values_are_left_out_and_tables_sorted_by_name() {
        let tcp = |listen: &str| {
            Kind::TcpEcho(proto::TcpEchoSpec {
                listen: listen.into(),
                ..Default::default()
            })
        };
        let text = listeners_to_toml(&[
            listener("b", tcp("127.0.0.1:2")),
            listener("a", tcp("127.0.0.1:1")),
        ])
        .unwrap();
        assert_eq!(
            text,
            format!(
                "{HEADER}\n\n[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \
                 \"127.0.0.1:1\"\n\n[[listener]]\nname = \"b\"\nkind = \"tcp-echo\"\nlisten = \
                 \"127.0.0.1:2\"\n"
            )
        );
        assert_eq!(listeners_to_toml(&[]).unwrap(), format!("{HEADER}\n"));
        assert!(
            config::parse_listeners(&format!("{HEADER}\n"), SOURCE)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn durations_are_exact_to_the_nanosecond() {
        for (s, n, text) in [
            (0, 1_000_000, "1ms"),
            (90, 1_000_001, "1m 30s 1ms 1ns"),
            (7 * 24 * 3600, 0, "7days"),
            (3600, 999_999_999, "1h 999ms 999us 999ns"),
        ] {
            let dur = prost_types::Duration {
                seconds: s,
                nanos: n,
            };
            assert_eq!(duration_text(&dur).unwrap(), text);
        }
        // Beyond what netd accepts, still exact (years and months are
        // humantime's fixed lengths both ways).
        for (s, n) in [
            (400 * 86_400 + 3, 7),
            (i64::MAX / 1000, 999_999_999),
            (1, 0),
        ] {
            let dur = prost_types::Duration {
                seconds: s,
                nanos: n,
            };
            let text = duration_text(&dur).unwrap();
            let back = humantime::parse_duration(&text).unwrap();
            assert_eq!(
                prost_types::Duration::try_from(back).unwrap(),
                dur,
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_what_would_read_back_differently() {
        let tcp = |idle: Option<prost_types::Duration>| {
            listener(
                "t\n1",
                Kind::TcpEcho(proto::TcpEchoSpec {
                    listen: "127.0.0.1:0".into(),
                    idle_timeout: idle,
                    ..Default::default()
                }),
            )
        };
        let e = listeners_to_toml(&[tcp(d(-1, 0))]).unwrap_err().to_string();
        assert_eq!(e, "listener 't\\n1': idle_timeout: -1s 0ns is negative");
        let e = listeners_to_toml(&[tcp(d(1, 1_000_000_000))])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("idle_timeout") && e.contains("not normalised"),
            "{e}"
        );
        let e = listeners_to_toml(&[tcp(d(1, -1))]).unwrap_err().to_string();
        assert!(e.contains("not normalised"), "{e}");

        let big = listener(
            "s",
            Kind::Sniffer(proto::SnifferSpec {
                interface: "lo".into(),
                pcap_max_bytes: u64::MAX,
                ..Default::default()
            }),
        );
        let e = listeners_to_toml(&[big]).unwrap_err().to_string();
        assert!(
            e.contains("pcap_max_bytes") && e.contains("TOML integer"),
            "{e}"
        );

        let none = ExportListener {
            name: "x".into(),
            spec: proto::ListenerSpec::default(),
            labels: HashMap::new(),
        };
        let e = listeners_to_toml(&[none]).unwrap_err().to_string();
        assert!(e.contains("no kind"), "{e}");

        let e = listeners_to_toml(&[tcp(None), tcp(None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("two listeners"), "{e}");
    }

    #[test]
    fn from_a_listener_message() {
        let l = proto::Listener {
            name: "n".into(),
            spec: every_field_of_every_kind().pop().map(|l| l.spec),
            labels: HashMap::from([("a".into(), "b".into())]),
            bound_addr: "ignored".into(),
            ..Default::default()
        };
        let e = ExportListener::from(&l);
        assert_eq!(
            (e.name.as_str(), e.spec, e.labels),
            ("n", l.spec.clone().unwrap(), l.labels.clone())
        );
    }
}

/// Property tests: arbitrary valid listeners of every kind, written and
/// read back as an apply file, come back equal (the token as the
/// placeholder).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::proto::listener_spec::Kind;
    use proptest::prelude::*;
    use std::time::Duration;

    /// A duration in `min..=max` (whole milliseconds up), with any nanos.
    fn duration(
        min: Duration,
        max: Duration,
    ) -> impl Strategy<Value = Option<prost_types::Duration>> {
        let any_ns = (min.as_nanos() as u64..=max.as_nanos() as u64)
            .prop_map(|n| Some(Duration::from_nanos(n)));
        let whole_s = (1..=max.as_secs()).prop_map(|s| Some(Duration::from_secs(s)));
        prop_oneof![1 => Just(None), 2 => any_ns, 1 => whole_s]
            .prop_map(|d| d.map(|d| prost_types::Duration::try_from(d).unwrap()))
    }

    fn spec_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
        let r = crate::services::DURATION_RANGE;
        duration(*r.start(), *r.end())
    }

    /// 0 (the default), or a value in `range`.
    fn zero_or(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), Just(*range.start()), Just(*range.end()), range]
    }

    fn zero_or_u32(range: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = u32> {
        zero_or(u64::from(*range.start())..=u64::from(*range.end())).prop_map(|n| n as u32)
    }

    /// Any text: quotes, backslashes, newlines, control characters,
    /// unicode.
    fn text(max_len: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[\"'\\\n\r\t a-z\u{0}\u{7f}\u{1b}é🦀]{0,12}",
            any::<String>(),
        ]
        .prop_filter("fits the field", move |s| s.len() <= max_len)
    }

    fn listen() -> impl Strategy<Value = String> {
        proptest::sample::select(&["127.0.0.1:0", "[::1]:0", "0.0.0.0:0", "127.0.0.2:0"][..])
            .prop_map(String::from)
    }

    fn rate() -> impl Strategy<Value = String> {
        (
            1u32..,
            proptest::sample::select(&["s", "m", "h", "second", "min"][..]),
        )
            .prop_map(|(n, u)| format!("{n}/{u}"))
    }

    fn tcp_echo() -> impl Strategy<Value = Kind> {
        (
            listen(),
            text(1024),
            zero_or_u32(1..=1_000_000),
            spec_duration(),
        )
            .prop_map(|(listen, prefix, max_connections, idle_timeout)| {
                Kind::TcpEcho(proto::TcpEchoSpec {
                    listen,
                    prefix,
                    max_connections,
                    idle_timeout,
                    access_log: None,
                    tls: None,
                })
            })
    }

    fn udp_echo() -> impl Strategy<Value = Kind> {
        (
            listen(),
            text(1024),
            any::<bool>(),
            prop_oneof![
                Just(String::new()),
                Just("off".into()),
                Just("none".into()),
                rate()
            ],
            any::<u32>(),
        )
            .prop_map(
                |(listen, prefix, allow_privileged_sources, rate_limit, max_sources)| {
                    Kind::UdpEcho(proto::UdpEchoSpec {
                        listen,
                        prefix,
                        allow_privileged_sources,
                        rate_limit,
                        max_sources,
                        access_log: None,
                    })
                },
            )
    }

    fn udp_proxy() -> impl Strategy<Value = Kind> {
        (
            listen(),
            proptest::sample::select(&["127.0.0.1:53", "[::1]:5353", "127.1.2.3:9"][..]),
            // Within the descriptor budget of any test machine.
            zero_or_u32(1..=512),
            duration(Duration::from_millis(1), Duration::from_secs(7 * 24 * 3600)),
        )
            .prop_map(|(listen, upstream, max_clients, idle_timeout)| {
                Kind::UdpProxy(proto::UdpProxySpec {
                    listen,
                    upstream: upstream.to_string(),
                    max_clients,
                    idle_timeout,
                    // Faults round-trip in the every-field test.
                    faults: Vec::new(),
                    // Derived rather than drawn: another strategy here
                    // overflows the test thread's stack in debug builds.
                    allow_privileged_sources: max_clients % 2 == 1,
                    rate_limit: String::new(),
                    max_sources: 0,
                    max_clients_per_source: max_clients / 3,
                })
            })
    }

    fn proxy() -> impl Strategy<Value = Kind> {
        let upstream = (
            proptest::sample::select(&["127.0.0.1", "[::1]", "127.1.2.3"][..]),
            1u16..,
        )
            .prop_map(|(h, p)| format!("{h}:{p}"));
        (
            listen(),
            proptest::collection::vec(upstream, 1..4),
            0u32..=crate::services::proxy::MAX_PRECONNECT,
            spec_duration(),
            spec_duration(),
            zero_or_u32(1..=1_000_000),
            spec_duration(),
            {
                let r = crate::services::proxy::resolve::RESOLVE_INTERVAL_RANGE;
                duration(*r.start(), *r.end())
            },
        )
            .prop_map(
                |(
                    listen,
                    upstreams,
                    preconnect,
                    connect_timeout,
                    idle_timeout,
                    max_connections,
                    upstream_backoff,
                    resolve_interval,
                )| {
                    Kind::Proxy(proto::ProxySpec {
                        listen,
                        upstreams,
                        preconnect,
                        connect_timeout,
                        idle_timeout,
                        max_connections,
                        upstream_backoff,
                        resolve_interval,
                        access_log: None,
                        faults: Vec::new(),
                        tls: None,
                        upstream_tls: None,
                    })
                },
            )
    }

    fn http() -> impl Strategy<Value = Kind> {
        use crate::services::http::*;
        let request = || duration(*REQUEST_TIMEOUT_RANGE.start(), *REQUEST_TIMEOUT_RANGE.end());
        // max_body_bytes, then a budget of at least what it comes to.
        let bodies = zero_or(1..=MAX_MAX_BODY).prop_flat_map(|max_body| {
            let least = if max_body == 0 {
                DEFAULT_MAX_BODY
            } else {
                max_body
            };
            let budget = if least <= DEFAULT_BODY_BUDGET {
                prop_oneof![Just(0u64), least..=MAX_BODY_BUDGET].boxed()
            } else {
                (least..=MAX_BODY_BUDGET).boxed()
            };
            (Just(max_body), budget)
        });
        (
            (
                listen(),
                bodies,
                request(),
                request(),
                zero_or_u32(1..=1_000_000),
            ),
            (
                prop_oneof![Just(String::new()), "[!-~]{1,64}"],
                prop_oneof![Just(String::new()), rate()],
                zero_or_u32(1..=MAX_MAX_STREAMS),
                zero_or(MAX_HEADER_BYTES_RANGE).prop_map(|n| n as u32),
                duration(*IDLE_TIMEOUT_RANGE.start(), *IDLE_TIMEOUT_RANGE.end()),
                0u32..=128,
            ),
        )
            .prop_map(
                |(
                    (
                        listen,
                        (max_body_bytes, body_budget_bytes),
                        header_read_timeout,
                        request_timeout,
                        max_connections,
                    ),
                    (
                        token,
                        rate_limit,
                        max_streams,
                        max_header_bytes,
                        idle_timeout,
                        rate_limit_ipv6_prefix,
                    ),
                )| {
                    Kind::Http(proto::HttpSpec {
                        listen,
                        max_body_bytes,
                        header_read_timeout,
                        request_timeout,
                        max_connections,
                        token,
                        rate_limit,
                        body_budget_bytes,
                        max_streams,
                        max_header_bytes,
                        idle_timeout,
                        rate_limit_ipv6_prefix,
                        access_log: None,
                        tls: None,
                    })
                },
            )
    }

    fn http_proxy() -> BoxedStrategy<Kind> {
        use crate::services::http_proxy::{MAX_MAX_IDLE, MAX_RETRIES};
        let upstream = (
            proptest::sample::select(&["127.0.0.1", "[::1]", "127.1.2.3"][..]),
            1u16..,
        )
            .prop_map(|(h, p)| format!("{h}:{p}"));
        (
            listen(),
            proptest::collection::vec(upstream, 1..4),
            proptest::collection::btree_set("/[!-~]{0,12}", 0..5),
            any::<u32>(),
        )
            .prop_map(|(listen, upstreams, routes, n)| {
                // The rest derived from `n` rather than drawn: more
                // strategies here overflow the test thread's stack in
                // debug builds (as in udp_proxy).
                let pick = |v: &[&str], i: u32| v[i as usize % v.len()].to_string();
                let retries = n % (MAX_RETRIES + 1);
                let dur = |seconds: i64, nanos: i32| Some(prost_types::Duration { seconds, nanos });
                Kind::HttpProxy(proto::HttpProxySpec {
                    listen,
                    upstreams,
                    connect_timeout: if n % 3 == 0 {
                        dur(1 + i64::from(n % 600), (n % 1000) as i32)
                    } else {
                        None
                    },
                    upstream_backoff: if n % 5 == 0 { dur(1, 0) } else { None },
                    max_connections: n % 1000,
                    max_idle_per_upstream: n % (MAX_MAX_IDLE + 1),
                    upstream_protocol: pick(&["", "auto", "http1", "h2c"], n / 7),
                    forwarded: pick(
                        &["", "x-forwarded-for", "forwarded", "both", "none"],
                        n / 11,
                    ),
                    routes: routes.into_iter().collect(),
                    retries,
                    max_body_bytes: u64::from(n % 4096),
                    header_read_timeout: if n % 2 == 0 { dur(2, 0) } else { None },
                    request_timeout: None,
                    idle_timeout: if n % 7 == 0 { dur(600, 5) } else { None },
                    max_streams: n % 1000,
                    max_header_bytes: if n % 3 == 1 { 1024 } else { 0 },
                    access_log: None,
                    // Faults round-trip in the every-field test.
                    faults: Vec::new(),
                    envoy_fault_headers: n % 2 == 1,
                    tls: None,
                    upstream_tls: None,
                })
            })
            // Boxed: the union in kind() would otherwise outgrow the test
            // thread's stack in debug builds.
            .boxed()
    }

    fn sniffer() -> impl Strategy<Value = Kind> {
        let filter = proptest::sample::select(
            &[
                "",
                "tcp",
                "udp and port 53",
                "host 127.0.0.1",
                " ICMP  and host ::1 ",
                "port 0 and tcp",
            ][..],
        )
        .prop_map(String::from);
        (
            filter,
            prop_oneof![Just(String::new()), text(200)],
            zero_or(1..=1 << 40),
            zero_or_u32(1..=1000),
            zero_or_u32(1..=crate::services::sniffer::MAX_FLOWS_LIMIT),
            any::<u32>(),
            spec_duration(),
            any::<u32>(),
        )
            .prop_map(
                |(
                    filter,
                    pcap_path,
                    pcap_max_bytes,
                    pcap_max_files,
                    max_flows,
                    port_scan_ports,
                    port_scan_window,
                    syn_rate,
                )| {
                    Kind::Sniffer(proto::SnifferSpec {
                        interface: "lo".into(),
                        filter,
                        pcap_path,
                        pcap_max_bytes,
                        pcap_max_files,
                        max_flows,
                        port_scan_ports,
                        port_scan_window,
                        syn_rate,
                    })
                },
            )
    }

    /// A kind's spec, with `access_log` unset, true or false where the
    /// kind has it.
    fn kind() -> impl Strategy<Value = Kind> {
        (
            prop_oneof![
                tcp_echo(),
                udp_echo(),
                proxy(),
                http().boxed(),
                sniffer(),
                udp_proxy(),
                http_proxy()
            ],
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(mut kind, access_log)| {
                match &mut kind {
                    Kind::TcpEcho(s) => s.access_log = access_log,
                    Kind::UdpEcho(s) => s.access_log = access_log,
                    Kind::Proxy(s) => s.access_log = access_log,
                    Kind::Http(s) => s.access_log = access_log,
                    Kind::HttpProxy(s) => s.access_log = access_log,
                    Kind::Sniffer(_) | Kind::UdpProxy(_) => {}
                }
                kind
            })
    }

    /// Listeners with distinct names (any text) and any labels.
    fn listeners() -> impl Strategy<Value = Vec<ExportListener>> {
        let labels = proptest::collection::hash_map(text(40), text(40), 0..4);
        proptest::collection::hash_map(text(40), (kind(), labels), 0..6).prop_map(|m| {
            m.into_iter()
                .map(|(name, (kind, labels))| ExportListener {
                    name,
                    spec: proto::ListenerSpec { kind: Some(kind) },
                    labels,
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(crate::util::fuzz_support::config(256))]

        #[test]
        fn fuzz_export_round_trips(listeners in listeners()) {
            let text = listeners_to_toml(&listeners).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let parsed = crate::config::parse_listeners(&text, "fuzz.toml")
                .map_err(|e| TestCaseError::fail(format!("{e}\n--- text:\n{text}")))?;
            let back: Vec<ExportListener> = parsed
                .into_iter()
                .map(ExportListener::from)
                .collect();
            prop_assert_eq!(back, tests::expected(&listeners), "text:\n{}", text);
        }
    }
}
