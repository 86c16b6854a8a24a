//! How netctl shows an HTTP listener: its spec (never its token), its
//! responses by class and its latency.

use serde_json::{Value, json};

use super::Http;
use crate::proto::{self, listener_stats::Detail};
use crate::services::show::{Part, Show, dur, short, tls_server_json};

impl Show for Http {
    type Stats = proto::HttpStats;
    const STATS_KEY: &'static str = "http";

    fn stats(detail: &Detail) -> Option<&Self::Stats> {
        if let Detail::Http(h) = detail {
            Some(h)
        } else {
            None
        }
    }

    fn spec_json(spec: &Self::Spec) -> Value {
        // Without `..`: a field added to the proto does not compile until
        // it is shown.
        let proto::HttpSpec {
            listen,
            max_body_bytes,
            header_read_timeout,
            request_timeout,
            max_connections,
            token,
            rate_limit,
            body_budget_bytes,
            max_streams,
            max_header_bytes,
            idle_timeout,
            rate_limit_ipv6_prefix,
            access_log,
            tls,
        } = spec;
        let mut v = json!({
            "listen": listen,
            "max_body_bytes": max_body_bytes,
            "header_read_timeout": dur(header_read_timeout),
            "request_timeout": dur(request_timeout),
            "max_connections": max_connections,
            "auth": if token.is_empty() { "none" } else { "bearer token" },
            "rate_limit": if rate_limit.is_empty() { "none" } else { rate_limit.as_str() },
            "body_budget_bytes": body_budget_bytes,
            "max_streams": max_streams,
            "max_header_bytes": max_header_bytes,
            "idle_timeout": dur(idle_timeout),
            "rate_limit_ipv6_prefix": rate_limit_ipv6_prefix,
            "access_log": access_log.unwrap_or(true),
        });
        if let Some(t) = tls_server_json(tls.as_ref()) {
            v["tls"] = t;
        }
        v
    }

    fn stats_json(stats: &Self::Stats) -> Value {
        let proto::HttpStats {
            requests,
            responses_2xx,
            responses_3xx,
            responses_4xx,
            responses_5xx,
            unauthorized,
            rate_limited,
            latency_p50_ms,
            latency_p90_ms,
            latency_p99_ms,
            body_budget_refused,
            idle_closed,
        } = stats;
        json!({
            "requests": requests,
            "responses_2xx": responses_2xx,
            "responses_3xx": responses_3xx,
            "responses_4xx": responses_4xx,
            "responses_5xx": responses_5xx,
            "unauthorized": unauthorized,
            "rate_limited": rate_limited,
            "body_budget_refused": body_budget_refused,
            "idle_closed": idle_closed,
            "latency_p50_ms": latency_p50_ms,
            "latency_p90_ms": latency_p90_ms,
            "latency_p99_ms": latency_p99_ms,
        })
    }

    fn stats_cell(h: &Self::Stats) -> Vec<String> {
        let mut parts = vec![format!(
            "2xx {} 3xx {} 4xx {} 5xx {}",
            short(h.responses_2xx),
            short(h.responses_3xx),
            short(h.responses_4xx),
            short(h.responses_5xx)
        )];
        if h.requests > 0 {
            parts.push(format!("p99 {:.1}ms", h.latency_p99_ms));
        }
        parts
    }

    fn status(h: &Self::Stats) -> Vec<Part> {
        vec![
            Part::line(
                "requests",
                format!(
                    "{} total: {} 2xx, {} 3xx, {} 4xx ({} unauthorized, {} rate limited), {} 5xx ({} over the body budget)",
                    h.requests,
                    h.responses_2xx,
                    h.responses_3xx,
                    h.responses_4xx,
                    h.unauthorized,
                    h.rate_limited,
                    h.responses_5xx,
                    h.body_budget_refused
                ),
            ),
            Part::line(
                "latency",
                format!(
                    "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
                    h.latency_p50_ms, h.latency_p90_ms, h.latency_p99_ms
                ),
            ),
        ]
    }
}
