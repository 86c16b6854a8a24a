//! Decoding captured frames (Ethernet, IPv4, IPv6 with its extension
//! headers, TCP, UDP, ICMP/ICMPv6) into a small `Copy` summary, reading the
//! frame in place: nothing is allocated per packet.
//!
//! - IPv6 extension headers (hop-by-hop 0, routing 43, fragment 44,
//!   destination options 60, AH 51) are walked, at most
//!   [`MAX_EXT_HEADERS`] of them; a longer chain is `other`.
//! - Fragments (IPv4 and IPv6): the first one (offset 0) is decoded with
//!   its ports as far as it carries them; a later one has no transport
//!   header, so it is marked `fragment` and has the protocol its IP header
//!   (or fragment header) names, without ports.
//! - Malformed headers (IPv4 IHL < 5, a total/payload length or a header
//!   length that runs past the frame, a TCP data offset < 5, a transport
//!   header cut short in an unfragmented packet) are marked `malformed` and
//!   are never TCP or UDP: their protocol is `other`.

use std::net::IpAddr;

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

/// Extension headers walked in an IPv6 packet before giving up (`other`).
pub const MAX_EXT_HEADERS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub proto: Proto,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub src_port: u16,
    pub dst_port: u16,
    /// Whether `src_port`/`dst_port` were read from a transport header (not
    /// for a later fragment, a malformed packet, or a first fragment too
    /// short to hold them).
    pub ports: bool,
    pub tcp_flags: u8,
    /// A TCP first fragment too short to carry the flags (RFC 1858's tiny
    /// fragment, e.g. `nmap -f`): what it is cannot be known, so the
    /// detectors treat it as a connection attempt.
    pub tcp_split: bool,
    /// A fragment after the first: no transport header.
    pub fragment: bool,
    /// A header that is inconsistent or runs past the frame.
    pub malformed: bool,
    /// Ethertype, for frames that are not IP.
    pub ethertype: u16,
    pub len: usize,
}

