use std::net::IpAddr;

use super::proxies::reaches;
use super::*;

#[test]
fn routes() {
    let r = |m: Method, p: &str| route(&m, p).map(|(op, a, b)| (op, a.to_string(), b.to_string()));
    assert_eq!(r(Method::GET, "/version").unwrap().0, Op::Version);
    assert_eq!(
        r(Method::PATCH, "/proxies/redis/toxics/lat").unwrap(),
        (Op::ToxicUpdate, "redis".into(), "lat".into())
    );
    assert_eq!(
        r(Method::POST, "/proxies/redis").unwrap().0,
        Op::ProxyUpdate
    );
    assert_eq!(
        r(Method::PUT, "/proxies").unwrap_err(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        r(Method::GET, "/proxies/a/b").unwrap_err(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r(Method::GET, "/proxies/").unwrap_err(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(r(Method::GET, "/nope").unwrap_err(), StatusCode::NOT_FOUND);
}

#[test]
fn attributes_round_trip_in_toxiproxy_units() {
    for (ty, attrs) in [
        ("latency", json!({"latency": 1500, "jitter": 20})),
        ("bandwidth", json!({"rate": 100})),
        ("slow_close", json!({"delay": 250})),
        ("timeout", json!({"timeout": 3000})),
        ("reset_peer", json!({"timeout": 7})),
        (
            "slicer",
            json!({"average_size": 64, "size_variation": 8, "delay": 250}),
        ),
        ("limit_data", json!({"bytes": 12345})),
    ] {
        let mut kind = new_kind(ty).unwrap();
        for (k, v) in attrs.as_object().unwrap() {
            set_attr(&mut kind, k, v).unwrap();
        }
        assert_eq!(attributes(Some(&kind)), attrs, "{ty}");
    }
    let mut bw = new_kind("bandwidth").unwrap();
    set_attr(&mut bw, "rate", &json!(5)).unwrap();
    assert!(matches!(bw, Kind::Bandwidth(b) if b.rate_bytes_per_sec == 5000));
    let mut sl = new_kind("slicer").unwrap();
    set_attr(&mut sl, "delay", &json!(1500)).unwrap();
    assert!(
        matches!(sl, Kind::Slicer(s) if s.delay == Some(prost_types::Duration { seconds: 0, nanos: 1_500_000 }))
    );
}

#[test]
fn bandwidth_rate_zero_is_no_limit() {
    let mut bw = new_kind("bandwidth").unwrap();
    assert_eq!(attributes(Some(&bw)), json!({"rate": 0}));
    set_attr(&mut bw, "rate", &json!(0)).unwrap();
    assert!(matches!(&bw, Kind::Bandwidth(b) if b.rate_bytes_per_sec == crate::fault::MAX_RATE));
    assert_eq!(attributes(Some(&bw)), json!({"rate": 0}));
}

#[test]
fn what_an_upstream_reaches() {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    let host: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap()];
    // Exact binds: the same address and port only.
    assert!(reaches(a("127.0.0.1:9090"), a("127.0.0.1:9090"), &host));
    assert!(!reaches(a("127.0.0.2:9090"), a("127.0.0.1:9090"), &host));
    assert!(!reaches(a("127.0.0.1:9091"), a("127.0.0.1:9090"), &host));
    assert!(reaches(
        a("[::ffff:127.0.0.1]:9090"),
        a("127.0.0.1:9090"),
        &host
    ));
    // 0.0.0.0 and :: as a destination are loopback.
    assert!(reaches(a("0.0.0.0:9090"), a("127.0.0.1:9090"), &host));
    assert!(reaches(a("[::]:9090"), a("[::1]:9090"), &host));
    // Wildcard binds: loopback and the host's own addresses.
    assert!(reaches(a("127.0.0.9:9090"), a("0.0.0.0:9090"), &host));
    assert!(reaches(a("192.0.2.7:9090"), a("0.0.0.0:9090"), &host));
    assert!(reaches(a("127.0.0.1:9090"), a("[::]:9090"), &host));
    assert!(!reaches(a("198.51.100.1:9090"), a("0.0.0.0:9090"), &host));
    assert!(!reaches(a("127.0.0.1:0"), a("127.0.0.1:0"), &host));
}

#[test]
fn bad_attribute_values_are_refused() {
    let mut k = new_kind("latency").unwrap();
    assert!(set_attr(&mut k, "latency", &json!(-1)).is_err());
    assert!(set_attr(&mut k, "latency", &json!(1.5)).is_err());
    assert!(set_attr(&mut k, "latency", &json!("10")).is_err());
    // Unknown names are ignored, as by Toxiproxy.
    assert!(set_attr(&mut k, "nonsense", &json!(1)).is_ok());
    assert!(new_kind("down").is_none() && new_kind("").is_none());
}

/// The `[toxiproxy_api]` section of the config, read by the config module
/// (a unit-test module may build a whole config; see tests/it/layers.rs).
#[cfg(test)]
mod config_file {
    use super::*;

    #[test]
    fn config_section() {
        use crate::config::Config;
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.toxiproxy_api_listen, None);
        let c = Config::parse(
            "[toxiproxy_api]\nlisten = \"127.0.0.1:8474\"\nmax_connections = 8\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(
            c.toxiproxy_api_listen,
            Some("127.0.0.1:8474".parse().unwrap())
        );
        assert_eq!(c.toxiproxy_api_limits.max_connections, 8);
        let e = Config::parse("[toxiproxy_api]\nlisten = \"[::]:8474\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.toml:2: toxiproxy_api.listen:") && e.contains("allow_remote"),
            "{e}"
        );
        let e = Config::parse(
            "[metrics]\nlisten = \"127.0.0.1:9000\"\n[toxiproxy_api]\nlisten = \"127.0.0.1:9000\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("clashes with [metrics] listen"), "{e}");
        let e = Config::parse("[toxiproxy_api]\nidle_timeout = \"1ms\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("toxiproxy_api.idle_timeout: 1ms is out of range"),
            "{e}"
        );
    }

    #[test]
    fn rules_keys_and_defaults() {
        use crate::config::Config;
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.toxiproxy_api_rules, Rules::default());
        assert_eq!(Rules::default().allowed_ports, 1024..=65535);
        let c = Config::parse(
            "[toxiproxy_api]\nlisten = \"127.0.0.1:8474\"\nallowed_ports = \"20000-20010\"\nmax_proxies = 2\npersist = true\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(
            c.toxiproxy_api_rules,
            Rules {
                allowed_ports: 20000..=20010,
                max_proxies: 2,
                persist: true
            }
        );
        for (text, want) in [
            (
                "allowed_ports = \"0-10\"",
                "x.toml:2: toxiproxy_api.allowed_ports: '0-10' is not a port range",
            ),
            (
                "allowed_ports = \"9-8\"",
                "x.toml:2: toxiproxy_api.allowed_ports: '9-8': the first port is above the last",
            ),
            (
                "max_proxies = 0",
                "x.toml:2: toxiproxy_api.max_proxies: 0 is out of range (1 to 4096)",
            ),
        ] {
            let e = Config::parse(&format!("[toxiproxy_api]\n{text}\n"), "x.toml")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{text}: {e}");
        }
        assert_eq!(Rules::parse_ports("8000"), Ok(8000..=8000));
        assert_eq!(Rules::parse_ports(" 1 - 2 "), Ok(1..=2));
        assert!(Rules::parse_ports("1-65536").is_err());
        assert!(Rules::parse_ports("").is_err());
    }

    #[test]
    fn token_file() {
        use crate::config::Config;
        assert!(Token::parse("short").is_err());
        assert!(Token::parse("sixteen chars but spaces").is_err());
        let t = Token::parse("  0123456789abcdef\n").unwrap();
        assert_eq!(t.0, "0123456789abcdef");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        let text = format!("[toxiproxy_api]\ntoken_file = \"{}\"\n", path.display());
        let c = Config::parse(&text, "x.toml").unwrap();
        assert_eq!(c.toxiproxy_api_token, Some(t));
        for (file, want) in [
            ("relative".to_string(), "must be an absolute path"),
            (dir.path().display().to_string(), "not a regular file"),
            (
                dir.path().join("none").display().to_string(),
                "cannot read it",
            ),
        ] {
            let e = Config::parse(
                &format!("[toxiproxy_api]\ntoken_file = \"{file}\"\n"),
                "x.toml",
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("x.toml:2: toxiproxy_api.token_file: ") && e.contains(want),
                "{e}"
            );
        }
    }
}
