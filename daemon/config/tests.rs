//! Unit tests of the config reader.

use super::*;
use crate::proto::listener_spec::Kind;

/// Clashing ports, duplicate names and the line numbers in errors, as
/// found by the hash maps and the line index (linear in listeners).
#[test]
fn clashes_and_duplicates_are_found_with_their_lines() {
    let listener = |name: &str, kind: &str, listen: &str| {
        format!("[[listener]]\nname = \"{name}\"\nkind = \"{kind}\"\nlisten = \"{listen}\"\n")
    };
    let check = |entries: &[(&str, &str, &str)]| {
        let text: String = entries.iter().map(|(n, k, l)| listener(n, k, l)).collect();
        Config::parse(&text, "x.toml")
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for (a, b) in [
        ("127.0.0.1:7001", "127.0.0.1:7001"),
        ("0.0.0.0:7001", "127.0.0.1:7001"),
        ("127.0.0.1:7001", "0.0.0.0:7001"),
        ("[::]:7001", "[::1]:7001"),
    ] {
        let e = check(&[("a", "tcp-echo", a), ("b", "tcp-echo", b)]).unwrap_err();
        assert!(
            e.starts_with("x.toml:8: listener 'b': TCP") && e.contains("clashes with listener 'a'"),
            "{a} {b}: {e}"
        );
    }
    for (a, b, kind_b) in [
        ("127.0.0.1:7001", "127.0.0.2:7001", "tcp-echo"),
        ("127.0.0.1:7001", "127.0.0.1:7001", "udp-echo"),
        ("0.0.0.0:7001", "[::]:7001", "tcp-echo"),
        ("127.0.0.1:0", "127.0.0.1:0", "tcp-echo"),
        ("127.0.0.1:7001", "127.0.0.1:7002", "tcp-echo"),
    ] {
        check(&[("a", "tcp-echo", a), ("b", kind_b, b)]).unwrap_or_else(|e| panic!("{a} {b}: {e}"));
    }
    // The wildcard clashes with the first of several specific ones.
    let e = check(&[
        ("a", "udp-echo", "127.0.0.1:7001"),
        ("b", "udp-echo", "127.0.0.2:7001"),
        ("c", "udp-echo", "0.0.0.0:7001"),
    ])
    .unwrap_err();
    assert!(
        e.starts_with("x.toml:12: listener 'c': UDP") && e.contains("listener 'a'"),
        "{e}"
    );
    let e = check(&[
        ("a", "tcp-echo", "127.0.0.1:0"),
        ("b", "tcp-echo", "127.0.0.1:0"),
        ("a", "tcp-echo", "127.0.0.1:0"),
    ])
    .unwrap_err();
    assert_eq!(e, "x.toml:10: a listener named 'a' is defined twice");
}

/// Every key a kind declares ([`crate::services::ListenerKind::KEYS`])
/// is one this parser reads: given a value of the wrong type, the
/// error is about the type, never an unknown field. And every key the
/// parser reads is declared by some kind.
#[test]
fn kinds_declare_only_keys_the_parser_reads_and_all_of_them() {
    for k in crate::services::KINDS {
        for key in k.keys.iter().map(|k| k.key) {
            let text = format!(
                "[[listener]]\nname = \"x\"\nkind = \"{}\"\n{key} = {{ wrong = 1 }}\n",
                k.slug
            );
            let e = Config::parse(&text, "k.toml").unwrap_err().to_string();
            assert!(
                e.contains("invalid type") && !e.contains("unknown field"),
                "{} declares {key}: {e}",
                k.slug
            );
        }
    }
    let declared: std::collections::BTreeSet<&str> = crate::services::KINDS
        .iter()
        .flat_map(|k| k.keys.iter().map(|k| k.key))
        .collect();
    let text = "[[listener]]\nname = \"x\"\nkind = \"tcp-echo\"\nnot_a_key = 1\n";
    let e = Config::parse(text, "k.toml").unwrap_err().to_string();
    let expected = e
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("serde lists the keys: {e}"));
    for key in expected.split(',').map(|k| k.trim().trim_matches('`')) {
        if !["name", "kind", "labels", ""].contains(&key) {
            assert!(declared.contains(key), "no kind declares {key}");
        }
    }
}

