//! The packet sniffer, only ever on `lo` inside a network namespace each
//! test creates (so it sees nothing but the test's own traffic), checked
//! against tshark on the same traffic and against the pcap-file crate.
//! These tests need root (network namespaces, CAP_NET_RAW); CI runs them as
//! root and they do not skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::{NetNs, Netd, bound_addr, wait_until};
use netd::proto;
use serde_json::Value;

fn sniffer_stats(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["status", name])["stats"]["sniffer"].clone()
}

fn count(v: &Value, proto: &str) -> u64 {
    v[proto]["packets"].as_u64().unwrap()
}

/// UDP round trips to an echo server: 2 packets each.
fn udp_roundtrips(to: SocketAddr, n: usize, payload: &[u8]) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        s.send(payload).unwrap();
        s.recv(&mut buf).unwrap();
    }
    s.local_addr().unwrap()
}

/// tshark on lo in a namespace, printing each packet's protocol stack as it
/// captures it (`-l`: a line per packet, flushed), counted live per protocol.
struct Tshark {
    child: Child,
    counts: std::sync::Arc<parking_lot::Mutex<[u64; 4]>>,
    reader: std::thread::JoinHandle<()>,
}

impl Tshark {
    /// Start tshark on lo in `ns` and wait until it is capturing.
    fn start(ns: &NetNs) -> Tshark {
        Tshark::start_with(ns, &[])
    }

    /// Start tshark on lo in `ns` with `extra` arguments (e.g. `-w FILE
    /// -P` to also save what it captures).
    fn start_with(ns: &NetNs, extra: &[&str]) -> Tshark {
        let mut child = ns
            .command("tshark")
            .args(["-i", "lo", "-l", "-T", "fields", "-e", "frame.protocols"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark (Debian package tshark) is needed for this test");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("tshark exited before capturing")
                .unwrap();
            // "Capturing on ..." comes first; "Capture started" once the
            // capture really runs.
            if line.contains("Capture started") {
                break;
            }
        }
        // Keep draining stderr so tshark never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let counts = std::sync::Arc::new(parking_lot::Mutex::new([0u64; 4]));
        let stdout = child.stdout.take().unwrap();
        let c = counts.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                c.lock()[classify(&line)] += 1;
            }
        });
        Tshark {
            child,
            counts,
            reader,
        }
    }

    fn counts(&self) -> [u64; 4] {
        *self.counts.lock()
    }

    /// Wait until tshark has printed `total` packets (or the deadline
    /// passes), stop it, and return its per-protocol counts.
    fn stop_after(mut self, total: u64) -> [u64; 4] {
        let deadline = std::time::Instant::now() + crate::common::DEADLINE;
        while self.counts().iter().sum::<u64>() < total && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tshark: {status}");
        self.reader.join().unwrap();
        *self.counts.lock()
    }
}

/// Index [tcp, udp, icmp, other] of a tshark `frame.protocols` line.
fn classify(protocols: &str) -> usize {
    // An ICMP error quotes the packet it answers: check icmp first.
    if protocols.contains(":icmp") {
        2
    } else if protocols.contains(":tcp") {
        0
    } else if protocols.contains(":udp") {
        1
    } else {
        3
    }
}

/// Per-protocol packet counts [tcp, udp, icmp, other] of a pcap, by tshark.
fn tshark_counts(file: &Path) -> [u64; 4] {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-T", "fields", "-e", "frame.protocols"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tshark -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = [0u64; 4];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        c[classify(line)] += 1;
    }
    c
}

/// netd in `ns` with `capture_dir = dir`, then `extra` config.
fn netd_capturing_to(ns: &NetNs, dir: &Path, extra: &str) -> Netd {
    ns.netd(&format!(
        "capture_dir = {:?}\n{extra}",
        dir.to_str().expect("utf-8 temp path")
    ))
}

