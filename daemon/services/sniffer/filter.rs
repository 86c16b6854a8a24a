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
mod bpf_interp;
#[cfg(test)]
pub(super) mod tests;
