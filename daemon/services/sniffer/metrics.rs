//! The sniffer's Prometheus families (see [`crate::telemetry::families`]),
//! read from its `SnifferStats`.

use crate::proto::{SnifferStats, listener_stats::Detail};
use crate::telemetry::families::{Desc, Family, KindFamilies, Put};

/// The packet and byte counts of each protocol, as `protocol` labels.
fn by_protocol(f: &SnifferStats, put: Put<'_>, get: fn(&crate::proto::ProtocolCount) -> u64) {
    for (proto, c) in [
        ("tcp", &f.tcp),
        ("udp", &f.udp),
        ("icmp", &f.icmp),
        ("other", &f.other),
    ] {
        put(&[proto], get(&c.unwrap_or_default()));
    }
}

pub const FAMILIES: KindFamilies<SnifferStats> = KindFamilies {
    wrap: Detail::Sniffer,
    unwrap: |d| match d {
        Detail::Sniffer(f) => Some(f),
        _ => None,
    },
    sample: SnifferStats::default,
    families: &[
        Family::each(
            Desc::counter("netd_sniffer_packets", "Packets captured, by protocol.")
                .by(&["protocol"]),
            |f, put| by_protocol(f, put, |c| c.packets),
        ),
        Family::each(
            Desc::counter("netd_sniffer_bytes", "Bytes captured, by protocol.").by(&["protocol"]),
            |f, put| by_protocol(f, put, |c| c.bytes),
        ),
        Family::value(
            Desc::counter(
                "netd_sniffer_kernel_drops",
                "Packets the kernel dropped before netd read them.",
            ),
            |f| f.kernel_drops,
        ),
        Family::value(
            Desc::counter("netd_sniffer_alerts", "Alerts raised by the detectors."),
            |f| f.alerts,
        ),
        Family::value(
            Desc::counter(
                "netd_sniffer_fragments",
                "Captured IPv4/IPv6 fragments after the first (no transport header).",
            ),
            |f| f.fragments,
        ),
        Family::value(
            Desc::counter(
                "netd_sniffer_malformed",
                "Captured packets with a malformed IP header.",
            ),
            |f| f.malformed,
        ),
    ],
};
