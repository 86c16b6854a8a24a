//! The sniffer's filter language and its compilation to classic BPF.
//!
//! Syntax: terms joined by `and` (each kind at most once):
//! `tcp` | `udp` | `icmp` | `port N` | `host IP`, e.g. `tcp and port 8080`.
//! `port` matches source or destination port (and implies TCP or UDP);
//! `host` matches source or destination address; `icmp` covers ICMPv4 and
//! ICMPv6. An empty filter captures everything.
//!
//! Fragments and malformed packets, as tcpdump/libpcap match them: `tcp`,
//! `udp` and `icmp` match every fragment of such a datagram (the IPv4
//! protocol field, or the next header an IPv6 fragment header names);
//! `port N` never matches a fragment after the first, which carries no
//! ports. Unlike libpcap, IPv6 extension headers are walked (see
//! [`super::decode`]), so `udp and port 53` also matches a datagram behind
//! a destination-options header. A malformed packet (e.g. IPv4 IHL < 5) is
//! never TCP or UDP, so only an empty or a `host` filter keeps it.
//!
//! The filter is compiled to a classic BPF program attached to the packet
//! socket, so the kernel drops what does not match before it is copied to
//! netd. The same program drops the outgoing copy of every packet on a
//! loopback interface (the kernel shows a loopback packet to packet sockets
//! twice, once leaving and once arriving; tcpdump counts it once too).
//! [`Filter::matches`] is the predicate in user space, applied after
//! decoding. The kernel program accepts exactly what the predicate accepts
//! — it checks the same header lengths, versions, fragment fields and TCP
//! data offsets the decoder does — except for an IPv6 packet whose first
//! next header is an extension header: the program does not walk the
//! chain, accepts the packet, and user space decides. The
//! `fuzz_filter_*` tests check this on generated frames with the
//! interpreter in `bpf_interp`, whose verdicts a root test compares with
//! the kernel's own on `lo` in a private network namespace.

use std::net::IpAddr;

