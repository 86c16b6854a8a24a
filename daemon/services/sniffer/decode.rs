//! Decoding captured frames (Ethernet, IPv4, IPv6, TCP, UDP, ICMP/ICMPv6)
//! into a small `Copy` summary, with pnet's zero-copy packet views: nothing
//! is allocated per packet.

use std::net::IpAddr;

use pnet::packet::Packet;
use pnet::packet::ethernet::{EtherTypes, EthernetPacket};
use pnet::packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use pnet::packet::ipv4::Ipv4Packet;
use pnet::packet::ipv6::Ipv6Packet;
use pnet::packet::tcp::TcpPacket;
use pnet::packet::udp::UdpPacket;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Other => "other",
        }
    }
}

/// TCP flag bits as in the header.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub proto: Proto,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// Ethertype, for frames that are not IP.
    pub ethertype: u16,
    pub len: usize,
}

pub fn decode(frame: &[u8]) -> Decoded {
    let mut d = Decoded {
        proto: Proto::Other,
        src: None,
        dst: None,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        ethertype: 0,
        len: frame.len(),
    };
    let Some(eth) = EthernetPacket::new(frame) else {
        return d;
    };
    d.ethertype = eth.get_ethertype().0;
    let (next, payload): (IpNextHeaderProtocol, &[u8]) = match eth.get_ethertype() {
        EtherTypes::Ipv4 => {
            let Some(ip) = Ipv4Packet::new(eth.payload()) else {
                return d;
            };
            d.src = Some(IpAddr::V4(ip.get_source()));
            d.dst = Some(IpAddr::V4(ip.get_destination()));
            // Only the first fragment carries the transport header.
            if ip.get_fragment_offset() != 0 {
                return d;
            }
            let hlen = (ip.get_header_length() as usize * 4).max(20);
            let body = eth.payload().get(hlen..).unwrap_or(&[]);
            (ip.get_next_level_protocol(), body)
        }
        EtherTypes::Ipv6 => {
            let Some(ip) = Ipv6Packet::new(eth.payload()) else {
                return d;
            };
            d.src = Some(IpAddr::V6(ip.get_source()));
            d.dst = Some(IpAddr::V6(ip.get_destination()));
            (ip.get_next_header(), eth.payload().get(40..).unwrap_or(&[]))
        }
        _ => return d,
    };
    match next {
        IpNextHeaderProtocols::Tcp => {
            d.proto = Proto::Tcp;
            if let Some(t) = TcpPacket::new(payload) {
                d.src_port = t.get_source();
                d.dst_port = t.get_destination();
                d.tcp_flags = t.get_flags();
            }
        }
        IpNextHeaderProtocols::Udp => {
            d.proto = Proto::Udp;
            if let Some(u) = UdpPacket::new(payload) {
                d.src_port = u.get_source();
                d.dst_port = u.get_destination();
            }
        }
        IpNextHeaderProtocols::Icmp | IpNextHeaderProtocols::Icmpv6 => d.proto = Proto::Icmp,
        _ => {}
    }
    d
}

/// tcpdump-style flags: S F R P U, then "." for ACK.
pub fn flags_string(flags: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (SYN, 'S'),
        (FIN, 'F'),
        (RST, 'R'),
        (PSH, 'P'),
        (URG, 'U'),
        (ACK, '.'),
    ] {
        if flags & bit != 0 {
            s.push(c);
        }
    }
    s
}
