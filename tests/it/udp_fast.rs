//! The UDP fast path (issue 29): udp-echo and udp-proxy read datagrams in
//! batches (recvmmsg), send in batches (sendmmsg), take UDP GRO-coalesced
//! datagrams apart and send same-size replies as one UDP GSO message; with
//! `NETD_UDP_OFFLOAD=off` the offloads are off and the same traffic is
//! carried datagram by datagram. Bursts are sent with one sendmmsg or one
//! GSO send; every datagram must come back, in order per client, with
//! exact counters, and the source guard still counts per datagram.
#![allow(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{NetNs, Netd, bound_addr, start_udp_proxy, wait_until};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// A client socket on 127.0.0.1 (port `port`, 0 for any) connected to
/// `to`, that takes GRO-coalesced datagrams (so a GSO reply shows as one).
fn gro_socket(port: u16, to: Option<SocketAddr>) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    // A privileged port on an address of this test's own (other tests
    // and other runs use these ports too).
    let ip = if port == 0 {
        [127, 0, 0, 1]
    } else {
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        [127, 29, (std::process::id() % 250) as u8 + 1, n]
    };
    s.bind(&SocketAddr::from((ip, port)).into()).unwrap();
    let s: UdpSocket = s.into();
    if let Some(to) = to {
        s.connect(to).unwrap();
    }
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a valid fd with a c_int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            4,
        )
    };
    assert_eq!(rc, 0, "UDP_GRO: {}", std::io::Error::last_os_error());
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// Send `payloads` on the connected `s` with one sendmmsg call.
fn send_burst(s: &UdpSocket, payloads: &[Vec<u8>]) {
    let mut iovs: Vec<libc::iovec> = payloads
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: all-zero is a valid mmsghdr; each points at its iovec, which
    // points at a live payload.
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: as above, for the duration of the call.
    let n = unsafe { libc::sendmmsg(s.as_raw_fd(), hdrs.as_mut_ptr(), hdrs.len() as _, 0) };
    assert_eq!(
        n as usize,
        payloads.len(),
        "sendmmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// Send `payloads` (all `seg` bytes long) on the connected `s` as one UDP
/// GSO message: the kernel cuts it into datagrams, or a GRO socket gets it
/// whole.
fn send_gso(s: &UdpSocket, payloads: &[Vec<u8>], seg: u16) {
    send_gso_to(s, payloads, seg, None);
}

fn send_gso_to(s: &UdpSocket, payloads: &[Vec<u8>], seg: u16, to: Option<SocketAddr>) {
    let data: Vec<u8> = payloads.concat();
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut ctrl = [0u64; 4];
    let to = to.map(socket2::SockAddr::from);
    // SAFETY: all-zero is a valid msghdr; the control buffer has room for
    // one cmsghdr and a u16; every pointer is live for the call.
    let n = unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        if let Some(to) = &to {
            m.msg_name = to.as_ptr() as *mut libc::c_void;
            m.msg_namelen = to.len();
        }
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        m.msg_control = ctrl.as_mut_ptr().cast();
        m.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
        libc::sendmsg(s.as_raw_fd(), &m, 0)
    };
    assert_eq!(
        n as usize,
        data.len(),
        "GSO send: {}",
        std::io::Error::last_os_error()
    );
}

/// What a GRO socket received: the datagrams, how many messages held more
/// than one (coalesced), and the source of the last one.
#[derive(Debug, Default)]
struct Got {
    datagrams: Vec<Vec<u8>>,
    coalesced: usize,
    from: Option<SocketAddr>,
}

/// Receive on `s` until `want` datagrams arrived or 5 s passed.
fn recv_all(s: &UdpSocket, want: usize) -> Got {
    let mut got = Got::default();
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.datagrams.len() < want && Instant::now() < deadline {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut ctrl = [0u64; 8];
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: all-zero is a valid msghdr; every pointer is live for
        // the call; the CMSG_* macros walk what the kernel wrote.
        let (n, seg) = unsafe {
            let mut m: libc::msghdr = std::mem::zeroed();
            m.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            m.msg_iov = &mut iov;
            m.msg_iovlen = 1;
            m.msg_control = ctrl.as_mut_ptr().cast();
            m.msg_controllen = std::mem::size_of_val(&ctrl) as _;
            let n = libc::recvmsg(s.as_raw_fd(), &mut m, 0);
            let mut seg = 0usize;
            let mut c = libc::CMSG_FIRSTHDR(&m);
            while n >= 0 && !c.is_null() {
                if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    seg =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>()) as usize;
                }
                c = libc::CMSG_NXTHDR(&m, c);
            }
            (n, seg)
        };
        if n < 0 {
            continue; // the read timeout; try again until the deadline
        }
        // SAFETY: the kernel wrote a sockaddr_in for this IPv4 socket.
        let sin = unsafe { &*(&name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        got.from = Some(SocketAddr::from((
            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            u16::from_be(sin.sin_port),
        )));
        let data = &buf[..n as usize];
        if seg > 0 && data.len() > seg {
            got.coalesced += 1;
            got.datagrams.extend(data.chunks(seg).map(<[u8]>::to_vec));
        } else {
            got.datagrams.push(data.to_vec());
        }
    }
    got
}

/// `n` datagrams of `size` bytes, each starting with `tag` and its number.
fn numbered(tag: u8, n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut d = vec![tag; size];
            d[1..9].copy_from_slice(&(i as u64).to_be_bytes());
            d
        })
        .collect()
}

