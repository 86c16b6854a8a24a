//! Hardening of the HTTP service and of spec validation (issue 11): HTTP/2
//! memory bounds (body budget, streams per connection, header size, idle
//! connections), and absurd durations, clashing ports and bad log levels
//! refused by start, config load and `--check-config`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::common::h2raw::{PREFACE, frame, handshake, hpack, read_frame};
use crate::common::{DEADLINE, Netd, bound_addr, rss_kib, wait_until_async};
use bytes::Bytes;
use netd::proto::{self, listener_spec::Kind};
use tonic::Code;

fn start_http(netd: &Netd, name: &str, extra: &[&str]) -> SocketAddr {
    let mut args = vec!["start", "http", name, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

async fn http_stats(netd: &Netd, name: &str) -> (proto::ListenerStats, proto::HttpStats) {
    let mut c = netd.client().await;
    let sample = c
        .get_stats(proto::GetStatsRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let totals = sample.listeners[0].totals.clone().unwrap();
    let Some(proto::listener_stats::Detail::Http(h)) = totals.detail.clone() else {
        panic!("no HTTP stats: {totals:?}")
    };
    (totals, h)
}

/// An h2c (prior knowledge) client connection.
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// Send `data` on a stream as the peer's flow control allows; an error
/// (the stream was reset) ends it early.
async fn push(send: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    // Bounded: every round sends at least one byte or returns.
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            None => return Ok(()),
            Some(Err(e)) => return Err(e),
            Some(Ok(0)) => continue,
            Some(Ok(n)) => {
                let chunk = data.split_to(n.min(data.len()));
                send.send_data(chunk, false)?;
            }
        }
    }
    Ok(())
}

/// 64 HTTP/2 uploads of 1 MiB each (4 connections x 16 streams) against a
/// body budget of 8 MiB: 8 are admitted and buffered, 56 are refused with
/// 503 as soon as their headers arrive, and netd's memory does not grow by
/// the 64 MiB that was offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_bodies_beyond_the_budget_are_refused_and_memory_stays_bounded() {
    const MIB: usize = 1 << 20;
    let netd = Netd::start("");
    let addr = start_http(
        &netd,
        "web",
        &["--body-budget", "8388608", "--request-timeout", "5m"],
    );
    // A request first, so the baseline includes a warmed-up service.
    let mut warm = h2_connect(addr).await;
    let (resp, _) = warm
        .send_request(
            http::Request::get(format!("http://{addr}/"))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let before = rss_kib(netd.pid());

    // Each body is a JSON string of exactly 1 MiB (max_body_bytes): a
    // quote and 1 MiB - 2 letters now, the closing quote at the end.
    let mut head = vec![b'a'; MIB - 1];
    head[0] = b'"';
    let head = Bytes::from(head);
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut conn = h2_connect(addr).await;
        for _ in 0..16 {
            conn = conn.ready().await.unwrap();
            let req = http::Request::post(format!("http://{addr}/"))
                .header("content-type", "application/json")
                .header("content-length", MIB.to_string())
                .body(())
                .unwrap();
            let (resp, mut send) = conn.send_request(req, false).unwrap();
            // A refused stream is reset; its remaining data is not sent.
            let _ = push(&mut send, head.clone()).await;
            streams.push((resp, send));
        }
    }
    wait_until_async("56 uploads refused over the budget", || async {
        http_stats(&netd, "web").await.1.body_budget_refused == 56
    })
    .await;
    // A body without Content-Length is counted as it arrives: nothing of
    // the budget is left for it.
    let mut extra = h2_connect(addr).await;
    let (resp, mut send) = extra
        .send_request(
            http::Request::post(format!("http://{addr}/"))
                .body(())
                .unwrap(),
            false,
        )
        .unwrap();
    let _ = push(&mut send, Bytes::from_static(b"[1,2,3")).await;
    let resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 503, "chunked body over the budget");
    assert!(resp.headers().contains_key("retry-after"));

    let grown_kib = rss_kib(netd.pid()).saturating_sub(before);
    eprintln!("netd RSS grew by {grown_kib} KiB for 64 MiB offered");
    assert!(
        grown_kib < 40 * 1024,
        "netd RSS grew by {grown_kib} KiB holding uploads; the budget is 8 MiB"
    );

    // Finish every upload: the admitted 8 are answered 201, the rest were
    // answered 503.
    let mut by_status = std::collections::BTreeMap::new();
    for (resp, mut send) in streams {
        let _ = send.send_data(Bytes::from_static(b"\""), true);
        let status = tokio::time::timeout(DEADLINE, resp)
            .await
            .expect("a response to every upload")
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        *by_status.entry(status).or_insert(0) += 1;
    }
    assert_eq!(
        by_status,
        [(201, 8), (503, 56)].into_iter().collect(),
        "statuses"
    );
    // The budget is returned: another 1 MiB upload is admitted.
    let (resp, mut send) = extra
        .ready()
        .await
        .unwrap()
        .send_request(
            http::Request::post(format!("http://{addr}/"))
                .body(())
                .unwrap(),
            false,
        )
        .unwrap();
    push(&mut send, head.clone()).await.unwrap();
    send.send_data(Bytes::from_static(b"\""), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 201);
    let (_, h) = http_stats(&netd, "web").await;
    assert_eq!(h.body_budget_refused, 57);
}

