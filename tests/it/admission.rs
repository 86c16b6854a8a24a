//! Admission to netd's own endpoints under attack: a client that never
//! authenticates holding or churning connections on the mTLS control
//! port and on the health endpoint, as another local user. Each test
//! fails on the code before the admission layer (one shared cap taken at
//! accept, a WARN line per refusal, Watch streams on the health port).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use crate::common::{NETD, Netd};
use crate::security::{Pki, mtls_netd, netctl_tls};
use netd::util::addr::ControlAddr;

const NOBODY: u32 = 65534;

/// A client that holds up to `n` TCP connections to `port` open without
/// sending a byte, re-opening those netd closes, for `secs` seconds; as
/// uid `nobody`, so that it is another local user than the test's root.
/// Returns once netd has turned one of them away (the client has opened
/// what it can); [`opened`] then says how many it opened in all.
fn hold_sockets_as_nobody(port: u16, n: usize, secs: u64) -> Attacker {
    const SCRIPT: &str = r#"
import socket, sys, time, select
port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks, opened, end, told = [], 0, time.time() + secs, False
def full():
    global told
    if not told:
        print("full", flush=True)
        told = True
while time.time() < end:
    if socks:
        readable, _, _ = select.select(socks, [], [], 0)
        for s in readable:
            try:
                gone = s.recv(1, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:
                socks.remove(s)
                s.close()
                full()
    while len(socks) < n and time.time() < end:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            full()
            break
        socks.append(s)
        opened += 1
    time.sleep(0.005)
print(opened, flush=True)
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SCRIPT])
        .arg(port.to_string())
        .arg(n.to_string())
        .arg(secs.to_string())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("python3 (the attacking client)");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    // Ends when netd turned a socket away, or with the script.
    std::io::BufRead::read_line(&mut out, &mut line).expect("the attacker's output");
    assert_eq!(line.trim(), "full", "netd never turned the attacker away");
    Attacker { child, out }
}

/// The client of [`hold_sockets_as_nobody`], past its "full" line.
struct Attacker {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

/// How many sockets the attacker opened in all (when its time is up).
fn opened(mut attacker: Attacker) -> u64 {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut attacker.out, &mut rest).expect("the attacker's output");
    let status = attacker.child.wait().expect("the attacking client");
    rest.trim()
        .parse()
        .unwrap_or_else(|_| panic!("attacker output ({status}): {rest:?}"))
}

/// The mTLS control plane lock-out of issue 22: silent connections took
/// every slot before their handshake (10 s each), an admin with a valid
/// certificate failed every call, and each refusal was a WARN line. Now
/// handshakes are admitted apart (a small cap per source, 3 s, the oldest
/// making way) and only authenticated connections take slots.
#[test]
fn admin_is_served_while_an_unauthenticated_client_holds_200_sockets() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "netd");
    let server = pki.issue("server", "netd", &["localhost", "127.0.0.1"], false);
    let admin = pki.issue("admin", "ops-laptop", &[], false);
    let ca = pki_dir.path().join("netd-ca.pem");
    let (netd, control) = mtls_netd(&server, &ca);
    let port: u16 = control.rsplit(':').next().unwrap().parse().unwrap();
    let out = netctl_tls(&control, &ca, Some(&admin), &["list"]);
    assert!(out.status.success(), "before the attack: {out:?}");
    let log_before = std::fs::metadata(netd.log_path()).map_or(0, |m| m.len());

    let attacker = hold_sockets_as_nobody(port, 200, 12);
    let mut failures = Vec::new();
    for i in 0..8 {
        let out = netctl_tls(&control, &ca, Some(&admin), &["list"]);
        if !out.status.success() {
            failures.push(format!("{i}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let opened = opened(attacker);
    assert!(
        failures.is_empty(),
        "admin calls failed while the sockets were held: {failures:#?}"
    );
    assert!(opened >= 200, "the attacker held only {opened} sockets");
    let grown = std::fs::metadata(netd.log_path()).map_or(0, |m| m.len()) - log_before;
    assert!(
        grown < 1 << 20,
        "the log grew {grown} bytes during the attack"
    );
    // The refusals are counted, and said in few lines.
    let log = netd.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("endpoint=\"control\"") || l.contains("endpoint=control"))
        .count();
    assert!(lines >= 1, "no refusal logged:\n{log}");
    assert!(lines <= 20, "{lines} refusal lines:\n{log}");
    assert!(log.contains("suppressed"), "{log}");
}

/// A kubelet-style probe: a new plaintext connection, one Check; then,
/// on the same connection, a Watch. (Check's status, Watch's outcome.)
async fn probe(port: u16) -> Result<(i32, Result<(), tonic::Code>), String> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut health = HealthClient::new(channel);
    let request = || HealthCheckRequest {
        service: String::new(),
    };
    let status = health
        .check(request())
        .await
        .map_err(|e| format!("check: {e}"))?
        .into_inner()
        .status;
    let watch = health
        .watch(request())
        .await
        .map(|_| ())
        .map_err(|e| e.code());
    Ok((status, watch))
}

/// The health endpoint starvation of issue 22: one client holding every
/// connection (and Watch streams) made each kubelet-style Check fail. Now
/// one source holds at most a few connections and Watch is not served
/// there, so the probe (root, as kubelet) gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_is_answered_while_one_client_holds_what_it_can() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let port = crate::common::free_tcp_port();
    let netd = Netd::start(&format!("[health]\nlisten = \"127.0.0.1:{port}\"\n"));
    let (status, _) = probe(port).await.expect("probe before the attack");
    assert_eq!(status, ServingStatus::Serving as i32);
    let attacker = hold_sockets_as_nobody(port, 64, 8);
    for i in 0..5 {
        let (status, watch) = probe(port)
            .await
            .unwrap_or_else(|e| panic!("probe {i} during the attack: {e}\n{}", netd.log()));
        assert_eq!(status, ServingStatus::Serving as i32, "probe {i}");
        assert_eq!(watch, Err(tonic::Code::Unimplemented), "probe {i}: Watch");
    }
    let opened = opened(attacker);
    assert!(opened >= 16, "the attacker opened only {opened}");
    let log = netd.log();
    assert!(
        log.contains("health: per-source connection limit reached"),
        "{log}"
    );
}

