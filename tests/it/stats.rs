//! Stats as a product: exact totals through every surface (GetStats, netctl,
//! Prometheus), the WatchStats stream (snapshot first, periodic samples,
//! monotonic totals, consistent rates, listeners coming and going, slow
//! watchers), and the event stream.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::common::{Netd, bound_addr, break_listening_socket};
use netd::proto::{self, StatsSample, listener_spec::Kind};

fn udp_spec() -> proto::ListenerSpec {
    proto::ListenerSpec {
        kind: Some(Kind::UdpEcho(proto::UdpEchoSpec {
            listen: "127.0.0.1:0".into(),
            prefix: String::new(),
            ..Default::default()
        })),
    }
}

fn start_req(name: &str, spec: proto::ListenerSpec) -> proto::StartListenerRequest {
    proto::StartListenerRequest {
        name: name.into(),
        spec: Some(spec),
        labels: HashMap::new(),
        ephemeral: false,
    }
}

fn watch_req(name: &str, ms: u64) -> proto::WatchStatsRequest {
    proto::WatchStatsRequest {
        name: name.into(),
        interval: Some(Duration::from_millis(ms).try_into().unwrap()),
    }
}

/// The whole picture at each tick of a WatchStats stream, which after its
/// snapshot sends only what changed (merged as netctl's stats view does:
/// a listener not in a tick keeps its totals, with rates 0).
struct Ticks {
    stream: tonic::Streaming<StatsSample>,
    rows: BTreeMap<String, proto::ListenerStatsSample>,
}

impl Ticks {
    fn new(stream: tonic::Streaming<StatsSample>) -> Self {
        Ticks {
            stream,
            rows: BTreeMap::new(),
        }
    }

    async fn next(&mut self) -> StatsSample {
        let mut tick_start = true;
        loop {
            let m = self
                .stream
                .message()
                .await
                .unwrap()
                .expect("stream ended early");
            if tick_start && m.elapsed.is_some() {
                for r in self.rows.values_mut() {
                    r.rates = Some(proto::ListenerRates::default());
                }
            }
            tick_start = false;
            for n in &m.removed {
                self.rows.remove(n);
            }
            for l in &m.listeners {
                self.rows.insert(l.name.clone(), l.clone());
            }
            if !m.more {
                return StatsSample {
                    listeners: self.rows.values().cloned().collect(),
                    ..m
                };
            }
        }
    }
}

/// N connections of B bytes each through a TCP echo, D datagrams of 10
/// bytes through a UDP echo.
fn drive_traffic(tcp: SocketAddr, udp: SocketAddr, conns: usize, bytes: usize, dgrams: usize) {
    for _ in 0..conns {
        let mut c = TcpStream::connect(tcp).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&vec![7u8; bytes]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), bytes);
    }
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(udp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..dgrams {
        s.send(b"0123456789").unwrap();
        assert_eq!(s.recv(&mut buf).unwrap(), 10);
    }
}

fn totals<'a>(s: &'a StatsSample, name: &str) -> Option<&'a proto::ListenerStats> {
    s.listeners
        .iter()
        .find(|l| l.name == name)
        .and_then(|l| l.totals.as_ref())
}

