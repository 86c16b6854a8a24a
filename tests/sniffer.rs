//! The packet sniffer, only ever on `lo` inside a network namespace each
//! test creates (so it sees nothing but the test's own traffic), checked
//! against tshark on the same traffic and against the pcap-file crate.
//! These tests need root (network namespaces, CAP_NET_RAW); CI runs them as
//! root and they do not skip.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{NetNs, Netd, bound_addr, wait_until};
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
    counts: std::sync::Arc<std::sync::Mutex<[u64; 4]>>,
    reader: std::thread::JoinHandle<()>,
}

impl Tshark {
    /// Start tshark on lo in `ns` and wait until it is capturing.
    fn start(ns: &NetNs) -> Tshark {
        let mut child = ns
            .command("tshark")
            .args(["-i", "lo", "-l", "-T", "fields", "-e", "frame.protocols"])
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
        let counts = std::sync::Arc::new(std::sync::Mutex::new([0u64; 4]));
        let stdout = child.stdout.take().unwrap();
        let c = counts.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                c.lock().unwrap()[classify(&line)] += 1;
            }
        });
        Tshark {
            child,
            counts,
            reader,
        }
    }

    fn counts(&self) -> [u64; 4] {
        *self.counts.lock().unwrap()
    }

    /// Wait until tshark has printed `total` packets (or the deadline
    /// passes), stop it, and return its per-protocol counts.
    fn stop_after(mut self, total: u64) -> [u64; 4] {
        let deadline = std::time::Instant::now() + common::DEADLINE;
        while self.counts().iter().sum::<u64>() < total && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tshark: {status}");
        self.reader.join().unwrap();
        *self.counts.lock().unwrap()
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
    // Let the last packets reach both capturers, then compare.
    wait_until("netd saw the ICMP errors", || {
        count(&sniffer_stats(&netd, "s"), "icmp") == 3
    });
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
            std::process::Command::new(common::NETCTL)
                .args(["--control", &control, "sniff", "s", "-c", "2"])
                .output()
                .unwrap()
        }
    });
    // Keep sending (bounded by the deadline) until netctl has its two
    // packets: it may subscribe after the first ones have passed.
    let deadline = std::time::Instant::now() + common::DEADLINE;
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
    let e = tokio::time::timeout(common::DEADLINE, events.message())
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
    let control = netd::addr::ControlAddr::Unix(dir.path().join("netd.sock"));
    let mut cmd = std::process::Command::new(common::NETD);
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
    let e = tokio::time::timeout(common::DEADLINE, events.message())
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
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
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