fn totals(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["stats", name])["listeners"][0]["totals"].clone()
}

fn total(netd: &Netd, name: &str, key: &str) -> u64 {
    totals(netd, name)[key].as_u64().unwrap_or(0)
}

/// Wait until `name`'s `datagrams_in` and `datagrams_out` are exactly
/// `inn` and `out`, and stay so.
fn counters_settle(netd: &Netd, name: &str, inn: u64, out: u64) {
    wait_until(&format!("{name}: {inn} datagrams in, {out} out"), || {
        total(netd, name, "datagrams_in") == inn && total(netd, name, "datagrams_out") == out
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        total(netd, name, "datagrams_in"),
        inn,
        "{}",
        totals(netd, name)
    );
    assert_eq!(
        total(netd, name, "datagrams_out"),
        out,
        "{}",
        totals(netd, name)
    );
}

/// A udp-echo answers a sendmmsg burst and a GSO burst whole, in order,
/// with exact counters; returns how many reply messages were coalesced.
fn echo_bursts(netd: &Netd) -> usize {
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "e",
        "--listen",
        "127.0.0.1:0",
        "--prefix",
        "R:",
        "--rate-limit",
        "off",
    ]);
    let addr = bound_addr(netd, "e");
    let a = gro_socket(0, Some(addr));
    let b = gro_socket(0, Some(addr));
    let burst_a = numbered(b'a', 64, 200);
    let burst_b = numbered(b'b', 40, 1000);
    send_burst(&a, &burst_a);
    send_gso(&b, &burst_b, 1000);
    let got_a = recv_all(&a, 64);
    let got_b = recv_all(&b, 40);
    let expect = |burst: &[Vec<u8>]| -> Vec<Vec<u8>> {
        burst
            .iter()
            .map(|d| [b"R:".as_slice(), d].concat())
            .collect()
    };
    assert_eq!(
        got_a.datagrams,
        expect(&burst_a),
        "client a: every reply, in order"
    );
    assert_eq!(
        got_b.datagrams,
        expect(&burst_b),
        "client b: every reply, in order"
    );
    assert_eq!(got_a.from, Some(addr));
    assert_eq!(got_b.from, Some(addr));
    counters_settle(netd, "e", 104, 104);
    let bytes_out = total(netd, "e", "bytes_out");
    assert_eq!(bytes_out, 64 * 202 + 40 * 1002);

    // A burst from a reflector port (chargen, 19) is dropped datagram by
    // datagram, even when it arrives coalesced.
    let chargen = gro_socket(19, Some(addr));
    send_gso(&chargen, &numbered(b'c', 10, 100), 100);
    wait_until("10 reflector drops", || {
        netd.netctl_json(&["status", "e"])["stats"]["udp_echo"]["reflector_source_drops"].as_u64()
            == Some(10)
    });
    counters_settle(netd, "e", 114, 104);
    got_a.coalesced + got_b.coalesced
}

#[test]
fn echo_batches_bursts_and_sends_same_size_replies_as_one_gso_message() {
    let netd = Netd::start("");
    let coalesced = echo_bursts(&netd);
    // The GSO burst arrived as one message (GRO) and its 40 replies went
    // out as GSO messages, which the client's GRO socket sees whole.
    assert!(coalesced >= 1, "no reply was sent as one GSO message");
    assert!(netd.log().contains("udp fast path"), "{}", netd.log());
}

#[test]
fn echo_without_offloads_carries_the_same_bursts_datagram_by_datagram() {
    let netd = Netd::start_with_env("", &[("NETD_UDP_OFFLOAD", "off")]);
    let coalesced = echo_bursts(&netd);
    assert_eq!(coalesced, 0, "a reply was coalesced with the offloads off");
    assert!(netd.log().contains("gro=false gso=false"), "{}", netd.log());
}

#[test]
fn echo_one_datagram_per_call_still_answers_everything() {
    let netd = Netd::start_with_env("", &[("NETD_UDP_BATCH", "1"), ("NETD_UDP_OFFLOAD", "off")]);
    assert_eq!(echo_bursts(&netd), 0);
    assert!(netd.log().contains("batch=1"), "{}", netd.log());
}