/// Denied calls are audited, but a local user repeating one at will must
/// not fill the disk: 300 refused creations through the Toxiproxy API (as
/// uid nobody, a viewer) give a few `audit: denied` lines and one that
/// says how many were left out.
#[test]
fn denied_calls_are_audited_without_flooding_the_log() {
    const SCRIPT: &str = r#"
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
codes = {}
for i in range(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("POST", "/proxies", body='{"name":"p%d","listen":"127.0.0.1:0","upstream":"127.0.0.1:9"}' % i,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    codes[r.status] = codes.get(r.status, 0) + 1
    c.close()
print(" ".join("%d:%d" % kv for kv in sorted(codes.items())), flush=True)
"#;
    let upstream = crate::common::TestUpstream::echo(b"");
    let netd = Netd::start(&crate::toxiproxy_api::config(upstream.addr));
    let api = crate::toxiproxy_api::api_addr(&netd);
    let out = crate::common::output_within_deadline({
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SCRIPT])
            .arg(api.port().to_string())
            .arg("300")
            .uid(NOBODY)
            .gid(NOBODY);
        cmd
    })
    .expect("the client finishes");
    let codes = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(codes, "403:300", "{out:?}");
    let log = netd.log();
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("audit: denied"))
        .collect();
    assert!(!denied.is_empty(), "no denial audited:\n{log}");
    assert!(denied.len() <= 60, "{} denial lines", denied.len());
    assert!(
        denied.iter().all(|l| l.contains("uid:65534")),
        "{denied:#?}"
    );
}

/// A local user is one source whatever address it connects from. On a
/// node with several addresses (hostNetwork: the node's IP, a bridge's, a
/// tunnel's...), a local account could bind each as the source of its
/// connections and count as that many remote peers: four addresses held
/// every health slot, and the kubelet, probing the node's address from
/// that same address, shared a source with the attacker; every Check
/// failed. Now a peer on any of the host's addresses is its uid.
#[test]
fn health_check_is_answered_while_a_local_user_connects_from_every_address() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let ns = crate::common::NetNs::new();
    let node = "10.99.0.1";
    let others = ["10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.5"];
    for a in std::iter::once(node).chain(others) {
        let out = Command::new("ip")
            .args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo",
            ])
            .output()
            .expect("ip addr add");
        assert!(out.status.success(), "ip addr add {a}: {out:?}");
    }
    let port = 9091;
    let netd = ns.netd(&format!("[health]\nlisten = \"0.0.0.0:{port}\"\n"));
    let check = || check_from(&ns, &format!("{node}:{port}"));
    assert_eq!(check(), Ok(ServingStatus::Serving as i32), "before");

    let mut attacker = hold_from_sources(&ns, node, port, &others, 8);
    let results: Vec<_> = (0..5).map(|_| check()).collect();
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert!(
        results
            .iter()
            .all(|r| *r == Ok(ServingStatus::Serving as i32)),
        "Checks from the node's address while a local user held connections from four others: {results:?}\n{}",
        netd.log()
    );
    let log = netd.log();
    assert!(
        log.contains("source=uid:65534"),
        "the attacker was not counted as its uid:\n{log}"
    );
}

