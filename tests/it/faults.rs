//! Faults through the control plane: `netctl fault add|update|rm|ls`,
//! the AddFault/UpdateFault/RemoveFault/ListFaults RPCs, their events,
//! validation and exit codes, persistence with the listener, config
//! files, export/apply, and the per-fault families in /metrics. (What
//! the faults do to traffic: faults_tcp.rs and udp_proxy.rs.)

use netd::proto;
use tokio_stream::StreamExt as _;

use crate::common::{Netd, free_tcp_port, netd_exit};

fn config(extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"db\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
         upstreams = [\"127.0.0.1:9\"]\n\
         [[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n{extra}"
    )
}

/// The faults `netctl fault ls -o json` shows for `listener`, as
/// (name, type) pairs in order.
fn faults(netd: &Netd, listener: &str) -> Vec<(String, String)> {
    let v = netd.netctl_json(&["fault", "ls", listener]);
    v.as_array()
        .expect("array")
        .iter()
        .map(|f| {
            (
                f["fault"]["name"].as_str().unwrap().to_string(),
                f["fault"]["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exit code")
}

// One scenario: each step builds on the live fault set the previous one left.
#[allow(clippy::too_many_lines)]
#[tokio::test]
async fn fault_commands_change_the_live_set_with_events_and_clear_errors() {
    let netd = Netd::start(&config(""));
    let mut events = netd
        .client()
        .await
        .watch_events(proto::WatchEventsRequest { name: "db".into() })
        .await
        .unwrap()
        .into_inner();

    let out = netd.netctl_ok(&[
        "fault",
        "add",
        "db",
        "slow",
        "--type",
        "latency",
        "--latency",
        "100ms",
        "--jitter",
        "10ms",
        "--direction",
        "both",
        "--toxicity",
        "0.5",
        "--window",
        "1s+10s",
        "--client",
        "127.0.0.2/32",
        "--every",
        "3",
        "--after-bytes",
        "64",
    ]);
    assert!(
        out.starts_with("added fault slow (latency, both) on db"),
        "{out}"
    );
    netd.netctl_ok(&[
        "fault",
        "add",
        "db",
        "cap",
        "--type",
        "limit_data",
        "--bytes",
        "1000",
    ]);
    assert_eq!(
        faults(&netd, "db"),
        [
            ("slow".to_string(), "latency".to_string()),
            ("cap".to_string(), "limit_data".to_string())
        ]
    );
    let ls = netd.netctl_json(&["fault", "ls"]);
    let slow = &ls[0]["fault"];
    assert_eq!(slow["latency"], "100ms");
    assert_eq!(slow["jitter"], "10ms");
    assert_eq!(slow["direction"], "both");
    assert_eq!(slow["toxicity"], 0.5);
    assert_eq!(slow["start_after"], "1s");
    assert_eq!(slow["duration"], "10s");
    assert_eq!(slow["client"], "127.0.0.2/32");
    assert_eq!(slow["every_nth"], 3);
    assert_eq!(slow["after_bytes"], 64);
    // Inside its window only after a second.
    assert_eq!(ls[0]["stats"]["active"], false);
    assert_eq!(ls[1]["stats"]["active"], true);

    // Only the options given change; the type's other attributes stay.
    netd.netctl_ok(&["fault", "update", "db", "slow", "--latency", "250ms"]);
    let ls = netd.netctl_json(&["fault", "ls", "db"]);
    assert_eq!(ls[0]["fault"]["latency"], "250ms");
    assert_eq!(ls[0]["fault"]["jitter"], "10ms");
    // A new type drops the old type's attributes.
    netd.netctl_ok(&[
        "fault",
        "update",
        "db",
        "cap",
        "--type",
        "reset_peer",
        "--timeout",
        "2s",
    ]);
    let ls = netd.netctl_json(&["fault", "ls", "db"]);
    assert_eq!(ls[1]["fault"]["type"], "reset_peer");
    assert_eq!(ls[1]["fault"]["timeout"], "2s");
    assert!(ls[1]["fault"].get("bytes").is_none());

    // The listener shows them in its spec, and its stats carry counters.
    let status = netd.netctl_json(&["status", "db"]);
    assert_eq!(status["spec"]["faults"].as_array().unwrap().len(), 2);
    let stats = netd.netctl_json(&["stats", "db"]);
    let text = stats.to_string();
    assert!(text.contains("\"faults\""), "{text}");
    let table = netd.netctl_ok(&["stats"]);
    assert!(
        table.contains("FAULT") && table.contains("reset_peer"),
        "{table}"
    );

    // Errors: usage (2) for what netctl can tell, refused (1) for netd's.
    let bad = netd.netctl(&[
        "fault", "add", "db", "x", "--type", "latency", "--rate", "1MB/s",
    ]);
    assert_eq!(code(&bad), 2);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--rate does not apply to a latency fault")
    );
    let bad = netd.netctl(&[
        "fault",
        "add",
        "db",
        "x",
        "--type",
        "bandwidth",
        "--rate",
        "fast",
    ]);
    assert_eq!(code(&bad), 2, "{}", String::from_utf8_lossy(&bad.stderr));
    let dup = netd.netctl(&["fault", "add", "db", "slow", "--type", "down"]);
    assert_eq!(code(&dup), 1);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already has a fault named 'slow'"));
    let udp_only = netd.netctl_err(&[
        "fault",
        "add",
        "db",
        "l",
        "--type",
        "loss",
        "--probability",
        "0.3",
    ]);
    assert!(
        udp_only.contains("type loss is for a udp-proxy"),
        "{udp_only}"
    );
    let range = netd.netctl_err(&[
        "fault",
        "add",
        "db",
        "t",
        "--type",
        "latency",
        "--toxicity",
        "1.5",
    ]);
    assert!(
        range.contains("toxicity is 1.5; it must be 0 to 1"),
        "{range}"
    );
    let cidr = netd.netctl_err(&[
        "fault",
        "add",
        "db",
        "c",
        "--type",
        "down",
        "--client",
        "127.0.0.1/8",
    ]);
    assert!(cidr.contains("host bits set"), "{cidr}");
    let name = netd.netctl_err(&["fault", "add", "db", "../x", "--type", "down"]);
    assert!(name.contains("names are"), "{name}");
    let kind = netd.netctl(&["fault", "add", "echo", "x", "--type", "down"]);
    assert_eq!(code(&kind), 1);
    assert!(
        String::from_utf8_lossy(&kind.stderr).contains("is a tcp-echo; faults can be injected"),
        "{}",
        String::from_utf8_lossy(&kind.stderr)
    );
    let gone = netd.netctl_err(&["fault", "rm", "db", "nope"]);
    assert!(gone.contains("has no fault named 'nope'"), "{gone}");
    let gone = netd.netctl_err(&["fault", "add", "nope", "x", "--type", "down"]);
    assert!(gone.contains("no listener named 'nope'"), "{gone}");

    // Removal prints the final counters; --all empties the list.
    let out = netd.netctl_ok(&["fault", "rm", "db", "slow"]);
    assert!(
        out.starts_with("removed slow (latency) from db: affected 0"),
        "{out}"
    );
    netd.netctl_ok(&["fault", "rm", "db", "--all"]);
    assert!(faults(&netd, "db").is_empty());
    assert_eq!(netd.netctl_ok(&["fault", "ls"]).trim(), "no faults");

    // Each change was an event, in order.
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let e = tokio::time::timeout(crate::common::DEADLINE, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event");
        seen.push((e.kind(), e.message));
    }
    use proto::EventKind::*;
    let kinds: Vec<_> = seen.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            FaultAdded,
            FaultAdded,
            FaultUpdated,
            FaultUpdated,
            FaultRemoved,
            FaultRemoved
        ]
    );
    assert_eq!(seen[0].1, "fault slow (latency) added");
    assert_eq!(seen[3].1, "fault cap (reset_peer) changed");
    assert_eq!(seen[5].1, "fault cap removed");
}