/// netd announces 32 concurrent streams per HTTP/2 connection by default
/// and refuses the 33rd with REFUSED_STREAM when a client ignores it.
#[test]
fn h2_streams_beyond_max_streams_are_refused() {
    let netd = Netd::start("");
    let addr = start_http(&netd, "web", &[]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let max_streams = handshake(&mut s);
    assert_eq!(max_streams, Some(32), "SETTINGS_MAX_CONCURRENT_STREAMS");

    // 33 uploads whose bodies never come: each holds its stream open.
    let mut out = Vec::new();
    frame(&mut out, 0x4, 0x1, 0, &[]);
    let mut block = Vec::new();
    hpack(&mut block, ":method", "POST");
    hpack(&mut block, ":scheme", "http");
    hpack(&mut block, ":path", "/");
    hpack(&mut block, ":authority", "localhost");
    hpack(&mut block, "content-length", "10");
    for i in 0..33u32 {
        frame(&mut out, 0x1, 0x4, 1 + 2 * i, &block);
    }
    s.write_all(&out).unwrap();
    let last = 1 + 2 * 32;
    // Bounded: each round reads a frame, and the read times out.
    loop {
        let (kind, _, stream, payload) =
            read_frame(&mut s).unwrap_or_else(|e| panic!("no RST_STREAM for stream {last}: {e}"));
        if kind == 0x3 && stream == last {
            let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            assert_eq!(code, 0x7, "REFUSED_STREAM");
            break;
        }
        assert_ne!(kind, 0x7, "GOAWAY instead of a refused stream: {payload:?}");
        assert_ne!(kind, 0x3, "stream {stream} reset; only the 33rd should be");
    }
}

/// Read until the peer closes; Err if it has not within the deadline.
fn read_to_close(s: &mut TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(DEADLINE))?;
    let mut buf = [0u8; 4096];
    // Bounded: each read returns data, EOF or an error (the timeout).
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Connections that send the HTTP/2 preface and nothing else, or finish a
/// request and go quiet, are closed after idle_timeout, so they cannot
/// lock real clients out of a listener's connection slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connections_are_closed() {
    let netd = Netd::start(
        "[[listener]]\nname = \"web\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
         max_connections = 4\nidle_timeout = \"300ms\"\n",
    );
    let addr = bound_addr(&netd, "web");
    // Fill every slot with a preface-only connection.
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(PREFACE).unwrap();
            s
        })
        .collect();
    for s in &mut idle {
        read_to_close(s).expect("a preface-only connection is closed");
    }

    // Real clients get served again, over HTTP/2 and HTTP/1.
    let mut h2c = h2_connect(addr).await;
    let (resp, _) = h2c
        .send_request(
            http::Request::get(format!("http://{addr}/"))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // ... and that connection, idle after its request, is closed too.
    wait_until_async("the used h2 connection closed for idleness", || async {
        http_stats(&netd, "web").await.1.idle_closed >= 5
    })
    .await;
    // A connection is counted idle-closed before its task ends and gives
    // back its slot: wait for that too rather than read it at once.
    wait_until_async("every connection's slot given back", || async {
        http_stats(&netd, "web").await.0.connections_active == 0
    })
    .await;
    let body = reqwest::get(format!("http://{addr}/x")).await.unwrap();
    assert_eq!(body.status(), 200);
}

