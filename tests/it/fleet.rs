//! netd on many hosts, against the tools a fleet runs:
//!
//! - a real Prometheus (Debian's `prometheus` package) scraping three netd
//!   daemons, each in a network namespace the test creates, loading the
//!   shipped deploy/prometheus/netd.rules.yml: the fleet totals it answers
//!   over its HTTP API are exactly the traffic sent, and stopping one
//!   daemon fires the shipped `NetdDaemonDown` alert (its `for:` shortened
//!   so the test is quick; nothing else of the file changes);
//! - fleet-wide netctl (`--control` repeated) against three daemons on
//!   Unix sockets, one of them stopped.
//!
//! Prometheus runs in a fourth namespace joined to each daemon's by a veth
//! pair with private addresses (10.77.N.0/30), so every packet stays in
//! namespaces the test made. Needs root (CI runs as root). Without the
//! `prometheus` binary the Prometheus test is skipped with a note, unless
//! NETD_REQUIRE_PROMETHEUS is set, as .ci/run sets it after installing
//! the package: there a missing binary is a failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, NETCTL, NetNs, Netd, bound_addr, wait_until};
use serde_json::Value;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/netd.rules.yml"
);
/// The shipped daemon-down rule, as it appears in [`RULES`]; the test
/// shortens its `for:` only.
const DAEMON_DOWN: &str =
    "- alert: NetdDaemonDown\n        expr: up{job=\"netd\"} == 0\n        for: 2m\n";
const DAEMON_DOWN_FOR: &str = "3s";
/// Where each daemon's echo listener and /metrics are, inside its namespace.
const ECHO_PORT: u16 = 7007;
const METRICS_PORT: u16 = 9464;
const PROM_PORT: u16 = 9090;

/// Whether `prometheus` can run here; `false` (with a note) means skip.
pub(crate) fn prometheus_available() -> bool {
    match Command::new("prometheus").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        r => {
            assert!(
                std::env::var_os("NETD_REQUIRE_PROMETHEUS").is_none(),
                "NETD_REQUIRE_PROMETHEUS is set but prometheus does not run: {r:?}"
            );
            eprintln!(
                "prometheus is not installed: fleet test skipped \
                 (apt-get install --no-install-recommends prometheus)"
            );
            false
        }
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A daemon in its own namespace, reachable from Prometheus' at `addr`.
pub(crate) struct Node {
    netd: Netd,
    pub(crate) ns: NetNs,
    addr: Ipv4Addr,
}

impl Node {
    /// Namespace `i` joined to `prom` by a veth pair (10.77.i.1 on
    /// Prometheus' side, 10.77.i.2 on the daemon's), and netd in it with
    /// /metrics on the veth address and a tcp-echo on loopback.
    fn start(prom: &NetNs, i: u8) -> Node {
        Node::start_with(
            prom,
            i,
            &format!(
                "[[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:{ECHO_PORT}\"\n"
            ),
        )
    }

    /// As [`Node::start`], with `listeners` (config TOML) in place of the
    /// echo (tests/it/grafana.rs).
    pub(crate) fn start_with(prom: &NetNs, i: u8, listeners: &str) -> Node {
        let ns = NetNs::new();
        let (outer, inner) = (format!("vp{i}"), format!("vn{i}"));
        ip(&[
            "-n", &prom.name, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            "netns", &ns.name,
        ]);
        let prom_addr = format!("10.77.{i}.1/30");
        let addr = Ipv4Addr::new(10, 77, i, 2);
        ip(&["-n", &prom.name, "addr", "add", &prom_addr, "dev", &outer]);
        ip(&["-n", &prom.name, "link", "set", &outer, "up"]);
        let node_addr = format!("{addr}/30");
        ip(&["-n", &ns.name, "addr", "add", &node_addr, "dev", &inner]);
        ip(&["-n", &ns.name, "link", "set", &inner, "up"]);
        let netd = ns.netd(&format!(
            "[metrics]\nlisten = \"{addr}:{METRICS_PORT}\"\nallow_remote = true\n{listeners}"
        ));
        Node { netd, ns, addr }
    }

    pub(crate) fn target(&self) -> String {
        format!("{}:{METRICS_PORT}", self.addr)
    }

    /// `n` TCP echo round trips of `msg`, each on its own connection, from
    /// inside the daemon's namespace.
    fn echo(&self, n: usize, msg: &[u8]) {
        self.ns.run(|| {
            for _ in 0..n {
                let mut s = TcpStream::connect(("127.0.0.1", ECHO_PORT)).expect("connect echo");
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                s.write_all(msg).unwrap();
                let mut back = vec![0; msg.len()];
                s.read_exact(&mut back).expect("echo reply");
                assert_eq!(back, msg);
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).expect("read to close");
                assert!(rest.is_empty(), "echo sent more than it got: {rest:?}");
            }
        });
    }
}

