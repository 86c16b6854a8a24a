//! The control plane at scale: ListListeners and GetStats in pages (and
//! netctl following them), WatchStats sending a snapshot and then only
//! what changed, and `netctl stats` showing each kind's own figures.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::common::{NetNs, Netd, bound_addr, free_tcp_port, wait_until};
use netd::proto::{self, StatsSample};

/// A config with `n` idle TCP echo listeners "l00000", "l00001", ... on
/// ports the kernel picks.
fn config_with(n: usize) -> String {
    let mut c = format!("max_listeners = {}\n", n + 10);
    for i in 0..n {
        c.push_str(&format!(
            "[[listener]]\nname = \"l{i:05}\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n"
        ));
    }
    c
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("l{i:05}")).collect()
}

fn watch_req(name: &str, ms: u64) -> proto::WatchStatsRequest {
    proto::WatchStatsRequest {
        name: name.into(),
        interval: Some(Duration::from_millis(ms).try_into().unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_listener_once_and_bad_requests_are_refused() {
    let netd = Netd::start(&config_with(5));
    let mut c = netd.client().await;

    // ListListeners, two at a time: 2 + 2 + 1, in name order.
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_listeners(proto::ListListenersRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(page.listeners.len());
        seen.extend(page.listeners.into_iter().map(|l| l.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "pages never end");
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, names(5));

    // GetStats the same way.
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .get_stats(proto::GetStatsRequest {
                name: String::new(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(page.listeners.len());
        seen.extend(page.listeners.into_iter().map(|l| l.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "pages never end");
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, names(5));

    // 0 is the default size (all five fit), a size above the cap is
    // served, not refused.
    for size in [0, 1_000_000] {
        let all = c
            .list_listeners(proto::ListListenersRequest {
                page_size: size,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.listeners.len(), 5);
        assert!(all.next_page_token.is_empty());
    }

    // A listener stopped between pages is not listed, and none twice.
    let first = c
        .list_listeners(proto::ListListenersRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    netd.netctl_ok(&["stop", "l00002"]);
    let rest = c
        .list_listeners(proto::ListListenersRequest {
            page_size: 10,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    let rest: Vec<String> = rest.listeners.into_iter().map(|l| l.name).collect();
    assert_eq!(rest, ["l00003", "l00004"]);

    // Refused: a negative size, a token netd did not hand out.
    for (size, token) in [(-1, ""), (2, "not-a-token"), (2, "6e313a"), (2, "zz")] {
        let e = c
            .list_listeners(proto::ListListenersRequest {
                page_size: size,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{size} {token:?}");
        let e = c
            .get_stats(proto::GetStatsRequest {
                name: String::new(),
                page_size: size,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{size} {token:?}");
    }
    let e = c
        .list_listeners(proto::ListListenersRequest {
            page_size: 2,
            page_token: "zz".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("page_token"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netctl_follows_pages_and_a_large_snapshot_comes_in_parts() {
    const N: usize = 1200;
    crate::common::raise_fd_limit();
    let netd = Netd::start(&config_with(N));
    let want: Vec<String> = names(N);

    // netctl list, stats and export each show every listener once (the
    // default page is 500, so three pages).
    let list = netd.netctl_json(&["list"]);
    let got: Vec<String> = list["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    let stats = netd.netctl_json(&["stats"]);
    let got: Vec<&str> = stats["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);
    let table = netd.netctl_ok(&["list"]);
    assert_eq!(table.lines().count(), N + 1, "a header and a row each");
    let export = netd.netctl_ok(&["export"]);
    assert_eq!(export.matches("[[listener]]").count(), N);

    // The WatchStats snapshot: 500 + 500 + 200, the last marked complete.
    let mut c = netd.client().await;
    let mut stream = c
        .watch_stats(watch_req("", 1000))
        .await
        .unwrap()
        .into_inner();
    let mut parts = Vec::new();
    let mut names = BTreeSet::new();
    loop {
        let m = stream.message().await.unwrap().unwrap();
        assert_eq!(m.seq, 0);
        assert_eq!(m.snapshot_complete, !m.more);
        parts.push(m.listeners.len());
        names.extend(m.listeners.into_iter().map(|l| l.name));
        if !m.more {
            break;
        }
    }
    assert_eq!(parts, [500, 500, 200]);
    assert_eq!(names.into_iter().collect::<Vec<_>>(), want);

    // netctl stats --watch shows every listener at every tick, though
    // only the snapshot carried them all.
    let out = netd.netctl_ok(&["stats", "--watch", "-n", "2", "--interval", "100ms"]);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2 * N, "every listener at both ticks");
    assert!(
        rows[N..].iter().all(|r| r.contains("0/s")),
        "idle listeners read 0/s after the first tick"
    );
}

/// The next message of a stats stream.
async fn next(stream: &mut tonic::Streaming<StatsSample>) -> StatsSample {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10s")
        .unwrap()
        .expect("stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stats_sends_only_changes_after_the_snapshot() {
    let netd = Netd::start(&config_with(3));
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let udp = bound_addr(&netd, "u");
    let mut c = netd.client().await;
    let mut stream = c
        .watch_stats(watch_req("", 100))
        .await
        .unwrap()
        .into_inner();
    let snap = next(&mut stream).await;
    assert!(snap.snapshot_complete && !snap.more);
    assert_eq!(snap.listeners.len(), 4);

    // Nothing changes: ticks come, empty.
    let idle = next(&mut stream).await;
    assert!(idle.seq > 0 && idle.elapsed.is_some());
    assert!(
        idle.listeners.is_empty() && idle.removed.is_empty(),
        "{idle:?}"
    );

    // Traffic to one listener: it is sent, with its new totals and rates,
    // and the idle ones are not.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"ping", udp).unwrap();
    let mut buf = [0u8; 64];
    s.recv(&mut buf).unwrap();
    let mut changed = None;
    for _ in 0..100 {
        let m = next(&mut stream).await;
        assert!(
            m.listeners.iter().all(|l| l.name == "u"),
            "only the busy listener is sent: {m:?}"
        );
        if let Some(l) = m.listeners.into_iter().next() {
            changed = Some(l);
            break;
        }
    }
    let u = changed.expect("the busy listener was sent");
    assert_eq!(u.totals.unwrap().datagrams_in, 1);
    assert!(u.rates.unwrap().datagrams_in_per_sec > 0.0);

    // A stopped listener is named in `removed`, once, and never re-sent.
    netd.netctl_ok(&["stop", "l00001"]);
    let mut removed = Vec::new();
    for _ in 0..100 {
        let m = next(&mut stream).await;
        assert!(m.listeners.iter().all(|l| l.name != "l00001"), "{m:?}");
        removed.extend(m.removed);
        if !removed.is_empty() {
            break;
        }
    }
    assert_eq!(removed, ["l00001"]);

    // A new listener is sent whole.
    netd.netctl_ok(&["start", "tcp-echo", "new", "--listen", "127.0.0.1:0"]);
    let mut found = false;
    for _ in 0..100 {
        let m = next(&mut stream).await;
        assert!(m.removed.is_empty());
        if m.listeners.iter().any(|l| l.name == "new") {
            found = true;
            break;
        }
    }
    assert!(found, "a listener started mid-watch is sent");

    // Watching one listener by name: stopping it names it in `removed`.
    let mut one = c
        .watch_stats(watch_req("l00000", 100))
        .await
        .unwrap()
        .into_inner();
    let snap = next(&mut one).await;
    assert_eq!(snap.listeners.len(), 1);
    netd.netctl_ok(&["stop", "l00000"]);
    let mut gone = false;
    for _ in 0..100 {
        let m = next(&mut one).await;
        if m.removed == ["l00000"] {
            gone = true;
            break;
        }
    }
    assert!(gone, "the watched listener's end is reported");
}

/// The `netctl stats` row of `name`.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netctl_stats_shows_each_kinds_own_figures() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "echo", "--listen", "127.0.0.1:0"]);
    let echo = bound_addr(&netd, "echo").to_string();
    let dead = format!("127.0.0.1:{}", free_tcp_port());
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &echo,
        "--upstream",
        &dead,
    ]);
    netd.netctl_ok(&["start", "http", "h", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let (p, h) = (bound_addr(&netd, "p"), bound_addr(&netd, "h"));

    // HTTP: two 200s and a 400 (a body that is not JSON).
    for path in ["/a", "/b"] {
        let r = reqwest::get(format!("http://{h}{path}")).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = reqwest::Client::new()
        .post(format!("http://{h}/"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Proxy: a client or two until the dead upstream has been tried and
    // is skipped.
    wait_until("the dead upstream is marked down", || {
        if let Ok(mut s) = TcpStream::connect(p) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.read(&mut [0u8; 16]);
        }
        netd.netctl_json(&["stats", "p"])["listeners"][0]["totals"]["proxy"]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["healthy"] == false)
    });

    let table = netd.netctl_ok(&["stats"]);
    assert!(table.lines().next().unwrap().ends_with("DETAIL"), "{table}");
    assert!(row(&table, "p").contains("1/2 up"), "{table}");
    assert!(
        row(&table, "h").contains("2xx 2 3xx 0 4xx 1 5xx 0"),
        "{table}"
    );
    // A UDP echo has no connections: those cells read "-", not 0.
    let u: Vec<&str> = row(&table, "u").split_whitespace().collect();
    assert_eq!(&u[3..6], ["-", "-", "0"], "{table}");
    // A TCP echo has no datagrams, and nothing of its own.
    let e: Vec<&str> = row(&table, "echo").split_whitespace().collect();
    assert_eq!(e[5], "-", "{table}");
    assert_eq!(*e.last().unwrap(), "-", "{table}");
}

#[test]
fn netctl_stats_shows_a_sniffers_packets_by_protocol() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let udp = bound_addr(&netd, "u");
    netd.netctl_ok(&["start", "sniffer", "s", "--interface", "lo"]);
    ns.run(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..5 {
            s.send_to(b"0123456789", udp).unwrap();
            s.recv(&mut [0u8; 64]).unwrap();
        }
    });
    wait_until("the sniffer saw 10 UDP packets", || {
        netd.netctl_json(&["stats", "s"])["listeners"][0]["totals"]["sniffer"]["udp"]["packets"]
            == 10
    });
    let table = netd.netctl_ok(&["stats"]);
    let s = row(&table, "s");
    assert!(s.contains("udp 10/"), "{table}");
    assert!(
        !s.contains("tcp "),
        "protocols with no packets are left out: {table}"
    );
    let cells: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(&cells[3..6], ["-", "-", "10"], "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_are_all_saved_before_they_return() {
    // Starts in flight together share state-file writes (group commit);
    // each must still be on disk when its call returns: kill -9 right
    // after the last answer and start again from the same state.
    const N: usize = 40;
    let netd = Netd::start("");
    let c = netd.client().await;
    let calls = (0..N).map(|i| {
        let mut c = c.clone();
        async move {
            c.start_listener(proto::StartListenerRequest {
                name: format!("c{i:02}"),
                spec: Some(proto::ListenerSpec {
                    kind: Some(proto::listener_spec::Kind::TcpEcho(proto::TcpEchoSpec {
                        listen: "127.0.0.1:0".into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })
            .await
        }
    });
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    let dir = netd.kill9();
    let netd = Netd::start_in(dir);
    let names: Vec<String> = netd.netctl_json(&["list"])["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("c{i:02}")).collect();
    assert_eq!(names, want);
}