#[test]
fn faults_persist_with_the_listener_and_export_applies_unchanged() {
    let netd = Netd::start(&config(""));
    netd.netctl_ok(&[
        "fault",
        "add",
        "db",
        "slow",
        "--type",
        "latency",
        "--latency",
        "40ms",
    ]);
    netd.netctl_ok(&[
        "fault",
        "add",
        "db",
        "thin",
        "--type",
        "bandwidth",
        "--rate",
        "250KiB/s",
    ]);
    // A listener update keeps its faults (netctl sends the spec back with
    // them); an ephemeral proxy's faults are not saved.
    netd.netctl_ok(&["update", "db", "--idle-timeout", "1m"]);
    netd.netctl_ok(&[
        "start",
        "proxy",
        "tmp",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
        "--ephemeral",
    ]);
    netd.netctl_ok(&["fault", "add", "tmp", "d", "--type", "down"]);

    let exported = netd.netctl_ok(&["export"]);
    assert!(
        exported.contains("faults = [{ latency = \"40ms\", name = \"slow\", type = \"latency\" }"),
        "{exported}"
    );
    let file = netd.dir.path().join("export.toml");
    std::fs::write(&file, &exported).unwrap();
    let plan = netd.netctl_json(&["apply", "--dry-run", "-f", file.to_str().unwrap()]);
    for item in plan["plan"].as_array().unwrap() {
        assert_eq!(item["action"], "unchanged", "{plan}");
    }

    let dir = netd.kill9();
    let netd = Netd::start_in(dir);
    assert_eq!(
        faults(&netd, "db"),
        [
            ("slow".to_string(), "latency".to_string()),
            ("thin".to_string(), "bandwidth".to_string())
        ]
    );
    let ls = netd.netctl_json(&["fault", "ls", "db"]);
    assert_eq!(ls[1]["fault"]["rate"], "256KB/s");
    let status = netd.netctl_json(&["status", "db"]);
    assert_eq!(status["spec"]["idle_timeout"], "1m");
    // Only what was given changed: netctl's own --connect-timeout (3s) is
    // not the upstream's (5s by default).
    assert_eq!(status["spec"]["connect_timeout"], "5s");
    assert!(
        netd.netctl_err(&["fault", "ls", "tmp"])
            .contains("no listener named 'tmp'")
    );

    // Changing only the faults through apply is an in-place update of the
    // live table.
    let edited = exported.replace("40ms", "80ms");
    std::fs::write(&file, &edited).unwrap();
    let plan = netd.netctl_json(&["apply", "-f", file.to_str().unwrap()]);
    let db = plan["plan"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "db")
        .unwrap()
        .clone();
    assert_eq!(db["action"], "update", "{plan}");
    assert_eq!(db["detail"], "faults", "{plan}");
    let ls = netd.netctl_json(&["fault", "ls", "db"]);
    assert_eq!(ls[0]["fault"]["latency"], "80ms");
}

