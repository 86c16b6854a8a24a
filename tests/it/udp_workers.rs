//! udp-echo and udp-proxy on SO_REUSEPORT groups (issue 29): one socket
//! per per-core worker at the listen address, each with its own receive
//! loop, against the real binary. Many clients (each a source port, so the
//! kernel's 4-tuple hash spreads them over the sockets) are all answered,
//! from the listen address and in order, with exact counters summed over
//! the loops; the listener-wide limits (`max_clients`,
//! `max_clients_per_source`, the per-source rate limit) and the source
//! guard hold across the loops; an update in place and `netd --upgrade`
//! keep every socket of the group serving; `NETD_REUSEPORT=off` gives one
//! socket.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::spoof::{spoof_udp, v4};
use crate::common::{Netd, bound_addr, wait_until};
use crate::reuseport::{group_size, socket_inodes_of};

/// Clients per round: enough that a group of two leaves no socket without
/// some (the odds are 2^-63).
const CLIENTS: usize = 64;
/// Datagrams each client sends per round.
const PER_CLIENT: usize = 10;

/// The names a group's sockets have in the hand-over and the fd store:
/// `name`, `name@1`, ...
pub fn group_names(name: &str) -> impl Iterator<Item = String> + '_ {
    (0..group_size()).map(move |i| match i {
        0 => name.to_string(),
        i => format!("{name}@{i}"),
    })
}

/// The inodes of the IPv4 UDP sockets bound at `port`, from /proc/net/udp.
fn udp_inodes(port: u16) -> BTreeSet<u64> {
    let port_hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1].ends_with(&port_hex))
        .map(|f| f[9].parse().unwrap())
        .collect()
}

/// The group at `addr`: `want` sockets, all held by `netd`.
fn assert_group(netd: &Netd, addr: SocketAddr, want: usize) -> BTreeSet<u64> {
    let group = udp_inodes(addr.port());
    assert_eq!(group.len(), want, "UDP sockets bound at {addr}: {group:?}");
    let held = socket_inodes_of(netd.pid());
    assert!(group.is_subset(&held), "{group:?} not all netd's");
    group
}

fn totals(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["stats", name])["listeners"][0]["totals"].clone()
}

fn total(netd: &Netd, name: &str, key: &str) -> u64 {
    totals(netd, name)[key].as_u64().unwrap_or(0)
}

fn detail(netd: &Netd, name: &str, kind: &str, key: &str) -> u64 {
    totals(netd, name)[kind][key].as_u64().unwrap_or(0)
}

