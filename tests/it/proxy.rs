//! The monitored TCP proxy against real upstreams on loopback: forwarding,
//! half-close, resets, concurrency, upstream failures and timeouts, limits,
//! the pre-connect pool, round robin, and stop.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::common::{Netd, TestUpstream, bound_addr, wait_until};
use serde_json::Value;

fn start_proxy(netd: &Netd, name: &str, upstreams: &[SocketAddr], extra: &[&str]) -> SocketAddr {
    let ups: Vec<String> = upstreams.iter().map(|u| u.to_string()).collect();
    let mut args = vec!["start", "proxy", name, "--listen", "127.0.0.1:0"];
    for u in &ups {
        args.extend_from_slice(&["--upstream", u]);
    }
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

fn echo_upstream(netd: &Netd, name: &str, prefix: &str) -> SocketAddr {
    netd.netctl_ok(&[
        "start",
        "tcp-echo",
        name,
        "--listen",
        "127.0.0.1:0",
        "--prefix",
        prefix,
    ]);
    bound_addr(netd, name)
}

fn proxy_stats(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["status", name])["stats"].clone()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

fn roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = connect(addr);
    c.write_all(msg).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    out
}

/// A closed port on loopback: bound, then released.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn forwards_a_large_stream_byte_exact_both_ways() {
    let netd = Netd::start("");
    let up = echo_upstream(&netd, "up", "");
    let p = start_proxy(&netd, "p", &[up], &[]);
    let data: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut c = connect(p);
    let mut w = c.try_clone().unwrap();
    let send = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&send).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "proxied stream differs");
    wait_until("connection done", || {
        proxy_stats(&netd, "p")["connections_active"] == 0
    });
    let s = proxy_stats(&netd, "p");
    assert_eq!(s["bytes_in"], data.len() as u64, "client -> upstream bytes");
    assert_eq!(
        s["bytes_out"],
        data.len() as u64,
        "upstream -> client bytes"
    );
    assert_eq!(s["proxy"]["upstreams"][0]["connections"], 1);
}

/// Request/reply exchanges whose sizes sit on the forward loop's buffer
/// boundaries (an 8 KiB first read, 64 KiB after it, splice after a full
/// one): each reply must arrive whole while the connection stays open, so a
/// read that exactly filled a buffer cannot leave the rest waiting.
#[test]
fn exchanges_at_the_buffer_boundaries_arrive_whole() {
    let netd = Netd::start("");
    let up = echo_upstream(&netd, "up", "");
    let p = start_proxy(&netd, "p", &[up], &[]);
    let mut c = connect(p);
    let mut total = 0u64;
    for (i, len) in [
        1, 8191, 8192, 8193, 16384, 65535, 65536, 65537, 8192, 200_000, 7,
    ]
    .into_iter()
    .enumerate()
    {
        let msg: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
        let mut w = c.try_clone().unwrap();
        let send = msg.clone();
        let writer = std::thread::spawn(move || w.write_all(&send).unwrap());
        let mut got = vec![0u8; len];
        c.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("reply of the {len}-byte message: {e}"));
        writer.join().unwrap();
        assert!(got == msg, "the {len}-byte message came back changed");
        total += len as u64;
    }
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing beyond the echoes");
    wait_until("connection done", || {
        proxy_stats(&netd, "p")["connections_active"] == 0
    });
    let s = proxy_stats(&netd, "p");
    assert_eq!(s["bytes_in"], total);
    assert_eq!(s["bytes_out"], total);
}

#[test]
fn half_close_still_delivers_the_response() {
    // An upstream that reads the whole request, then answers and closes.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = server.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        s.write_all(format!("got {} bytes", req.len()).as_bytes())
            .unwrap();
    });
    let netd = Netd::start("");
    let p = start_proxy(&netd, "p", &[up], &[]);
    let reply = roundtrip(p, &[1u8; 100_000]);
    assert_eq!(reply, b"got 100000 bytes");
}

#[test]
fn upstream_reset_reaches_the_client() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = server.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        // Abort: RST instead of FIN.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let netd = Netd::start("");
    let p = start_proxy(&netd, "p", &[up], &[]);
    let mut c = connect(p);
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let err = c
        .read(&mut buf)
        .expect_err("the client must see the upstream's reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
}

#[test]
fn many_concurrent_clients() {
    let netd = Netd::start("");
    let up = echo_upstream(&netd, "up", "");
    let p = start_proxy(&netd, "p", &[up], &[]);
    let handles: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let msg = format!("client {i} ").repeat(100);
                assert_eq!(roundtrip(p, msg.as_bytes()), msg.as_bytes());
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    wait_until("all done", || {
        proxy_stats(&netd, "p")["connections_active"] == 0
    });
    assert_eq!(proxy_stats(&netd, "p")["connections_total"], 50);
}

