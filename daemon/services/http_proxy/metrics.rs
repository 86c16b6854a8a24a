//! The http-proxy's Prometheus families (see [`crate::telemetry::families`]),
//! read from its `HttpProxyStats`.

use crate::proto::{HttpProxyStats, listener_stats::Detail};
use crate::telemetry::families::{Desc, Family, KindFamilies};

pub const FAMILIES: KindFamilies<HttpProxyStats> = KindFamilies {
    wrap: Detail::HttpProxy,
    unwrap: |d| match d {
        Detail::HttpProxy(h) => Some(h),
        _ => None,
    },
    sample: HttpProxyStats::default,
    families: &[
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
    ],
};
