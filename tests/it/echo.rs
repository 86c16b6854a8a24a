//! TCP and UDP echo through the real daemon: round trips with and without a
//! prefix, concurrency, a 1 MiB stream, limits, idle timeout, datagram size
//! edges and exact counters.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::{Netd, bound_addr, wait_until};

fn start_tcp(netd: &Netd, name: &str, extra: &[&str]) -> SocketAddr {
    let mut args = vec!["start", "tcp-echo", name, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

fn start_udp(netd: &Netd, name: &str, extra: &[&str]) -> SocketAddr {
    let mut args = vec!["start", "udp-echo", name, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn udp_client(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn tcp_echo_with_and_without_prefix() {
    let netd = Netd::start("");
    let plain = start_tcp(&netd, "plain", &[]);
    let pre = start_tcp(&netd, "pre", &["--prefix", "Echo: "]);

    let mut c = connect(plain);
    for msg in [&b"hello\n"[..], b"\x00\xffbinary", b"x"] {
        c.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }

    let mut c = connect(pre);
    c.write_all(b"hi\n").unwrap();
    let mut got = vec![0u8; 9];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, b"Echo: hi\n");
    // Client half-closes: the server finishes and closes too.
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn tcp_echo_many_concurrent_clients() {
    let netd = Netd::start("");
    let addr = start_tcp(&netd, "many", &["--prefix", "> "]);
    const CLIENTS: usize = 64;
    let conns: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    wait_until("all clients active", || {
        netd.netctl_json(&["status", "many"])["stats"]["connections_active"] == CLIENTS as u64
    });
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                for round in 0..5 {
                    let msg = format!("client {i} round {round}\n");
                    c.write_all(msg.as_bytes()).unwrap();
                    let mut got = vec![0u8; msg.len() + 2];
                    c.read_exact(&mut got).unwrap();
                    assert_eq!(got, format!("> {msg}").as_bytes());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    wait_until("all clients gone", || {
        netd.netctl_json(&["status", "many"])["stats"]["connections_active"] == 0
    });
    let stats = &netd.netctl_json(&["status", "many"])["stats"];
    assert_eq!(stats["connections_total"], CLIENTS as u64);
    assert_eq!(stats["connections_refused"], 0);
}

#[test]
fn tcp_echo_one_mebibyte_byte_exact() {
    let netd = Netd::start("");
    let addr = start_tcp(&netd, "big", &[]);
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut c = connect(addr);
    let mut writer = c.try_clone().unwrap();
    let to_send = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    w.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed stream differs from what was sent");

    wait_until("connection closed", || {
        netd.netctl_json(&["status", "big"])["stats"]["connections_active"] == 0
    });
    let stats = &netd.netctl_json(&["status", "big"])["stats"];
    assert_eq!(stats["bytes_in"], data.len() as u64);
    assert_eq!(stats["bytes_out"], data.len() as u64);
}

#[test]
fn tcp_max_connections_refuses_the_excess() {
    let netd = Netd::start("");
    let addr = start_tcp(&netd, "lim", &["--max-connections", "2"]);
    let mut a = connect(addr);
    let mut b = connect(addr);
    for c in [&mut a, &mut b] {
        c.write_all(b"k").unwrap();
        let mut x = [0u8; 1];
        c.read_exact(&mut x).unwrap();
    }
    // The third is accepted by the kernel, then closed by netd without data.
    let mut third = connect(addr);
    let _ = third.write_all(b"nope");
    let mut buf = [0u8; 16];
    let n = third.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a connection over the limit must be closed");
    wait_until("refusal counted", || {
        netd.netctl_json(&["status", "lim"])["stats"]["connections_refused"] == 1
    });

    // Once a slot frees up, a new client is served.
    drop(a);
    wait_until("slot freed", || {
        netd.netctl_json(&["status", "lim"])["stats"]["connections_active"] == 1
    });
    let mut d = connect(addr);
    d.write_all(b"ok").unwrap();
    let mut x = [0u8; 2];
    d.read_exact(&mut x).unwrap();
    assert_eq!(&x, b"ok");
}

#[test]
fn tcp_idle_timeout_closes_silent_clients() {
    let netd = Netd::start("");
    let addr = start_tcp(&netd, "idle", &["--idle-timeout", "300ms"]);
    let mut c = connect(addr);
    c.write_all(b"a").unwrap();
    let mut x = [0u8; 1];
    c.read_exact(&mut x).unwrap();
    let t = Instant::now();
    let n = c.read(&mut x).unwrap();
    assert_eq!(n, 0, "netd must close the idle connection");
    assert!(t.elapsed() < Duration::from_secs(10));
    wait_until("connection gone", || {
        netd.netctl_json(&["status", "idle"])["stats"]["connections_active"] == 0
    });
}

#[test]
fn udp_echo_with_and_without_prefix() {
    let netd = Netd::start("");
    let plain = udp_client(start_udp(&netd, "plain", &[]));
    let pre = udp_client(start_udp(&netd, "pre", &["--prefix", "ACK: "]));
    let mut buf = vec![0u8; 70_000];

    plain.send(b"ping").unwrap();
    let n = plain.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    pre.send(b"ping").unwrap();
    let n = pre.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ACK: ping");
    pre.send(b"").unwrap();
    let n = pre.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ACK: ");
}

#[test]
fn udp_echo_large_datagrams_and_truncation() {
    let netd = Netd::start("");
    let plain = udp_client(start_udp(&netd, "plain", &[]));
    let pre = udp_client(start_udp(&netd, "pre", &["--prefix", "ACK: "]));
    let mut buf = vec![0u8; 70_000];

    // The largest datagram IPv4 carries comes back whole.
    let big: Vec<u8> = (0..65_507u32).map(|i| i as u8).collect();
    plain.send(&big).unwrap();
    let n = plain.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &big[..]);

    // With a prefix it no longer fits: the reply is cut at the limit, and the
    // service carries on.
    pre.send(&big).unwrap();
    let n = pre.recv(&mut buf).unwrap();
    assert_eq!(n, 65_507);
    assert_eq!(&buf[..5], b"ACK: ");
    assert_eq!(&buf[5..n], &big[..n - 5]);
    pre.send(b"after").unwrap();
    let n = pre.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ACK: after");
}

#[test]
fn counters_are_exact() {
    let netd = Netd::start("");
    let tcp = start_tcp(&netd, "t", &["--prefix", "P"]);
    let udp = start_udp(&netd, "u", &["--prefix", "AB"]);
    const CONNS: u64 = 7;
    const BYTES: u64 = 1000;
    for _ in 0..CONNS {
        let mut c = connect(tcp);
        c.write_all(&[b'z'; BYTES as usize]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert!(got.len() as u64 > BYTES);
    }
    const DGRAMS: u64 = 25;
    let u = udp_client(udp);
    let mut buf = [0u8; 64];
    for i in 0..DGRAMS {
        u.send(format!("{i:03}").as_bytes()).unwrap();
        let n = u.recv(&mut buf).unwrap();
        assert_eq!(n, 5);
    }
    wait_until("tcp connections closed", || {
        netd.netctl_json(&["status", "t"])["stats"]["connections_active"] == 0
    });
    let t = &netd.netctl_json(&["status", "t"])["stats"];
    assert_eq!(t["connections_total"], CONNS);
    assert_eq!(t["bytes_in"], CONNS * BYTES);
    let out = t["bytes_out"].as_u64().unwrap();
    // Each read chunk gets one prefix byte: at least one chunk per connection.
    assert!(
        (CONNS * (BYTES + 1)..=CONNS * 2 * BYTES).contains(&out),
        "bytes_out {out}"
    );
    // A reply is counted once sent: the client may have it first.
    wait_until("the udp replies counted", || {
        netd.netctl_json(&["status", "u"])["stats"]["datagrams_out"] == DGRAMS
    });
    let u = &netd.netctl_json(&["status", "u"])["stats"];
    assert_eq!(u["datagrams_in"], DGRAMS);
    assert_eq!(u["datagrams_out"], DGRAMS);
    assert_eq!(u["bytes_in"], DGRAMS * 3);
    assert_eq!(u["bytes_out"], DGRAMS * 5);
    assert_eq!(u["errors"], 0);
}
