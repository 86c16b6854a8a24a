//! The TCP proxy's Prometheus families (see [`crate::telemetry::families`]),
//! read from its `ProxyStats`; its faults' families are the fault model's.

use crate::proto::{ProxyStats, UpstreamStatus, listener_stats::Detail};
use crate::telemetry::families::{Desc, Family, KindFamilies};

pub const FAMILIES: KindFamilies<ProxyStats> = KindFamilies {
    wrap: Detail::Proxy,
    unwrap: |d| match d {
        Detail::Proxy(p) => Some(p),
        _ => None,
    },
    // One upstream, so that its health has a series.
    sample: || ProxyStats {
        upstreams: vec![UpstreamStatus::default()],
        ..ProxyStats::default()
    },
    families: &[
        Family::value(
            Desc::counter(
                "netd_proxy_connect_failures",
                "Upstream connects that failed.",
            ),
            |p| p.connect_failures,
        ),
        Family::value(
            Desc::counter(
                "netd_proxy_connect_timeouts",
                "Upstream connects that timed out.",
            ),
            |p| p.connect_timeouts,
        ),
        Family::value(
            Desc::counter(
                "netd_proxy_pool_hits",
                "Clients served from a warm pooled connection.",
            ),
            |p| p.pool_hits,
        ),
        Family::value(
            Desc::counter(
                "netd_proxy_pool_misses",
                "Clients that found no warm connection.",
            ),
            |p| p.pool_misses,
        ),
        Family::value(
            Desc::counter(
                "netd_proxy_pool_stale",
                "Warm connections found closed and discarded.",
            ),
            |p| p.pool_stale,
        ),
        Family::each(
            Desc::gauge(
                "netd_proxy_upstream_healthy",
                "1 if the upstream is in rotation, 0 while backed off.",
            )
            .by(&["upstream"]),
            |p, put| {
                for u in &p.upstreams {
                    put(&[&u.addr], u64::from(u.healthy));
                }
            },
        ),
    ],
};