fn h1_get_with_header(addr: SocketAddr, value_len: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "v".repeat(value_len)
    );
    // The server may answer and close before reading all of it.
    let _ = s.write_all(req.as_bytes());
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("a status line");
    String::from_utf8_lossy(&head[9..12]).into_owned()
}

/// A header section beyond max_header_bytes (16 KiB by default) gets 431,
/// on HTTP/1 and on HTTP/2; one within it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_on_http1_and_h2() {
    let netd = Netd::start("");
    let addr = start_http(&netd, "web", &[]);
    assert_eq!(h1_get_with_header(addr, 8 * 1024), "200");
    assert_eq!(h1_get_with_header(addr, 20 * 1024), "431");
    assert_eq!(h1_get_with_header(addr, 100 * 1024), "431");

    let get = |len: usize| {
        http::Request::get(format!("http://{addr}/"))
            .header("x-big", "v".repeat(len))
            .body(())
            .unwrap()
    };
    let mut h2c = h2_connect(addr).await;
    let (resp, _) = h2c.send_request(get(8 * 1024), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let mut h2c = h2c.ready().await.unwrap();
    let (resp, _) = h2c.send_request(get(20 * 1024), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 431);

    // A lower limit is honoured too.
    let addr = start_http(&netd, "small", &["--max-header-bytes", "2048"]);
    assert_eq!(h1_get_with_header(addr, 1024), "200");
    assert_eq!(h1_get_with_header(addr, 3 * 1024), "431");
}

fn http_spec(f: impl FnOnce(&mut proto::HttpSpec)) -> proto::ListenerSpec {
    let mut spec = proto::HttpSpec {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    f(&mut spec);
    proto::ListenerSpec {
        kind: Some(Kind::Http(spec)),
    }
}

const HUGE: prost_types::Duration = prost_types::Duration {
    seconds: i64::MAX,
    nanos: 0,
};

/// Durations of 2^63-1 seconds through the API, and "99999999999y" through
/// netctl and the config, are refused with a message naming the field and
/// its bounds; the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_durations_are_refused_by_start_config_and_check_config() {
    let netd = Netd::start("");
    let mut c = netd.client().await;
    let cases: Vec<(&str, proto::ListenerSpec, &str)> = vec![
        (
            "header_read_timeout",
            http_spec(|s| s.header_read_timeout = Some(HUGE)),
            "1h",
        ),
        (
            "request_timeout",
            http_spec(|s| s.request_timeout = Some(HUGE)),
            "1h",
        ),
        (
            "idle_timeout",
            http_spec(|s| s.idle_timeout = Some(HUGE)),
            "1day",
        ),
        (
            "idle_timeout",
            proto::ListenerSpec {
                kind: Some(Kind::TcpEcho(proto::TcpEchoSpec {
                    listen: "127.0.0.1:0".into(),
                    idle_timeout: Some(HUGE),
                    ..Default::default()
                })),
            },
            "7days",
        ),
        (
            "body_budget_bytes",
            http_spec(|s| s.body_budget_bytes = u64::MAX),
            "68719476736",
        ),
        (
            "max_streams",
            http_spec(|s| s.max_streams = u32::MAX),
            "1000",
        ),
    ];
    for (field, spec, bound) in cases {
        let e = c
            .start_listener(proto::StartListenerRequest {
                name: "absurd".into(),
                spec: Some(spec),
                labels: Default::default(),
                ephemeral: false,
            })
            .await
            .expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {}", e.message());
        assert!(
            e.message().contains(field) && e.message().contains(bound),
            "{field}: {}",
            e.message()
        );
    }
    let e = netd.netctl_err(&[
        "start",
        "http",
        "absurd",
        "--listen",
        "127.0.0.1:0",
        "--header-timeout",
        "99999999999y",
    ]);
    assert!(e.contains("header_read_timeout") && e.contains("1h"), "{e}");
    // Nothing was started, and a sane listener still works.
    let addr = start_http(&netd, "web", &["--header-timeout", "2s"]);
    let r = reqwest::get(format!("http://{addr}/")).await.unwrap();
    assert_eq!(r.status(), 200);

    for (kind, field) in [
        ("http", "header_read_timeout"),
        ("http", "idle_timeout"),
        ("tcp-echo", "idle_timeout"),
    ] {
        let config = format!(
            "[[listener]]\nname = \"x\"\nkind = \"{kind}\"\nlisten = \"127.0.0.1:0\"\n\
             {field} = \"99999999999y\"\n"
        );
        let (ok, msg) = check_config(&config);
        assert!(
            !ok && msg.contains(field),
            "--check-config {kind} {field}: {msg}"
        );
        let (ok, msg) = start_config(&config);
        assert!(!ok && msg.contains(field), "start {kind} {field}: {msg}");
    }
}

