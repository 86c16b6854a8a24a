//! The http-proxy's Prometheus families (see [`crate::telemetry::families`]),
//! read from its `HttpProxyStats`: requests by route and status class, a
//! latency histogram per route, what went wrong upstream, and each
//! upstream's health. Its faults' families are the fault model's.

use super::routes::BUCKETS;
use crate::proto::{HttpProxyStats, HttpRouteStats, UpstreamStatus, listener_stats::Detail};
use crate::telemetry::families::{Buckets, Desc, Family, KindFamilies};

pub const FAMILIES: KindFamilies<HttpProxyStats> = KindFamilies {
    wrap: Detail::HttpProxy,
    unwrap: |d| match d {
        Detail::HttpProxy(h) => Some(h),
        _ => None,
    },
    // A route and an upstream, so that every family has a series.
    sample: || HttpProxyStats {
        routes: vec![HttpRouteStats {
            route: "/".into(),
            ..HttpRouteStats::default()
        }],
        upstreams: vec![UpstreamStatus::default()],
        ..HttpProxyStats::default()
    },
    families: &[
        Family::value(
            Desc::counter(
                "netd_http_proxy_requests",
                "Requests the HTTP proxy answered (by an upstream, a fault or netd).",
            ),
            |h| h.requests,
        ),
        Family::each(
            Desc::counter(
                "netd_http_proxy_responses",
                "HTTP proxy responses by route and status class.",
            )
            .by(&["route", "class"]),
            |h, put| {
                for r in &h.routes {
                    for (class, v) in [
                        ("1xx", r.responses_1xx),
                        ("2xx", r.responses_2xx),
                        ("3xx", r.responses_3xx),
                        ("4xx", r.responses_4xx),
                        ("5xx", r.responses_5xx),
                    ] {
                        put(&[&r.route, class], v);
                    }
                }
            },
        ),
        Family::histograms(
            Desc::histogram(
                "netd_http_proxy_request_duration_seconds",
                "Time from a request's arrival to its response's headers, by route.",
            )
            .by(&["route"]),
            |h, put| {
                for r in &h.routes {
                    put(
                        &[&r.route],
                        Buckets {
                            bounds: &BUCKETS,
                            cumulative: &r.latency_buckets,
                            count: r.requests,
                            sum: r.latency_sum_seconds,
                        },
                    );
                }
            },
        ),
        Family::value(
            Desc::counter(
                "netd_http_proxy_upstream_errors",
                "Requests the HTTP proxy answered 502 (no upstream, or it failed).",
            ),
            |h| h.upstream_errors,
        ),
        Family::value(
            Desc::counter(
                "netd_http_proxy_upstream_timeouts",
                "Requests the HTTP proxy answered 504 (no answer within request_timeout).",
            ),
            |h| h.upstream_timeouts,
        ),
        Family::value(
            Desc::counter(
                "netd_http_proxy_retries",
                "Requests the HTTP proxy sent again to another upstream after a failed connect.",
            ),
            |h| h.retries,
        ),
        Family::value(
            Desc::counter(
                "netd_http_proxy_upgrades",
                "Upgraded connections (WebSocket and others) the HTTP proxy passed through.",
            ),
            |h| h.upgrades,
        ),
        Family::value(
            Desc::counter(
                "netd_http_proxy_too_large",
                "Requests the HTTP proxy refused by its limits (413 body, 431 headers).",
            ),
            |h| h.too_large,
        ),
        Family::value(
            Desc::counter(
                "netd_http_proxy_envoy_header_faults",
                "Faults an HTTP proxy applied because of Envoy's x-envoy-fault-* request headers.",
            ),
            |h| h.envoy_header_faults,
        ),
        Family::each(
            Desc::gauge(
                "netd_http_proxy_upstream_healthy",
                "1 if the HTTP proxy's upstream is in rotation, 0 while backed off.",
            )
            .by(&["upstream"]),
            |h, put| {
                for u in &h.upstreams {
                    put(&[&u.addr], u64::from(u.healthy));
                }
            },
        ),
        Family::each(
            Desc::counter(
                "netd_http_proxy_upstream_requests",
                "Requests the HTTP proxy sent to the upstream (retries included).",
            )
            .by(&["upstream"]),
            |h, put| {
                for u in &h.upstreams {
                    put(&[&u.addr], u.connections);
                }
            },
        ),
        Family::each(
            Desc::counter(
                "netd_http_proxy_upstream_connect_failures",
                "Connects to the HTTP proxy's upstream that failed (each marks it down for upstream_backoff).",
            )
            .by(&["upstream"]),
            |h, put| {
                for u in &h.upstreams {
                    put(&[&u.addr], u.connect_failures);
                }
            },
        ),
    ],
};
