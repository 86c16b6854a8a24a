//! The UDP echo's Prometheus families (see [`crate::telemetry::families`]),
//! read from its `UdpEchoStats`.

use crate::proto::{UdpEchoStats, listener_stats::Detail};
use crate::services::source_guard::families::{DROPS, SOURCES, SOURCES_EVICTED};
use crate::telemetry::families::{Desc, Family, KindFamilies};

pub const FAMILIES: KindFamilies<UdpEchoStats> = KindFamilies {
    wrap: Detail::UdpEcho,
    unwrap: |d| match d {
        Detail::UdpEcho(u) => Some(u),
        _ => None,
    },
    sample: UdpEchoStats::default,
    families: &[
        Family::each(DROPS, |u, put| {
            for (reason, v) in [
                ("own_source", u.own_source_drops),
                ("reflector_source", u.reflector_source_drops),
                ("rate_limited", u.rate_limited),
                ("kernel", u.kernel_drops),
            ] {
                put(&[reason], v);
            }
        }),
        Family::value(
            Desc::counter(
                "netd_udp_echo_truncated",
                "UDP echo replies cut to the reply size cap.",
            ),
            |u| u.truncated,
        ),
        Family::value(SOURCES, |u| u.sources_tracked),
        Family::value(SOURCES_EVICTED, |u| u.sources_evicted),
    ],
};