fn bind_client(ip: &str, port: u16) -> UdpSocket {
    let s = UdpSocket::bind((ip, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// `CLIENTS` clients from their own ports, each sending `PER_CLIENT`
/// numbered datagrams to `to` and reading the answers: every one answered,
/// from `to` itself, in order, as `prefix` + the datagram.
fn round(to: SocketAddr, prefix: &str, tag: &str) {
    let clients: Vec<UdpSocket> = (0..CLIENTS).map(|_| bind_client("127.0.0.1", 0)).collect();
    let mut buf = [0u8; 512];
    // 8 clients at a time: 80 datagrams in flight fit any receive buffer.
    for (chunk, group) in clients.chunks(8).enumerate() {
        for (i, s) in group.iter().enumerate() {
            for k in 0..PER_CLIENT {
                let c = chunk * 8 + i;
                s.send_to(format!("{tag}-{c}-{k}").as_bytes(), to).unwrap();
            }
        }
        for (i, s) in group.iter().enumerate() {
            let c = chunk * 8 + i;
            read_answers(s, c, to, prefix, tag, &mut buf);
        }
    }
}

/// Client `c`'s `PER_CLIENT` answers, in order, from `to`.
fn read_answers(s: &UdpSocket, c: usize, to: SocketAddr, prefix: &str, tag: &str, buf: &mut [u8]) {
    for k in 0..PER_CLIENT {
        let (n, from) = s
            .recv_from(buf)
            .unwrap_or_else(|e| panic!("client {c}, answer {k} from {to}: {e}"));
        assert_eq!(from, to, "client {c}: answered from another address");
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            format!("{prefix}{tag}-{c}-{k}"),
            "client {c}: answers out of order or wrong"
        );
    }
}

/// `datagrams_in` and `datagrams_out` of `name` reach exactly `n` (and
/// stay there).
fn counters_exact(netd: &Netd, name: &str, n: u64) {
    wait_until("the counters to add up", || {
        total(netd, name, "datagrams_in") >= n && total(netd, name, "datagrams_out") >= n
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        total(netd, name, "datagrams_in"),
        n,
        "{}",
        totals(netd, name)
    );
    assert_eq!(
        total(netd, name, "datagrams_out"),
        n,
        "{}",
        totals(netd, name)
    );
}

const CONFIG: &str = r#"
shutdown_grace = "60s"

[[listener]]
name = "up"
kind = "udp-echo"
listen = "127.0.0.1:0"
prefix = "up: "
rate_limit = "off"

[[listener]]
name = "e"
kind = "udp-echo"
listen = "127.0.0.1:0"
prefix = "e: "
rate_limit = "off"
"#;

/// Start udp-proxy `name` to the config's echo `up`.
fn start_proxy(netd: &Netd, name: &str, extra: &[&str]) -> SocketAddr {
    crate::common::start_udp_proxy(netd, name, bound_addr(netd, "up"), extra)
}

#[test]
fn echo_and_proxy_answer_every_client_from_a_socket_per_worker() {
    let n = group_size();
    let netd = Netd::start(CONFIG);
    let e = bound_addr(&netd, "e");
    let p = start_proxy(&netd, "p", &[]);
    assert_group(&netd, e, n);
    assert_group(&netd, p, n);

    round(e, "e: ", "a");
    counters_exact(&netd, "e", (CLIENTS * PER_CLIENT) as u64);
    round(p, "up: ", "b");
    counters_exact(&netd, "p", (CLIENTS * PER_CLIENT) as u64);
    let clients = detail(&netd, "p", "udp_proxy", "clients_total");
    assert_eq!(clients, CLIENTS as u64, "{}", totals(&netd, "p"));
    assert_eq!(
        detail(&netd, "p", "udp_proxy", "clients_active"),
        CLIENTS as u64
    );

    // An update in place keeps the group, every socket of it serving.
    let before_e = udp_inodes(e.port());
    let before_p = udp_inodes(p.port());
    netd.netctl_ok(&["update", "e", "--prefix", "u: "]);
    netd.netctl_ok(&["update", "p", "--idle-timeout", "30s"]);
    assert_eq!(assert_group(&netd, e, n), before_e, "the echo's group");
    assert_eq!(assert_group(&netd, p, n), before_p, "the proxy's group");
    round(e, "u: ", "c");
    round(p, "up: ", "d");
    counters_exact(&netd, "e", (2 * CLIENTS * PER_CLIENT) as u64);
    counters_exact(&netd, "p", (2 * CLIENTS * PER_CLIENT) as u64);
}

/// A burst of one datagram from each of `count` new clients at `ip` to
/// `to`; how many of them are answered, read until `want` are (or the
/// tests' deadline). More than `want` shows here if they came in the same
/// pass, else in the exact counters the callers check next.
fn burst(ip: &str, count: usize, to: SocketAddr, want: usize) -> usize {
    let clients: Vec<UdpSocket> = (0..count).map(|_| bind_client(ip, 0)).collect();
    for s in &clients {
        s.send_to(b"x", to).unwrap();
        s.set_nonblocking(true).unwrap();
    }
    let mut answered = vec![false; count];
    let end = Instant::now() + crate::common::DEADLINE;
    let mut buf = [0u8; 64];
    loop {
        for (i, s) in clients.iter().enumerate() {
            if s.recv_from(&mut buf).is_ok() {
                answered[i] = true;
            }
        }
        let n = answered.iter().filter(|a| **a).count();
        if n >= want || Instant::now() >= end {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn limits_hold_across_workers() {
    let netd = Netd::start(CONFIG);
    // max_clients 10, 40 clients: 10 admitted, 30 refused, whichever
    // socket each came to.
    let p = start_proxy(&netd, "p", &["--max-clients", "10"]);
    assert_group(&netd, p, group_size());
    assert_eq!(burst("127.0.0.1", 40, p, 10), 10);
    wait_until("40 clients counted", || {
        detail(&netd, "p", "udp_proxy", "clients_total")
            + detail(&netd, "p", "udp_proxy", "clients_refused")
            >= 40
    });
    assert_eq!(detail(&netd, "p", "udp_proxy", "clients_total"), 10);
    assert_eq!(detail(&netd, "p", "udp_proxy", "clients_active"), 10);
    assert_eq!(detail(&netd, "p", "udp_proxy", "clients_refused"), 30);

    // 5 clients per source IP, 20 from one: 5 admitted, 15 refused.
    let q = start_proxy(&netd, "q", &["--max-clients-per-source", "5"]);
    assert_eq!(burst("127.0.0.3", 20, q, 5), 5);
    wait_until("20 clients counted", || {
        detail(&netd, "q", "udp_proxy", "clients_total")
            + detail(&netd, "q", "udp_proxy", "source_clients_refused")
            >= 20
    });
    assert_eq!(detail(&netd, "q", "udp_proxy", "clients_total"), 5);
    assert_eq!(
        detail(&netd, "q", "udp_proxy", "source_clients_refused"),
        15
    );

    // The echo's per-source rate limit, a burst of 10 per hour: 10 of 40
    // ports of one IP are answered.
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "r",
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "10/h",
    ]);
    let r = bound_addr(&netd, "r");
    assert_group(&netd, r, group_size());
    assert_eq!(burst("127.0.0.4", 40, r, 10), 10);
    wait_until("40 datagrams counted", || {
        total(&netd, "r", "datagrams_in") >= 40
    });
    assert_eq!(detail(&netd, "r", "udp_echo", "rate_limited"), 30);
    assert_eq!(total(&netd, "r", "datagrams_out"), 10);
}

/// The source guard is in every loop: datagrams from 40 reflector ports
/// and from 12 of netd's own listening addresses (52 4-tuples, spread over
/// the sockets) are all dropped and counted, none forwarded or answered.
#[test]
fn the_source_guard_drops_in_every_worker() {
    let netd = Netd::start(CONFIG);
    let p = start_proxy(&netd, "p", &[]);
    let e = bound_addr(&netd, "e");
    assert_group(&netd, p, group_size());
    let reflectors: Vec<UdpSocket> = (700..740)
        .map(|port| bind_client("127.0.0.44", port))
        .collect();
    for s in &reflectors {
        s.send_to(b"r", p).unwrap();
        s.send_to(b"r", e).unwrap();
    }
    let own: Vec<SocketAddr> = (0..12)
        .map(|i| {
            let name = format!("o{i}");
            netd.netctl_ok(&["start", "udp-echo", &name, "--listen", "127.0.0.1:0"]);
            bound_addr(&netd, &name)
        })
        .collect();
    for a in &own {
        spoof_udp(v4(*a), v4(p), b"own");
        spoof_udp(v4(*a), v4(e), b"own");
    }
    wait_until("every drop counted", || {
        detail(&netd, "p", "udp_proxy", "reflector_source_drops") == 40
            && detail(&netd, "p", "udp_proxy", "own_source_drops") == 12
            && detail(&netd, "e", "udp_echo", "reflector_source_drops") == 40
            && detail(&netd, "e", "udp_echo", "own_source_drops") == 12
    });
    assert_eq!(detail(&netd, "p", "udp_proxy", "clients_total"), 0);
    assert_eq!(total(&netd, "p", "datagrams_out"), 0);
    assert_eq!(total(&netd, "e", "datagrams_out"), 0);
    assert_eq!(total(&netd, "up", "datagrams_in"), 0);
    for a in &own {
        let name = format!("o{}", own.iter().position(|b| b == a).unwrap());
        assert_eq!(
            total(&netd, &name, "datagrams_in"),
            0,
            "{name} got an answer"
        );
    }
}

/// `netd --upgrade` hands every socket of each group to the new process,
/// which serves through all of them.
#[test]
fn upgrade_carries_every_worker_socket() {
    let n = group_size();
    let mut old = Netd::start(&format!(
        "{CONFIG}\n[[listener]]\nname = \"p\"\nkind = \"udp-proxy\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1\"\n"
    ));
    // The proxy's upstream: the echo `up`, set now that its port is known.
    let up = bound_addr(&old, "up").to_string();
    old.netctl_ok(&["update", "p", "--upstream", &up]);
    let e = bound_addr(&old, "e");
    let p = bound_addr(&old, "p");
    let group_e = assert_group(&old, e, n);
    let group_p = assert_group(&old, p, n);
    round(e, "e: ", "a");
    round(p, "up: ", "b");

    let new = old.upgrade();
    wait_until("the old netd to hand over", || {
        old.log().contains("has taken over")
    });
    let status = old.wait_exit();
    assert!(status.success(), "old netd: {status}\n{}", old.log());
    assert_eq!(bound_addr(&new, "e"), e);
    assert_eq!(bound_addr(&new, "p"), p);
    assert_eq!(assert_group(&new, e, n), group_e, "the echo's group");
    assert_eq!(assert_group(&new, p, n), group_p, "the proxy's group");
    round(e, "e: ", "c");
    round(p, "up: ", "d");
    counters_exact(&new, "e", (CLIENTS * PER_CLIENT) as u64);
}

/// `NETD_REUSEPORT=off`: one socket each, serving every client, where the
/// same listeners of a netd without it have a group.
#[test]
fn reuseport_off_gives_one_socket() {
    let on = Netd::start(CONFIG);
    let off = Netd::start_with_env(CONFIG, &[("NETD_REUSEPORT", "off")]);
    for (netd, want) in [(&on, group_size()), (&off, 1)] {
        let e = bound_addr(netd, "e");
        let p = start_proxy(netd, "p", &[]);
        assert_group(netd, e, want);
        assert_group(netd, p, want);
        round(e, "e: ", "a");
        round(p, "up: ", "b");
        counters_exact(netd, "e", (CLIENTS * PER_CLIENT) as u64);
        counters_exact(netd, "p", (CLIENTS * PER_CLIENT) as u64);
    }
}
