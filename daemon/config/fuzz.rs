//! Property tests (`fuzz_*`): arbitrary text, and generated configs with
//! `[[listener]]` tables of random keys and values (absurd numbers and
//! durations, unicode), never panic the parser: it returns a config or an
//! error that starts with the source's name (and, where it gives one, a
//! line that exists).

use super::*;
use proptest::prelude::*;

const SOURCE: &str = "fuzz.toml";

/// Listener keys besides `name` and `kind`: every key of every kind's
/// flat form (but `token_file`, which reads a file), a few misspelt.
fn listener_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys: Vec<&'static str> = Vec::new();
        for k in crate::services::KINDS.iter().flat_map(|k| k.keys.iter()) {
            if k.key != "token_file" && !keys.contains(&k.key) {
                keys.push(k.key);
            }
        }
        keys.extend(["labels", "labels.team", "nmae", "Kind", "ünïcode"]);
        keys
    })
}

/// Top-level keys and tables (no `[control.tls]`, which reads files).
const TOP_KEYS: &[&str] = &[
    "shutdown_grace",
    "max_listeners",
    "capture_dir",
    "control",
    "log.level",
    "log.format",
    "metrics.listen",
    "metrics.allow_remote",
    "metrics.max_connections",
    "metrics.header_timeout",
    "metrics.idle_timeout",
    "toxiproxy_api.listen",
    "toxiproxy_api.allow_remote",
    "toxiproxy_api.max_connections",
    "toxiproxy_api.header_timeout",
    "toxiproxy_api.idle_timeout",
    "toxiproxy_api.allowed_ports",
    "toxiproxy_api.max_proxies",
    "toxiproxy_api.persist",
    "toxiproxy_api.token_file",
    "health.listen",
    "access_log.path",
    "access_log.buffer_bytes",
    "control.listen",
    "control.insecure",
    "control.max_connections",
    "control.max_streams",
    "control.idle_timeout",
    "control.max_request_bytes",
    "control.roles.admin",
];

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A string value: durations (absurd ones too), addresses, kinds,
/// rates, filters, or any unicode.
fn string() -> impl Strategy<Value = String> {
    let unit = proptest::sample::select(
        &[
            "", "ns", "us", "ms", "s", "m", "h", "d", "w", "y", "x", "s s", "秒",
        ][..],
    );
    prop_oneof![
        (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (0u64..100_000, unit).prop_map(|(n, u)| format!("{n}{u}")),
        proptest::sample::select(
            &[
                "tcp-echo",
                "udp-echo",
                "proxy",
                "http",
                "sniffer",
                "127.0.0.1:0",
                "[::1]:0",
                "0.0.0.0:99999",
                "localhost:80",
                "unix:/tmp/x.sock",
                "lo",
                "tcp and port 80",
                "icmp and port 1",
                "100/s",
                "0/s",
                "1/d",
                "-1s",
                "1.5s",
                "",
                "info",
                "json",
                "warn,netd=debug",
                "debug[",
                "self",
            ][..]
        )
        .prop_map(String::from),
        any::<String>(),
    ]
}

/// A TOML value as it would be written after `key = `.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => string().prop_map(|s| quoted(&s)),
        2 => prop_oneof![
            any::<i64>(),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(u32::MAX as i64 + 1),
            Just(-1i64),
            0i64..70_000,
        ]
        .prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => proptest::collection::vec(string(), 0..4).prop_map(|v| {
            let items: Vec<String> = v.iter().map(|s| quoted(s)).collect();
            format!("[{}]", items.join(", "))
        }),
        1 => (string(), string()).prop_map(|(k, v)| format!("{{ {} = {} }}", quoted(&k), quoted(&v))),
    ]
}

