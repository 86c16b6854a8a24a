//! The UDP proxy's Prometheus families (see
//! [`crate::telemetry::families`]), read from its `UdpProxyStats`; its
//! faults' families are the fault model's.

use crate::proto::{UdpProxyStats, listener_stats::Detail};
use crate::services::source_guard::families::{DROPS, SOURCES, SOURCES_EVICTED};
use crate::telemetry::families::{Desc, Family, KindFamilies};

pub const FAMILIES: KindFamilies<UdpProxyStats> = KindFamilies {
    wrap: Detail::UdpProxy,
    unwrap: |d| match d {
        Detail::UdpProxy(u) => Some(u),
        _ => None,
    },
    sample: UdpProxyStats::default,
    families: &[
        // The datagram-source guard's families, shared with the UDP echo
        // (told apart by the kind label).
        Family::each(DROPS, |u, put| {
            for (reason, v) in [
                ("own_source", u.own_source_drops),
                ("reflector_source", u.reflector_source_drops),
                ("rate_limited", u.rate_limited),
                ("source_clients", u.source_clients_refused),
                ("kernel", u.kernel_drops),
            ] {
                put(&[reason], v);
            }
        }),
        Family::value(SOURCES, |u| u.sources_tracked),
        Family::value(SOURCES_EVICTED, |u| u.sources_evicted),
        Family::value(
            Desc::gauge(
                "netd_udp_proxy_clients",
                "Clients a UDP proxy has an upstream socket for.",
            ),
            |u| u.clients_active,
        ),
        Family::value(
            Desc::counter(
                "netd_udp_proxy_clients_expired",
                "UDP proxy clients forgotten after their idle timeout or evicted.",
            ),
            |u| u.clients_expired,
        ),
        Family::value(
            Desc::counter(
                "netd_udp_proxy_clients_refused",
                "Datagrams of new UDP proxy clients dropped: the client table was full.",
            ),
            |u| u.clients_refused,
        ),
        Family::value(
            Desc::counter(
                "netd_udp_proxy_upstream_errors",
                "Failed sends or receives on UDP proxy upstream sockets.",
            ),
            |u| u.upstream_errors,
        ),
    ],
};
