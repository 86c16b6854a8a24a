//! Which clients share a rate-limit bucket: an IPv4 client is its address,
//! an IPv6 client its prefix (a /64 by default). One host or home is
//! usually given a whole IPv6 /64 and can pick a new address in it for each
//! request, so keying by address would let it walk around any limit.

use std::net::{IpAddr, Ipv6Addr};

use super::SpecError;

/// Prefix length IPv6 clients are keyed by unless configured.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The rate-limit key of `ip`: IPv4 (also when IPv4-mapped) as is, IPv6
/// masked to its first `ipv6_prefix` bits (1..=128).
pub fn rate_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => {
            let keep = u32::from(ipv6_prefix.clamp(1, 128));
            let mask = u128::MAX << (128 - keep);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// A prefix-length field: 0 means [`DEFAULT_IPV6_PREFIX`], else 1..=128.
pub fn ipv6_prefix_field(field: &str, value: u32) -> Result<u8, SpecError> {
    match value {
        0 => Ok(DEFAULT_IPV6_PREFIX),
        1..=128 => Ok(value as u8),
        _ => Err(SpecError::at(
            field,
            format!("{field} is {value}; an IPv6 prefix length is 1-128 (0 for the default, 64)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, prefix: u8) -> IpAddr {
        rate_key(ip.parse().unwrap(), prefix)
    }

    #[test]
    fn ipv6_keyed_by_prefix_ipv4_by_address() {
        assert_eq!(
            key("2001:db8:1:2:aaaa::1", 64),
            key("2001:db8:1:2:ffff::9", 64)
        );
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_eq!(
            key("2001:db8:1:2::1", 64),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("2001:db8::1", 48), key("2001:db8:0:ffff::2", 48));
        assert_eq!(key("2001:db8::1", 1), key("::1", 1));
        assert_ne!(key("192.0.2.1", 64), key("192.0.2.2", 64));
        assert_eq!(key("::ffff:192.0.2.1", 64), key("192.0.2.1", 64));
    }

    #[test]
    fn prefix_field() {
        assert_eq!(ipv6_prefix_field("p", 0).unwrap(), 64);
        assert_eq!(ipv6_prefix_field("p", 128).unwrap(), 128);
        assert_eq!(ipv6_prefix_field("p", 1).unwrap(), 1);
        assert!(ipv6_prefix_field("p", 129).is_err());
    }
}
