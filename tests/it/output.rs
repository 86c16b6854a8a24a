//! netctl prints what a listener's creator chose (labels, prefixes, and
//! the daemon's messages quoting them) with control characters escaped: a
//! label must not be able to drive the admin's terminal or forge lines.

use std::collections::HashMap;

use crate::common::Netd;
use netd::proto::{self, listener_spec::Kind};

/// Clears the screen, sets the window title, rings the bell, and tries to
/// forge a line of `netctl status`.
const EVIL: &str = "\x1b[2J\x1b]0;pwned\x07\nrestarts:    0\ttab";
/// `EVIL` as netctl must show it.
const EVIL_SHOWN: &str = r"\x1b[2J\x1b]0;pwned\x07\nrestarts:    0\ttab";

fn assert_no_controls(what: &str, out: &str) {
    let bad: Vec<char> = out
        .chars()
        .filter(|&c| c.is_control() && c != '\n')
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: raw control characters {bad:?} in:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_output_escapes_control_characters_from_the_daemon() {
    let netd = Netd::start("");
    let mut c = netd.client().await;
    let request = |labels: HashMap<String, String>| proto::StartListenerRequest {
        name: "evil".into(),
        spec: Some(proto::ListenerSpec {
            kind: Some(Kind::TcpEcho(proto::TcpEchoSpec {
                listen: "127.0.0.1:0".into(),
                prefix: EVIL.into(),
                max_connections: 0,
                idle_timeout: None,
                access_log: None,
                tls: None,
            })),
        }),
        labels,
        ephemeral: false,
    };
    // Labels must be printable: the daemon refuses control characters in
    // keys and values outright.
    for (k, v) in [("team\x1b[31m", "x"), ("team", EVIL)] {
        let e = c
            .start_listener(request(HashMap::from([(k.to_string(), v.to_string())])))
            .await
            .expect_err("control characters in a label are refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    // The prefix is free text by design (it is echoed data) and stays so:
    // it carries the attack into `status` here.
    c.start_listener(request(HashMap::from([(
        "team".to_string(),
        "net ops".to_string(),
    )])))
    .await
    .expect("start a listener with control characters in its prefix");

    let status = netd.netctl_ok(&["status", "evil"]);
    assert_no_controls("status", &status);
    let keys: Vec<&str> = status
        .lines()
        .map(|l| l.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "name",
            "kind",
            "state",
            "bound_addr",
            "started_at",
            "restarts",
            "last_error",
            "labels",
            "spec",
            "connections",
            "datagrams",
            "bytes",
            "errors"
        ],
        "one line per field:\n{status}"
    );
    assert!(status.contains("labels:      team=net ops"), "{status}");
    assert!(
        status.contains(&format!("prefix=\"{EVIL_SHOWN}\"")),
        "{status}"
    );

    let list = netd.netctl_ok(&["list"]);
    assert_no_controls("list", &list);
    assert_eq!(list.lines().count(), 2, "header and one row:\n{list}");
    assert!(list.lines().nth(1).unwrap().starts_with("evil "), "{list}");

    // JSON keeps the exact strings (serde escapes them).
    let v = netd.netctl_json(&["status", "evil"]);
    assert_eq!(v["labels"]["team"], "net ops");
    assert_eq!(v["spec"]["prefix"], EVIL);

    // The daemon's error messages quote what the caller sent: the error
    // line is escaped too, and stays one line.
    let key = format!("{EVIL}{}", "k".repeat(130));
    let err = netd.netctl_err(&[
        "start",
        "tcp-echo",
        "e2",
        "--listen",
        "127.0.0.1:0",
        "--label",
        &format!("{key}=v"),
    ]);
    assert_no_controls("error", &err);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("netctl: cannot start 'e2': "), "{err}");
}

/// netd reports the spec in effect (`effective_spec`: defaults filled in,
/// the token redacted) next to the spec as requested, and netctl prints
/// the former without knowing any default itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_effective_spec_netd_reports() {
    let netd = Netd::start("");
    let mut c = netd.client().await;
    let start = |name: &str, kind: Kind| proto::StartListenerRequest {
        name: name.into(),
        spec: Some(proto::ListenerSpec { kind: Some(kind) }),
        labels: HashMap::new(),
        ephemeral: true,
    };
    let echo = Kind::TcpEcho(proto::TcpEchoSpec {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    });
    let l = c
        .start_listener(start("plain", echo))
        .await
        .expect("start")
        .into_inner()
        .listener
        .expect("listener");
    let Some(Kind::TcpEcho(asked)) = l.spec.and_then(|s| s.kind) else {
        panic!("spec is not a tcp-echo")
    };
    assert_eq!((asked.max_connections, asked.idle_timeout), (0, None));
    let Some(Kind::TcpEcho(effective)) = l.effective_spec.and_then(|s| s.kind) else {
        panic!("no effective tcp-echo spec")
    };
    assert_eq!(effective.max_connections, 1024);
    assert_eq!(effective.idle_timeout.map(|d| d.seconds), Some(300));
    let spec = &netd.netctl_json(&["status", "plain"])["spec"];
    assert_eq!(spec["max_connections"], 1024);
    assert_eq!(spec["idle_timeout"], "5m");

    let http = Kind::Http(proto::HttpSpec {
        listen: "127.0.0.1:0".into(),
        token: "s3cret".into(),
        ..Default::default()
    });
    let l = c
        .start_listener(start("guarded", http))
        .await
        .expect("start")
        .into_inner()
        .listener
        .expect("listener");
    let Some(Kind::Http(effective)) = l.effective_spec.and_then(|s| s.kind) else {
        panic!("no effective http spec")
    };
    assert_eq!(effective.token, "<redacted>");
    assert_eq!(effective.rate_limit_ipv6_prefix, 64);
    let shown = netd.netctl_ok(&["-o", "json", "list"]);
    assert!(!shown.contains("s3cret"), "the token leaked: {shown}");
    let spec = &netd.netctl_json(&["status", "guarded"])["spec"];
    assert_eq!(spec["auth"], "bearer token");
    assert_eq!(spec["max_streams"], 32);
}