impl Decoded {
    /// Nothing decoded yet: a frame of `len` bytes of protocol `other`.
    pub fn empty(len: usize) -> Decoded {
        Decoded {
            proto: Proto::Other,
            src: None,
            dst: None,
            src_port: 0,
            dst_port: 0,
            ports: false,
            tcp_flags: 0,
            tcp_split: false,
            fragment: false,
            malformed: false,
            ethertype: 0,
            len,
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn decode(frame: &[u8]) -> Decoded {
    let mut d = Decoded::empty(frame.len());
    if frame.len() < 14 {
        return d;
    }
    d.ethertype = be16(frame, 12);
    match d.ethertype {
        0x0800 => ipv4(&frame[14..], &mut d),
        0x86dd => ipv6(&frame[14..], &mut d),
        _ => {}
    }
    d
}

fn ipv4(p: &[u8], d: &mut Decoded) {
    if p.len() < 20 {
        d.malformed = true;
        return;
    }
    d.src = Some(IpAddr::from(
        <[u8; 4]>::try_from(&p[12..16]).unwrap_or_default(),
    ));
    d.dst = Some(IpAddr::from(
        <[u8; 4]>::try_from(&p[16..20]).unwrap_or_default(),
    ));
    let ihl = (p[0] & 0x0f) as usize * 4;
    let total = be16(p, 2) as usize;
    if p[0] >> 4 != 4 || ihl < 20 || total < ihl || total > p.len() {
        d.malformed = true;
        return;
    }
    let proto = p[9];
    let frag = be16(p, 6);
    if frag & 0x1fff != 0 {
        d.fragment = true;
        d.proto = upper(proto, 1);
        return;
    }
    let more_fragments = frag & 0x2000 != 0;
    transport(upper(proto, 1), &p[ihl..total], more_fragments, d);
}

fn ipv6(p: &[u8], d: &mut Decoded) {
    if p.len() < 40 {
        d.malformed = true;
        return;
    }
    d.src = Some(IpAddr::from(
        <[u8; 16]>::try_from(&p[8..24]).unwrap_or_default(),
    ));
    d.dst = Some(IpAddr::from(
        <[u8; 16]>::try_from(&p[24..40]).unwrap_or_default(),
    ));
    // Payload length 0 is a jumbogram (or a TSO frame): the frame's end.
    let end = match be16(p, 4) as usize {
        0 => p.len(),
        n => 40 + n,
    };
    if p[0] >> 4 != 6 || end > p.len() {
        d.malformed = true;
        return;
    }
    let (mut next, mut at, mut more_fragments) = (p[6], 40usize, false);
    for walked in 0..=MAX_EXT_HEADERS {
        let len = match next {
            // Hop-by-hop, routing, destination options: 8-octet units
            // after the first 8.
            0 | 43 | 60 => p.get(at + 1).map(|&l| (l as usize + 1) * 8),
            // AH: 4-octet units, minus 2.
            51 => p.get(at + 1).map(|&l| (l as usize + 2) * 4),
            44 => Some(8),
            _ => {
                transport(upper(next, 58), &p[at..end], more_fragments, d);
                return;
            }
        };
        if walked == MAX_EXT_HEADERS {
            // Too long a chain: not walked further, left as `other`.
            return;
        }
        let Some(len) = len.filter(|&l| at + l <= end) else {
            d.malformed = true;
            return;
        };
        if next == 44 {
            let frag = be16(p, at + 2);
            if frag & 0xfff8 != 0 {
                d.fragment = true;
                d.proto = upper(p[at], 58);
                return;
            }
            more_fragments = frag & 1 != 0;
        }
        next = p[at];
        at += len;
    }
}

/// The protocol for an upper-layer protocol number (`icmp` is 1 after
/// IPv4, 58 after IPv6).
fn upper(n: u8, icmp: u8) -> Proto {
    match n {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        n if n == icmp => Proto::Icmp,
        _ => Proto::Other,
    }
}

/// Read the transport header in `body` (the IP payload). In a first
/// fragment (`partial`) the header may be cut short: what is there is read.
fn transport(proto: Proto, body: &[u8], partial: bool, d: &mut Decoded) {
    d.proto = proto;
    match proto {
        Proto::Tcp => {
            if body.len() >= 20 {
                let doff = (body[12] >> 4) as usize * 4;
                if doff < 20 || (doff > body.len() && !partial) {
                    d.proto = Proto::Other;
                    d.malformed = true;
                    return;
                }
            } else if !partial {
                d.proto = Proto::Other;
                d.malformed = true;
                return;
            }
            if body.len() >= 4 {
                (d.src_port, d.dst_port, d.ports) = (be16(body, 0), be16(body, 2), true);
            }
            match body.get(13) {
                Some(&f) => d.tcp_flags = f,
                None => d.tcp_split = true,
            }
        }
        Proto::Udp => {
            if body.len() < 8 && !partial {
                d.proto = Proto::Other;
                d.malformed = true;
                return;
            }
            if body.len() >= 4 {
                (d.src_port, d.dst_port, d.ports) = (be16(body, 0), be16(body, 2), true);
            }
        }
        Proto::Icmp | Proto::Other => {}
    }
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

/// Property tests (`fuzz_*`): any bytes, and generated frames cut short,
/// padded or corrupted, decode without a panic (an out-of-bounds read is
/// one) and keep the invariants the filter and the detectors rely on.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::services::sniffer::filter::tests::fuzz::frame;
    use proptest::prelude::*;

    fn check(frame: &[u8]) -> Result<(), TestCaseError> {
        let d = decode(frame);
        prop_assert_eq!(d.len, frame.len());
        if frame.len() < 14 {
            prop_assert_eq!(d, Decoded::empty(frame.len()));
        }
        let ip = matches!(d.ethertype, 0x0800 | 0x86dd);
        if !ip {
            prop_assert!(d.src.is_none() && d.dst.is_none() && !d.malformed);
            prop_assert_eq!(d.proto, Proto::Other);
        }
        // Malformed is never TCP or UDP (nor anything else).
        if d.malformed {
            prop_assert_eq!(d.proto, Proto::Other);
            prop_assert!(!d.ports && !d.fragment);
        }
        // Ports only from a transport header: TCP or UDP, not a later
        // fragment.
        if d.ports {
            prop_assert!(matches!(d.proto, Proto::Tcp | Proto::Udp));
            prop_assert!(!d.fragment && !d.malformed);
        } else {
            prop_assert_eq!((d.src_port, d.dst_port), (0, 0));
        }
        if d.fragment {
            prop_assert!(!d.ports && !d.tcp_split && d.tcp_flags == 0);
        }
        if d.tcp_split || d.tcp_flags != 0 {
            prop_assert_eq!(d.proto, Proto::Tcp);
        }
        // Addresses are the frame's bytes.
        match (d.ethertype, d.src, d.dst) {
            (0x0800, Some(IpAddr::V4(s)), Some(IpAddr::V4(t))) => {
                prop_assert_eq!(&s.octets()[..], &frame[26..30]);
                prop_assert_eq!(&t.octets()[..], &frame[30..34]);
            }
            (0x86dd, Some(IpAddr::V6(s)), Some(IpAddr::V6(t))) => {
                prop_assert_eq!(&s.octets()[..], &frame[22..38]);
                prop_assert_eq!(&t.octets()[..], &frame[38..54]);
            }
            (_, None, None) => {}
            other => prop_assert!(false, "addresses {:?}", other),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::util::fuzz_support::config(2048))]

        #[test]
        fn fuzz_decode_arbitrary_bytes(frame in proptest::collection::vec(any::<u8>(), 0..128)) {
            check(&frame)?;
        }

        #[test]
        fn fuzz_decode_ip_ethertype_arbitrary_payload(
            v6 in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            let mut f = vec![0u8; 12];
            f.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
            f.extend_from_slice(&body);
            check(&f)?;
        }

        #[test]
        fn fuzz_decode_generated_frames(frame in frame()) {
            check(&frame)?;
            // Every prefix too: a frame cut anywhere.
            for cut in 0..frame.len() {
                check(&frame[..cut])?;
            }
        }
    }
}