#[test]
fn embedded_default_is_the_demo() {
    let c = Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME).unwrap();
    let names: Vec<_> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["echo", "udp-echo"]);
    match &c.listeners[0].spec.kind {
        Some(Kind::TcpEcho(s)) => {
            assert_eq!(s.listen, "127.0.0.1:8080");
            assert_eq!(s.prefix, "Echo: ");
        }
        other => panic!("unexpected {other:?}"),
    }
    match &c.listeners[1].spec.kind {
        Some(Kind::UdpEcho(s)) => {
            assert_eq!(s.listen, "127.0.0.1:9090");
            assert_eq!(s.prefix, "ACK: ");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
}

#[test]
fn log_levels_are_levels_or_filters() {
    for ok in [
        "info",
        "WARN",
        "off",
        "warn,netd=debug",
        "netd::access=info",
    ] {
        assert!(check_log_level(ok).is_ok(), "{ok}");
    }
    for bad in ["verbose", "", "info,loud", "netd=verbose"] {
        assert!(check_log_level(bad).is_err(), "{bad}");
    }
}

#[test]
fn clashing_addresses() {
    let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    assert!(addrs_clash(a("127.0.0.1:80"), a("127.0.0.1:80")));
    assert!(addrs_clash(a("0.0.0.0:80"), a("127.0.0.1:80")));
    assert!(addrs_clash(a("127.0.0.2:80"), a("0.0.0.0:80")));
    assert!(addrs_clash(a("[::]:80"), a("[::1]:80")));
    assert!(!addrs_clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
    assert!(!addrs_clash(a("[::]:80"), a("0.0.0.0:80")));
    assert!(!addrs_clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
    assert!(!addrs_clash(a("127.0.0.1:80"), a("127.0.0.1:81")));
}

#[test]
fn absurd_durations_and_sizes_name_their_bounds() {
    let http = |opt: &str| {
        format!("[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n{opt}\n")
    };
    for (opt, needle) in [
        (
            "idle_timeout = \"99999999999y\"",
            "; it must be 1ms to 1day",
        ),
        (
            "header_read_timeout = \"2h\"",
            "header_read_timeout is 2h; it must be 1ms to 1h",
        ),
        (
            "max_streams = 5000",
            "max_streams is 5000; it must be 1 to 1000",
        ),
        (
            "max_header_bytes = 10",
            "max_header_bytes is 10; it must be 1024 to 1048576",
        ),
        (
            "max_body_bytes = 4096\nbody_budget_bytes = 1024",
            "at least max_body_bytes",
        ),
    ] {
        let e = Config::parse(&http(opt), "x.toml").unwrap_err().to_string();
        assert!(e.contains(needle), "{opt}: {e}");
    }
    let e = Config::parse("shutdown_grace = \"99999999999y\"\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shutdown_grace"), "{e}");
}

#[test]
fn toml_syntax_errors_are_one_line_with_line_and_column() {
    let e = Config::parse("[[listener]]\nname = \"a\"\nkind = \"tcp-echo\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("x.toml:3:"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = parse_listeners("[[listener]]\nname = 5\n", "a.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("a.toml:2:"), "{e}");
}

#[test]
fn errors_name_file_and_line() {
    let text = "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:99999\"\n";
    let e = Config::parse(text, "x.toml").unwrap_err().to_string();
    assert!(e.starts_with("x.toml:4: listener 'a': listen:"), "{e}");

    let text = "[[listener]]\nname = \"a\"\nkind = \"tcp-echoo\"\nlisten = \"127.0.0.1:1\"\n";
    let e = Config::parse(text, "x.toml").unwrap_err().to_string();
    assert!(e.starts_with("x.toml:3:") && e.contains("tcp-echo"), "{e}");

    let text = "shutdown_grace = \"5s\"\nbogus = 1\n";
    let e = Config::parse(text, "x.toml").unwrap_err().to_string();
    assert!(e.starts_with("x.toml:2:") && e.contains("bogus"), "{e}");

    let text = "capture_dir = \"/c\"\n[[listener]]\nname = \"s\"\nkind = \"sniffer\"\ninterface = \"lo\"\npcap_path = \"../x.pcap\"\n";
    let e = Config::parse(text, "x.toml").unwrap_err().to_string();
    assert!(
        e.starts_with("x.toml:6: listener 's': pcap_path '../x.pcap'")
            && e.contains("capture_dir /c"),
        "{e}"
    );

    let text = "capture_dir = \"captures\"\n";
    let e = Config::parse(text, "x.toml").unwrap_err().to_string();
    assert!(e.starts_with("x.toml:1: capture_dir"), "{e}");

    let text = "[[listener]]\nname = \"a\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:1\"\n[[listener]]\nname = \"a\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:2\"\n";
    let e = Config::parse(text, "x.toml").unwrap_err().to_string();
    assert!(
        e.starts_with("x.toml:6:") && e.contains("defined twice"),
        "{e}"
    );
}

#[test]
fn http_token_literal_or_file_and_the_export_placeholder() {
    let http = |opt: &str| {
        format!("[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n{opt}\n")
    };
    let token_of = |c: &[BootListener]| match &c[0].spec.kind {
        Some(Kind::Http(h)) => h.token.clone(),
        other => panic!("{other:?}"),
    };
    let c = Config::parse(&http("token = \"s3cret\""), "x.toml").unwrap();
    assert_eq!(token_of(&c.listeners), "s3cret");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").unwrap();
    let from_file = format!(
        "token_file = {}",
        toml::Value::String(file.display().to_string())
    );
    let c = Config::parse(&http(&from_file), "x.toml").unwrap();
    assert_eq!(token_of(&c.listeners), "from-file");

    let e = Config::parse(&http(&format!("token = \"t\"\n{from_file}")), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("x.toml:5: listener 'h': token and token_file are both set"),
        "{e}"
    );
    let e = Config::parse(&http("token = \"has space\""), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("x.toml:5: listener 'h': token must be"),
        "{e}"
    );
    assert!(!e.contains("has space"), "the token is not echoed: {e}");
    let e = Config::parse(
        "[[listener]]\nname = \"t\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\ntoken = \"x\"\n",
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("x.toml:5: token does not apply to a tcp-echo"),
        "{e}"
    );

    // The placeholder export writes: refused in a boot config, kept
    // as is in an apply file (netd reads it as "keep the token").
    let placeholder = http("token = \"<redacted>\"");
    let e = Config::parse(&placeholder, "x.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "x.toml:5: listener 'h': token = \"<redacted>\" is a placeholder written by netctl \
         export; set the real token or token_file"
    );
    let l = parse_listeners(&placeholder, "apply.toml").unwrap();
    assert_eq!(token_of(&l), crate::services::http::REDACTED);
    // Only as `token`: a token file holding it is a mistake either way.
    std::fs::write(&file, "<redacted>\n").unwrap();
    for e in [
        Config::parse(&http(&from_file), "x.toml").unwrap_err(),
        parse_listeners(&http(&from_file), "x.toml").unwrap_err(),
    ] {
        assert!(e.to_string().contains("holds the placeholder"), "{e}");
    }
}

#[test]
fn apply_files_take_listeners_ignore_the_rest_and_leave_pcap_paths_to_netd() {
    let sniffer = "[[listener]]\nname = \"s\"\nkind = \"sniffer\"\ninterface = \"lo\"\n\
                   pcap_path = \"/elsewhere/x.pcap\"\n";
    let l = parse_listeners(sniffer, "apply.toml").unwrap();
    match &l[0].spec.kind {
        Some(Kind::Sniffer(s)) => assert_eq!(s.pcap_path, "/elsewhere/x.pcap"),
        other => panic!("{other:?}"),
    }
    assert_eq!(l[0].origin, "apply.toml:2");
    let boot = format!("capture_dir = \"/c\"\n{sniffer}");
    let e = Config::parse(&boot, "x.toml").unwrap_err().to_string();
    assert!(e.contains("capture_dir /c"), "{e}");

    // A whole config file applies: its daemon settings are ignored.
    let l = parse_listeners(&boot, "apply.toml").unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].origin, "apply.toml:3");
    // Everything else is checked as in a config.
    let e = parse_listeners(
        "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:99999\"\n",
        "apply.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("apply.toml:4: listener 'a': listen:"), "{e}");
    assert!(parse_listeners("", "apply.toml").unwrap().is_empty());
}

#[test]
fn udp_echo_safety_and_http_ipv6_prefix_options() {
    let text = "[[listener]]\nname = \"u\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:1\"\nrate_limit = \"off\"\nallow_privileged_sources = true\nmax_sources = 10\n[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:2\"\nrate_limit = \"5/s\"\nrate_limit_ipv6_prefix = 56\n";
    let c = Config::parse(text, "x.toml").unwrap();
    match &c.listeners[0].spec.kind {
        Some(Kind::UdpEcho(u)) => {
            assert_eq!(u.rate_limit, "off");
            assert!(u.allow_privileged_sources);
            assert_eq!(u.max_sources, 10);
        }
        other => panic!("{other:?}"),
    }
    match &c.listeners[1].spec.kind {
        Some(Kind::Http(h)) => assert_eq!(h.rate_limit_ipv6_prefix, 56),
        other => panic!("{other:?}"),
    }

    let text = "[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:2\"\nrate_limit_ipv6_prefix = 129\n";
    let e = Config::parse(text, "x.toml").unwrap_err().to_string();
    assert!(e.contains("rate_limit_ipv6_prefix"), "{e}");
    let text = "[[listener]]\nname = \"u\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:1\"\nrate_limit = \"lots\"\n";
    let e = Config::parse(text, "x.toml").unwrap_err().to_string();
    assert!(e.contains("rate_limit") && e.contains("off"), "{e}");
}

/// What the config reader takes itself (name, kind, labels) and what it
/// refuses before any kind reads its form, at the line and column TOML
/// reports its own errors.
#[test]
fn listener_tables_errors_point_at_the_key_or_value() {
    let err = |text: &str| Config::parse(text, "x.toml").unwrap_err().to_string();
    let e = err(
        "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\ncolour = 1\n",
    );
    assert!(
        e.starts_with(
            "x.toml:5:1: unknown field `colour`, expected one of `name`, `kind`, `listen`"
        ),
        "{e}"
    );
    let e = err("[[listener]]\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n");
    assert!(
        e.starts_with("x.toml:1:") && e.ends_with("missing field `name`"),
        "{e}"
    );
    let e = err(
        "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\nmax_connections = \"lots\"\n",
    );
    assert_eq!(
        e,
        "x.toml:5:19: invalid type: string \"lots\", expected u32"
    );
    let e = err(
        "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\nmax_connections = -1\n",
    );
    assert_eq!(e, "x.toml:5:19: invalid value: integer `-1`, expected u32");
    let e = err(
        "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"soon\"\n",
    );
    assert!(
        e.starts_with("x.toml:5: idle_timeout: 'soon' is not a duration like 30s or 5m"),
        "{e}"
    );
    let e = err(
        "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\nlabels = { a = 1 }\n",
    );
    assert!(
        e.starts_with("x.toml:5:10: invalid type: integer `1`"),
        "{e}"
    );
}

/// A refusal from a kind's validation names its key (`SpecError::field`),
/// so the config points at that key's line, whatever the message starts
/// with; a refusal about no key points at the entry.
#[test]
fn validation_refusals_point_at_their_key() {
    let err = |text: &str| Config::parse(text, "x.toml").unwrap_err().to_string();
    // The message starts with "upstream", the key is `upstreams`.
    let e = err(
        "[[listener]]\nname = \"p\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\nupstreams = [\"0.0.0.0:80\"]\n",
    );
    assert!(
        e.starts_with("x.toml:6: listener 'p': upstream '0.0.0.0:80'"),
        "{e}"
    );
    // The message starts with the interface's name, not the key.
    let e = err("[[listener]]\nname = \"s\"\nkind = \"sniffer\"\n\ninterface = \"no-such-if0\"\n");
    assert!(
        e.starts_with("x.toml:5: listener 's': unknown interface 'no-such-if0'"),
        "{e}"
    );
    // Shared size checks name theirs.
    let e = err(
        "[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\n\nmax_streams = 100000\n",
    );
    assert!(
        e.starts_with("x.toml:7: listener 'h': max_streams is 100000"),
        "{e}"
    );
    // About no key: the entry (the line of its name).
    let e = err("[[listener]]\nname = \"p\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\n");
    assert!(
        e.starts_with("x.toml:2: listener 'p': at least one upstream is required"),
        "{e}"
    );
}