#[test]
fn refused_upstream_closes_the_client_promptly_and_is_marked_down() {
    let netd = Netd::start("");
    let down = closed_port();
    let p = start_proxy(&netd, "p", &[down], &["--connect-timeout", "10s"]);
    let reply = roundtrip(p, b"anyone?");
    assert!(reply.is_empty());
    let s = proxy_stats(&netd, "p");
    assert_eq!(s["errors"], 1);
    assert_eq!(s["proxy"]["connect_failures"], 1);
    let u = &s["proxy"]["upstreams"][0];
    assert_eq!(u["healthy"], false);
    assert!(u["last_error"].as_str().unwrap().contains("refused"), "{u}");
    // The proxy is still there for the next client.
    assert!(roundtrip(p, b"again").is_empty());
    assert_eq!(proxy_stats(&netd, "p")["connections_total"], 2);
}

#[test]
fn black_holed_upstream_times_out_without_stalling_accepts() {
    // A listener whose accept queue is full: further SYNs are dropped, so a
    // connect to it hangs until the proxy's connect timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let hole: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&hole.into());
        fillers.push(s);
    }
    // The accept queue (backlog 0: one connection) is full once the first
    // filler is established; the kernel drops SYNs beyond it.
    wait_until("the black hole's accept queue is full", || {
        fillers[0].peer_addr().is_ok()
    });

    let netd = Netd::start("");
    let p = start_proxy(&netd, "p", &[hole], &["--connect-timeout", "1500ms"]);
    let mut a = connect(p);
    let mut b = connect(p);
    // Both clients are accepted while the first upstream connect hangs.
    wait_until("two clients in flight", || {
        proxy_stats(&netd, "p")["connections_active"] == 2
    });
    let mut buf = [0u8; 8];
    assert_eq!(
        a.read(&mut buf).unwrap(),
        0,
        "closed after the connect timeout"
    );
    assert_eq!(b.read(&mut buf).unwrap(), 0);
    let s = proxy_stats(&netd, "p");
    assert!(s["proxy"]["connect_timeouts"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["errors"], 2);
    assert!(
        s["proxy"]["upstreams"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
    drop(fillers);
}

#[test]
fn idle_timeout_closes_and_max_connections_refuses() {
    let netd = Netd::start("");
    let up = echo_upstream(&netd, "up", "");
    let idle = start_proxy(&netd, "idle", &[up], &["--idle-timeout", "300ms"]);
    let mut c = connect(idle);
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert_eq!(
        c.read(&mut b).unwrap(),
        0,
        "idle connection closed by the proxy"
    );

    let lim = start_proxy(&netd, "lim", &[up], &["--max-connections", "1"]);
    let mut first = connect(lim);
    first.write_all(b"1").unwrap();
    first.read_exact(&mut b).unwrap();
    let mut second = connect(lim);
    let _ = second.write_all(b"2");
    assert_eq!(
        second.read(&mut b).unwrap_or(0),
        0,
        "over the limit: closed"
    );
    wait_until("refusal counted", || {
        proxy_stats(&netd, "lim")["connections_refused"] == 1
    });
    first.write_all(b"3").unwrap();
    first.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"3", "the admitted client is unaffected");
}

#[test]
fn preconnect_pool_hits_and_never_hands_out_a_closed_connection() {
    let upstream = TestUpstream::echo(b"U:");
    let netd = Netd::start("");
    let p = start_proxy(&netd, "p", &[upstream.addr], &["--preconnect", "2"]);
    wait_until("two warm connections", || upstream.accepted() == 2);
    wait_until("pool shows them", || {
        proxy_stats(&netd, "p")["proxy"]["upstreams"][0]["pool_idle"] == 2
    });

    assert_eq!(roundtrip(p, b"one"), b"U:one");
    let s = proxy_stats(&netd, "p");
    assert_eq!(s["proxy"]["pool_hits"], 1);
    // The pool refills to two idle connections behind the client.
    wait_until("pool refilled", || {
        proxy_stats(&netd, "p")["proxy"]["upstreams"][0]["pool_idle"] == 2
    });

    // The upstream closes every connection it has, warm ones included.
    upstream.close_all();
    let reply = roundtrip(p, b"two");
    assert_eq!(
        reply, b"U:two",
        "the client gets a live connection, not a dead warm one"
    );
    let s = proxy_stats(&netd, "p");
    assert!(
        s["proxy"]["pool_stale"].as_u64().unwrap() >= 1,
        "stale connections are counted: {s}"
    );
}

#[test]
fn round_robin_across_upstreams_and_skips_a_dead_one() {
    let netd = Netd::start("");
    let a = echo_upstream(&netd, "a", "A:");
    let b = echo_upstream(&netd, "b", "B:");
    let p = start_proxy(&netd, "p", &[a, b], &[]);
    let replies: Vec<Vec<u8>> = (0..6).map(|_| roundtrip(p, b"x")).collect();
    for pair in replies.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "consecutive clients go to different upstreams: {replies:?}"
        );
    }
    assert_eq!(replies.iter().filter(|r| r.as_slice() == b"A:x").count(), 3);

    // With one upstream dead, every client still gets through.
    let dead = closed_port();
    let q = start_proxy(&netd, "q", &[dead, a], &[]);
    for _ in 0..4 {
        assert_eq!(roundtrip(q, b"y"), b"A:y");
    }
    let s = proxy_stats(&netd, "q");
    assert_eq!(
        s["proxy"]["connect_failures"], 1,
        "the dead upstream is skipped during its back-off"
    );
    assert_eq!(s["proxy"]["upstreams"][0]["healthy"], false);
    assert_eq!(s["proxy"]["upstreams"][1]["connections"], 4);
}