use super::decode::{Decoded, Proto};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<Proto>,
    pub port: Option<u16>,
    pub host: Option<IpAddr>,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.is_empty() {
            return Ok(f);
        }
        let usage = "terms joined by 'and': tcp | udp | icmp | port N | host IP, e.g. \"tcp and port 8080\"";
        let mut i = 0;
        loop {
            let Some(&w) = words.get(i) else {
                return Err(format!("filter '{text}' ends with 'and'; expected {usage}"));
            };
            match w.to_ascii_lowercase().as_str() {
                p @ ("tcp" | "udp" | "icmp") => {
                    if f.proto.is_some() {
                        return Err(format!("filter '{text}': only one protocol may be given"));
                    }
                    f.proto = Some(match p {
                        "tcp" => Proto::Tcp,
                        "udp" => Proto::Udp,
                        _ => Proto::Icmp,
                    });
                    i += 1;
                }
                "port" => {
                    let v = words
                        .get(i + 1)
                        .ok_or_else(|| format!("filter '{text}': 'port' needs a number"))?;
                    let port: u16 = v
                        .parse()
                        .map_err(|_| format!("filter '{text}': '{v}' is not a port (0-65535)"))?;
                    if f.port.replace(port).is_some() {
                        return Err(format!("filter '{text}': only one port may be given"));
                    }
                    i += 2;
                }
                "host" => {
                    let v = words
                        .get(i + 1)
                        .ok_or_else(|| format!("filter '{text}': 'host' needs an address"))?;
                    let ip: IpAddr = v
                        .parse()
                        .map_err(|_| format!("filter '{text}': '{v}' is not an IP address"))?;
                    if f.host.replace(ip).is_some() {
                        return Err(format!("filter '{text}': only one host may be given"));
                    }
                    i += 2;
                }
                other => {
                    return Err(format!(
                        "filter '{text}': unexpected '{other}'; expected {usage}"
                    ));
                }
            }
            match words.get(i) {
                None => break,
                Some(w) if w.eq_ignore_ascii_case("and") => i += 1,
                Some(w)
                    if ["or", "not", "!", "||", "&&"]
                        .contains(&w.to_ascii_lowercase().as_str())
                        || w.starts_with('(') =>
                {
                    return Err(format!(
                        "filter '{text}': '{w}' is not supported; netd's filter is {usage} (no 'or', 'not' or parentheses: start a sniffer per alternative)"
                    ));
                }
                Some(w) => {
                    return Err(format!(
                        "filter '{text}': expected 'and' before '{w}'; the filter is {usage}"
                    ));
                }
            }
        }
        if f.port.is_some() && f.proto == Some(Proto::Icmp) {
            return Err(format!("filter '{text}': ICMP has no ports"));
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// The user-space predicate, equal to the BPF program's.
    pub fn matches(&self, d: &Decoded) -> bool {
        if let Some(p) = self.proto {
            if d.proto != p {
                return false;
            }
        }
        if let Some(port) = self.port {
            if !matches!(d.proto, Proto::Tcp | Proto::Udp)
                || !d.ports
                || (d.src_port != port && d.dst_port != port)
            {
                return false;
            }
        }
        if let Some(h) = self.host {
            if d.src != Some(h) && d.dst != Some(h) {
                return false;
            }
        }
        true
    }

    /// Compile to a classic BPF program for Ethernet framing. With
    /// `drop_outgoing`, packets the host sends are dropped (loopback dedup).
    pub fn to_bpf(&self, drop_outgoing: bool) -> Vec<libc::sock_filter> {
        let mut a = Asm::default();
        if drop_outgoing {
            a.ld(BPF_W, AD_PKTTYPE);
            a.jeq(PACKET_OUTGOING, "drop", "");
        }
        a.ld(BPF_H, 12);
        a.jeq(0x0800, "v4", "");
        a.jeq(0x86dd, "v6", "other");
        a.label("other");
        if self.is_empty() {
            a.ret(ACCEPT);
        } else {
            a.ret(0);
        }

        // IPv4: protocol at 23, addresses at 26/30, header length from 14.
        // A malformed packet is never TCP/UDP/ICMP.
        a.label("v4");
        if self.proto.is_some() || self.port.is_some() {
            emit_v4_well_formed(&mut a);
        }
        self.emit_proto(&mut a, 23, 1);
        match self.host {
            Some(IpAddr::V4(h)) => {
                let h = u32::from(h);
                // User space sees no addresses in a header cut short.
                a.ld_len();
                a.jge(34, "", "drop");
                a.ld(BPF_W, 26);
                a.jeq(h, "v4port", "");
                a.ld(BPF_W, 30);
                a.jeq(h, "v4port", "drop");
            }
            Some(IpAddr::V6(_)) => a.ja("drop"),
            None => {}
        }
        a.label("v4port");
        if let Some(port) = self.port {
            self.emit_tcp_or_udp(&mut a, 23);
            a.ld(BPF_H, 20);
            a.jset(0x1fff, "drop", ""); // not the first fragment: no ports
            // The ports must lie within the IP total length: a tiny first
            // fragment ends before them, and what follows in the frame is
            // Ethernet padding, not ports.
            a.ldx_ip4_hlen(14);
            a.txa();
            a.add(4);
            a.tax();
            a.ld(BPF_H, 16);
            a.jge_x("", "drop");
            a.ldx_ip4_hlen(14);
            a.ld_ind(BPF_H, 14);
            a.jeq(port as u32, "accept", "");
            a.ld_ind(BPF_H, 16);
            a.jeq(port as u32, "accept", "drop");
        }
        a.ja("accept");

        // IPv6: next header at 20, addresses at 22/38, ports at 54/56 when
        // no extension header comes first; a packet with extension headers
        // goes to user space, which walks them.
        a.label("v6");
        match self.host {
            Some(IpAddr::V6(h)) => {
                let words: Vec<u32> = h
                    .octets()
                    .chunks(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                a.ld_len();
                a.jge(54, "", "drop");
                for (i, w) in words.iter().enumerate() {
                    a.ld(BPF_W, 22 + 4 * i as u32);
                    a.jeq(*w, "", "v6dst");
                }
                a.ja("v6port");
                a.label("v6dst");
                for (i, w) in words.iter().enumerate() {
                    a.ld(BPF_W, 38 + 4 * i as u32);
                    a.jeq(*w, "", "drop");
                }
            }
            Some(IpAddr::V4(_)) => a.ja("drop"),
            None => {}
        }
        a.label("v6port");
        if self.proto.is_some() || self.port.is_some() {
            emit_v6_well_formed(&mut a);
        }
        self.emit_proto(&mut a, 20, 58);
        if let Some(port) = self.port {
            self.emit_tcp_or_udp(&mut a, 20);
            a.ld(BPF_H, 54);
            a.jeq(port as u32, "accept", "");
            a.ld(BPF_H, 56);
            a.jeq(port as u32, "accept", "drop");
        }
        a.label("accept");
        a.ret(ACCEPT);
        a.label("drop");
        a.ret(0);
        a.assemble()
    }

    fn emit_proto(&self, a: &mut Asm, offset: u32, icmp: u32) {
        if let Some(p) = self.proto {
            let n = match p {
                Proto::Tcp => 6,
                Proto::Udp => 17,
                Proto::Icmp => icmp,
                Proto::Other => unreachable!("no filter term for 'other'"),
            };
            a.ld(BPF_B, offset);
            a.jeq(n, "", "drop");
        }
    }

    fn emit_tcp_or_udp(&self, a: &mut Asm, offset: u32) {
        if self.proto.is_none() {
            a.ld(BPF_B, offset);
            a.jeq(6, &format!("tu{offset}"), "");
            a.jeq(17, "", "drop");
            a.label(&format!("tu{offset}"));
        }
    }
}

/// Drop an IPv4 packet that user space finds malformed (see
/// [`super::decode`]): a header cut short, a version other than 4, IHL < 5,
/// a total length below the header or beyond the frame, and, unless it is
/// a later fragment, a TCP header that is shorter than 20 bytes or whose
/// data offset is below 5 or (not in a first fragment) beyond the total
/// length, or a UDP header shorter than 8 bytes (not in a first fragment).
fn emit_v4_well_formed(a: &mut Asm) {
    a.ld_len();
    a.jge(34, "", "drop");
    a.ld(BPF_B, 14);
    a.jge(0x40, "", "drop");
    a.jge(0x50, "drop", "");
    a.ldx_ip4_hlen(14);
    a.txa();
    a.jge(20, "", "drop");
    a.ld(BPF_H, 16);
    a.jge_x("", "drop"); // total >= header
    a.add(14);
    a.tax();
    a.ld_len();
    a.jge_x("", "drop"); // the frame holds the total length
    a.ld(BPF_H, 20);
    a.jset(0x1fff, "v4ok", ""); // a later fragment: no transport header
    a.ld(BPF_B, 23);
    a.jeq(6, "v4tcp", "");
    a.jeq(17, "v4udp", "v4ok");
    a.label("v4tcp");
    a.ldx_ip4_hlen(14);
    a.ld(BPF_H, 16);
    a.sub_x(); // A = transport length
    a.jge(20, "v4tcpfull", "");
    a.ld(BPF_H, 20);
    a.jset(0x2000, "v4ok", "drop"); // cut short: only a first fragment may
    a.label("v4tcpfull");
    a.ld_ind(BPF_B, 26);
    a.and(0xf0);
    a.rsh(2); // A = data offset in bytes
    a.jge(20, "", "drop");
    a.add_x();
    a.tax();
    a.ld(BPF_H, 16);
    a.jge_x("v4ok", "");
    a.ld(BPF_H, 20);
    a.jset(0x2000, "v4ok", "drop"); // options beyond the end: first fragment only
    a.label("v4udp");
    a.ldx_ip4_hlen(14);
    a.ld(BPF_H, 16);
    a.sub_x();
    a.jge(8, "v4ok", "");
    a.ld(BPF_H, 20);
    a.jset(0x2000, "v4ok", "drop");
    a.label("v4ok");
}

/// Drop an IPv6 packet that user space finds malformed: a header cut
/// short, a version other than 6, a payload length beyond the frame (0 is a
/// jumbogram: to the frame's end), and, right after the fixed header, a TCP
/// header shorter than 20 bytes or with a data offset below 5 or beyond the
/// payload, or a UDP header shorter than 8 bytes. A packet whose first next
/// header is an extension header is accepted here (user space walks the
/// chain). Leaves the next header in A.
fn emit_v6_well_formed(a: &mut Asm) {
    a.ld_len();
    a.jge(54, "", "drop");
    a.ld(BPF_B, 14);
    a.jge(0x60, "", "drop");
    a.jge(0x70, "drop", "");
    a.ld(BPF_H, 18);
    a.jeq(0, "v6end", "");
    a.add(54);
    a.tax();
    a.ld_len();
    a.jge_x("", "drop");
    a.label("v6end");
    a.ld(BPF_B, 20);
    for ext in EXT_HEADERS {
        a.jeq(ext, "accept", "");
    }
    a.jeq(6, "v6tcp", "");
    a.jeq(17, "v6udp", "v6ok");
    for (label, min) in [("v6tcp", 20), ("v6udp", 8)] {
        a.label(label);
        // A = payload length (for a jumbogram: the frame's rest).
        let have = format!("{label}len");
        a.ld(BPF_H, 18);
        a.jeq(0, "", &have);
        a.ld_len();
        a.sub(54);
        a.label(&have);
        if min == 20 {
            a.jge(20, "", "drop");
            a.tax();
            a.ld(BPF_B, 66);
            a.and(0xf0);
            a.rsh(2);
            a.jge(20, "", "drop");
            a.jgt_x("drop", "v6ok");
        } else {
            a.jge(8, "v6ok", "drop");
        }
    }
    a.label("v6ok");
    a.ld(BPF_B, 20);
}

/// IPv6 extension headers the decoder walks: hop-by-hop, routing,
/// fragment, AH, destination options.
const EXT_HEADERS: [u32; 5] = [0, 43, 44, 51, 60];

const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const ACCEPT: u32 = 0x0004_0000;
const PACKET_OUTGOING: u32 = 4;
/// SKF_AD_OFF + SKF_AD_PKTTYPE: the packet type, via the ancillary area.
const AD_PKTTYPE: u32 = (-0x1000i32 + 4) as u32;

/// A tiny assembler with forward jumps to named labels ("" = next).
#[derive(Default)]
struct Asm {
    code: Vec<(u16, String, String, u32)>,
    labels: Vec<(String, usize)>,
}

impl Asm {
    fn ld(&mut self, size: u16, k: u32) {
        self.code
            .push((0x20 | size, String::new(), String::new(), k)); // LD|ABS
    }
    fn ld_ind(&mut self, size: u16, k: u32) {
        self.code
            .push((0x40 | size, String::new(), String::new(), k)); // LD|IND
    }
    fn ldx_ip4_hlen(&mut self, k: u32) {
        self.code.push((0xb1, String::new(), String::new(), k)); // LDX|B|MSH
    }
    fn jeq(&mut self, k: u32, jt: &str, jf: &str) {
        self.code.push((0x15, jt.into(), jf.into(), k));
    }
    fn jge(&mut self, k: u32, jt: &str, jf: &str) {
        self.code.push((0x35, jt.into(), jf.into(), k));
    }
    fn txa(&mut self) {
        self.code.push((0x87, String::new(), String::new(), 0)); // MISC|TXA
    }
    fn tax(&mut self) {
        self.code.push((0x07, String::new(), String::new(), 0)); // MISC|TAX
    }
    fn add(&mut self, k: u32) {
        self.code.push((0x04, String::new(), String::new(), k)); // ALU|ADD|K
    }
    fn add_x(&mut self) {
        self.code.push((0x0c, String::new(), String::new(), 0)); // ALU|ADD|X
    }
    fn sub(&mut self, k: u32) {
        self.code.push((0x14, String::new(), String::new(), k)); // ALU|SUB|K
    }
    fn sub_x(&mut self) {
        self.code.push((0x1c, String::new(), String::new(), 0)); // ALU|SUB|X
    }
    fn and(&mut self, k: u32) {
        self.code.push((0x54, String::new(), String::new(), k)); // ALU|AND|K
    }
    fn rsh(&mut self, k: u32) {
        self.code.push((0x74, String::new(), String::new(), k)); // ALU|RSH|K
    }
    /// A = the frame's length.
    fn ld_len(&mut self) {
        self.code.push((0x80, String::new(), String::new(), 0)); // LD|W|LEN
    }
    /// Jump on A > X.
    fn jgt_x(&mut self, jt: &str, jf: &str) {
        self.code.push((0x2d, jt.into(), jf.into(), 0)); // JMP|JGT|X
    }
    /// Jump on A >= X.
    fn jge_x(&mut self, jt: &str, jf: &str) {
        self.code.push((0x3d, jt.into(), jf.into(), 0)); // JMP|JGE|X
    }
    fn jset(&mut self, k: u32, jt: &str, jf: &str) {
        self.code.push((0x45, jt.into(), jf.into(), k));
    }
    fn ja(&mut self, to: &str) {
        self.code.push((0x05, to.into(), String::new(), 0));
    }
    fn ret(&mut self, k: u32) {
        self.code.push((0x06, String::new(), String::new(), k));
    }
    fn label(&mut self, name: &str) {
        self.labels.push((name.to_string(), self.code.len()));
    }

    fn assemble(self) -> Vec<libc::sock_filter> {
        let find = |name: &str, at: usize| -> u32 {
            if name.is_empty() {
                return 0;
            }
            let pos = self
                .labels
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .unwrap_or_else(|| panic!("BPF label {name} missing"));
            assert!(pos > at, "BPF jumps go forward only ({name})");
            (pos - at - 1) as u32
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, (code, jt, jf, k))| {
                if *code == 0x05 {
                    libc::sock_filter {
                        code: *code,
                        jt: 0,
                        jf: 0,
                        k: find(jt, i),
                    }
                } else {
                    let (t, f) = (find(jt, i), find(jf, i));
                    assert!(t < 256 && f < 256, "BPF jump too far");
                    libc::sock_filter {
                        code: *code,
                        jt: t as u8,
                        jf: f as u8,
                        k: *k,
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let f = Filter::parse("tcp and port 8080").unwrap();
        assert_eq!(
            (f.proto, f.port, f.host),
            (Some(Proto::Tcp), Some(8080), None)
        );
        let f = Filter::parse("host ::1 and udp").unwrap();
        assert_eq!(f.host, Some("::1".parse().unwrap()));
        assert!(Filter::parse("").unwrap().is_empty());
        for bad in [
            "tcp port 1",
            "port",
            "port x",
            "tcp and",
            "icmp and port 1",
            "tcp and udp",
            "frobnicate",
            "host 300.1.1.1",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    /// The error names what the grammar supports, not only what it
    /// expected next.
    #[test]
    fn an_unsupported_operator_is_named_with_the_grammar() {
        let e = Filter::parse("tcp or udp").unwrap_err();
        assert!(e.contains("'or' is not supported"), "{e}");
        assert!(e.contains("terms joined by 'and'"), "{e}");
        assert!(e.contains("tcp | udp | icmp | port N | host IP"), "{e}");
        let e = Filter::parse("tcp port 1").unwrap_err();
        assert!(e.contains("expected 'and' before 'port'"), "{e}");
        assert!(e.contains("terms joined by 'and'"), "{e}");
    }

    #[test]
    fn bpf_programs_assemble() {
        for text in [
            "",
            "tcp",
            "udp and port 53",
            "icmp and host 127.0.0.1",
            "port 9 and host ::1",
        ] {
            let f = Filter::parse(text).unwrap();
            for dedup in [true, false] {
                let prog = f.to_bpf(dedup);
                assert!(
                    !prog.is_empty() && prog.len() < 200,
                    "{text}: {}",
                    prog.len()
                );
                assert_eq!(prog.last().unwrap().code, 0x06);
            }
        }
    }
}

#[cfg(test)]
mod bpf_interp;

/// Where the kernel program accepts more than the user-space matcher by
/// design and leaves the decision to user space (module doc): an IPv6
/// packet whose first next header is an extension header.
#[cfg(test)]
fn left_to_user_space(frame: &[u8]) -> bool {
    frame[12..14] == [0x86, 0xdd]
        && frame
            .get(20)
            .is_some_and(|&n| EXT_HEADERS.contains(&(n as u32)))
}

/// The kernel program and the user-space predicate, run side by side on
/// crafted frames (fragments, extension headers, malformed headers).
#[cfg(test)]
mod agree {
    use super::*;
    use crate::services::sniffer::decode::decode;

    /// The program's verdict on a frame received from elsewhere
    /// (PACKET_HOST), by the interpreter in [`super::bpf_interp`].
    pub(super) fn run(prog: &[libc::sock_filter], pkt: &[u8]) -> bool {
        super::bpf_interp::run(prog, pkt, super::bpf_interp::PACKET_HOST) != 0
    }

    pub(super) fn eth(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    /// IPv4 with header length `ihl` words, fragment field `frag`.
    fn v4(ihl: u8, proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
        let hl = (ihl as usize * 4).max(20);
        let mut p = vec![0u8; hl];
        p[0] = 0x40 | ihl;
        p[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p.extend_from_slice(payload);
        eth(0x0800, &p)
    }

    /// IPv6 with the given next header and payload (extension headers
    /// included).
    fn v6(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[23] = 1;
        p[39] = 2;
        p.extend_from_slice(payload);
        eth(0x86dd, &p)
    }

    fn udp(sport: u16, dport: u16, data: usize) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.resize(8 + data, 0xab);
        u
    }

    fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x02;
        t
    }

    /// An extension header `kind` (8 bytes; AH 12) followed by `next`.
    fn ext(kind: u8, next: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = match kind {
            51 => vec![next, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            _ => vec![next, 0, 1, 4, 0, 0, 0, 0],
        };
        h.extend_from_slice(rest);
        h
    }

    fn frag6(next: u8, offset8: u16, more: bool, rest: &[u8]) -> Vec<u8> {
        let f = offset8 << 3 | more as u16;
        let mut h = vec![next, 0, (f >> 8) as u8, f as u8, 0, 0, 0, 7];
        h.extend_from_slice(rest);
        h
    }

    pub(super) fn frames() -> Vec<(&'static str, Vec<u8>)> {
        let u = udp(4000, 53, 40);
        let mut first_frag = u.clone();
        first_frag.truncate(24);
        let mut v4_tiny = tcp_syn(5555, 80);
        v4_tiny.truncate(8);
        let mut bad_tcp = tcp_syn(5555, 80);
        bad_tcp[12] = 2 << 4;
        vec![
            ("v4 udp", v4(5, 17, 0, &u)),
            ("v4 tcp syn", v4(5, 6, 0, &tcp_syn(5555, 80))),
            ("v4 udp first fragment", v4(5, 17, 0x2000, &first_frag)),
            ("v4 udp later fragment", v4(5, 17, 3, &[0u8; 24])),
            ("v4 tcp tiny first fragment", v4(5, 6, 0x2000, &v4_tiny)),
            // Found by fuzz_filter_kernel_agrees_with_user_space: the
            // ports are in the Ethernet padding after the IP total length;
            // the kernel read them there and kept it for `port 4000`.
            ("v4 udp first fragment ending before its ports, padded", {
                let mut f = v4(5, 17, 0x2000, &u[..2]);
                f.extend_from_slice(&u[..8]);
                f
            }),
            ("v4 tcp later fragment", v4(5, 6, 1, &[0u8; 12])),
            ("v4 ihl 4", v4(4, 6, 0, &tcp_syn(5555, 80))),
            ("v4 ihl 0", v4(0, 17, 0, &u)),
            ("v4 ihl 6 with option", v4(6, 17, 0, &u)),
            ("v4 tcp data offset 2", v4(5, 6, 0, &bad_tcp)),
            ("v4 icmp", v4(5, 1, 0, &[8, 0, 0, 0, 0, 0, 0, 0])),
            ("v6 udp", v6(17, &u)),
            ("v6 tcp", v6(6, &tcp_syn(5555, 80))),
            ("v6 dstopts udp", v6(60, &ext(60, 17, &u))),
            (
                "v6 hbh routing dstopts tcp",
                v6(
                    0,
                    &ext(0, 43, &ext(43, 60, &ext(60, 6, &tcp_syn(5555, 80)))),
                ),
            ),
            ("v6 ah udp", v6(51, &ext(51, 17, &u))),
            (
                "v6 udp first fragment",
                v6(44, &frag6(17, 0, true, &first_frag)),
            ),
            (
                "v6 udp later fragment",
                v6(44, &frag6(17, 3, false, &[0u8; 24])),
            ),
            (
                "v6 dstopts fragment udp",
                v6(60, &ext(60, 44, &frag6(17, 0, true, &first_frag))),
            ),
            ("v6 truncated dstopts", v6(60, &[17, 5, 0, 0])),
            ("v6 icmpv6", v6(58, &[128, 0, 0, 0, 0, 0, 0, 0])),
            ("v6 no next header", v6(59, &[])),
            ("arp", eth(0x0806, &[0u8; 28])),
            // Malformed in ways the kernel program now checks itself.
            ("v4 version 5", {
                let mut f = v4(5, 17, 0, &u);
                f[14] = 0x55;
                f
            }),
            ("v4 total length beyond the frame", {
                let mut f = v4(5, 17, 0, &u);
                f[17] += 1;
                f
            }),
            ("v4 tcp options beyond the total length", {
                let mut t = tcp_syn(5555, 80);
                t[12] = 6 << 4;
                v4(5, 6, 0, &t)
            }),
            ("v4 udp header cut short", v4(5, 17, 0, &u[..6])),
            (
                "v4 udp first fragment cut short",
                v4(5, 17, 0x2000, &u[..6]),
            ),
            ("v4 header cut short", v4(5, 17, 0, &u)[..30].to_vec()),
            ("v6 payload length beyond the frame", {
                let mut f = v6(17, &u);
                f[19] += 1;
                f
            }),
            ("v6 jumbo udp", {
                let mut f = v6(17, &u);
                f[18..20].copy_from_slice(&[0, 0]);
                f
            }),
            ("v6 tcp data offset beyond the payload", {
                let mut t = tcp_syn(5555, 80);
                t[12] = 6 << 4;
                v6(6, &t)
            }),
            ("v6 header cut short", v6(17, &u)[..50].to_vec()),
        ]
    }

    #[test]
    fn decoding_fragments_extension_headers_and_malformed() {
        let all: std::collections::HashMap<_, _> =
            frames().into_iter().map(|(n, f)| (n, decode(&f))).collect();
        let d = |n: &str| all[n];
        let udp53 = |n: &str| {
            let x = d(n);
            (x.proto, x.ports, x.dst_port, x.fragment, x.malformed)
        };
        assert_eq!(
            udp53("v4 udp first fragment"),
            (Proto::Udp, true, 53, false, false)
        );
        assert_eq!(
            udp53("v4 udp later fragment"),
            (Proto::Udp, false, 0, true, false)
        );
        assert_eq!(
            udp53("v6 dstopts udp"),
            (Proto::Udp, true, 53, false, false)
        );
        assert_eq!(udp53("v6 ah udp"), (Proto::Udp, true, 53, false, false));
        assert_eq!(
            udp53("v6 udp first fragment"),
            (Proto::Udp, true, 53, false, false)
        );
        assert_eq!(
            udp53("v6 dstopts fragment udp"),
            (Proto::Udp, true, 53, false, false)
        );
        assert_eq!(
            udp53("v6 udp later fragment"),
            (Proto::Udp, false, 0, true, false)
        );
        assert_eq!(
            udp53("v4 ihl 6 with option"),
            (Proto::Udp, true, 53, false, false)
        );
        let chain = d("v6 hbh routing dstopts tcp");
        assert_eq!(
            (chain.proto, chain.dst_port, chain.tcp_flags),
            (Proto::Tcp, 80, 0x02)
        );
        let tiny = d("v4 tcp tiny first fragment");
        assert_eq!(
            (tiny.proto, tiny.dst_port, tiny.tcp_split),
            (Proto::Tcp, 80, true)
        );
        for bad in [
            "v4 ihl 4",
            "v4 ihl 0",
            "v4 tcp data offset 2",
            "v6 truncated dstopts",
        ] {
            assert_eq!(
                (d(bad).proto, d(bad).malformed),
                (Proto::Other, true),
                "{bad}"
            );
        }
        assert_eq!(d("v6 icmpv6").proto, Proto::Icmp);
        // A chain longer than the bound is not walked to the end.
        let mut long = ext(60, 17, &udp(1, 53, 0));
        for _ in 0..MAX_EXT {
            long = ext(60, 60, &long);
        }
        let l = decode(&v6(60, &long));
        assert_eq!((l.proto, l.malformed), (Proto::Other, false));
        // One fewer is walked.
        let l = decode(&v6(60, &long[8..]));
        assert_eq!((l.proto, l.dst_port), (Proto::Udp, 53));
        let l = decode(&v6(60, &long));
        assert_eq!((l.proto, l.malformed), (Proto::Other, false));
    }

    const MAX_EXT: usize = crate::services::sniffer::decode::MAX_EXT_HEADERS;

    #[test]
    fn kernel_program_keeps_all_that_user_space_keeps() {
        let filters = [
            "",
            "tcp",
            "udp",
            "icmp",
            "port 53",
            "port 80",
            "udp and port 53",
            "tcp and port 80",
            "port 4000",
            "host 10.0.0.1",
            "host ::1",
            "host ::2 and udp",
            "tcp and host 10.0.0.2 and port 80",
        ];
        for text in filters {
            let f = Filter::parse(text).unwrap();
            let prog = f.to_bpf(true);
            for (name, frame) in frames() {
                let d = decode(&frame);
                let user = f.matches(&d);
                let kernel = run(&prog, &frame);
                assert!(
                    kernel || !user,
                    "{text:?} on {name}: kernel drops what user space keeps"
                );
                // Exact, except where the kernel leaves the decision to user
                // space: IPv6 extension headers.
                if !super::left_to_user_space(&frame) {
                    assert_eq!(kernel, user, "{text:?} on {name}");
                }
            }
        }
        // As tcpdump: `udp` keeps every fragment, `port` only the first.
        let later = v4(5, 17, 3, &[0u8; 24]);
        assert!(Filter::parse("udp").unwrap().matches(&decode(&later)));
        assert!(!Filter::parse("port 53").unwrap().matches(&decode(&later)));
    }
}

/// Property tests (`fuzz_*`): generated filter expressions never panic the
/// parser or the assembler, and on generated frames (IPv4/IPv6, extension
/// headers, fragments, TCP/UDP/ICMP, truncated, padded and corrupted) the
/// kernel program keeps everything user space keeps, and agrees exactly
/// outside the documented cases where it leaves the decision to user space.
#[cfg(test)]
pub(super) mod fuzz {
    use super::agree::{eth, run};
    use super::*;
    use crate::services::sniffer::decode::decode;
    use proptest::prelude::*;

    /// Addresses and ports the frames use, so that filters hit them often.
    const V4: [[u8; 4]; 3] = [[10, 0, 0, 1], [10, 0, 0, 2], [127, 0, 0, 1]];
    const V6: [[u8; 16]; 2] = [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    ];
    const PORTS: [u16; 4] = [0, 53, 80, 4000];

    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![3 => proptest::sample::select(&PORTS[..]), 1 => any::<u16>()]
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(&V4[..]).prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
            proptest::sample::select(&V6[..]).prop_map(|a| std::net::Ipv6Addr::from(a).to_string()),
            any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
            any::<[u8; 16]>().prop_map(|a| std::net::Ipv6Addr::from(a).to_string()),
        ]
    }

    /// A filter from the grammar: up to one term of each kind, in any order,
    /// joined by `and` in any case.
    fn filter_text() -> impl Strategy<Value = String> {
        (
            proptest::option::of(proptest::sample::select(&["tcp", "udp", "icmp", "TCP"][..])),
            proptest::option::of(port()),
            proptest::option::of(host()),
            any::<u8>(),
            proptest::sample::select(&["and", "AND", "And"][..]),
        )
            .prop_map(|(proto, port, host, order, and)| {
                let mut terms: Vec<String> = Vec::new();
                terms.extend(proto.map(String::from));
                terms.extend(port.map(|p| format!("port {p}")));
                terms.extend(host.map(|h| format!("host {h}")));
                let n = terms.len().max(1);
                terms.rotate_left(order as usize % n);
                if order & 0x80 != 0 {
                    terms.reverse();
                }
                terms.join(&format!(" {and} "))
            })
    }

    /// Word soup from the filter's vocabulary and near misses: mostly
    /// malformed filters.
    fn malformed_text() -> impl Strategy<Value = String> {
        let words = proptest::sample::select(
            &[
                "tcp",
                "udp",
                "icmp",
                "port",
                "host",
                "and",
                "or",
                "not",
                "53",
                "65535",
                "65536",
                "-1",
                "0x35",
                "10.0.0.1",
                "::1",
                "300.1.1.1",
                "::ffff:1.2.3.4",
                "",
                "\t",
                "ßtcp",
                "ﬀ",
                "portport",
            ][..],
        );
        proptest::collection::vec(words, 0..8).prop_map(|w| w.join(" "))
    }

    /// One IPv6 extension header of kind `kind`, `units` long (as its
    /// length field counts), or a fragment header.
    fn ext6(kind: u8, next: u8, units: u8, frag: u16) -> Vec<u8> {
        let len = match kind {
            51 => (units as usize + 2) * 4,
            44 => 8,
            _ => (units as usize + 1) * 8,
        };
        let mut h = vec![0u8; len];
        h[0] = next;
        h[1] = units;
        if kind == 44 {
            h[1] = 0;
            h[2..4].copy_from_slice(&frag.to_be_bytes());
        }
        h
    }

    /// A transport header (or ICMP, or noise) with `data` bytes after it.
    fn transport() -> impl Strategy<Value = (u8, Vec<u8>)> {
        prop_oneof![
            (port(), port(), 0u8..16, any::<u8>(), 0usize..16).prop_map(
                |(s, d, doff, fl, data)| {
                    let mut t = vec![0u8; 20 + data];
                    t[0..2].copy_from_slice(&s.to_be_bytes());
                    t[2..4].copy_from_slice(&d.to_be_bytes());
                    t[12] = if doff >= 12 { 5 << 4 } else { doff << 4 };
                    t[13] = fl;
                    (6u8, t)
                }
            ),
            (port(), port(), 0usize..16).prop_map(|(s, d, data)| {
                let mut u = vec![0u8; 8 + data];
                u[0..2].copy_from_slice(&s.to_be_bytes());
                u[2..4].copy_from_slice(&d.to_be_bytes());
                u[4..6].copy_from_slice(&((8 + data) as u16).to_be_bytes());
                (17u8, u)
            }),
            Just((1u8, vec![8, 0, 0, 0, 0, 0, 0, 0])),
            Just((58u8, vec![128, 0, 0, 0, 0, 0, 0, 0])),
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..24)),
        ]
    }

    /// IPv4: header length, fragment field, addresses, the total length
    /// right or not.
    fn ipv4() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![4 => Just(5u8), 1 => 0u8..16],
            prop_oneof![3 => Just(0u16), 1 => Just(0x2000u16), 1 => Just(0x4000u16), 1 => any::<u16>()],
            proptest::sample::select(&V4[..]),
            proptest::sample::select(&V4[..]),
            transport(),
            // The total length: right, a little short, or anything.
            (0u8..4, 0u16..24, any::<u16>()),
            prop_oneof![9 => Just(4u8), 1 => 0u8..16],
        )
            .prop_map(|(ihl, frag, src, dst, (proto, payload), total, version)| {
                let hl = ihl as usize * 4;
                let mut p = vec![0u8; hl.max(20)];
                p[0] = version << 4 | ihl;
                let right = (hl.max(20) + payload.len()) as u16;
                let total = match total {
                    (0 | 1, _, _) => right,
                    (2, short, _) => right.saturating_sub(short),
                    (_, _, any) => any,
                };
                p[2..4].copy_from_slice(&total.to_be_bytes());
                p[6..8].copy_from_slice(&frag.to_be_bytes());
                p[8] = 64;
                p[9] = proto;
                p[12..16].copy_from_slice(&src);
                p[16..20].copy_from_slice(&dst);
                p.extend_from_slice(&payload);
                eth(0x0800, &p)
            })
    }

    /// IPv6 with a chain of extension headers (some fragment headers, first
    /// or later), the payload length right, 0 (jumbo) or anything.
    fn ipv6() -> impl Strategy<Value = Vec<u8>> {
        let ext = (
            proptest::sample::select(&[0u8, 43, 44, 51, 60][..]),
            0u8..3,
            prop_oneof![Just(0u16), Just(1u16), any::<u16>()],
        );
        (
            proptest::collection::vec(ext, 0..11),
            proptest::sample::select(&V6[..]),
            proptest::sample::select(&V6[..]),
            transport(),
            prop_oneof![8 => Just(None), 1 => Just(Some(0u16)), 1 => any::<u16>().prop_map(Some)],
            prop_oneof![9 => Just(6u8), 1 => 0u8..16],
        )
            .prop_map(|(exts, src, dst, (proto, payload), plen, version)| {
                let mut body = payload;
                let mut next = proto;
                for &(kind, units, frag) in exts.iter().rev() {
                    let mut h = ext6(kind, next, units, frag);
                    h.extend_from_slice(&body);
                    body = h;
                    next = kind;
                }
                let mut p = vec![0u8; 40];
                p[0] = version << 4;
                let len = plen.unwrap_or(body.len() as u16);
                p[4..6].copy_from_slice(&len.to_be_bytes());
                p[6] = next;
                p[7] = 64;
                p[8..24].copy_from_slice(&src);
                p[24..40].copy_from_slice(&dst);
                p.extend_from_slice(&body);
                eth(0x86dd, &p)
            })
    }

    /// A frame, then perhaps cut short, padded, or with bytes overwritten
    /// (also the decoder's `fuzz_decode_*` input).
    pub(in crate::services::sniffer) fn frame() -> impl Strategy<Value = Vec<u8>> {
        let base = prop_oneof![
            4 => ipv4(),
            4 => ipv6(),
            1 => (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(t, b)| eth(t, &b)),
        ];
        (
            base,
            proptest::option::of(any::<prop::sample::Index>()),
            proptest::option::of(0usize..32),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        )
            .prop_map(|(mut f, cut, pad, flips)| {
                for (at, b) in flips {
                    let i = at.index(f.len());
                    f[i] = b;
                }
                if let Some(cut) = cut {
                    f.truncate(cut.index(f.len() + 1));
                }
                if let Some(pad) = pad {
                    f.resize(f.len() + pad, 0x35);
                }
                f
            })
    }

    proptest! {
        #![proptest_config(crate::util::fuzz_support::config(1024))]

        #[test]
        fn fuzz_filter_parse_never_panics(text in prop_oneof![
            filter_text(), malformed_text(), any::<String>()
        ]) {
            if let Ok(f) = Filter::parse(&text) {
                for dedup in [true, false] {
                    let prog = f.to_bpf(dedup);
                    prop_assert!(!prog.is_empty() && prog.len() < 256);
                    prop_assert_eq!(prog.last().map(|i| i.code), Some(0x06));
                }
            }
        }

        #[test]
        fn fuzz_filter_grammar_parses(text in filter_text()) {
            let lower = text.to_ascii_lowercase();
            let icmp_port = lower.contains("icmp") && lower.contains("port");
            prop_assert_eq!(Filter::parse(&text).is_ok(), !icmp_port, "{:?}", text);
        }

        #[test]
        fn fuzz_filter_kernel_agrees_with_user_space(
            text in filter_text(),
            frames in proptest::collection::vec(frame(), 1..16),
            dedup in any::<bool>(),
        ) {
            // `icmp and port N` is refused: nothing to compare.
            let Ok(f) = Filter::parse(&text) else { return Ok(()) };
            let prog = f.to_bpf(dedup);
            for frame in &frames {
                // An Ethernet packet socket never delivers less than the
                // 14-byte header.
                if frame.len() < 14 {
                    continue;
                }
                let d = decode(frame);
                let user = f.matches(&d);
                let kernel = run(&prog, frame);
                prop_assert!(
                    kernel || !user,
                    "{:?}: kernel drops what user space keeps: {:02x?} {:?}", text, frame, d
                );
                if !left_to_user_space(frame) {
                    prop_assert_eq!(kernel, user, "{:?} on {:02x?}: {:?}", text, frame, d);
                }
            }
        }
    }
}