#[test]
fn counts_each_loopback_packet_once_and_match_tshark() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "tcp-echo", "t", "--listen", "127.0.0.1:0"]);
    let (udp, tcp) = (bound_addr(&netd, "u"), bound_addr(&netd, "t"));
    let tshark = Tshark::start(&ns);
    netd.netctl_ok(&["start", "sniffer", "s", "--interface", "lo"]);

    ns.run(|| {
        udp_roundtrips(udp, 50, b"0123456789");
        for _ in 0..5 {
            let mut c = TcpStream::connect(tcp).unwrap();
            c.write_all(&[b'x'; 3000]).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), 3000);
        }
        // Three datagrams to a closed port: each draws an ICMP unreachable.
        let closed = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            s.send_to(b"nobody", closed).unwrap();
        }
    });
    // Let the last packets reach both capturers, then compare. netd reads
    // a ring per core and each hands a block over when it is full or 50 ms
    // old, so one ring's packets (the ICMP errors) can be counted before
    // another's earlier ones: wait for every protocol's share, then for
    // one more hand-over of every ring, so that anything counted twice
    // shows too.
    wait_until(
        "netd counted the round trips, connections and ICMP errors",
        || {
            let s = sniffer_stats(&netd, "s");
            count(&s, "udp") >= 103 && count(&s, "icmp") >= 3 && count(&s, "tcp") >= 5 * 6
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let ours = sniffer_stats(&netd, "s");
    assert_eq!(
        count(&ours, "udp"),
        103,
        "50 round trips and 3 strays, each counted once: {ours}"
    );
    assert_eq!(count(&ours, "icmp"), 3);
    let mine = [
        count(&ours, "tcp"),
        count(&ours, "udp"),
        count(&ours, "icmp"),
        count(&ours, "other"),
    ];
    let theirs = tshark.stop_after(mine.iter().sum());
    assert_eq!(mine, theirs, "netd [tcp, udp, icmp, other] vs tshark");
    assert!(
        mine[0] >= 5 * 6,
        "at least handshake, data and teardown per connection: {mine:?}"
    );
}

#[test]
fn filter_keeps_one_port_and_flows_count_bytes() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&["start", "udp-echo", "a", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "udp-echo", "b", "--listen", "127.0.0.1:0"]);
    let (a, b) = (bound_addr(&netd, "a"), bound_addr(&netd, "b"));
    let filter = format!("udp and port {}", a.port());
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        &filter,
    ]);

    let client = ns.run(|| {
        udp_roundtrips(b, 20, b"ignored");
        udp_roundtrips(a, 7, &[b'p'; 100])
    });
    wait_until("all of port a's packets", || {
        count(&sniffer_stats(&netd, "s"), "udp") == 14
    });
    let s = sniffer_stats(&netd, "s");
    assert_eq!(count(&s, "tcp") + count(&s, "icmp") + count(&s, "other"), 0);
    // The request flow: 7 datagrams of 14 + 20 + 8 + 100 bytes.
    let flow = s["top_flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["src"] == client.to_string() && f["dst"] == a.to_string())
        .unwrap_or_else(|| panic!("flow {client} -> {a} missing: {s}"))
        .clone();
    assert_eq!(flow["protocol"], "udp");
    assert_eq!(flow["packets"], 7);
    assert_eq!(flow["bytes"], 7 * (14 + 20 + 8 + 100));
    assert_eq!(s["flows_active"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_packets_streams_summaries() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let u = bound_addr(&netd, "u");
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        &format!("port {}", u.port()),
    ]);
    let mut c = netd.client().await;
    let mut stream = c
        .watch_packets(proto::WatchPacketsRequest { name: "s".into() })
        .await
        .unwrap()
        .into_inner();
    let client = ns.run(|| udp_roundtrips(u, 3, b"hello"));
    let mut got = Vec::new();
    while got.len() < 6 {
        got.push(stream.message().await.unwrap().unwrap());
    }
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.protocol, "udp");
        let (src, dst) = if i % 2 == 0 { (client, u) } else { (u, client) };
        assert_eq!(
            (p.src.as_str(), p.dst.as_str()),
            (src.to_string().as_str(), dst.to_string().as_str())
        );
        assert_eq!(p.length, 14 + 20 + 8 + 5);
        assert!(p.time.is_some());
    }
    let err = c
        .watch_packets(proto::WatchPacketsRequest { name: "u".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "not a sniffer");

    // netctl sniff prints them tcpdump-style.
    let sniff = std::thread::spawn({
        let control = netd.control.to_string();
        move || {
            std::process::Command::new(crate::common::NETCTL)
                .args(["--control", &control, "sniff", "s", "-c", "2"])
                .output()
                .unwrap()
        }
    });
    // Keep sending (bounded by the deadline) until netctl has its two
    // packets: it may subscribe after the first ones have passed.
    let deadline = std::time::Instant::now() + crate::common::DEADLINE;
    while !sniff.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "netctl sniff printed nothing"
        );
        ns.run(|| udp_roundtrips(u, 1, b"again"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sniff.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(" UDP ") && l.contains(&format!(":{}", u.port()))),
        "{text}"
    );
}

#[test]
fn pcap_file_is_complete_and_readable() {
    let ns = NetNs::new();
    let work = tempfile::tempdir().unwrap();
    let netd = netd_capturing_to(&ns, work.path(), "");
    let file = work.path().join("cap.pcap");
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let u = bound_addr(&netd, "u");
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        "udp",
        "--pcap",
        file.to_str().unwrap(),
    ]);
    ns.run(|| udp_roundtrips(u, 25, b"pcap me"));
    wait_until("50 packets", || {
        count(&sniffer_stats(&netd, "s"), "udp") == 50
    });
    let stopped = netd.netctl_json(&["stop", "s"]);
    assert_eq!(stopped["stats"]["sniffer"]["pcap_packets"], 50);

    // By the crate...
    let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let mut n = 0;
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        assert_eq!(p.data.len(), 14 + 20 + 8 + 7);
        n += 1;
    }
    assert_eq!(n, 50);
    // ...and by tshark.
    assert_eq!(tshark_counts(&file), [0, 50, 0, 0]);
}