/// Through a udp-proxy: two clients' bursts (sendmmsg, GSO) reach a GRO
/// upstream in order per client, the upstream's GSO answers reach each
/// client from the proxy's listening address; returns the coalesced
/// messages seen at the upstream and at the clients.
fn proxy_bursts(netd: &Netd) -> (usize, usize) {
    let upstream = gro_socket(0, None);
    let addr = start_udp_proxy(netd, "p", upstream.local_addr().unwrap(), &[]);
    let a = gro_socket(0, Some(addr));
    let b = gro_socket(0, Some(addr));
    let burst_a = numbered(b'a', 50, 64);
    let burst_b = numbered(b'b', 30, 1400);
    send_burst(&a, &burst_a);
    // The upstream sees one socket per client: read a's burst first, so
    // each client's datagrams are checked on their own.
    let at_up_a = recv_all(&upstream, 50);
    assert_eq!(
        at_up_a.datagrams, burst_a,
        "client a's burst at the upstream"
    );
    let from_a = at_up_a.from.expect("a source");
    send_gso(&b, &burst_b, 1400);
    let at_up_b = recv_all(&upstream, 30);
    assert_eq!(
        at_up_b.datagrams, burst_b,
        "client b's burst at the upstream"
    );
    let from_b = at_up_b.from.expect("a source");
    assert_ne!(from_a, from_b, "each client has its own upstream socket");

    // The upstream answers each client's socket with one GSO burst.
    let reply_a = numbered(b'x', 50, 64);
    let reply_b = numbered(b'y', 30, 1400);
    send_gso_to(&upstream, &reply_a, 64, Some(from_a));
    send_gso_to(&upstream, &reply_b, 1400, Some(from_b));
    let got_a = recv_all(&a, 50);
    let got_b = recv_all(&b, 30);
    assert_eq!(got_a.datagrams, reply_a, "client a's replies, in order");
    assert_eq!(got_b.datagrams, reply_b, "client b's replies, in order");
    assert_eq!(
        got_a.from,
        Some(addr),
        "replies come from the listening address"
    );
    assert_eq!(got_b.from, Some(addr));
    counters_settle(netd, "p", 80, 80);
    assert_eq!(total(netd, "p", "bytes_in"), 50 * 64 + 30 * 1400);
    (
        at_up_a.coalesced + at_up_b.coalesced,
        got_a.coalesced + got_b.coalesced,
    )
}

#[test]
fn proxy_batches_both_directions_and_uses_gso_toward_each_side() {
    let netd = Netd::start("");
    let (at_upstream, at_clients) = proxy_bursts(&netd);
    assert!(
        at_upstream >= 1,
        "nothing reached the upstream as one GSO message"
    );
    assert!(
        at_clients >= 1,
        "no reply reached a client as one GSO message"
    );
}

#[test]
fn proxy_without_offloads_carries_the_same_bursts() {
    let netd = Netd::start_with_env("", &[("NETD_UDP_OFFLOAD", "off")]);
    assert_eq!(proxy_bursts(&netd), (0, 0));
    assert!(netd.log().contains("gro=false gso=false"), "{}", netd.log());
}

/// Faults apply to each datagram of a batch: with `duplicate` at 100%
/// upstream, a 20-datagram burst arrives twice over.
#[test]
fn proxy_faults_apply_to_every_datagram_of_a_burst() {
    let netd = Netd::start("");
    let upstream = gro_socket(0, None);
    let addr = start_udp_proxy(&netd, "p", upstream.local_addr().unwrap(), &[]);
    netd.netctl_ok(&[
        "fault",
        "add",
        "p",
        "dup",
        "--type",
        "duplicate",
        "--direction",
        "upstream",
        "--attr",
        "probability=1",
    ]);
    let a = gro_socket(0, Some(addr));
    let burst = numbered(b'a', 20, 100);
    send_burst(&a, &burst);
    let got = recv_all(&upstream, 40);
    assert_eq!(got.datagrams.len(), 40, "each datagram twice");
    for d in &burst {
        assert_eq!(got.datagrams.iter().filter(|g| *g == d).count(), 2);
    }
}

/// Where the kernel refuses GSO (here: a loopback MTU of 1280 in a
/// namespace of the test's own, smaller than a 1400-byte datagram), the
/// replies go out again as plain (fragmented) datagrams, and the socket
/// keeps sending plain ones.
#[test]
fn a_path_that_refuses_gso_falls_back_to_plain_datagrams() {
    let ns = NetNs::new();
    let out = ns
        .command("ip")
        .args(["link", "set", "lo", "mtu", "1280"])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "{out:?}");
    let netd = ns.netd("");
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "e",
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
    ]);
    let addr = bound_addr(&netd, "e");
    let log = netd.log_path();
    ns.run(|| {
        let a = gro_socket(0, Some(addr));
        for round in 0..2u8 {
            let burst = numbered(b'a' + round, 20, 1400);
            send_burst(&a, &burst);
            let got = recv_all(&a, 20);
            assert!(
                got.datagrams == burst,
                "round {round}: {} replies of 20, numbered {:?}; log: {}",
                got.datagrams.len(),
                got.datagrams.iter().map(|d| d[8]).collect::<Vec<_>>(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    });
    counters_settle(&netd, "e", 40, 40);
    assert_eq!(
        netd.log().matches("UDP GSO refused").count(),
        1,
        "{}",
        netd.log()
    );
}
