//! The sniffer's filter language and its compilation to classic BPF.
//!
//! Syntax: terms joined by `and` (each kind at most once):
//! `tcp` | `udp` | `icmp` | `port N` | `host IP`, e.g. `tcp and port 8080`.
//! `port` matches source or destination port (and implies TCP or UDP);
//! `host` matches source or destination address; `icmp` covers ICMPv4 and
//! ICMPv6. An empty filter captures everything.
//!
//! The filter is compiled to a classic BPF program attached to the packet
//! socket, so the kernel drops what does not match before it is copied to
//! netd. The same program drops the outgoing copy of every packet on a
//! loopback interface (the kernel shows a loopback packet to packet sockets
//! twice, once leaving and once arriving; tcpdump counts it once too).
//! [`Filter::matches`] is the same predicate in user space, applied again
//! after decoding as a safety net (and for IPv6 extension headers, which the
//! BPF program does not walk).

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
                Some(w) => return Err(format!("filter '{text}': expected 'and' before '{w}'")),
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
        a.label("v4");
        self.emit_proto(&mut a, 23, 1);
        match self.host {
            Some(IpAddr::V4(h)) => {
                let h = u32::from(h);
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
            a.ldx_ip4_hlen(14);
            a.ld_ind(BPF_H, 14);
            a.jeq(port as u32, "accept", "");
            a.ld_ind(BPF_H, 16);
            a.jeq(port as u32, "accept", "drop");
        }
        a.ja("accept");

        // IPv6: next header at 20, addresses at 22/38, ports at 54/56 (no
        // extension headers).
        a.label("v6");
        self.emit_proto(&mut a, 20, 58);
        match self.host {
            Some(IpAddr::V6(h)) => {
                let words: Vec<u32> = h
                    .octets()
                    .chunks(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
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
                assert!(!prog.is_empty() && prog.len() < 100, "{text}");
                assert_eq!(prog.last().unwrap().code, 0x06);
            }
        }
    }
}