const HOLD_FROM_SOURCES: &str = r#"
import socket, sys, time, select
dst, port, secs, srcs, n = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(","), int(sys.argv[5])
held = {s: [] for s in srcs}
refused = set()
told, opened, end = False, 0, time.time() + secs
while time.time() < end:
    for src, socks in held.items():
        while len(socks) < n:
            s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
            s.bind((src, 0))
            s.setblocking(False)
            s.connect_ex((dst, port))
            socks.append(s)
            opened += 1
    every = [s for socks in held.values() for s in socks]
    readable, _, _ = select.select(every, [], [], 0.05)
    for s in readable:
        try:
            gone = s.recv(4096) == b""
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        if gone:
            for src, socks in held.items():
                if s in socks:
                    socks.remove(s)
                    refused.add(src)
            s.close()
    if not told and len(refused) == len(srcs):
        print("full", flush=True)
        told = True
print(opened, flush=True)
"#;

/// Uid 65534 in `ns` holding up to `n` silent connections to `dst:port`
/// from each of `sources`, re-opening those netd closes, for 12 s; returns
/// once every source has been turned away at least once (all it can hold
/// is held).
fn hold_from_sources(
    ns: &crate::common::NetNs,
    dst: &str,
    port: u16,
    sources: &[&str],
    n: usize,
) -> Child {
    use std::io::BufRead as _;
    let mut attacker = ns.command("setpriv");
    attacker
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(python3_for_nobody())
        .args(["-c", HOLD_FROM_SOURCES, dst, &port.to_string(), "12"])
        .arg(sources.join(","))
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut attacker = attacker.spawn().expect("python3 (the attacking client)");
    let mut out = std::io::BufReader::new(attacker.stdout.take().expect("stdout"));
    let mut line = String::new();
    // Ends when every source was turned away once, or with the script.
    out.read_line(&mut line).expect("the attacker's output");
    assert_eq!(line.trim(), "full", "the attacker never filled its share");
    attacker
}

/// A python3 on PATH that uid 65534 can run (a shim under /root is not).
fn python3_for_nobody() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| {
            Command::new("setpriv")
                .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .arg(p)
                .args(["-c", ""])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("a python3 on PATH that uid 65534 can run")
}

/// One health Check on a new connection to `addr`: its status.
/// One grpc.health.v1 Check of `addr`, made from inside `ns`.
fn check_from(ns: &crate::common::NetNs, addr: &str) -> Result<i32, String> {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(check_at(addr))
    })
}

/// Wait until `check` answers SERVING (a link may take a moment to come
/// up), at most [`crate::common::DEADLINE`].
fn wait_serving(check: impl Fn() -> Result<i32, String>) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let deadline = std::time::Instant::now() + crate::common::DEADLINE;
    while check() != Ok(ServingStatus::Serving as i32) {
        assert!(
            std::time::Instant::now() < deadline,
            "health never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn check_at(addr: &str) -> Result<i32, String> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("endpoint: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = HealthCheckRequest {
        service: String::new(),
    };
    Ok(HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|e| format!("check: {e}"))?
        .into_inner()
        .status)
}

/// Remote peers are told apart only by address, and a client with four
/// addresses (four pods, an IPv6 prefix...) held all 16 health slots: the
/// kubelet, a root socket on the node probing its hostNetwork pod, failed
/// every Check. Now a few slots are kept for local probers of root (or
/// netd's own user).
#[test]
fn health_check_by_local_root_is_answered_while_remote_addresses_hold_the_rest() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let node = "10.98.0.1";
    let remote = ["10.98.0.2", "10.98.0.3", "10.98.0.4", "10.98.0.5"];
    let (node_ns, remote_ns) = linked_namespaces("h8a", &format!("{node}/24"), &cidrs(&remote, 24));
    let port = 9091;
    let netd = node_ns.netd(&format!("[health]\nlisten = \"0.0.0.0:{port}\"\n"));
    let check = || check_from(&node_ns, &format!("{node}:{port}"));
    // The link may take a moment to come up.
    wait_serving(check);
    let mut attacker = hold_from_sources(&remote_ns, node, port, &remote, 8);
    let results: Vec<_> = (0..5).map(|_| check()).collect();
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert!(
        results
            .iter()
            .all(|r| *r == Ok(ServingStatus::Serving as i32)),
        "Checks by root on the node while four remote addresses held connections: {results:?}\n{}",
        netd.log()
    );
}