#[test]
fn pcap_rotates_at_the_size_cap() {
    let ns = NetNs::new();
    let work = tempfile::tempdir().unwrap();
    let netd = netd_capturing_to(&ns, work.path(), "");
    let file = work.path().join("rot.pcap");
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "u",
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
    ]);
    let u = bound_addr(&netd, "u");
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        "udp",
        "--pcap",
        file.to_str().unwrap(),
        "--pcap-max-bytes",
        "4096",
        "--pcap-max-files",
        "2",
    ]);
    ns.run(|| udp_roundtrips(u, 100, &[b'r'; 200]));
    wait_until("200 packets", || {
        count(&sniffer_stats(&netd, "s"), "udp") == 200
    });
    netd.netctl_ok(&["stop", "s"]);
    let rotated: Vec<PathBuf> = [
        file.clone(),
        work.path().join("rot.pcap.1"),
        work.path().join("rot.pcap.2"),
    ]
    .into();
    for f in &rotated {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= 4096, "{} is {size} bytes", f.display());
        let c = tshark_counts(f);
        assert!(c[1] > 0, "{} readable with packets", f.display());
    }
    assert!(
        !work.path().join("rot.pcap.3").exists(),
        "only two rotated files are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_scan_alert_fires_on_a_scan_not_on_normal_traffic() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&["start", "tcp-echo", "t", "--listen", "127.0.0.1:0"]);
    let t = bound_addr(&netd, "t");
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        "tcp",
        "--scan-ports",
        "50",
    ]);
    let mut c = netd.client().await;
    let mut events = c
        .watch_events(proto::WatchEventsRequest { name: "s".into() })
        .await
        .unwrap()
        .into_inner();

    // Normal traffic: 30 connections to one port.
    ns.run(|| {
        for _ in 0..30 {
            let mut s = TcpStream::connect(t).unwrap();
            s.write_all(b"hi").unwrap();
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
        }
    });
    wait_until("normal traffic captured", || {
        count(&sniffer_stats(&netd, "s"), "tcp") >= 30 * 6
    });
    assert_eq!(
        sniffer_stats(&netd, "s")["alerts"],
        0,
        "no alert on normal traffic"
    );

    // A scan: SYNs to 100 ports (closed ones answer with RST).
    ns.run(|| {
        for port in 20000..20100u16 {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(1),
            );
        }
    });
    let e = tokio::time::timeout(crate::common::DEADLINE, events.message())
        .await
        .expect("an alert")
        .unwrap()
        .unwrap();
    assert_eq!(e.kind(), proto::EventKind::Alert);
    assert!(
        e.message.contains("port scan") && e.message.contains("127.0.0.1"),
        "{}",
        e.message
    );
    assert_eq!(sniffer_stats(&netd, "s")["alerts"], 1);
    assert!(netd.log().contains("port scan"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_interface_bad_filter_and_prompt_stop() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    let mut c = netd.client().await;
    let start = |spec: proto::SnifferSpec| proto::StartListenerRequest {
        name: "s".into(),
        spec: Some(proto::ListenerSpec {
            kind: Some(proto::listener_spec::Kind::Sniffer(spec)),
        }),
        labels: Default::default(),
        ephemeral: false,
    };
    let err = c
        .start_listener(start(proto::SnifferSpec {
            interface: "eth9".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("unknown interface 'eth9'") && err.message().contains("lo"),
        "{}",
        err.message()
    );
    let err = c
        .start_listener(start(proto::SnifferSpec {
            interface: "lo".into(),
            filter: "tcp or udp".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("filter"), "{}", err.message());

    netd.netctl_ok(&["start", "sniffer", "s", "--interface", "lo"]);
    let stopped = netd.netctl_json(&["stop", "s"]);
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(
        netd.netctl_json(&["list"])["listeners"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn without_cap_net_raw_start_fails_with_failed_precondition() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let control = netd::util::addr::ControlAddr::Unix(dir.path().join("netd.sock"));
    let mut cmd = std::process::Command::new(crate::common::NETD);
    cmd.args(["--config", "/dev/null"]);
    // SAFETY: only async-signal-safe prctl between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Drop CAP_NET_RAW (13) from the bounding set: root keeps every
            // other capability but loses this one at exec.
            if libc::prctl(libc::PR_CAPBSET_DROP, 13, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let netd = Netd::spawn(cmd, dir, control);
    let e = netd.netctl_err(&["start", "sniffer", "s", "--interface", "lo"]);
    assert!(
        e.contains("CAP_NET_RAW") && e.contains("AmbientCapabilities"),
        "{e}"
    );
    // Nothing else is affected.
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_rate_alert() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&["start", "tcp-echo", "t", "--listen", "127.0.0.1:0"]);
    let t = bound_addr(&netd, "t");
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        "tcp",
        "--syn-rate",
        "20",
        "--scan-ports",
        "1000",
    ]);
    let mut c = netd.client().await;
    let mut events = c
        .watch_events(proto::WatchEventsRequest { name: "s".into() })
        .await
        .unwrap()
        .into_inner();
    // 60 connections as fast as they go: well over 20 SYNs in a second.
    ns.run(|| {
        for _ in 0..60 {
            drop(TcpStream::connect(t).unwrap());
        }
    });
    let e = tokio::time::timeout(crate::common::DEADLINE, events.message())
        .await
        .expect("an alert")
        .unwrap()
        .unwrap();
    assert_eq!(e.kind(), proto::EventKind::Alert);
    assert!(e.message.starts_with("SYN rate"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_packet_watcher_loses_summaries_not_packets() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "u",
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
    ]);
    let u = bound_addr(&netd, "u");
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        &format!("udp and port {}", u.port()),
    ]);
    let mut c = netd.small_window_client().await;
    let mut stalled = c
        .watch_packets(proto::WatchPacketsRequest { name: "s".into() })
        .await
        .unwrap()
        .into_inner();
    const ROUNDS: usize = 10_000;
    ns.run(|| udp_roundtrips(u, ROUNDS, b"flood"));
    // Capture kept up: every packet counted.
    wait_until("all packets counted", || {
        count(&sniffer_stats(&netd, "s"), "udp") == 2 * ROUNDS as u64
    });
    // The watcher that did not read lost summaries, and was told so.
    let mut reported = 0;
    for _ in 0..(2 * ROUNDS) {
        let p = stalled.message().await.unwrap().unwrap();
        if p.dropped_before > 0 {
            reported = p.dropped_before;
            break;
        }
    }
    assert!(reported > 0, "the stalled watcher is told what it missed");
    let drops = sniffer_stats(&netd, "s")["watcher_drops"].as_u64().unwrap();
    assert!(drops >= reported, "{drops} >= {reported}");
}

// pcap files are written only in capture_dir, and only to files netd owns:
// what a caller names, or what is already in the directory, must not make
// netd (root) write, truncate, rename or delete anything else, nor block.

/// A temporary directory with `captures/` (the capture_dir) in it, and the
/// rest of it "outside".
fn capture_work() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let captures = work.path().join("captures");
    std::fs::create_dir(&captures).unwrap();
    (work, captures)
}

fn start_sniffer_args<'a>(pcap: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        "udp",
        "--pcap",
        pcap,
    ];
    args.extend_from_slice(extra);
    args
}

/// Run netctl; None if it has not finished by the deadline (it is killed).
fn netctl_within(netd: &Netd, args: &[&str]) -> Option<std::process::Output> {
    let child = std::process::Command::new(crate::common::NETCTL)
        .arg("--control")
        .arg(netd.control.to_string())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_within(child)
}

