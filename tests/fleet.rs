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

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, NetNs, Netd, wait_until};
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
fn prometheus_available() -> bool {
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
struct Node {
    netd: Netd,
    ns: NetNs,
    addr: Ipv4Addr,
}

impl Node {
    /// Namespace `i` joined to `prom` by a veth pair (10.77.i.1 on
    /// Prometheus' side, 10.77.i.2 on the daemon's), and netd in it with
    /// /metrics on the veth address and a tcp-echo on loopback.
    fn start(prom: &NetNs, i: u8) -> Node {
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
            "[metrics]\nlisten = \"{addr}:{METRICS_PORT}\"\nallow_remote = true\n\
             [[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:{ECHO_PORT}\"\n"
        ));
        Node { netd, ns, addr }
    }

    fn target(&self) -> String {
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
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrape `targets` every second with the shipped rules (daemon-down
    /// window shortened), evaluated every second.
    fn start(ns: &NetNs, targets: &[String]) -> Prometheus {
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

    fn log(&self) -> String {
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
fn http_get(ns: &NetNs, path: &str) -> Option<(u16, String)> {
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
fn encode(q: &str) -> String {
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
    assert!(
        query(&prom_ns, "ALERTS{alertname=\"NetdDaemonDown\"}").is_empty(),
        "daemon-down pending or firing with every daemon up"
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
    let firing = "ALERTS{alertname=\"NetdDaemonDown\",alertstate=\"firing\"}";
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
