//! The HTTP API's Prometheus families (see [`crate::telemetry::families`]),
//! read from its `HttpStats`.

use crate::proto::{HttpStats, listener_stats::Detail};
use crate::telemetry::families::{Desc, Family, KindFamilies};

pub const FAMILIES: KindFamilies<HttpStats> = KindFamilies {
    wrap: Detail::Http,
    unwrap: |d| match d {
        Detail::Http(h) => Some(h),
        _ => None,
    },
    sample: HttpStats::default,
    families: &[
        Family::each(
            Desc::counter("netd_http_responses", "HTTP responses by status class.").by(&["class"]),
            |h, put| {
                for (class, v) in [
                    ("2xx", h.responses_2xx),
                    ("3xx", h.responses_3xx),
                    ("4xx", h.responses_4xx),
                    ("5xx", h.responses_5xx),
                ] {
                    put(&[class], v);
                }
            },
        ),
        Family::value(
            Desc::counter("netd_http_requests", "HTTP requests answered."),
            |h| h.requests,
        ),
        Family::value(
            Desc::counter(
                "netd_http_rate_limited",
                "HTTP requests refused with 429 by the rate limit (of the 4xx).",
            ),
            |h| h.rate_limited,
        ),
        Family::value(
            Desc::gauge(
                "netd_http_latency_p99_microseconds",
                "p99 request latency (histogram bucket bound).",
            ),
            |h| (h.latency_p99_ms * 1000.0) as u64,
        ),
    ],
};
