//! SO_REUSEPORT socket groups, against the real binary: a TCP proxy binds
//! one listening socket per per-core worker (one with
//! `NETD_REUSEPORT=off`), serves through all of them with exact counters,
//! keeps the group across an update in place and rebinds all of it on a
//! restart; and the clash rules are as without groups: netd refuses a
//! second listener on the address, a foreign process of another user
//! cannot join the group, and a foreign socket already there gives
//! "already in use". The hand-over of a group (`--upgrade`, the fd store)
//! is tested in `upgrade.rs`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{Netd, TestUpstream, bound_addr, break_listening_socket, wait_until};

/// How many sockets a proxy's group has here: one per core (netd runs a
/// worker per core), one on a single core.
pub fn group_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 { 1 } else { cores }
}

/// The inodes of the TCP sockets listening on `port` (IPv4, any address),
/// from /proc/net/tcp.
pub fn listening_inodes(port: u16) -> BTreeSet<u64> {
    let port_hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1].ends_with(&port_hex) && f[3] == "0A")
        .map(|f| f[9].parse().unwrap())
        .collect()
}

/// The socket inodes process `pid` holds open.
pub fn socket_inodes_of(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

fn start_proxy(netd: &Netd, name: &str, listen: &str, upstream: SocketAddr) -> SocketAddr {
    netd.netctl_ok(&[
        "start",
        "proxy",
        name,
        "--listen",
        listen,
        "--upstream",
        &upstream.to_string(),
    ]);
    bound_addr(netd, name)
}

fn round_trip(addr: SocketAddr, msg: &str) -> String {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(msg.as_bytes()).unwrap();
    let mut got = vec![0u8; msg.len() + 4];
    c.read_exact(&mut got).unwrap();
    String::from_utf8(got).unwrap()
}

/// Bind a TCP socket with SO_REUSEPORT at `addr` and listen, on a thread
/// whose credentials are those of uid/gid 65534 (a raw setresuid changes
/// the calling thread only; the thread then ends).
fn bind_as_nobody(addr: SocketAddr) -> std::io::Result<()> {
    std::thread::spawn(move || {
        // SAFETY: raw syscalls changing this thread's own credentials.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534),
                0,
                "setresgid: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534),
                0,
                "setresuid: {}",
                std::io::Error::last_os_error()
            );
        }
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.listen(8)
    })
    .join()
    .unwrap()
}

#[test]
fn a_proxy_listens_on_a_socket_per_worker_and_keeps_the_clash_rules() {
    let n = group_size();
    let up = TestUpstream::echo(b"up: ");
    let netd = Netd::start("");
    let p = start_proxy(&netd, "p", "127.0.0.1:0", up.addr);
    let group = listening_inodes(p.port());
    assert_eq!(group.len(), n, "sockets listening on {p}");
    assert!(group.is_subset(&socket_inodes_of(netd.pid())));

    // 200 connections from as many source ports, 8 at a time: every one
    // is proxied, and counted once.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let msg = format!("c{t}-{i}\n");
                    assert_eq!(round_trip(p, &msg), format!("up: {msg}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_until("the connections to close", || {
        netd.netctl_json(&["status", "p"])["stats"]["connections_active"] == 0
    });
    let stats = netd.netctl_json(&["status", "p"])["stats"].clone();
    assert_eq!(stats["connections_total"], 200, "{stats}");
    assert_eq!(up.accepted(), 200);

    // netd refuses a second listener there, a group or not, on the same
    // address or the wildcard, though the kernel would let a second group
    // of netd's join.
    for (kind, listen) in [
        ("proxy", p.to_string()),
        ("proxy", format!("0.0.0.0:{}", p.port())),
        ("tcp-echo", p.to_string()),
    ] {
        let mut args = vec!["start", kind, "q", "--listen", &listen];
        let upstream = up.addr.to_string();
        if kind == "proxy" {
            args.extend(["--upstream", &upstream]);
        }
        let err = netd.netctl_err(&args);
        assert!(err.contains("already in use"), "{kind} on {listen}: {err}");
    }
    // Nor may another listener move there by an update.
    let q = start_proxy(&netd, "q", "127.0.0.1:0", up.addr);
    let err = netd.netctl_err(&["update", "q", "--listen", &p.to_string()]);
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(bound_addr(&netd, "q"), q);
    assert_eq!(listening_inodes(p.port()), group);

    // A process of another user cannot join the group.
    let joined = bind_as_nobody(p);
    assert_eq!(
        joined.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::AddrInUse),
        "{joined:?}"
    );
    assert_eq!(listening_inodes(p.port()), group);

    // A foreign socket already on an address (without SO_REUSEPORT) keeps
    // it: the proxy's group cannot bind there.
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = foreign.local_addr().unwrap();
    let err = netd.netctl_err(&[
        "start",
        "proxy",
        "r",
        "--listen",
        &taken.to_string(),
        "--upstream",
        &up.addr.to_string(),
    ]);
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(listening_inodes(taken.port()).len(), 1);

    // NETD_REUSEPORT=off: one socket, shared by the workers.
    let off = Netd::start_with_env("", &[("NETD_REUSEPORT", "off")]);
    let q = start_proxy(&off, "q", "127.0.0.1:0", up.addr);
    assert_eq!(listening_inodes(q.port()).len(), 1);
    assert_eq!(round_trip(q, "off\n"), "up: off\n");
}

#[test]
fn a_group_is_kept_by_an_update_in_place_and_rebound_whole_on_a_restart() {
    let n = group_size();
    let up = TestUpstream::echo(b"up: ");
    let netd = Netd::start("");
    let p = start_proxy(&netd, "p", "127.0.0.1:0", up.addr);
    let group = listening_inodes(p.port());
    assert_eq!(group.len(), n);

    // In place: the same sockets, all of them.
    let out = netd.netctl_ok(&["update", "p", "--idle-timeout", "10s"]);
    assert!(out.contains("in place"), "{out}");
    assert_eq!(listening_inodes(p.port()), group);
    assert_eq!(round_trip(p, "a\n"), "up: a\n");

    // One member fails: the listener restarts on a new group of n at the
    // same address.
    break_listening_socket(netd.pid(), p);
    wait_until("the restart", || {
        netd.netctl_json(&["status", "p"])["restarts"] == 1
    });
    wait_until("a whole new group", || {
        let now = listening_inodes(p.port());
        now.len() == n && now.is_disjoint(&group)
    });
    assert_eq!(bound_addr(&netd, "p"), p);
    assert_eq!(round_trip(p, "b\n"), "up: b\n");
}

/// The http-proxy runs an accept loop per worker too, so it gets a group
/// as well.
#[test]
fn an_http_proxy_listens_on_a_socket_per_worker() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "http", "h", "--listen", "127.0.0.1:0"]);
    let h = bound_addr(&netd, "h");
    netd.netctl_ok(&[
        "start",
        "http-proxy",
        "hp",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &h.to_string(),
    ]);
    let hp = bound_addr(&netd, "hp");
    assert_eq!(listening_inodes(hp.port()).len(), group_size());
    assert_eq!(listening_inodes(h.port()).len(), 1, "the http kind has one");
    for i in 0..20 {
        let mut c = TcpStream::connect(hp).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "GET /r{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}