/// A Prometheus server in its own namespace, killed on drop.
pub(crate) struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrape `targets` every second with the shipped rules (daemon-down
    /// window shortened), evaluated every second.
    pub(crate) fn start(ns: &NetNs, targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let shipped = std::fs::read_to_string(RULES).expect("read netd.rules.yml");
        assert_eq!(
            shipped.matches(DAEMON_DOWN).count(),
            1,
            "{RULES} no longer has the daemon-down rule this test fires:\n{DAEMON_DOWN}"
        );
        let rules = shipped.replace(
            DAEMON_DOWN,
            &DAEMON_DOWN.replace("for: 2m", &format!("for: {DAEMON_DOWN_FOR}")),
        );
        std::fs::write(dir.path().join("netd.rules.yml"), rules).expect("write rules");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"netd.rules.yml\"]\n\
             scrape_configs:\n  - job_name: netd\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROM_PORT}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Prometheus { child, dir }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on Prometheus (inside `ns`): status code and body; `None`
/// while it does not accept connections yet.
pub(crate) fn http_get(ns: &NetNs, path: &str) -> Option<(u16, String)> {
    ns.run(|| {
        let mut s = TcpStream::connect(("127.0.0.1", PROM_PORT)).ok()?;
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    })
}

/// Percent-encoding for a query string value.
pub(crate) fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant PromQL query: the result vector as (labels, value).
fn query(ns: &NetNs, promql: &str) -> Vec<(Value, f64)> {
    let (status, body) = http_get(ns, &format!("/api/v1/query?query={}", encode(promql)))
        .unwrap_or_else(|| panic!("query {promql}: Prometheus does not answer"));
    assert_eq!(status, 200, "query {promql}: {body}");
    let v: Value = serde_json::from_str(&body).expect("query JSON");
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["result"]
        .as_array()
        .expect("result vector")
        .iter()
        .map(|r| {
            let value = r["value"][1].as_str().expect("sample value");
            (r["metric"].clone(), value.parse().expect("number"))
        })
        .collect()
}

/// The single value of a query that aggregates to one series.
fn scalar(ns: &NetNs, promql: &str) -> Option<f64> {
    match query(ns, promql).as_slice() {
        [] => None,
        [(_, v)] => Some(*v),
        more => panic!("{promql}: expected one series, got {more:?}"),
    }
}

/// Poll `promql` until it is `want` (or the deadline passes: then fail
/// with the last answer).
fn wait_for_value(prom: &Prometheus, ns: &NetNs, promql: &str, want: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = scalar(ns, promql);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{promql}: {got:?}, want {want}; prometheus log:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn prometheus_scrapes_the_fleet_totals_and_fires_daemon_down() {
    if !prometheus_available() {
        return;
    }
    let prom_ns = NetNs::new();
    let nodes: Vec<Node> = (0..3u8).map(|i| Node::start(&prom_ns, i)).collect();
    let targets: Vec<String> = nodes.iter().map(Node::target).collect();
    let prom = Prometheus::start(&prom_ns, &targets);
    wait_until("prometheus ready", || {
        matches!(http_get(&prom_ns, "/-/ready"), Some((200, _)))
    });

    // Every daemon scraped, and nothing firing yet.
    wait_for_value(&prom, &prom_ns, "count(up{job=\"netd\"} == 1)", 3.0);
    let firing = "ALERTS{alertname=\"NetdDaemonDown\",alertstate=\"firing\"}";
    assert!(
        query(&prom_ns, firing).is_empty(),
        "daemon-down firing with every daemon up"
    );

    // Known traffic: daemon i gets 4 * (i + 1) round trips of 100 + i bytes.
    let mut want = (0u64, 0u64);
    for (i, node) in nodes.iter().enumerate() {
        let (n, len) = (4 * (i + 1), 100 + i);
        node.echo(n, &vec![b'a' + i as u8; len]);
        want.0 += n as u64;
        want.1 += (n * len) as u64;
    }
    let echo = "{job=\"netd\",listener=\"echo\"}";
    wait_for_value(
        &prom,
        &prom_ns,
        &format!("sum(netd_connections_total{echo})"),
        want.0 as f64,
    );
    wait_for_value(
        &prom,
        &prom_ns,
        &format!("sum(netd_received_bytes_total{echo})"),
        want.1 as f64,
    );
    wait_for_value(
        &prom,
        &prom_ns,
        &format!("sum(netd_sent_bytes_total{echo})"),
        want.1 as f64,
    );
    // ... and per daemon, told apart by the instance label.
    let mut per_node = query(&prom_ns, &format!("netd_connections_total{echo}"));
    per_node.sort_by(|a, b| a.0["instance"].as_str().cmp(&b.0["instance"].as_str()));
    let got: Vec<(String, f64)> = per_node
        .iter()
        .map(|(m, v)| (m["instance"].as_str().unwrap().to_string(), *v))
        .collect();
    let expected: Vec<(String, f64)> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), (4 * (i + 1)) as f64))
        .collect();
    assert_eq!(got, expected);

    // Stop the second daemon: the shipped alert fires for it alone, and
    // the shipped recording rule counts two daemons up.
    let mut nodes = nodes;
    let stopped = nodes.remove(1);
    let stopped_target = stopped.target();
    let mut netd = stopped.netd;
    netd.signal(libc::SIGTERM);
    let exit = netd.wait_exit();
    assert!(exit.success(), "netd exit {exit}; log:\n{}", netd.log());
    let deadline = Instant::now() + DEADLINE;
    let alerts = loop {
        let alerts = query(&prom_ns, firing);
        if !alerts.is_empty() {
            break alerts;
        }
        assert!(
            Instant::now() < deadline,
            "NetdDaemonDown (for: {DAEMON_DOWN_FOR}) not firing {DEADLINE:?} after the stop; \
             prometheus log:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].0["instance"], stopped_target.as_str());
    assert_eq!(alerts[0].0["severity"], "critical");
    wait_for_value(&prom, &prom_ns, "job:netd_daemons_up:sum", 2.0);
    // Dropped in reverse order: Prometheus, then each daemon before its
    // namespace.
}

/// `netctl --control A --control B ... ARGS`: exit code, stdout, stderr.
fn fleet_netctl(controls: &[String], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(NETCTL);
    for c in controls {
        cmd.arg("--control").arg(c);
    }
    let out = cmd
        .args(args)
        .env_remove("NETD_CONTROL")
        .output()
        .expect("run netctl");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).expect("utf8"),
        String::from_utf8(out.stderr).expect("utf8"),
    )
}