#[test]
fn config_faults_are_read_validated_and_served() {
    let proxy = "[[listener]]\nname = \"db\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
                 upstreams = [\"127.0.0.1:9\"]\n\
                 [[listener.faults]]\nname = \"late\"\ntype = \"latency\"\nlatency = \"5ms\"\n\
                 direction = \"upstream\"\n";
    let udp = "[[listener]]\nname = \"dns\"\nkind = \"udp-proxy\"\nlisten = \"127.0.0.1:0\"\n\
               upstream = \"127.0.0.1:53\"\n\
               faults = [{ name = \"lossy\", type = \"loss\", probability = 0.25, direction = \"both\" }]\n";
    let netd = Netd::start(&format!("{proxy}{udp}"));
    let all = netd.netctl_json(&["fault", "ls"]);
    let names: Vec<(String, String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["listener"].as_str().unwrap().to_string(),
                f["fault"]["name"].as_str().unwrap().to_string(),
                f["fault"]["direction"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("db".to_string(), "late".to_string(), "upstream".to_string()),
            ("dns".to_string(), "lossy".to_string(), "both".to_string())
        ]
    );
    // /metrics has a series per fault.
    drop(netd);
    let port = free_tcp_port();
    let netd = Netd::start(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n{proxy}{udp}"
    ));
    let body = get_metrics(port);
    assert!(
        body.contains(
            "netd_fault_active{listener=\"db\",kind=\"proxy\",fault=\"late\",type=\"latency\"} 1"
        ),
        "{body}"
    );
    assert!(
        body.contains("netd_fault_datagrams_lost_total{listener=\"dns\""),
        "{body}"
    );
    drop(netd);

    // Errors name the file, the line and the fault.
    for (bad, want) in [
        (
            proxy.replace("latency = \"5ms\"", "latency = \"5ms\"\nrate = \"1MB/s\""),
            "fault 1: rate does not apply to a latency fault",
        ),
        (
            proxy.replace("type = \"latency\"", "type = \"lag\""),
            "fault 1: unknown fault type 'lag'",
        ),
        (proxy.replace("\"5ms\"", "\"-5ms\""), "fault 1: latency:"),
        (
            udp.replace("probability = 0.25", "probability = 2.0"),
            "probability is 2; it must be 0 to 1",
        ),
        (
            udp.replace("udp-proxy", "udp-echo")
                .replace("upstream = \"127.0.0.1:53\"\n", ""),
            "faults does not apply to a udp-echo listener",
        ),
        (
            udp.replace(
                "type = \"loss\", probability = 0.25",
                "type = \"slicer\", average_size = 5",
            ),
            "type slicer is for a proxy (TCP) or an http-proxy listener",
        ),
    ] {
        let (out, path) = netd_exit(&bad, &["--check-config"]);
        let out = out.expect("netd --check-config exits");
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "want {want:?} in: {err}");
        if !want.starts_with("probability") && !want.starts_with("type slicer") {
            assert!(err.contains(&format!("{path}:")), "{err}");
        }
    }
}