/// The hostile pass's medium: a kubelet probing from outside netd's
/// network namespace is a remote address, and four other addresses
/// holding silent connections took every slot it could use. Now a full
/// health endpoint closes its oldest connection with no call open to make
/// room, so a remote prober from a fifth address is answered.
#[test]
fn remote_prober_is_answered_while_four_addresses_hold_idle_connections() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let node = "10.97.0.1";
    let prober = "10.97.0.9";
    let holders = ["10.97.0.2", "10.97.0.3", "10.97.0.4", "10.97.0.5"];
    // The prober's address first: the primary one, which the probe's
    // connections take as their source.
    let remote: Vec<&str> = std::iter::once(prober).chain(holders).collect();
    let (node_ns, remote_ns) = linked_namespaces("hie", &format!("{node}/24"), &cidrs(&remote, 24));
    let port = 9091;
    let netd = node_ns.netd(&format!("[health]\nlisten = \"0.0.0.0:{port}\"\n"));
    let check = || check_from(&remote_ns, &format!("{node}:{port}"));
    wait_serving(check);
    let mut holder = hold_from_sources(&remote_ns, node, port, &holders, 8);
    // Not a wait for a condition: a prober comes when it comes, and by
    // then the holders' connections have been idle past the 1 s after
    // which a full endpoint may close one to make room.
    std::thread::sleep(Duration::from_secs(1));
    // As kubelet judges a probe: it fails after failureThreshold (3)
    // failures in a row.
    let rounds: Vec<Vec<_>> = (0..5)
        .map(|_| {
            let mut tries = Vec::new();
            for _ in 0..3 {
                let r = check();
                let ok = r == Ok(ServingStatus::Serving as i32);
                tries.push(r);
                if ok {
                    break;
                }
            }
            tries
        })
        .collect();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        rounds
            .iter()
            .all(|t| t.last() == Some(&Ok(ServingStatus::Serving as i32))),
        "remote Checks (3 tries a round, as kubelet's failureThreshold) while four addresses held idle connections: {rounds:?}\n{}",
        netd.log()
    );
}

/// An admin calling from afar over mTLS while an unauthenticated client
/// with five addresses churns silent connections: the oldest handshake
/// in progress made way for each new one, and the admin's, a few
/// milliseconds old among hundreds of new ones a second, was the oldest
/// (5 of 8 `netctl list` failed). Now the busiest source makes way.
#[test]
fn remote_admin_is_served_while_five_addresses_churn_handshakes() {
    let node = "10.98.0.1";
    let attackers = [
        "10.98.0.2",
        "10.98.0.3",
        "10.98.0.4",
        "10.98.0.5",
        "10.98.0.6",
    ];
    // The admin's address first: the primary one, which netctl's
    // connections take as their source.
    let remote: Vec<&str> = std::iter::once("10.98.0.9").chain(attackers).collect();
    let (node_ns, remote_ns) = linked_namespaces("h8c", &format!("{node}/24"), &cidrs(&remote, 24));
    let (failures, log) = remote_admin_failures(&node_ns, &remote_ns, node, &attackers, 16);
    assert!(
        failures.is_empty(),
        "admin calls failed while five addresses churned handshakes: {failures:#?}\n{log}"
    );
}