/// A daemon on a Unix socket with one tcp-echo `echo` that has served `n`
/// connections.
fn daemon_with_traffic(n: usize) -> Netd {
    let netd = Netd::start(
        "[[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let addr = bound_addr(&netd, "echo");
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).expect("connect echo");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"hi").unwrap();
        let mut back = [0u8; 2];
        s.read_exact(&mut back).expect("echo");
    }
    wait_until("connections counted", || {
        netd.netctl_json(&["status", "echo"])["stats"]["connections_total"] == n as u64
    });
    netd
}

#[test]
fn netctl_merges_list_and_stats_of_several_daemons_and_shows_one_down() {
    let mut daemons: Vec<Netd> = (1..=3).map(daemon_with_traffic).collect();
    let controls: Vec<String> = daemons.iter().map(|d| d.control.to_string()).collect();

    // JSON: every listener tagged with its daemon.
    let (code, out, err) = fleet_netctl(&controls, &["-o", "json", "list"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("list JSON");
    let got: Vec<(String, u64)> = v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["name"], "echo");
            (
                l["host"].as_str().unwrap().to_string(),
                l["stats"]["connections_total"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = controls.iter().cloned().zip(1..=3).collect();
    assert_eq!(got, want);
    assert!(
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["reachable"] == true),
        "{v}"
    );

    // The same through NETD_CONTROL as a comma-separated list, as a table.
    let out = Command::new(NETCTL)
        .arg("list")
        .env("NETD_CONTROL", controls.join(","))
        .output()
        .expect("run netctl");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("HOST "), "{table}");
    assert!(lines[0].contains(" NAME "), "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    for (line, (host, n)) in lines[1..].iter().zip(&want) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], host, "{table}");
        assert_eq!(cells[1], "echo", "{table}");
        assert!(line.contains(&format!("0 active, {n} total")), "{table}");
    }

    // One daemon stops: its row says so, the others are still there, and
    // the exit code is 0; the reason is on stderr.
    daemons[1].signal(libc::SIGTERM);
    assert!(daemons[1].wait_exit().success());
    let (code, table, err) = fleet_netctl(&controls, &["list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let down: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(down[0], controls[1], "{table}");
    assert_eq!(down[3], "unreachable", "{table}");
    assert!(lines[1].starts_with(&controls[0]) && lines[3].starts_with(&controls[2]));
    assert!(err.contains(&controls[1]), "{err}");

    // stats: JSON lines, one per daemon, in order.
    let (code, out, err) = fleet_netctl(&controls, &["-o", "json", "stats"]);
    assert_eq!(code, 0, "{err}");
    let samples: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 3, "{out}");
    assert_eq!(samples[0]["listeners"][0]["totals"]["connections_total"], 1);
    assert_eq!(samples[1]["host"], controls[1].as_str());
    assert_eq!(samples[1]["reachable"], false, "{out}");
    assert!(
        samples[1]["error"].as_str().unwrap().contains("connect"),
        "{out}"
    );
    assert_eq!(samples[2]["listeners"][0]["totals"]["connections_total"], 3);

    // stats --watch -n 2: two samples from each daemon up, one line for
    // the one down, then exit 0.
    let (code, out, err) = fleet_netctl(
        &controls,
        &["stats", "--watch", "-n", "2", "--interval", "100ms"],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    for (i, host) in controls.iter().enumerate() {
        let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[1] == host).collect();
        if i == 1 {
            assert_eq!(mine.len(), 1, "{out}");
            assert_eq!(mine[0][4], "unreachable", "{out}");
        } else {
            assert_eq!(mine.len(), 2, "{out}");
            assert!(
                mine.iter()
                    .all(|r| r[2] == "echo" && r[6] == (i + 1).to_string()),
                "{out}"
            );
        }
    }

    // Nobody home: exit 3.
    for i in [0, 2] {
        let d = &mut daemons[i];
        d.signal(libc::SIGTERM);
        assert!(d.wait_exit().success());
    }
    let (code, table, err) = fleet_netctl(&controls, &["list"]);
    assert_eq!(code, 3, "{table}{err}");
    assert_eq!(table.matches("unreachable").count(), 3, "{table}");
    assert!(
        err.contains("none of the 3 daemons could be reached"),
        "{err}"
    );

    // Commands about one listener take one daemon.
    let (code, _, err) = fleet_netctl(&controls, &["status", "echo"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn netctl_events_merges_the_streams_of_several_daemons() {
    let mut daemons: Vec<Netd> = (0..2).map(|_| Netd::start("")).collect();
    let controls: Vec<String> = daemons.iter().map(|d| d.control.to_string()).collect();
    let mut cmd = Command::new(NETCTL);
    for c in &controls {
        cmd.arg("--control").arg(c);
    }
    let mut child = cmd
        .arg("events")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netctl events");
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.expect("read netctl")).is_err() {
                return;
            }
        }
    });
    let next_line = |what: &str| -> String {
        rx.recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no line from netctl events for {what}: {e}"))
    };

    // netctl has subscribed once a start shows up: start listeners (one
    // per second at most) until one does, on each daemon.
    for (i, d) in daemons.iter().enumerate() {
        let deadline = Instant::now() + DEADLINE;
        let line = (0..).find_map(|k| {
            assert!(Instant::now() < deadline, "no event from daemon {i}");
            let name = format!("l{i}x{k}");
            d.netctl_ok(&["start", "tcp-echo", &name, "--listen", "127.0.0.1:0"]);
            rx.recv_timeout(Duration::from_secs(1)).ok()
        });
        let line = line.unwrap();
        assert!(line.starts_with(&format!("{}  ", controls[i])), "{line}");
        assert!(
            line.contains("started") && line.contains(&format!("l{i}x")),
            "{line}"
        );
    }

    // One daemon goes away: a line says so, and the other still streams.
    daemons[0].signal(libc::SIGTERM);
    assert!(daemons[0].wait_exit().success());
    let mut line = next_line("daemon 0 down");
    while line.starts_with(&format!("{}  ", controls[0])) && line.contains("stopped") {
        line = next_line("daemon 0 down");
    }
    assert!(line.starts_with(&format!("{}  ", controls[0])), "{line}");
    assert!(
        line.contains("unreachable") || line.contains("error"),
        "{line}"
    );
    daemons[1].netctl_ok(&["start", "tcp-echo", "later", "--listen", "127.0.0.1:0"]);
    let line = next_line("later");
    assert!(line.starts_with(&format!("{}  ", controls[1])), "{line}");
    assert!(line.contains("later"), "{line}");
}

/// What kubelet's gRPC probe sees: plaintext h2c, no client certificate,
/// grpc.health.v1 answering for the server ("") and for netd.v1.Control,
/// and no other service on that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint_serves_only_grpc_health_in_plaintext() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let port = crate::common::free_tcp_port();
    let netd = Netd::start(&format!("[health]\nlisten = \"127.0.0.1:{port}\"\n"));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("plaintext connect to [health] listen");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "netd.v1.Control"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("check {service:?}: {e}"))
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // The control service is not on this port, whatever the caller.
    let mut control = netd::proto::control_client::ControlClient::new(channel);
    let e = control
        .list_listeners(netd::proto::ListListenersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    assert!(netd.log().contains("serving plaintext grpc.health.v1"));
}

