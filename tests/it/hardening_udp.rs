//! Regression tests for issue 11: the UDP echo cannot be turned into a
//! packet loop or an amplifier (own and reflector sources dropped, a
//! per-source token bucket, a reply/request size cap, kernel drops
//! counted), the HTTP rate limit keys IPv6 clients by their /64, and SIGHUP
//! leaves netd running.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

use crate::common::spoof::{spoof_udp, v4};
use crate::common::{NetNs, Netd, bound_addr, start_udp_proxy, wait_until};
use serde_json::Value;

fn start_udp(netd: &Netd, name: &str, extra: &[&str]) -> SocketAddr {
    let mut args = vec!["start", "udp-echo", name, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

fn udp_client(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// One round trip through a UDP echo.
fn echo_once(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    echo_from("127.0.0.1", addr, msg)
}

/// One round trip from a client on loopback address `ip`. Its reply also
/// shows that the echo has read every datagram queued before it.
fn echo_from(ip: &str, addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let c = UdpSocket::bind(format!("{ip}:0")).unwrap();
    c.connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send(msg).unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = c.recv(&mut buf).expect("echo reply");
    buf.truncate(n);
    buf
}

#[test]
fn sighup_reloads_and_keeps_serving() {
    let mut netd = Netd::start("");
    let udp = start_udp(&netd, "u", &[]);
    netd.signal(libc::SIGHUP);
    // The (empty) config file is re-read; the listener started at
    // runtime is a runtime change on top of it and stays.
    wait_until("the SIGHUP log line", || {
        netd.log().contains("SIGHUP received; reloading the config")
            && netd.log().contains("config reloaded")
    });
    assert!(netd.exited().is_none(), "netd exited on SIGHUP");
    let list = netd.netctl_json(&["list"]);
    assert_eq!(list["listeners"][0]["name"], "u", "{list}");
    assert_eq!(echo_once(udp, b"still here"), b"still here");
    // A second one is no different.
    netd.signal(libc::SIGHUP);
    wait_until("two SIGHUP log lines", || {
        netd.log().matches("SIGHUP received").count() == 2
    });
    assert_eq!(echo_once(udp, b"again"), b"again");
    assert!(netd.exited().is_none());
}

/// Send `msg` from the client `c` until it is answered (the echo's receive
/// queue may still be full of an earlier burst, and then the kernel drops
/// it); returns how many were sent. Once one is answered, the echo has
/// read or seen dropped everything `c` queued before it: the kernel
/// reports earlier drops with the next datagram read. From `c` itself: on
/// a listener with a socket per worker (SO_REUSEPORT), only the same
/// 4-tuple is sure to reach the socket `c`'s earlier datagrams went to.
fn answered_on(c: &UdpSocket, msg: &[u8]) -> u64 {
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = vec![0u8; 2048];
    for sent in 1..=40u64 {
        // Numbered, so that a late answer to an earlier one is told apart.
        let this = [msg, format!(" {sent}").as_bytes()].concat();
        c.send(&this).unwrap();
        while let Ok(n) = c.recv(&mut buf) {
            if buf[..n] == this[..] {
                return sent;
            }
        }
    }
    panic!("no answer to 40 datagrams");
}

/// The listener's counters from `netctl -o json status`.
fn stats(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["status", name])["stats"].clone()
}

/// One of the UDP echo's own counters (0 while netd does not report it).
fn udp_counter(netd: &Netd, name: &str, counter: &str) -> u64 {
    stats(netd, name)["udp_echo"][counter].as_u64().unwrap_or(0)
}

fn counter(netd: &Netd, name: &str, counter: &str) -> u64 {
    stats(netd, name)[counter].as_u64().expect(counter)
}

/// The loop from issue 11: one 29-byte datagram claiming to come from one
/// echo listener, sent to another (or to itself), was answered back and
/// forth forever. Now it is dropped at once, counted, and answered by
/// neither listener; the same for a wildcard listener's port seen from
/// loopback.
#[test]
fn spoofed_own_source_starts_no_loop() {
    let port = crate::common::free_tcp_port();
    let netd = Netd::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let a = start_udp(&netd, "a", &[]);
    // The variant: a 1 KiB prefix made every round trip bigger.
    let prefix = "P".repeat(1024);
    let b = start_udp(&netd, "b", &["--prefix", &prefix]);
    netd.netctl_ok(&["start", "udp-echo", "w", "--listen", "0.0.0.0:0"]);
    let w = bound_addr(&netd, "w");
    let msg = [b'!'; 29];

    // A's address sent to B; B's own address sent to B; a loopback source
    // on the wildcard listener's port sent to A.
    spoof_udp(v4(a), v4(b), &msg);
    spoof_udp(v4(b), v4(b), &msg);
    spoof_udp(
        SocketAddrV4::new([127, 0, 0, 1].into(), w.port()),
        v4(a),
        &msg,
    );

    wait_until("own-source drops counted", || {
        udp_counter(&netd, "b", "own_source_drops") == 2
            && udp_counter(&netd, "a", "own_source_drops") == 1
    });
    for (name, got) in [("a", 1), ("b", 2), ("w", 0)] {
        assert_eq!(counter(&netd, name, "datagrams_in"), got, "{name}");
        assert_eq!(counter(&netd, name, "datagrams_out"), 0, "{name} answered");
        assert_eq!(counter(&netd, name, "bytes_out"), 0, "{name} answered");
    }
    // The listeners still answer real clients.
    assert_eq!(echo_once(a, b"real"), b"real");

    // `netctl status` and /metrics show the drops too.
    let table = netd.netctl_ok(&["status", "b"]);
    assert!(table.contains("dropped:     2 own source"), "{table}");
    let mut m = TcpStream::connect(("127.0.0.1", port)).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    assert!(
        text.contains(
            "netd_udp_echo_drops_total{listener=\"b\",kind=\"udp-echo\",reason=\"own_source\"} 2"
        ),
        "{text}"
    );
}

/// A source port below 1024, or a well-known reflector port (echo 7), is
/// not answered and is counted; `--allow-privileged-sources` answers ports
/// below 1024 but never the reflectors.
#[test]
fn privileged_and_reflector_source_ports_are_dropped() {
    let netd = Netd::start("");
    let u = start_udp(&netd, "u", &[]);
    let p = start_udp(&netd, "p", &["--allow-privileged-sources"]);
    // Clients on 127.0.0.3 so that they do not compete for these ports
    // with anything on 127.0.0.1.
    let echo = UdpSocket::bind("127.0.0.3:7").expect("bind 127.0.0.3:7 (needs root)");
    let low = UdpSocket::bind("127.0.0.3:1000").expect("bind 127.0.0.3:1000 (needs root)");
    low.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo.send_to(b"from 7", u).unwrap();
    low.send_to(b"from 1000", u).unwrap();
    echo.send_to(b"from 7", p).unwrap();
    low.send_to(b"privileged ok", p).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = low.recv_from(&mut buf).expect("p answers port 1000");
    assert_eq!((&buf[..n], from), (&b"privileged ok"[..], p));
    assert_eq!(echo_once(u, b"ordinary"), b"ordinary");

    wait_until("reflector drops counted", || {
        udp_counter(&netd, "u", "reflector_source_drops") == 2
            && udp_counter(&netd, "p", "reflector_source_drops") == 1
    });
    // A reply is counted once sent: the client may have it first.
    wait_until("the replies counted", || {
        counter(&netd, "u", "datagrams_out") >= 1 && counter(&netd, "p", "datagrams_out") >= 1
    });
    assert_eq!(counter(&netd, "u", "datagrams_in"), 3);
    assert_eq!(
        counter(&netd, "u", "datagrams_out"),
        1,
        "only the ordinary client"
    );
    assert_eq!(counter(&netd, "p", "datagrams_in"), 2);
    assert_eq!(counter(&netd, "p", "datagrams_out"), 1, "only port 1000");
    echo.set_nonblocking(true).unwrap();
    assert!(echo.recv(&mut buf).is_err(), "port 7 got an answer");
}

/// With a 1 KiB prefix, a 29-byte request got 1053 bytes back (37.6x with
/// headers). Now a reply is at most max(2 x request, request + 64) bytes:
/// the prefix is cut.
#[test]
fn reply_size_is_capped_relative_to_the_request() {
    let netd = Netd::start("");
    let prefix: String = (0..1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let l = start_udp(&netd, "amp", &["--prefix", &prefix]);

    let r = echo_once(l, &[b'x'; 29]);
    assert_eq!(r.len(), 29 + 64);
    assert_eq!(r, prefix.as_bytes()[..93]);

    let r = echo_once(l, &[b'z'; 1000]);
    assert_eq!(r.len(), 2000);
    assert_eq!(&r[..1024], prefix.as_bytes());
    assert_eq!(&r[1024..], &[b'z'; 976][..]);

    // Big enough for the whole prefix: whole.
    let r = echo_once(l, &[b'y'; 2000]);
    assert_eq!(r.len(), 3024);

    assert_eq!(udp_counter(&netd, "amp", "truncated"), 2);
    assert_eq!(counter(&netd, "amp", "bytes_out"), 93 + 2000 + 3024);
}

/// A burst from one source gets as many answers as its bucket holds, and
/// the rest is counted as rate limited; another source has its own bucket.
/// The limit is on by default.
#[test]
fn token_bucket_per_source() {
    let netd = Netd::start("");
    // 5 an hour: no token comes back while the test runs.
    let l = start_udp(&netd, "rl", &["--rate-limit", "5/h"]);
    let c = udp_client(l);
    for i in 0..20 {
        c.send(format!("{i:02}").as_bytes()).unwrap();
    }
    let mut buf = [0u8; 16];
    for i in 0..5 {
        let n = c.recv(&mut buf).expect("a reply within the bucket");
        assert_eq!(&buf[..n], format!("{i:02}").as_bytes());
    }
    // Another source IP is not limited by the first one's burst; its
    // answer also shows the burst has been read.
    assert_eq!(echo_from("127.0.0.2", l, b"other"), b"other");
    // A reply is counted once sent: the client may have it first.
    wait_until("the replies counted", || {
        counter(&netd, "rl", "datagrams_out") >= 6 && counter(&netd, "rl", "datagrams_in") >= 21
    });
    assert_eq!(udp_counter(&netd, "rl", "kernel_drops"), 0);
    assert_eq!(counter(&netd, "rl", "datagrams_in"), 21);
    assert_eq!(counter(&netd, "rl", "datagrams_out"), 6);
    assert_eq!(udp_counter(&netd, "rl", "rate_limited"), 15);
    assert_eq!(udp_counter(&netd, "rl", "sources_tracked"), 2);

    // On by default (100/s, burst 100): 300 datagrams sent at once are not
    // all answered. (Sent in well under the 2 s it would take to earn 200
    // more tokens.)
    let d = start_udp(&netd, "default", &[]);
    let c = udp_client(d);
    for _ in 0..300 {
        c.send(b"flood").unwrap();
    }
    // From the same socket, once its bucket has a token again: once it is
    // answered, the burst has been read or dropped by the kernel
    // (reported with it).
    let markers = answered_on(&c, b"marker");
    assert_eq!(
        counter(&netd, "default", "datagrams_in") + udp_counter(&netd, "default", "kernel_drops"),
        300 + markers
    );
    let s = stats(&netd, "default");
    let (answered, limited) = (
        s["datagrams_out"].as_u64().unwrap(),
        s["udp_echo"]["rate_limited"].as_u64().unwrap(),
    );
    assert!(limited > 0, "{s}");
    assert_eq!(
        answered + limited,
        s["datagrams_in"].as_u64().unwrap(),
        "{s}"
    );
}

/// Datagrams the kernel drops because netd's receive queue is full are
/// counted (SO_RXQ_OVFL). netd is stopped (SIGSTOP) while a burst far
/// bigger than its receive buffer arrives, then continued.
#[test]
fn kernel_receive_queue_drops_are_counted() {
    let netd = Netd::start("");
    let l = start_udp(&netd, "k", &["--rate-limit", "off"]);
    let rmem: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(212_992);
    // Each 1000-byte datagram costs more than 1000 bytes of buffer.
    let burst = (rmem / 1000 + 500).min(200_000);
    let c = udp_client(l);
    netd.signal(libc::SIGSTOP);
    for _ in 0..burst {
        c.send(&[0u8; 1000]).unwrap();
    }
    netd.signal(libc::SIGCONT);
    // The drop count rides on the next datagram queued after the drops.
    let after = answered_on(&c, b"after");
    assert_eq!(
        counter(&netd, "k", "datagrams_in") + udp_counter(&netd, "k", "kernel_drops"),
        burst + after
    );
    assert!(udp_counter(&netd, "k", "kernel_drops") > 0);
}

/// GET / from `from` (an address inside the namespace) to `to`; the
/// response's status code.
fn http_status(from: &str, to: SocketAddr) -> u16 {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
    let bind: SocketAddr = format!("[{from}]:0").parse().unwrap();
    s.bind(&bind.into()).expect("bind the client address");
    s.connect(&to.into()).expect("connect");
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {resp}"))
}

/// A client that rotates its IPv6 address within its /64 shares one rate
/// limit bucket; another /64 has its own. With the prefix set to 128 each
/// address is its own client again. In a namespace with addresses of
/// 2001:db8::/64 and 2001:db8:0:1::/64 on its loopback.
#[test]
fn http_rate_limit_keys_ipv6_clients_by_64() {
    let ns = NetNs::new();
    for a in [
        "2001:db8::1",
        "2001:db8::a",
        "2001:db8::b",
        "2001:db8:0:1::c",
    ] {
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "lo",
                "nodad",
            ])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let netd = ns.netd("");
    netd.netctl_ok(&[
        "start",
        "http",
        "h64",
        "--listen",
        "[2001:db8::1]:0",
        "--rate-limit",
        "2/h",
    ]);
    let h64 = bound_addr(&netd, "h64");
    let got = ns.run(|| {
        [
            http_status("2001:db8::a", h64),
            http_status("2001:db8::a", h64),
            // Same /64, new address: the same bucket, already empty.
            http_status("2001:db8::b", h64),
            // Another /64.
            http_status("2001:db8:0:1::c", h64),
        ]
    });
    assert_eq!(got, [200, 200, 429, 200]);
    let h = &stats(&netd, "h64")["http"];
    assert_eq!(h["rate_limited"], 1, "{h}");

    netd.netctl_ok(&[
        "start",
        "http",
        "h128",
        "--listen",
        "[2001:db8::1]:0",
        "--rate-limit",
        "2/h",
        "--rate-limit-ipv6-prefix",
        "128",
    ]);
    let h128 = bound_addr(&netd, "h128");
    let got = ns.run(|| {
        [
            http_status("2001:db8::a", h128),
            http_status("2001:db8::a", h128),
            http_status("2001:db8::a", h128),
            http_status("2001:db8::b", h128),
        ]
    });
    assert_eq!(got, [200, 200, 429, 200]);
    let err = netd.netctl_err(&[
        "start",
        "http",
        "bad",
        "--listen",
        "[2001:db8::1]:0",
        "--rate-limit-ipv6-prefix",
        "129",
    ]);
    assert!(err.contains("rate_limit_ipv6_prefix"), "{err}");
}

/// One of the udp-proxy's own counters (0 while netd does not report it).
fn proxy_counter(netd: &Netd, name: &str, counter: &str) -> u64 {
    stats(netd, name)["udp_proxy"][counter]
        .as_u64()
        .unwrap_or(0)
}

/// A socket standing in for a udp-proxy's upstream.
fn test_upstream() -> UdpSocket {
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    u
}

/// Issue 22: one datagram sent to a udp-proxy with the source address of
/// its upstream, a UDP echo of a second netd (so not one of this netd's
/// own addresses), started a loop: the proxy forwarded it to the echo, sent
/// the echo's answer "back" to the echo, whose echo came to the proxy as
/// the same client again, forever (19k datagrams/s). Now a datagram from
/// the upstream's own address is dropped at once and counted, and the echo
/// never sees it; real clients are still served.
#[test]
fn udp_proxy_loop_through_a_second_netds_echo_ends_at_once() {
    let other = Netd::start("");
    // No rate limit on the echo: on the old code the loop ran at full speed.
    let e = start_udp(&other, "e", &["--rate-limit", "off"]);
    let netd = Netd::start("");
    let p = start_udp_proxy(&netd, "p", e, &[]);

    spoof_udp(v4(e), v4(p), b"loop?");
    wait_until("the spoofed datagram counted as a loop source", || {
        proxy_counter(&netd, "p", "own_source_drops") == 1
    });

    // A real client goes through to the echo and back...
    let c = udp_client(p);
    c.send(b"real").unwrap();
    let mut buf = [0u8; 64];
    let n = c.recv(&mut buf).expect("an answer through the proxy");
    assert_eq!(&buf[..n], b"real");
    // ...and is all the echo ever saw: the spoofed datagram was never
    // forwarded, so nothing came back to loop.
    assert_eq!(counter(&other, "e", "datagrams_in"), 1);
    assert_eq!(counter(&netd, "p", "datagrams_in"), 2);
    assert_eq!(counter(&netd, "p", "datagrams_out"), 1);
    assert_eq!(proxy_counter(&netd, "p", "clients_total"), 1);
}

/// Issue 22: clients on source ports 7, 19 and 53 got answers through a
/// udp-proxy (a spoofed one makes a loop with a real echo, chargen or DNS
/// server). Now they are dropped and counted, as by the UDP echo, with the
/// same option to allow ports below 1024 other than the reflectors.
#[test]
fn udp_proxy_drops_reflector_and_privileged_source_ports() {
    let port = crate::common::free_tcp_port();
    let netd = Netd::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let u = test_upstream();
    let up = u.local_addr().unwrap();
    let p = start_udp_proxy(&netd, "p", up, &[]);
    let q = start_udp_proxy(&netd, "q", up, &["--allow-privileged-sources"]);
    // On 127.0.0.22, so as not to compete for these ports with other tests.
    let low: Vec<UdpSocket> = [7u16, 19, 53]
        .iter()
        .map(|port| {
            let s = UdpSocket::bind(("127.0.0.22", *port))
                .unwrap_or_else(|e| panic!("bind 127.0.0.22:{port} (needs root): {e}"));
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    for s in &low {
        let port = s.local_addr().unwrap().port();
        s.send_to(format!("to p from {port}").as_bytes(), p)
            .unwrap();
        s.send_to(format!("to q from {port}").as_bytes(), q)
            .unwrap();
    }
    let ordinary = UdpSocket::bind("127.0.0.22:0").unwrap();
    ordinary
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    ordinary.send_to(b"ordinary", p).unwrap();

    wait_until("the reflector drops counted", || {
        proxy_counter(&netd, "p", "reflector_source_drops") == 3
            && proxy_counter(&netd, "q", "reflector_source_drops") == 2
    });
    // What reached the upstream: q's client on port 53 and the ordinary
    // one (in either order), nothing else.
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    for _ in 0..2 {
        let (n, from) = u.recv_from(&mut buf).expect("a forwarded datagram");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        // Answer it: the answer goes to that client only.
        u.send_to(b"answer", from).unwrap();
    }
    got.sort();
    assert_eq!(got, ["ordinary", "to q from 53"]);
    let n = ordinary
        .recv(&mut buf)
        .expect("the ordinary client's answer");
    assert_eq!(&buf[..n], b"answer");
    wait_until("q's answer to port 53 sent", || {
        counter(&netd, "q", "datagrams_out") == 1
    });
    // Ports 7 and 19 got nothing from either proxy, and 53 only from q.
    let mut answered = Vec::new();
    for s in &low {
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            answered.push((s.local_addr().unwrap().port(), from));
        }
    }
    assert_eq!(answered, [(53, q)]);
    assert_eq!(counter(&netd, "p", "datagrams_in"), 4);
    assert_eq!(counter(&netd, "p", "datagrams_out"), 1);
    u.set_nonblocking(true).unwrap();
    assert!(u.recv(&mut buf).is_err(), "more reached the upstream");

    // Shown and exported as the UDP echo's drops are, in the same family.
    let table = netd.netctl_ok(&["status", "p"]);
    assert!(
        table.contains("dropped:     0 own source, 3 reflector source"),
        "{table}"
    );
    let mut m = TcpStream::connect(("127.0.0.1", port)).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    assert!(
        text.contains(
            "netd_udp_echo_drops_total{listener=\"p\",kind=\"udp-proxy\",reason=\"reflector_source\"} 3"
        ),
        "{text}"
    );
}

/// Issue 22: one sender cycling its source port took a udp-proxy's whole
/// table (and 18,600 descriptors). Now one source IP has at most
/// `--max-clients-per-source` clients; the rest are dropped and counted,
/// and other sources are still served.
#[test]
fn udp_proxy_caps_clients_per_source_ip() {
    let netd = Netd::start("");
    let u = test_upstream();
    let p = start_udp_proxy(
        &netd,
        "p",
        u.local_addr().unwrap(),
        &["--max-clients-per-source", "3"],
    );
    let one_ip: Vec<UdpSocket> = (0..5)
        .map(|_| UdpSocket::bind("127.0.0.25:0").unwrap())
        .collect();
    for s in &one_ip {
        s.send_to(b"spray", p).unwrap();
    }
    wait_until("two clients refused", || {
        proxy_counter(&netd, "p", "source_clients_refused") == 2
    });
    let other = UdpSocket::bind("127.0.0.26:0").unwrap();
    other.send_to(b"other", p).unwrap();
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    for _ in 0..4 {
        let n = u.recv(&mut buf).expect("a forwarded datagram");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got.sort();
    assert_eq!(got, ["other", "spray", "spray", "spray"]);
    assert_eq!(proxy_counter(&netd, "p", "clients_active"), 4);
    let spec = netd.netctl_json(&["status", "p"]);
    assert_eq!(spec["spec"]["max_clients_per_source"], 3, "{spec}");
}

/// Issue 22 (low): after an update that kept a udp-echo's address, the
/// address stayed in netd's own-address set when the listener stopped,
/// so a later client on that address was dropped as "own source".
#[test]
fn a_stopped_listeners_address_is_no_longer_own() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "udp-echo", "a", "--listen", "127.0.0.23:0"]);
    let a = bound_addr(&netd, "a");
    netd.netctl_ok(&["update", "a", "--prefix", "A:"]);
    assert_eq!(echo_from("127.0.0.23", a, b"x"), b"A:x");
    netd.netctl_ok(&["stop", "a"]);
    let b = start_udp(&netd, "b", &[]);
    // A client on the stopped listener's address is an ordinary client.
    let c = UdpSocket::bind(a).expect("the stopped listener's port is free");
    c.connect(b).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let n = c
        .recv(&mut buf)
        .expect("b answers the stopped listener's address");
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(udp_counter(&netd, "b", "own_source_drops"), 0);
}
