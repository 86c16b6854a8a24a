//! An IP network ("127.0.0.2/32", "::1/128", "10.0.0.0/8") for a fault's
//! client condition. An IPv4-mapped IPv6 client (a dual-stack listener)
//! matches an IPv4 network.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{s}' is not an address or network (e.g. 127.0.0.2/32)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        };
        let c = Cidr { addr, prefix };
        if c.network() != addr {
            return Err(format!(
                "'{s}' has host bits set; the network is {}/{prefix}",
                c.network()
            ));
        }
        Ok(c)
    }

    fn mask(bits: u32, prefix: u8) -> u128 {
        if prefix == 0 {
            0
        } else {
            (u128::MAX << (bits - u32::from(prefix))) & (u128::MAX >> (128 - bits))
        }
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = Self::mask(32, self.prefix) as u32;
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & Self::mask(128, self.prefix)).into()),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = Self::mask(32, self.prefix) as u32;
                u32::from(a) & m == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                u128::from(a) & Self::mask(128, self.prefix) == u128::from(n)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_their_hosts() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains("127.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.2".parse().unwrap()));
        assert!(!c.contains("10.0.0.1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.2").unwrap();
        assert!(one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("::1/128")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(Cidr::parse("127.0.0.1/8").is_err());
        assert!(Cidr::parse("127.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