/// Run `netd --check-config` on `config`: (success, stdout + stderr).
fn check_config(config: &str) -> (bool, String) {
    run_netd(config, &["--check-config"])
}

/// Start netd on `config` expecting it to refuse: (success, stderr).
fn start_config(config: &str) -> (bool, String) {
    run_netd(config, &[])
}

fn run_netd(config: &str, args: &[&str]) -> (bool, String) {
    // A netd that wrongly starts would run forever: the wait is bounded.
    match crate::common::netd_exit(config, args).0 {
        None => (true, "netd started and kept running".into()),
        Some(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
    }
}

/// `--check-config` refuses what start would refuse or mis-run: two
/// listeners on the same port and protocol (also the wildcard against a
/// specific address) and a log level that is not one.
#[test]
fn check_config_refuses_port_clashes_and_bad_log_levels() {
    let port = crate::common::free_tcp_port();
    let listener = |name: &str, kind: &str, ip: &str| {
        format!("[[listener]]\nname = \"{name}\"\nkind = \"{kind}\"\nlisten = \"{ip}:{port}\"\n")
    };
    let clash = |a: &str, b: &str| format!("{a}{b}");
    for (what, config) in [
        (
            "same address",
            clash(
                &listener("a", "tcp-echo", "127.0.0.1"),
                &listener("b", "http", "127.0.0.1"),
            ),
        ),
        (
            "wildcard and a specific address",
            clash(
                &listener("a", "http", "0.0.0.0"),
                &format!(
                    "{}upstreams = [\"127.0.0.1:9\"]\n",
                    listener("b", "proxy", "127.0.0.1")
                ),
            ),
        ),
        (
            "specific address and the wildcard",
            clash(
                &listener("a", "udp-echo", "127.0.0.1"),
                &listener("b", "udp-echo", "0.0.0.0"),
            ),
        ),
    ] {
        let (ok, msg) = check_config(&config);
        assert!(!ok, "{what}: --check-config passed:\n{config}");
        assert!(
            msg.contains("clashes") && msg.contains("'a'"),
            "{what}: {msg}"
        );
    }
    // TCP and UDP on the same port do not clash; nor do two port-0 listeners.
    let fine = clash(
        &listener("a", "tcp-echo", "127.0.0.1"),
        &listener("b", "udp-echo", "127.0.0.1"),
    );
    let (ok, msg) = check_config(&fine);
    assert!(ok, "{msg}");

    let (ok, msg) = check_config("[log]\nlevel = \"verbose\"\n");
    assert!(!ok && msg.contains("verbose"), "{msg}");
    let (ok, msg) = check_config("[log]\nlevel = \"warn,netd=debug\"\n");
    assert!(ok, "{msg}");
}