fn metric(text: &str, name: &str, listener: &str) -> u64 {
    let prefix = format!("{name}{{listener=\"{listener}\",");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} for {listener} not in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_totals_from_grpc_netctl_and_prometheus() {
    let port = crate::common::free_tcp_port();
    let netd = Netd::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    netd.netctl_ok(&["start", "tcp-echo", "t", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let (tcp, udp) = (bound_addr(&netd, "t"), bound_addr(&netd, "u"));
    const N: u64 = 12;
    const B: u64 = 3000;
    const D: u64 = 40;
    tokio::task::spawn_blocking(move || {
        drive_traffic(tcp, udp, N as usize, B as usize, D as usize)
    })
    .await
    .unwrap();
    crate::common::wait_until("connections closed", || {
        netd.netctl_json(&["stats", "t"])["listeners"][0]["totals"]["connections_active"] == 0
    });
    // A UDP reply is counted once sent: the client may have it first.
    crate::common::wait_until("the udp replies counted", || {
        netd.netctl_json(&["stats", "u"])["listeners"][0]["totals"]["datagrams_out"] == D
    });

    let mut c = netd.client().await;
    let s = c
        .get_stats(proto::GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let t = totals(&s, "t").unwrap();
    assert_eq!(
        (t.connections_total, t.bytes_in, t.bytes_out),
        (N, N * B, N * B)
    );
    let u = totals(&s, "u").unwrap();
    assert_eq!(
        (u.datagrams_in, u.datagrams_out, u.bytes_in, u.bytes_out),
        (D, D, D * 10, D * 10)
    );
    let one = c
        .get_stats(proto::GetStatsRequest {
            name: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.listeners.len(), 1);
    let err = c
        .get_stats(proto::GetStatsRequest {
            name: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let j = netd.netctl_json(&["stats"]);
    let by_name = |n: &str| {
        j["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("t")["totals"]["connections_total"], N);
    assert_eq!(by_name("t")["totals"]["bytes_in"], N * B);
    assert_eq!(by_name("u")["totals"]["datagrams_in"], D);
    let table = netd.netctl_ok(&["stats"]);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");

    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "netd_connections_total", "t"), N);
    assert_eq!(metric(&text, "netd_received_bytes_total", "t"), N * B);
    assert_eq!(metric(&text, "netd_sent_bytes_total", "t"), N * B);
    assert_eq!(metric(&text, "netd_received_datagrams_total", "u"), D);
    assert_eq!(metric(&text, "netd_sent_datagrams_total", "u"), D);
    assert_eq!(metric(&text, "netd_connections_active", "t"), 0);
    assert_eq!(metric(&text, "netd_listener_up", "u"), 1);
    assert!(text.contains("kind=\"udp-echo\""), "{text}");

    // Kind-specific series: HTTP responses by class.
    netd.netctl_ok(&["start", "http", "h", "--listen", "127.0.0.1:0"]);
    let h = bound_addr(&netd, "h");
    let web = reqwest::Client::new();
    for path in ["/a", "/b", "/c"] {
        web.get(format!("http://{h}{path}")).send().await.unwrap();
    }
    web.put(format!("http://{h}/x")).send().await.unwrap();
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |class: &str| {
        format!("netd_http_responses_total{{listener=\"h\",kind=\"http\",class=\"{class}\"}} ")
    };
    assert!(text.contains(&format!("{}3", line("2xx"))), "{text}");
    assert!(text.contains(&format!("{}1", line("4xx"))), "{text}");
    let requests = "netd_http_requests_total{listener=\"h\",kind=\"http\"} 4\n";
    assert!(text.contains(requests), "{text}");
    let limited = "netd_http_rate_limited_total{listener=\"h\",kind=\"http\"} 0\n";
    assert!(text.contains(limited), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stats_snapshot_then_samples_with_consistent_rates() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "t", "--listen", "127.0.0.1:0"]);
    // One client sends hundreds of datagrams as fast as it can: beyond the
    // default per-source rate limit.
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "u",
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
    ]);
    let (tcp, udp) = (bound_addr(&netd, "t"), bound_addr(&netd, "u"));
    let mut c = netd.client().await;

    let bad = c.watch_stats(watch_req("", 10)).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let bad = c.watch_stats(watch_req("nope", 100)).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);

    let mut stream = Ticks::new(
        c.watch_stats(watch_req("", 100))
            .await
            .unwrap()
            .into_inner(),
    );
    let first = stream.next().await;
    assert_eq!(first.seq, 0);
    assert!(first.snapshot_complete);
    assert!(
        first.listeners.iter().all(|l| l.rates.is_none()),
        "the first message is a plain snapshot"
    );
    assert_eq!(
        first
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["t", "u"]
    );

    // Traffic while the watch runs, in the background.
    let traffic = tokio::task::spawn_blocking(move || drive_traffic(tcp, udp, 30, 2000, 300));
    let mut samples = vec![first];
    let mut started_mid_stream = false;
    while samples.len() < 12 {
        let s = stream.next().await;
        if samples.len() == 4 {
            netd.netctl_ok(&["start", "udp-echo", "late", "--listen", "127.0.0.1:0"]);
            started_mid_stream = true;
        }
        samples.push(s);
    }
    traffic.await.unwrap();
    assert!(started_mid_stream);
    assert!(
        samples
            .last()
            .unwrap()
            .listeners
            .iter()
            .any(|l| l.name == "late"),
        "a listener started mid-stream appears"
    );
    netd.netctl_ok(&["stop", "late"]);
    let mut gone = false;
    for _ in 0..50 {
        let s = stream.next().await;
        if !s.listeners.iter().any(|l| l.name == "late") {
            gone = true;
            break;
        }
    }
    assert!(gone, "a stopped listener disappears from the stream");

    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.seq > a.seq);
        let elapsed = Duration::try_from(b.elapsed.unwrap())
            .unwrap()
            .as_secs_f64();
        for name in ["t", "u"] {
            let (ta, tb) = (totals(a, name).unwrap(), totals(b, name).unwrap());
            assert!(
                tb.bytes_in >= ta.bytes_in
                    && tb.connections_total >= ta.connections_total
                    && tb.datagrams_in >= ta.datagrams_in,
                "totals are monotonic"
            );
            let r = b
                .listeners
                .iter()
                .find(|l| l.name == name)
                .unwrap()
                .rates
                .unwrap();
            let close = |rate: f64, delta: u64| {
                (rate * elapsed - delta as f64).abs() <= 1e-6 * (delta as f64).max(1.0)
            };
            assert!(
                close(r.bytes_in_per_sec, tb.bytes_in - ta.bytes_in),
                "bytes_in rate × elapsed = delta"
            );
            assert!(close(r.bytes_out_per_sec, tb.bytes_out - ta.bytes_out));
            assert!(close(
                r.connections_per_sec,
                tb.connections_total - ta.connections_total
            ));
            assert!(close(
                r.datagrams_in_per_sec,
                tb.datagrams_in - ta.datagrams_in
            ));
        }
    }
    // What the rates add up to is what the watch saw pass, which includes
    // all the traffic if the watch began before it and ended after.
    let end = c
        .get_stats(proto::GetStatsRequest {
            name: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let last = samples.last().unwrap();
    let sum: f64 = samples[1..]
        .iter()
        .map(|s| {
            let r = s
                .listeners
                .iter()
                .find(|l| l.name == "u")
                .unwrap()
                .rates
                .unwrap();
            r.datagrams_in_per_sec
                * Duration::try_from(s.elapsed.unwrap())
                    .unwrap()
                    .as_secs_f64()
        })
        .sum();
    let seen = totals(last, "u").unwrap().datagrams_in;
    assert!(
        (sum - seen as f64).abs() < 1e-3,
        "rates sum {sum} vs totals {seen}"
    );
    assert_eq!(totals(&end, "u").unwrap().datagrams_in, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_blocks_nothing() {
    let netd = Netd::start("");
    let mut c = netd.client().await;
    // Many listeners with long names, each sent a datagram every tick
    // (a tick carries only the listeners that changed), make each sample a
    // few KiB, so a stalled client's 64 KiB flow-control window fills
    // within a second or two.
    let mut padding = Vec::new();
    for i in 0..50 {
        let name = format!("{i:02}-{}", "padding".repeat(8));
        let l = c
            .start_listener(start_req(&name, udp_spec()))
            .await
            .unwrap()
            .into_inner()
            .listener
            .unwrap();
        padding.push(l.bound_addr.parse::<SocketAddr>().unwrap());
    }
    let busy = UdpSocket::bind("127.0.0.1:0").unwrap();
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let udp = bound_addr(&netd, "u");

    // The slow watcher's own connection with a small HTTP/2 window.
    let mut slow = netd.small_window_client().await;
    let mut stalled = slow
        .watch_stats(watch_req("", 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stalled.message().await.unwrap().unwrap().seq, 0);

    // Meanwhile another watcher keeps getting samples and traffic flows.
    let mut fast = c
        .watch_stats(watch_req("u", 100))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    let mut sent = 0u64;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(udp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    while received < 40 {
        fast.message()
            .await
            .unwrap()
            .expect("fast watcher keeps receiving");
        received += 1;
        for a in &padding {
            busy.send_to(b"x", a).unwrap();
        }
        for _ in 0..5 {
            s.send(b"x").unwrap();
            s.recv(&mut buf).unwrap();
            sent += 1;
        }
    }
    let exact = c
        .get_stats(proto::GetStatsRequest {
            name: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(totals(&exact, "u").unwrap().datagrams_in, sent);

    // Reading again: buffered samples, then one that admits the gap; the
    // totals it leaves the watcher with (the last sent of each listener:
    // ticks carry only changes) are exact and current.
    let mut prev_seq = 0;
    let mut u_seen = 0;
    for _ in 0..1000 {
        let m = stalled.message().await.unwrap().unwrap();
        if let Some(t) = totals(&m, "u") {
            u_seen = t.datagrams_in;
        }
        if m.dropped_samples > 0 {
            assert!(
                m.seq > prev_seq + 1,
                "a gap in seq marks the dropped samples"
            );
            assert_eq!(u_seen, sent, "totals are exact after a drop");
            return;
        }
        prev_seq = m.seq;
    }
    panic!("the stalled watcher never reported dropped samples");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_reports_start_stop_and_restart() {
    let netd = Netd::start("");
    let mut c = netd.client().await;
    let mut events = c
        .watch_events(proto::WatchEventsRequest {
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut only_r = c
        .watch_events(proto::WatchEventsRequest { name: "r".into() })
        .await
        .unwrap()
        .into_inner();

    netd.netctl_ok(&["start", "udp-echo", "other", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "tcp-echo", "r", "--listen", "127.0.0.1:0"]);
    let addr = bound_addr(&netd, "r");
    break_listening_socket(netd.pid(), addr);
    crate::common::wait_until("restart", || {
        netd.netctl_json(&["status", "r"])["restarts"] == 1
    });
    netd.netctl_ok(&["stop", "r"]);

    use proto::EventKind::*;
    let mut got = Vec::new();
    while got.len() < 5 {
        let e = events.message().await.unwrap().unwrap();
        assert!(e.time.is_some());
        got.push((e.kind(), e.listener.clone(), e.message.clone()));
    }
    let kinds: Vec<_> = got.iter().map(|(k, n, _)| (*k, n.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (Started, "other"),
            (Started, "r"),
            (Failed, "r"),
            (Restarted, "r"),
            (Stopped, "r")
        ]
    );
    assert!(
        got[2].2.contains("accepting connections failed"),
        "{:?}",
        got[2]
    );
    assert!(
        got[3].2.contains("accepting connections failed"),
        "{:?}",
        got[3]
    );

    let mut filtered = Vec::new();
    while filtered.len() < 4 {
        filtered.push(only_r.message().await.unwrap().unwrap().kind());
    }
    assert_eq!(filtered, [Started, Failed, Restarted, Stopped]);
}