/// The same over IPv6, where one client has a whole /64 to pick source
/// addresses from: 64 addresses of one prefix, one silent connection each,
/// all counted as one handshake in progress apiece, made the admin's the
/// oldest among equals. Now a /64 is one source for handshakes.
#[test]
fn remote_admin_is_served_while_an_ipv6_prefix_churns_handshakes() {
    let node = "fd00:98::1";
    // The admin in the node's /64, the attacker in a /64 of its own.
    let attackers: Vec<String> = (1..=64).map(|i| format!("fd00:99::{i:x}")).collect();
    let mut remote = vec!["fd00:98::9".to_string()];
    remote.extend(attackers.iter().cloned());
    let (node_ns, remote_ns) = linked_namespaces("h8e", &format!("{node}/64"), &cidrs(&remote, 64));
    // The way back to the attacker's prefix.
    ip(&[
        "-n",
        &node_ns.name,
        "-6",
        "route",
        "add",
        "fd00:99::/64",
        "dev",
        &veth_name("h8e", 'a'),
    ]);
    let sources: Vec<&str> = attackers.iter().map(String::as_str).collect();
    let (failures, log) = remote_admin_failures(&node_ns, &remote_ns, node, &sources, 1);
    assert!(
        failures.is_empty(),
        "admin calls failed while one /64 churned handshakes: {failures:#?}\n{log}"
    );
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// `addrs` with a prefix length each.
fn cidrs(addrs: &[impl AsRef<str>], len: u8) -> Vec<String> {
    addrs
        .iter()
        .map(|a| format!("{}/{len}", a.as_ref()))
        .collect()
}

/// The name of one end (`'a'` the node's, `'b'` the remote's) of the veth
/// of [`linked_namespaces`] called with `tag`.
fn veth_name(tag: &str, end: char) -> String {
    format!("{tag}{end}{}", std::process::id() % 100_000)
}

/// Two network namespaces made for the test and joined by a veth: a
/// "node" (netd's host) with the address `node_cidr`, and a "remote" side
/// with `remote_cidrs`, the first its primary (the source its connections
/// take). IPv6 addresses skip duplicate address detection. `tag` names the
/// veth (unique per test: tests run side by side).
fn linked_namespaces(
    tag: &str,
    node_cidr: &str,
    remote_cidrs: &[String],
) -> (crate::common::NetNs, crate::common::NetNs) {
    let node_ns = crate::common::NetNs::new();
    let remote_ns = crate::common::NetNs::new();
    let (a, b) = (veth_name(tag, 'a'), veth_name(tag, 'b'));
    ip(&[
        "link",
        "add",
        &a,
        "netns",
        &node_ns.name,
        "type",
        "veth",
        "peer",
        "name",
        &b,
        "netns",
        &remote_ns.name,
    ]);
    let add = |ns: &str, cidr: &str, dev: &str| {
        let mut args = vec!["-n", ns, "addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    };
    add(&node_ns.name, node_cidr, &a);
    ip(&["-n", &node_ns.name, "link", "set", &a, "up"]);
    for r in remote_cidrs {
        add(&remote_ns.name, r, &b);
    }
    ip(&["-n", &remote_ns.name, "link", "set", &b, "up"]);
    (node_ns, remote_ns)
}

/// netd with its control plane on port 50443 of `node` in `node_ns`, mTLS
/// with `ops-laptop` an admin; once the admin's `netctl list` from
/// `remote_ns` answers, `attackers` churn `per_source` silent connections
/// each while the admin calls 8 more times. The failed calls' errors, and
/// netd's log.
fn remote_admin_failures(
    node_ns: &crate::common::NetNs,
    remote_ns: &crate::common::NetNs,
    node: &str,
    attackers: &[&str],
    per_source: usize,
) -> (Vec<String>, String) {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "netd");
    let server = pki.issue("server", "netd", &[node], false);
    let admin = pki.issue("admin", "ops-laptop", &[], false);
    let ca = pki_dir.path().join("netd-ca.pem");
    let port = 50443;
    let ip: std::net::IpAddr = node.parse().expect("an IP address");
    let control = std::net::SocketAddr::new(ip, port).to_string();
    let any = if ip.is_ipv6() { "[::]" } else { "0.0.0.0" };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("netd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[control]\nlisten = \"{any}:{port}\"\n[control.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[control.roles]\nadmin = [\"ops-laptop\"]\n",
            server.0, server.1, ca
        ),
    )
    .unwrap();
    let mut cmd = node_ns.command(NETD);
    cmd.arg("--config").arg(&cfg).env_remove("NETD_CONTROL");
    let netd = Netd::spawn_as_is(cmd, dir, control.parse::<ControlAddr>().unwrap());
    let list = || {
        let mut cmd = remote_ns.command(crate::common::NETCTL);
        cmd.args(["--control", &control, "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(&admin.0)
            .arg("--key")
            .arg(&admin.1)
            .arg("list")
            .env_remove("NETD_CONTROL");
        crate::common::output_within_deadline(cmd).expect("netctl list ended")
    };
    // The link may take a moment to come up.
    let deadline = std::time::Instant::now() + crate::common::DEADLINE;
    while !list().status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "netctl list never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut attacker = hold_from_sources(remote_ns, node, port, attackers, per_source);
    let failures: Vec<String> = (0..8)
        .map(|_| list())
        .filter(|o| !o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    let _ = attacker.kill();
    let _ = attacker.wait();
    (failures, netd.log())
}