/// A value of the type `key` takes (mostly in range, sometimes absurd),
/// or, one time in four, any value.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let typed: BoxedStrategy<String> = if key.ends_with("timeout")
        || key.ends_with("window")
        || key.ends_with("backoff")
        || key.ends_with("interval")
        || key.ends_with("grace")
    {
        let unit = proptest::sample::select(&["ms", "s", "m", "h", "d", "ns", "y"][..]);
        prop_oneof![
            (0u64..100, unit.clone()).prop_map(|(n, u)| quoted(&format!("{n}{u}"))),
            (any::<u64>(), unit).prop_map(|(n, u)| quoted(&format!("{n}{u}"))),
        ]
        .boxed()
    } else if key.starts_with("max_")
        || key.contains(".max_")
        || key.ends_with("_bytes")
        || key.ends_with("_files")
        || key.ends_with("_ports")
        || matches!(key, "syn_rate" | "preconnect")
    {
        prop_oneof![0i64..5000, Just(u32::MAX as i64), any::<i64>()]
            .prop_map(|n| n.to_string())
            .boxed()
    } else if key.starts_with("allow") || key.ends_with("insecure") || key == "access_log" {
        any::<bool>().prop_map(|b| b.to_string()).boxed()
    } else if key == "upstreams" || key.ends_with("admin") {
        proptest::collection::vec(string(), 0..3)
            .prop_map(|v| {
                let items: Vec<String> = v.iter().map(|s| quoted(s)).collect();
                format!("[{}]", items.join(", "))
            })
            .boxed()
    } else if key.ends_with("listen") {
        proptest::sample::select(
            &[
                "127.0.0.1:0",
                "[::1]:0",
                "0.0.0.0:99999",
                "127.0.0.1:80",
                "unix:/tmp/n.sock",
                "x",
            ][..],
        )
        .prop_map(quoted)
        .boxed()
    } else {
        string().prop_map(|s| quoted(&s)).boxed()
    };
    prop_oneof![3 => typed, 1 => value()].boxed()
}

/// Distinct keys from `keys`, each with a value.
fn entries(
    keys: &'static [&'static str],
    n: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<(&'static str, String)>> {
    proptest::sample::subsequence(keys, n).prop_flat_map(|ks| {
        ks.into_iter()
            .map(|k| value_for(k).prop_map(move |v| (k, v)))
            .collect::<Vec<_>>()
    })
}

fn listener() -> impl Strategy<Value = String> {
    (
        proptest::option::weighted(0.9, proptest::sample::select(&["a", "b", "échø", ""][..])),
        proptest::option::weighted(
            0.9,
            proptest::sample::select(
                &["tcp-echo", "udp-echo", "proxy", "http", "sniffer", "ftp"][..],
            ),
        ),
        entries(listener_keys(), 0..6),
    )
        .prop_map(|(name, kind, rest)| {
            let mut t = String::from("[[listener]]\n");
            if let Some(n) = name {
                t += &format!("name = {}\n", quoted(n));
            }
            if let Some(k) = kind {
                t += &format!("kind = {}\n", quoted(k));
            }
            for (k, v) in rest {
                t += &format!("{k} = {v}\n");
            }
            t
        })
}

/// A whole config: top-level keys, then listener tables.
fn config_text() -> impl Strategy<Value = String> {
    (
        entries(TOP_KEYS, 0..4),
        proptest::collection::vec(listener(), 0..4),
    )
        .prop_map(|(top, listeners)| {
            let mut t = String::new();
            for (k, v) in top {
                t += &format!("{k} = {v}\n");
            }
            for l in listeners {
                t += &l;
            }
            t
        })
}

/// Both readers of `[[listener]]` tables: the config and apply files.
fn check(text: &str) -> Result<(), TestCaseError> {
    check_one(Config::parse(text, SOURCE).err(), text)?;
    check_one(parse_listeners(text, SOURCE).err(), text)
}

fn check_one(e: Option<ConfigError>, text: &str) -> Result<(), TestCaseError> {
    let Some(e) = e else {
        return Ok(());
    };
    let msg = e.to_string();
    let Some(rest) = msg.strip_prefix(&format!("{SOURCE}:")) else {
        return Err(TestCaseError::fail(format!("no source prefix: {msg}")));
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if !digits.is_empty() {
        let line: usize = digits.parse().unwrap_or(usize::MAX);
        let lines = text.lines().count().max(1);
        prop_assert!(
            (1..=lines + 1).contains(&line),
            "line {} of {}: {}",
            line,
            lines,
            msg
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::util::fuzz_support::config(1024))]

    #[test]
    fn fuzz_config_arbitrary_text(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn fuzz_config_generated_tables(text in config_text()) {
        check(&text)?;
    }

    /// One listener table alone reaches the validation after
    /// deserialising more often than a whole config does.
    #[test]
    fn fuzz_config_one_listener(text in listener()) {
        check(&text)?;
    }

    #[test]
    fn fuzz_config_generated_then_mutated(
        text in config_text(),
        at in any::<prop::sample::Index>(),
        insert in proptest::sample::select(&["\n", "[", "]", "\"", "=", "\u{0}", "\u{feff}", "[[listener]]\n", "#"][..]),
    ) {
        let mut t = text;
        let mut i = at.index(t.len() + 1);
        while !t.is_char_boundary(i) {
            i -= 1;
        }
        t.insert_str(i, insert);
        check(&t)?;
    }
}