/// `netctl status` renders a listener's faults (the spec line named them
/// `faults=?`, or an empty `faults=`), leaves out the meaningless
/// `connections:` line of UDP kinds, and `list` counts "1 dgram".
#[test]
fn status_shows_faults_and_only_the_lines_a_kind_has() {
    let netd = Netd::start("");
    netd.netctl_ok(&[
        "start",
        "udp-proxy",
        "u",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
    ]);
    let status = netd.netctl_ok(&["status", "u"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("spec:") && l.contains(" faults=none")),
        "{status}"
    );
    netd.netctl_ok(&[
        "fault",
        "add",
        "u",
        "slow",
        "--type",
        "latency",
        "--latency",
        "100ms",
    ]);
    netd.netctl_ok(&[
        "fault",
        "add",
        "u",
        "lossy",
        "--type",
        "loss",
        "--probability",
        "0.5",
    ]);
    let status = netd.netctl_ok(&["status", "u"]);
    let spec = status
        .lines()
        .find(|l| l.starts_with("spec:"))
        .unwrap_or_else(|| panic!("no spec line:\n{status}"));
    assert!(
        spec.ends_with(" faults=slow,lossy") || spec.contains(" faults=slow,lossy "),
        "{spec}"
    );
    assert!(!spec.contains('?'), "{spec}");
    let lines: Vec<&str> = status.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "faults:")
        .unwrap_or_else(|| panic!("no faults: part:\n{status}"));
    let header: Vec<&str> = lines[at + 1].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "TYPE", "SETTINGS", "ACTIVE", "COUNTERS"],
        "{status}"
    );
    let slow: Vec<&str> = lines[at + 2].split_whitespace().collect();
    assert_eq!(&slow[..2], ["slow", "latency"], "{status}");
    assert!(slow.contains(&"latency=100ms"), "{status}");
    assert!(
        lines[at + 2].contains(" yes ") && lines[at + 2].contains("affected 0"),
        "{status}"
    );
    assert!(lines[at + 3].trim_start().starts_with("lossy"), "{status}");
    assert!(lines[at + 3].contains("probability=0.5"), "{status}");

    // A UDP kind has no connections: no line for them; a TCP kind keeps it.
    assert!(!status.contains("connections:"), "{status}");
    assert!(status.contains("clients:"), "{status}");
    netd.netctl_ok(&["start", "tcp-echo", "t", "--listen", "127.0.0.1:0"]);
    assert!(netd.netctl_ok(&["status", "t"]).contains("connections: "));

    // One datagram is "1 dgram".
    netd.netctl_ok(&["start", "udp-echo", "e", "--listen", "127.0.0.1:0"]);
    let echo = crate::common::bound_addr(&netd, "e");
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(b"x", echo).unwrap();
    crate::common::wait_until("the echo counted the datagram", || {
        netd.netctl_json(&["status", "e"])["stats"]["datagrams_in"] == 1
    });
    let list = netd.netctl_ok(&["list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("e "))
        .unwrap_or_else(|| panic!("no row for e:\n{list}"));
    assert!(
        row.contains(" 1 dgram ") && !row.contains("dgrams"),
        "{row}"
    );
    assert!(!netd.netctl_ok(&["status", "e"]).contains("connections:"));
}