/// A stopping netd is not ready: from SIGTERM on, while open connections
/// drain, the health port says NOT_SERVING for netd.v1.Control (what the
/// DaemonSet's readiness probe asks), so the pod leaves its endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint_reports_not_serving_while_draining() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let port = crate::common::free_tcp_port();
    let mut netd = Netd::start(&format!(
        "shutdown_grace = \"30s\"\n[health]\nlisten = \"127.0.0.1:{port}\"\n\
         [[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n"
    ));
    // An open connection keeps the drain going until it closes.
    let mut held = TcpStream::connect(bound_addr(&netd, "echo")).unwrap();
    held.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    held.read_exact(&mut one).unwrap();

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let control = || HealthCheckRequest {
        service: "netd.v1.Control".into(),
    };
    let status = health.check(control()).await.unwrap().into_inner().status();
    assert_eq!(status, ServingStatus::Serving);

    netd.signal(libc::SIGTERM);
    crate::common::wait_until_async("NOT_SERVING while draining", || {
        let mut health = health.clone();
        async move {
            let r = health.check(control()).await.unwrap().into_inner();
            r.status() == ServingStatus::NotServing
        }
    })
    .await;
    assert!(
        netd.exited().is_none(),
        "netd exited before the drain ended"
    );
    drop(held);
    let exit = netd.wait_exit();
    assert!(exit.success(), "{exit}; log:\n{}", netd.log());
}