#[test]
fn stopping_the_proxy_closes_its_connections() {
    let upstream = TestUpstream::echo(b"");
    let netd = Netd::start("");
    let p = start_proxy(&netd, "p", &[upstream.addr], &[]);
    let mut c = connect(p);
    c.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    c.read_exact(&mut b).unwrap();
    netd.netctl_ok(&["stop", "p"]);
    assert_eq!(
        c.read(&mut b).unwrap_or(0),
        0,
        "client connection closed by stop"
    );
    assert!(TcpStream::connect(p).is_err(), "listening port closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proxy_specs_are_invalid_argument() {
    use netd::proto::{self, listener_spec::Kind};
    let netd = Netd::start("");
    let mut c = netd.client().await;
    let spec = |ups: &[&str]| proto::ListenerSpec {
        kind: Some(Kind::Proxy(proto::ProxySpec {
            listen: "127.0.0.1:0".into(),
            upstreams: ups.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
    };
    for ups in [
        &[][..],
        &["nonsense"][..],
        &["127.0.0.1:0"][..],
        &["0.0.0.0:80"][..],
    ] {
        let req = proto::StartListenerRequest {
            name: "p".into(),
            spec: Some(spec(ups)),
            labels: Default::default(),
            ephemeral: false,
        };
        let err = c.start_listener(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{ups:?}: {err:?}");
    }
    let e = netd.netctl_err(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
        "--preconnect",
        "100000",
    ]);
    assert!(e.contains("preconnect is 100000; the limit is 1024"), "{e}");
}

#[test]
fn proxy_from_config_file() {
    let up = TestUpstream::echo(b"C:");
    let netd = Netd::start(&format!(
        "[[listener]]\nname = \"p\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n\
         preconnect = 1\nconnect_timeout = \"2s\"\nidle_timeout = \"1m\"\nmax_connections = 10\nupstream_backoff = \"3s\"\n",
        up.addr
    ));
    let spec = netd.netctl_json(&["status", "p"])["spec"].clone();
    assert_eq!(spec["connect_timeout"], "2s");
    assert_eq!(spec["upstream_backoff"], "3s");
    assert_eq!(spec["preconnect"], 1);
    assert_eq!(roundtrip(bound_addr(&netd, "p"), b"cfg"), b"C:cfg");
}

/// An upstream given by host name (`localhost`, from /etc/hosts) is
/// resolved at start and again every `resolve_interval`, off the runtime;
/// clients keep reaching it and no lookup fails.
#[test]
fn upstream_by_name_is_resolved_again_on_schedule() {
    use std::net::ToSocketAddrs;
    let up = TestUpstream::echo(b"N:");
    let port = up.addr.port();
    let first = ("localhost", port).to_socket_addrs().unwrap().next();
    assert_eq!(
        first,
        Some(up.addr),
        "this test needs localhost to resolve to 127.0.0.1 first (/etc/hosts)"
    );
    let netd = Netd::start(&format!(
        "[[listener]]\nname = \"p\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
         upstreams = [\"localhost:{port}\"]\nresolve_interval = \"1s\"\n"
    ));
    let spec = netd.netctl_json(&["status", "p"])["spec"].clone();
    assert_eq!(spec["upstreams"][0], format!("localhost:{port}"));
    assert_eq!(spec["resolve_interval"], "1s");
    let p = bound_addr(&netd, "p");
    assert_eq!(roundtrip(p, b"first"), b"N:first");
    wait_until("two re-resolutions", || {
        proxy_stats(&netd, "p")["proxy"]["resolves"].as_u64() >= Some(2)
    });
    assert_eq!(roundtrip(p, b"again"), b"N:again");
    let s = proxy_stats(&netd, "p");
    assert_eq!(s["proxy"]["resolve_failures"], 0, "{s}");
    assert_eq!(s["proxy"]["upstreams"][0]["addr"], up.addr.to_string());
    assert_eq!(up.accepted(), 2);
    // Out of bounds is refused with the bounds.
    let err = netd.netctl_err(&[
        "start",
        "proxy",
        "q",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("localhost:{port}"),
        "--resolve-interval",
        "10ms",
    ]);
    assert!(
        err.contains("resolve_interval") && err.contains("1s"),
        "{err}"
    );
}

/// An upstream that accepts and at once resets (before any data, whether
/// the reset reaches netd during its connect or after): every client sees
/// a reset, never a clean close.
#[test]
fn upstream_reset_right_after_accept_reaches_the_client_as_a_reset() {
    const N: usize = 20;
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = server.local_addr().unwrap();
    let upstream = std::thread::spawn(move || {
        for _ in 0..N {
            let (s, _) = server.accept().unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
        }
    });
    let netd = Netd::start("");
    let p = start_proxy(&netd, "p", &[up], &[]);
    let mut ends = Vec::new();
    for _ in 0..N {
        let mut c = connect(p);
        let mut buf = [0u8; 16];
        ends.push(match c.read(&mut buf) {
            Ok(0) => "clean close".to_string(),
            Ok(n) => format!("{n} bytes"),
            Err(e) => format!("{:?}", e.kind()),
        });
    }
    upstream.join().unwrap();
    assert!(
        ends.iter().all(|e| e == "ConnectionReset"),
        "each client must see the upstream's reset: {ends:?}"
    );
}

/// A proxy whose upstream is its own listening address would proxy each
/// client to itself, hop after hop: refused with InvalidArgument, for the
/// same address, for a wildcard listener with a local upstream on its port,
/// and (in a namespace whose only ephemeral port is known) for port 0,
/// checked on the address actually bound. Another address on the same port
/// is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_pointing_at_itself_is_invalid_argument() {
    use netd::proto::{self, listener_spec::Kind};
    let ns = crate::common::NetNs::new();
    let out = ns
        .command("sysctl")
        .args(["-w", "net.ipv4.ip_local_port_range=40000 40000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "sysctl: {out:?}");
    let netd = ns.netd("");
    let mut c = netd.client().await;
    let start = |listen: &str, upstream: &str| proto::StartListenerRequest {
        name: "p".into(),
        spec: Some(proto::ListenerSpec {
            kind: Some(Kind::Proxy(proto::ProxySpec {
                listen: listen.into(),
                upstreams: vec!["127.0.0.1:9".into(), upstream.into()],
                ..Default::default()
            })),
        }),
        labels: Default::default(),
        ephemeral: false,
    };
    for (listen, upstream) in [
        ("127.0.0.1:7000", "127.0.0.1:7000"),
        ("0.0.0.0:7000", "127.0.0.1:7000"),
        ("0.0.0.0:7000", "127.9.9.9:7000"),
        ("[::]:7000", "[::1]:7000"),
        ("127.0.0.1:7000", "[::ffff:127.0.0.1]:7000"),
        // Port 0: bound to 40000, the namespace's only ephemeral port.
        ("127.0.0.1:0", "127.0.0.1:40000"),
    ] {
        let err = c
            .start_listener(start(listen, upstream))
            .await
            .expect_err(&format!("listen {listen}, upstream {upstream}"));
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "listen {listen}, upstream {upstream}: {err:?}"
        );
        assert!(
            err.message().contains("own listening address"),
            "{}",
            err.message()
        );
    }
    // Not a loop: another address, or another family, on the same port.
    for (listen, upstream) in [
        ("127.0.0.1:7000", "127.0.0.2:7000"),
        ("0.0.0.0:7001", "[::1]:7001"),
    ] {
        c.start_listener(start(listen, upstream))
            .await
            .unwrap_or_else(|e| panic!("listen {listen}, upstream {upstream}: {e:?}"));
        netd.netctl_ok(&["stop", "p"]);
    }
    // The same through netctl.
    let e = netd.netctl_err(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:7002",
        "--upstream",
        "127.0.0.1:7002",
    ]);
    assert!(e.contains("own listening address"), "{e}");
}

/// The same rule for a proxy in the config file: netd refuses to start.
#[test]
fn proxy_pointing_at_itself_in_the_config_fails_startup() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_tcp_port();
    let cfg = dir.path().join("netd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nname = \"p\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:{port}\"\n\
             upstreams = [\"127.0.0.1:{port}\"]\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(crate::common::NETD)
        .arg("--config")
        .arg(&cfg)
        .arg("--control")
        .arg(format!("unix:{}", dir.path().join("netd.sock").display()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + crate::common::DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("netd started with a proxy whose upstream is itself");
    };
    assert!(!status.success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("listener 'p'") && err.contains("own listening address"),
        "{err}"
    );
}
