//! Datagrams with a forged source address, for the tests of the UDP
//! kinds' source guard (loops through netd's own addresses, reflectors).

use std::net::{SocketAddr, SocketAddrV4};

/// The IPv4 address of `addr` (the tests bind 127.0.0.1).
pub fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("{a} is not IPv4"),
    }
}

/// Send one UDP datagram with a forged source, through a raw socket
/// (IPPROTO_RAW, so the test writes the IPv4 header itself). Needs root.
pub fn spoof_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
    use socket2::{Domain, Protocol, Socket, Type};
    let raw = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .expect("raw socket (the test needs root)");
    let total = (20 + 8 + payload.len()) as u16;
    let mut p = Vec::with_capacity(total as usize);
    // Version 4, IHL 5, no TOS; total length; id 0 (the kernel picks one);
    // don't fragment; TTL 64; UDP; checksum 0 (the kernel fills it in).
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    // UDP header; checksum 0 means none over IPv4.
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let to = SocketAddr::V4(SocketAddrV4::new(*dst.ip(), 0));
    let sent = raw
        .send_to(&p, &to.into())
        .expect("send the forged datagram");
    assert_eq!(sent, p.len());
}