/// GET /metrics on loopback `port`, as text.
fn get_metrics(port: u16) -> String {
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
        s.set_read_timeout(Some(crate::common::DEADLINE)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

/// A listener replaced by one of the other kind (a proxy becoming a
/// udp-proxy) takes the new spec's faults, checked for the new kind.
#[test]
fn a_replace_with_another_kind_takes_the_new_faults() {
    let netd = Netd::start(&config(""));
    netd.netctl_ok(&[
        "fault",
        "add",
        "db",
        "slow",
        "--type",
        "latency",
        "--latency",
        "40ms",
    ]);
    let file = netd.dir.path().join("apply.toml");
    std::fs::write(
        &file,
        "[[listener]]\nname = \"db\"\nkind = \"udp-proxy\"\nlisten = \"127.0.0.1:0\"\n\
         upstream = \"127.0.0.1:53\"\n\
         faults = [{ name = \"lossy\", type = \"loss\", probability = 0.5 }]\n",
    )
    .unwrap();
    let plan = netd.netctl_json(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(plan["applied"], true, "{plan}");
    assert_eq!(
        faults(&netd, "db"),
        [("lossy".to_string(), "loss".to_string())]
    );
    // The table now takes UDP types only.
    let e = netd.netctl_err(&[
        "fault",
        "add",
        "db",
        "t",
        "--type",
        "slicer",
        "--average-size",
        "8",
    ]);
    assert!(
        e.contains("type slicer is for a proxy (TCP) or an http-proxy listener"),
        "{e}"
    );
    netd.netctl_ok(&[
        "fault",
        "add",
        "db",
        "dup",
        "--type",
        "duplicate",
        "--probability",
        "0.1",
    ]);
}

/// `--attr KEY=VALUE` (as `toxiproxy-cli toxic add -a`) sets the same keys
/// as the named flags, conditions included; it comes after the flags, and
/// its mistakes are usage errors (2) named as `--attr KEY`.
#[test]
fn attr_flags_set_any_key_like_the_named_flags() {
    let netd = Netd::start(&config(""));
    let out = netd.netctl_ok(&[
        "fault",
        "add",
        "db",
        "cut",
        "--type",
        "slicer",
        "--attr",
        "average_size=64",
        "-a",
        "size_variation=8",
        "--attr",
        "delay=1ms",
        "--attr",
        "every_nth=2",
        "--delay",
        "5ms",
    ]);
    assert!(
        out.starts_with("added fault cut (slicer, downstream) on db"),
        "{out}"
    );
    let ls = netd.netctl_json(&["fault", "ls", "db"]);
    let cut = &ls[0]["fault"];
    assert_eq!(cut["average_size"], 64);
    assert_eq!(cut["size_variation"], 8);
    // --attr is applied after the named flags.
    assert_eq!(cut["delay"], "1ms");
    assert_eq!(cut["every_nth"], 2);

    // Update merges, as with the named flags; a new type by --type.
    netd.netctl_ok(&["fault", "update", "db", "cut", "--attr", "delay=2ms"]);
    let ls = netd.netctl_json(&["fault", "ls", "db"]);
    assert_eq!(ls[0]["fault"]["delay"], "2ms");
    assert_eq!(ls[0]["fault"]["average_size"], 64);
    netd.netctl_ok(&[
        "fault",
        "update",
        "db",
        "cut",
        "--type",
        "bandwidth",
        "--attr",
        "rate=1MB/s",
    ]);
    let ls = netd.netctl_json(&["fault", "ls", "db"]);
    assert_eq!(ls[0]["fault"]["type"], "bandwidth");
    assert_eq!(ls[0]["fault"]["rate"], "1MB/s");
    assert!(ls[0]["fault"].get("average_size").is_none());

    // Mistakes: usage errors, named as given.
    for (args, msg) in [
        (
            vec!["--type", "latency", "--attr", "rate=1MB/s"],
            "--attr rate does not apply to a latency fault",
        ),
        (
            vec!["--type", "latency", "--attr", "latency=soon"],
            "--attr latency: 'soon' is not a duration",
        ),
        (
            vec!["--type", "latency", "--attr", "latncy=1s"],
            "unknown fault key 'latncy'",
        ),
        (
            vec!["--type", "latency", "--attr", "latency"],
            "expected KEY=VALUE",
        ),
        (
            vec!["--type", "latency", "--attr", "type=down"],
            "type is not an attribute",
        ),
    ] {
        let mut argv = vec!["fault", "add", "db", "x"];
        argv.extend(args.iter().copied());
        let bad = netd.netctl(&argv);
        let err = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(code(&bad), 2, "{argv:?}: {err}");
        assert!(err.contains(msg), "{argv:?}: {err}");
    }
    // netd's own checks are refusals (1), as with the named flags.
    let range = netd.netctl(&[
        "fault",
        "add",
        "db",
        "x",
        "--type",
        "latency",
        "--attr",
        "toxicity=1.5",
    ]);
    assert_eq!(code(&range), 1);
    assert!(String::from_utf8_lossy(&range.stderr).contains("toxicity is 1.5; it must be 0 to 1"));
    assert_eq!(faults(&netd, "db").len(), 1);
}