/// Wait for `child` up to the deadline; None (and killed) if it is still
/// running then.
fn wait_within(mut child: Child) -> Option<std::process::Output> {
    let deadline = std::time::Instant::now() + crate::common::DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

fn no_listeners(netd: &Netd) -> bool {
    netd.netctl_json(&["list"])["listeners"]
        .as_array()
        .unwrap()
        .is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcap_path_outside_capture_dir_is_refused() {
    let ns = NetNs::new();
    let (work, captures) = capture_work();
    let netd = netd_capturing_to(&ns, &captures, "");
    let outside = work.path().join("outside.pcap");
    let e = netd.netctl_err(&start_sniffer_args(outside.to_str().unwrap(), &[]));
    assert!(
        e.contains("pcap_path") && e.contains(&format!("capture_dir {}", captures.display())),
        "the message names capture_dir: {e}"
    );
    assert!(!outside.exists(), "nothing written outside capture_dir");
    // The same over gRPC: InvalidArgument.
    let err = netd
        .client()
        .await
        .start_listener(proto::StartListenerRequest {
            name: "s".into(),
            spec: Some(proto::ListenerSpec {
                kind: Some(proto::listener_spec::Kind::Sniffer(proto::SnifferSpec {
                    interface: "lo".into(),
                    pcap_path: "/etc/netd-must-not-exist.pcap".into(),
                    ..Default::default()
                })),
            }),
            labels: Default::default(),
            ephemeral: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert!(!Path::new("/etc/netd-must-not-exist.pcap").exists());
    assert!(no_listeners(&netd));
}

#[test]
fn pcap_path_escaping_capture_dir_with_dotdot_is_refused() {
    let ns = NetNs::new();
    let (work, captures) = capture_work();
    let netd = netd_capturing_to(&ns, &captures, "");
    let escape = work.path().join("escape.pcap");
    let dotdot_abs = format!("{}/../escape.pcap", captures.display());
    for pcap in ["../escape.pcap", "sub/../../escape.pcap", &dotdot_abs] {
        // From inside capture_dir, so that even a netctl that made the
        // path absolute would point it at `escape`.
        let out = std::process::Command::new(crate::common::NETCTL)
            .current_dir(&captures)
            .arg("--control")
            .arg(netd.control.to_string())
            .args(start_sniffer_args(pcap, &[]))
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--pcap {pcap} was accepted");
        assert!(
            e.contains(&format!("capture_dir {}", captures.display())),
            "--pcap {pcap}: {e}"
        );
        assert!(!escape.exists(), "--pcap {pcap} wrote outside capture_dir");
    }
    assert!(no_listeners(&netd));
}

#[test]
fn pcap_symlink_in_capture_dir_is_refused_and_its_target_untouched() {
    let ns = NetNs::new();
    let (work, captures) = capture_work();
    let netd = netd_capturing_to(&ns, &captures, "");
    let target = work.path().join("precious");
    std::fs::write(&target, "precious").unwrap();
    std::os::unix::fs::symlink(&target, captures.join("evil.pcap")).unwrap();
    let absolute = captures.join("evil.pcap");
    for pcap in [absolute.to_str().unwrap(), "evil.pcap"] {
        let e = netd.netctl_err(&start_sniffer_args(pcap, &[]));
        assert!(
            e.contains("is a symbolic link; refusing to follow it"),
            "--pcap {pcap}: {e}"
        );
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    assert!(
        std::fs::symlink_metadata(captures.join("evil.pcap"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(no_listeners(&netd));
}

#[test]
fn pcap_fifo_in_capture_dir_is_refused_and_netd_stays_responsive() {
    let ns = NetNs::new();
    let (_work, captures) = capture_work();
    let netd = netd_capturing_to(
        &ns,
        &captures,
        "[[listener]]\nname = \"e\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let echo = bound_addr(&netd, "e");
    let fifo = captures.join("fifo.pcap");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());

    // Opening a FIFO for writing blocks until a reader comes: netd must
    // neither block there nor stop answering meanwhile.
    let start = std::process::Command::new(crate::common::NETCTL)
        .arg("--control")
        .arg(netd.control.to_string())
        .args(start_sniffer_args(fifo.to_str().unwrap(), &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list = netctl_within(&netd, &["list"]);
    assert!(
        list.is_some_and(|o| o.status.success()),
        "netctl list did not answer while a sniffer was started on a FIFO"
    );
    let echoed = ns.run(|| {
        let mut c = TcpStream::connect_timeout(&echo, crate::common::DEADLINE).ok()?;
        c.set_read_timeout(Some(crate::common::DEADLINE)).ok()?;
        c.write_all(b"still here").ok()?;
        c.shutdown(std::net::Shutdown::Write).ok()?;
        let mut back = String::new();
        c.read_to_string(&mut back).ok()?;
        Some(back)
    });
    assert_eq!(
        echoed.as_deref(),
        Some("still here"),
        "echo did not answer while a sniffer was started on a FIFO"
    );
    let out = wait_within(start).expect("starting a sniffer on a FIFO did not return");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a FIFO was accepted as pcap file");
    assert!(
        e.contains("is a FIFO, not a regular file; refusing to open it"),
        "{e}"
    );
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn pcap_device_node_or_foreign_file_in_capture_dir_is_refused() {
    let ns = NetNs::new();
    let (_work, captures) = capture_work();
    let netd = netd_capturing_to(&ns, &captures, "");
    // A character device like /dev/null (1:3).
    let dev = captures.join("null.pcap");
    let made = std::process::Command::new("mknod")
        .arg(&dev)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod (needs root)");
    let e = netd.netctl_err(&start_sniffer_args(dev.to_str().unwrap(), &[]));
    assert!(
        e.contains("is a character device, not a regular file; refusing to open it"),
        "{e}"
    );
    assert!(
        std::fs::symlink_metadata(&dev)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // A regular file that belongs to someone else (nobody).
    let theirs = captures.join("theirs.pcap");
    std::fs::write(&theirs, "theirs").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let e = netd.netctl_err(&start_sniffer_args(theirs.to_str().unwrap(), &[]));
    assert!(e.contains("is owned by uid 65534"), "{e}");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "theirs");
    assert!(no_listeners(&netd));
}

#[test]
fn pcap_rotation_leaves_foreign_files_alone() {
    let ns = NetNs::new();
    let (work, captures) = capture_work();
    let netd = netd_capturing_to(&ns, &captures, "");
    // Slot 2: a symbolic link pointing outside; slot 3 (the oldest, which
    // rotation deletes): a file of another user's.
    let outside = work.path().join("outside");
    std::fs::write(&outside, "precious").unwrap();
    std::os::unix::fs::symlink(&outside, captures.join("rot.pcap.2")).unwrap();
    let theirs = captures.join("rot.pcap.3");
    std::fs::write(&theirs, "theirs").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();

    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "u",
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
    ]);
    let u = bound_addr(&netd, "u");
    let file = captures.join("rot.pcap");
    netd.netctl_ok(&start_sniffer_args(
        file.to_str().unwrap(),
        &["--pcap-max-bytes", "4096", "--pcap-max-files", "3"],
    ));
    // 200 packets of 242 bytes: a dozen rotations.
    ns.run(|| udp_roundtrips(u, 100, &[b'r'; 200]));
    wait_until("200 packets", || {
        count(&sniffer_stats(&netd, "s"), "udp") == 200
    });
    netd.netctl_ok(&["stop", "s"]);

    let link = captures.join("rot.pcap.2");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symbolic link was replaced"
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), outside);
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "theirs");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
    // Rotation went on around them.
    for f in [captures.join("rot.pcap"), captures.join("rot.pcap.1")] {
        let size = std::fs::metadata(&f).unwrap().len();
        assert!(size <= 4096, "{} is {size} bytes", f.display());
        assert!(tshark_counts(&f)[1] > 0, "{} has packets", f.display());
    }
    assert!(
        netd.log()
            .contains("leaving rot.pcap.2 alone (a symbolic link)"),
        "warned: {}",
        netd.log()
    );
}

#[test]
fn pcap_file_is_created_0640_in_a_new_capture_dir_and_shown_resolved() {
    use std::os::unix::fs::PermissionsExt;
    let ns = NetNs::new();
    let work = tempfile::tempdir().unwrap();
    // Not there yet: netd creates it (and its parent) when it needs it.
    let captures = work.path().join("state/captures");
    let netd = netd_capturing_to(&ns, &captures, "");
    assert!(!captures.exists(), "capture_dir is not created at start");
    netd.netctl_ok(&start_sniffer_args("m.pcap", &[]));
    let file = captures.join("m.pcap");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&file), 0o640, "pcap file mode");
    let umask = {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    };
    assert_eq!(mode(&captures), 0o750 & !umask, "capture_dir mode");
    let status = netd.netctl_json(&["status", "s"]);
    assert_eq!(
        status["spec"]["pcap_path"],
        file.to_str().unwrap(),
        "the spec shows the resolved path: {status}"
    );
}

/// Packets tshark finds in `file` with display filter `filter`, IP
/// reassembly off (each fragment is one packet, as netd sees it).
fn tshark_filtered(file: &Path, filter: &str) -> u64 {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args([
            "-o",
            "ip.defragment:FALSE",
            "-o",
            "ipv6.defragment:FALSE",
            "-Y",
            filter,
            "-T",
            "fields",
            "-e",
            "frame.number",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tshark -r -Y {filter:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// All packets a sniffer captured.
fn total(v: &Value) -> u64 {
    ["tcp", "udp", "icmp", "other"]
        .iter()
        .map(|p| count(v, p))
        .sum()
}

/// Set a socket option on a raw descriptor.
fn set_opt(fd: i32, level: i32, name: i32, value: &[u8]) {
    // SAFETY: setsockopt with a live buffer of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// Fragmented UDP over IPv4 and IPv6 (the kernel fragments: lo's MTU is
/// lowered to 1500) and IPv6 UDP behind a destination-options header,
/// captured by netd with and without filters and by tshark: counts agree.
#[test]
fn fragments_and_ipv6_extension_headers_count_and_filter_like_tshark() {
    use std::os::fd::AsRawFd;
    let ns = NetNs::new();
    let out = ns
        .command("ip")
        .args(["link", "set", "lo", "mtu", "1500"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip link set lo mtu 1500: {out:?}");
    let netd = ns.netd("");
    let (r4, r6) = ns.run(|| {
        let r4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r6 = UdpSocket::bind("[::1]:0").unwrap();
        (r4, r6)
    });
    let (p4, p6) = (
        r4.local_addr().unwrap().port(),
        r6.local_addr().unwrap().port(),
    );
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("tshark.pcap");
    let tshark = Tshark::start_with(&ns, &["-w", file.to_str().unwrap(), "-P"]);
    let sniff = |name: &str, filter: &str| {
        let mut args = vec!["start", "sniffer", name, "--interface", "lo"];
        if !filter.is_empty() {
            args.extend(["--filter", filter]);
        }
        netd.netctl_ok(&args);
    };
    sniff("all", "");
    sniff("udp", "udp");
    let port4 = format!("port {p4}");
    sniff("p4", &port4);
    let port6 = format!("udp and port {p6}");
    sniff("p6", &port6);

    ns.run(|| {
        let s4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let s6 = UdpSocket::bind("[::1]:0").unwrap();
        for _ in 0..5 {
            // 4008 bytes of UDP: three fragments each at MTU 1500.
            s4.send_to(&[4u8; 4000], r4.local_addr().unwrap()).unwrap();
            s6.send_to(&[6u8; 4000], r6.local_addr().unwrap()).unwrap();
            s4.send_to(b"small", r4.local_addr().unwrap()).unwrap();
        }
        // From here on every datagram carries a destination-options header
        // (a PadN option filling it to 8 bytes).
        set_opt(
            s6.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_DSTOPTS,
            &[0, 0, 1, 4, 0, 0, 0, 0],
        );
        for _ in 0..5 {
            s6.send_to(b"options", r6.local_addr().unwrap()).unwrap();
        }
        // Everything arrived (reassembled).
        let mut buf = [0u8; 8192];
        for (r, n) in [(&r4, 10), (&r6, 10)] {
            r.set_read_timeout(Some(crate::common::DEADLINE)).unwrap();
            for _ in 0..n {
                r.recv(&mut buf).unwrap();
            }
        }
    });
    // 5 x (3 + 1) IPv4 and 5 x 3 + 5 IPv6 frames, all UDP; 2 later
    // fragments per large datagram.
    wait_until("netd captured all 40 frames", || {
        total(&sniffer_stats(&netd, "all")) == 40
    });
    let all = sniffer_stats(&netd, "all");
    assert_eq!(count(&all, "udp"), 40, "fragments are UDP: {all}");
    assert_eq!(all["fragments"], 20, "{all}");
    assert_eq!(all["malformed"], 0, "{all}");
    // Later fragments are a flow of their own, shown without ports.
    let flows = all["top_flows"].as_array().unwrap();
    for ip in ["127.0.0.1", "::1"] {
        assert!(
            flows.iter().any(|f| f["protocol"] == "udp"
                && f["src"] == ip
                && f["dst"] == ip
                && f["packets"] == 10),
            "{ip}: {flows:?}"
        );
    }
    let theirs = tshark.stop_after(40);
    assert_eq!(theirs.iter().sum::<u64>(), 40, "tshark {theirs:?}");

    // tshark (reassembly off) shows UDP on the frames that carry the UDP
    // header; later fragments are the rest.
    let later = "(ip.frag_offset > 0) || (ipv6.fraghdr.offset > 0)";
    assert_eq!(tshark_filtered(&file, later), 20);
    assert_eq!(
        tshark_filtered(&file, "udp"),
        count(&all, "udp") - all["fragments"].as_u64().unwrap()
    );
    // `udp` keeps every fragment, as tcpdump's `udp` does.
    wait_until("the udp sniffer saw them", || {
        total(&sniffer_stats(&netd, "udp")) >= 40
    });
    assert_eq!(
        total(&sniffer_stats(&netd, "udp")),
        tshark_filtered(&file, "udp || ip.proto == 17 || ipv6.fraghdr.nxt == 17")
    );
    // `port N` keeps the frames that carry the port: first fragments,
    // whole datagrams, and datagrams behind a destination-options header.
    let want4 = tshark_filtered(&file, &format!("udp.port == {p4}"));
    let want6 = tshark_filtered(&file, &format!("udp.port == {p6}"));
    assert_eq!((want4, want6), (10, 10));
    assert!(tshark_filtered(&file, &format!("ipv6.dstopts && udp.port == {p6}")) == 5);
    wait_until("the port sniffers saw theirs", || {
        total(&sniffer_stats(&netd, "p4")) >= want4 && total(&sniffer_stats(&netd, "p6")) >= want6
    });
    let (got4, got6) = (sniffer_stats(&netd, "p4"), sniffer_stats(&netd, "p6"));
    assert_eq!(
        (total(&got4), got4["fragments"].as_u64()),
        (want4, Some(0)),
        "{got4}"
    );
    assert_eq!(
        (total(&got6), got6["fragments"].as_u64()),
        (want6, Some(0)),
        "{got6}"
    );
}

/// Frames written as they are onto `lo` through a packet socket, from the
/// calling thread's namespace: headers the IP stack would refuse to send.
fn inject_on_lo(frames: &[Vec<u8>]) {
    // SAFETY: a packet socket we own, sendto with live buffers and a
    // zeroed, filled-in sockaddr_ll; the descriptor is closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = libc::if_nametoindex(c"lo".as_ptr()) as i32;
        sll.sll_halen = 6;
        for f in frames {
            let n = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

/// An IPv4 packet 127.0.0.1 > 127.0.0.1: IHL `ihl` words (the header is
/// at least 20 bytes), fragment field `frag`, total length as built plus
/// `extra_len` (a lie when not 0).
fn ipv4(ihl: u8, proto: u8, frag: u16, payload: &[u8], extra_len: u16) -> Vec<u8> {
    let hl = (ihl as usize * 4).max(20);
    let mut p = vec![0u8; hl];
    p[0] = 0x40 | ihl;
    p[2..4].copy_from_slice(&((hl + payload.len()) as u16 + extra_len).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&[127, 0, 0, 1]);
    p[16..20].copy_from_slice(&[127, 0, 0, 1]);
    p.extend_from_slice(payload);
    p
}

/// An Ethernet frame (as on lo: zero addresses) carrying IPv4.
fn ether_ipv4(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// A 20-byte TCP header with `flags`.
fn tcp_header(src: u16, dst: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.to_be_bytes());
    t[2..4].copy_from_slice(&dst.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&1024u16.to_be_bytes());
    t
}

/// IPv4 headers with IHL < 5 or a total length past the frame are counted
/// as `malformed` (under `other`), never as TCP, and a `tcp` filter drops
/// them. tshark classifies the IHL < 5 ones the same way; a total length
/// past the frame it still dissects as TCP (with an expert error), netd
/// counts it malformed.
#[test]
fn malformed_ipv4_headers_are_counted_malformed_not_tcp() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    let tshark = Tshark::start(&ns);
    netd.netctl_ok(&["start", "sniffer", "all", "--interface", "lo"]);
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "tcp",
        "--interface",
        "lo",
        "--filter",
        "tcp",
    ]);
    let syn = tcp_header(40000, 80, 0x02);
    // Each batch ends with a well-formed SYN: once it is counted, so is
    // all before it.
    let good = ether_ipv4(&ipv4(5, 6, 0, &syn, 0));
    let short_ihl = vec![
        ether_ipv4(&ipv4(4, 6, 0, &syn, 0)),
        ether_ipv4(&ipv4(0, 6, 0, &syn, 0)),
        ether_ipv4(&ipv4(1, 6, 0, &syn, 0)),
        good.clone(),
    ];
    ns.run(|| inject_on_lo(&short_ihl));
    let counted = |n: u64| {
        wait_until("netd counted the well-formed SYN", || {
            count(&sniffer_stats(&netd, "all"), "tcp") == n
                && count(&sniffer_stats(&netd, "tcp"), "tcp") == n
        })
    };
    counted(1);
    let all = sniffer_stats(&netd, "all");
    let mine = [
        count(&all, "tcp"),
        count(&all, "udp"),
        count(&all, "icmp"),
        count(&all, "other"),
    ];
    assert_eq!(mine, [1, 0, 0, 3], "{all}");
    assert_eq!(all["malformed"], 3, "{all}");
    assert_eq!(
        mine,
        tshark.stop_after(4),
        "netd [tcp, udp, icmp, other] vs tshark"
    );

    let too_long = ether_ipv4(&ipv4(5, 6, 0, &syn, 100));
    ns.run(|| inject_on_lo(&[too_long, good]));
    counted(2);
    let all = sniffer_stats(&netd, "all");
    assert_eq!(
        (count(&all, "other"), all["malformed"].as_u64()),
        (4, Some(4)),
        "{all}"
    );
    let tcp = sniffer_stats(&netd, "tcp");
    assert_eq!(
        (total(&tcp), tcp["malformed"].as_u64()),
        (2, Some(0)),
        "{tcp}"
    );
}

/// A SYN scan in tiny fragments (the TCP header split after 8 bytes, as
/// `nmap -f` sends it) still raises the port-scan alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_syn_scan_raises_the_port_scan_alert() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--scan-ports",
        "20",
    ]);
    let mut c = netd.client().await;
    let mut events = c
        .watch_events(proto::WatchEventsRequest { name: "s".into() })
        .await
        .unwrap()
        .into_inner();
    let mut frames = Vec::new();
    for port in 30000..30020u16 {
        let syn = tcp_header(41000, port, 0x02);
        frames.push(ether_ipv4(&ipv4(5, 6, 0x2000, &syn[..8], 0)));
        frames.push(ether_ipv4(&ipv4(5, 6, 1, &syn[8..], 0)));
    }
    ns.run(|| inject_on_lo(&frames));
    let e = tokio::time::timeout(crate::common::DEADLINE, events.message())
        .await
        .expect("a port-scan alert")
        .unwrap()
        .unwrap();
    assert_eq!(e.kind(), proto::EventKind::Alert);
    assert!(e.message.contains("port scan"), "{}", e.message);
    // Both halves of each SYN are TCP; the second ones are later fragments.
    // A batch's packets are counted before its fragments: wait for both.
    wait_until("netd counted the fragments", || {
        let s = sniffer_stats(&netd, "s");
        count(&s, "tcp") == 40 && s["fragments"] == 20
    });
    assert_eq!(sniffer_stats(&netd, "s")["fragments"], 20);
}

/// The packet sockets netd opens carry exactly the compiled filter program
/// (as the kernel reports it through `ss -b`): the kernel, not only user
/// space, filters. With `filter.rs`'s interpreter tests (the kernel runs a
/// program as the interpreter does; the interpreter agrees with the
/// user-space matcher) this closes the chain from a filter to what the
/// kernel delivers.
#[test]
fn the_kernel_holds_the_compiled_filter_program() {
    use netd::services::sniffer::filter::Filter;
    let ns = NetNs::new();
    let netd = ns.netd("");
    let filters = ["udp and port 53", "", "host ::1 and tcp"];
    for (i, f) in filters.iter().enumerate() {
        netd.netctl_ok(&[
            "start",
            "sniffer",
            &format!("s{i}"),
            "--interface",
            "lo",
            "--filter",
            f,
        ]);
    }
    // "bpf filter (N):  code jt jf k, code jt jf k, ..." under each of
    // netd's packet sockets.
    let out = ns
        .command("ss")
        .args(["-0", "-b", "-p", "-n"])
        .output()
        .expect("run ss (iproute2)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut attached: Vec<Vec<[u32; 4]>> = Vec::new();
    let mut ours = false;
    for line in text.lines() {
        if line.starts_with("p_raw") {
            ours = line.contains(&format!("pid={},", netd.pid()));
        } else if let (true, Some((_, prog))) = (ours, line.split_once("bpf filter")) {
            let (_, prog) = prog.split_once(':').expect("bpf filter (N): ...");
            attached.push(
                prog.split(',')
                    .filter(|i| !i.trim().is_empty())
                    .map(|i| {
                        let f: Vec<u32> = i
                            .split_whitespace()
                            .map(|n| match n.strip_prefix("0x") {
                                Some(h) => u32::from_str_radix(h, 16).unwrap(),
                                None => n.parse().unwrap(),
                            })
                            .collect();
                        [f[0], f[1], f[2], f[3]]
                    })
                    .collect(),
            );
        }
    }
    // The program on every ring's socket.
    let rings = sniffer_stats(&netd, "s0")["rings"].as_u64().unwrap_or(1) as usize;
    let mut want: Vec<Vec<[u32; 4]>> = filters
        .iter()
        .flat_map(|f| {
            let prog: Vec<[u32; 4]> = Filter::parse(f)
                .unwrap()
                .to_bpf(true)
                .iter()
                .map(|i| [u32::from(i.code), u32::from(i.jt), u32::from(i.jf), i.k])
                .collect();
            std::iter::repeat_n(prog, rings)
        })
        .collect();
    attached.sort();
    want.sort();
    assert_eq!(attached, want, "ss -0bp said:\n{text}");
}

/// netd in `ns` capturing to `dir`, with `NETD_SNIFFER_RINGS=rings`.
fn netd_with_rings(ns: &NetNs, dir: &Path, rings: &str) -> Netd {
    let conf = tempfile::tempdir().unwrap();
    let cfg = conf.path().join("netd.toml");
    std::fs::write(&cfg, format!("capture_dir = {:?}\n", dir.to_str().unwrap())).unwrap();
    let control = netd::util::addr::ControlAddr::Unix(conf.path().join("netd.sock"));
    let mut cmd = ns.command(crate::common::NETD);
    cmd.arg("--config")
        .arg(&cfg)
        .env("NETD_SNIFFER_RINGS", rings);
    Netd::spawn(cmd, conf, control)
}

/// The packet sockets netd holds, as the kernel lists them in netd's
/// network namespace (/proc/PID/net/packet, matched by socket inode).
fn packet_sockets_of(pid: u32) -> usize {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(link) = std::fs::read_link(fd.unwrap().path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if let Some(ino) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inodes.push(ino.to_string());
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/packet")).unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .last()
                .is_some_and(|i| inodes.iter().any(|x| x == i))
        })
        .count()
}

/// `flows` UDP clients (one socket each, so one flow each way) doing
/// `n` round trips each to `to`.
fn udp_flows(to: SocketAddr, flows: usize, n: usize) {
    std::thread::scope(|s| {
        for _ in 0..flows {
            s.spawn(|| udp_roundtrips(to, n, b"fanout"));
        }
    });
}

#[test]
fn fanout_over_rings_counts_every_packet_of_every_flow_once() {
    let ns = NetNs::new();
    let work = tempfile::tempdir().unwrap();
    let netd = netd_with_rings(&ns, work.path(), "4");
    let file = work.path().join("fan.pcap");
    // 640 datagrams from one address: more than the default rate limit.
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "u",
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
    ]);
    let u = bound_addr(&netd, "u");
    let tshark = Tshark::start(&ns);
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        "udp",
        "--pcap",
        file.to_str().unwrap(),
    ]);
    let s = sniffer_stats(&netd, "s");
    assert_eq!(s["rings"], 4, "{s}");
    assert_eq!(
        packet_sockets_of(netd.pid()),
        4,
        "one packet socket per ring, in the kernel's list"
    );

    // 16 clients x 20 round trips: 640 packets in 32 flows (16 each way).
    ns.run(|| udp_flows(u, 16, 20));
    let sent = 16 * 20 * 2;
    wait_until("netd counted every packet", || {
        count(&sniffer_stats(&netd, "s"), "udp") >= sent
    });
    let theirs = tshark.stop_after(sent);
    let s = sniffer_stats(&netd, "s");
    assert_eq!(
        count(&s, "udp"),
        sent,
        "each packet once, not once per ring: {s}"
    );
    assert_eq!(theirs, [0, sent, 0, 0], "tshark saw the same traffic");
    assert_eq!(total(&s), sent);
    assert_eq!(s["flows_active"], 32, "{s}");
    let top = s["top_flows"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    for f in top {
        assert_eq!(f["packets"], 20, "a flow whole, counted once: {f}");
    }
    assert_eq!(s["kernel_drops"], 0);

    // One pcap file fed by all rings: every packet, whole records.
    let stopped = netd.netctl_json(&["stop", "s"]);
    assert_eq!(stopped["stats"]["sniffer"]["pcap_packets"], sent);
    let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let mut n = 0;
    while let Some(p) = reader.next_packet() {
        assert_eq!(p.unwrap().data.len(), 14 + 20 + 8 + 6);
        n += 1;
    }
    assert_eq!(n, sent);
    assert_eq!(tshark_counts(&file), [0, sent, 0, 0]);
}

#[test]
fn fanout_kernel_drops_are_the_sum_over_rings() {
    let ns = NetNs::new();
    let work = tempfile::tempdir().unwrap();
    let netd = netd_with_rings(&ns, work.path(), "4");
    // A sink that never reads: the datagrams only need to cross lo.
    let sink = ns.run(|| UdpSocket::bind("127.0.0.1:0").unwrap());
    let to = sink.local_addr().unwrap();
    let port = to.port().to_string();
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        &format!("udp and port {port}"),
    ]);
    assert_eq!(sniffer_stats(&netd, "s")["rings"], 4);

    // With netd frozen, 16 flows of 60 kB datagrams overflow every ring
    // (4 rings of 8 MiB: a few hundred such frames in all).
    netd.signal(libc::SIGSTOP);
    let (flows, each) = (16u64, 150u64);
    ns.run(|| {
        std::thread::scope(|s| {
            for _ in 0..flows {
                s.spawn(|| {
                    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                    for _ in 0..each {
                        c.send_to(&[7u8; 60_000], to).unwrap();
                    }
                });
            }
        });
    });
    netd.signal(libc::SIGCONT);
    let sent = flows * each;
    wait_until("every datagram captured or counted dropped", || {
        let s = sniffer_stats(&netd, "s");
        count(&s, "udp") + s["kernel_drops"].as_u64().unwrap() == sent
    });
    let s = sniffer_stats(&netd, "s");
    let drops = s["kernel_drops"].as_u64().unwrap();
    assert!(
        drops > 0 && count(&s, "udp") > 0,
        "some captured, some dropped: {s}"
    );
    drop(sink);
}

#[test]
fn one_ring_still_captures_everything() {
    let ns = NetNs::new();
    let work = tempfile::tempdir().unwrap();
    let netd = netd_with_rings(&ns, work.path(), "1");
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let u = bound_addr(&netd, "u");
    netd.netctl_ok(&[
        "start",
        "sniffer",
        "s",
        "--interface",
        "lo",
        "--filter",
        "udp",
    ]);
    let s = sniffer_stats(&netd, "s");
    assert_eq!(s["rings"], 1, "{s}");
    assert_eq!(packet_sockets_of(netd.pid()), 1);
    ns.run(|| udp_flows(u, 4, 10));
    wait_until("80 packets", || {
        count(&sniffer_stats(&netd, "s"), "udp") == 80
    });
    let s = sniffer_stats(&netd, "s");
    assert_eq!(s["flows_active"], 8, "{s}");

    // A ring count out of range is refused, naming the variable.
    let bad = netd_with_rings(&ns, work.path(), "0");
    let err = bad.netctl_err(&["start", "sniffer", "s", "--interface", "lo"]);
    assert!(err.contains("NETD_SNIFFER_RINGS"), "{err}");
}
