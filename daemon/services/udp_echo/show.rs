//! How netctl shows a UDP echo: its spec and what it dropped.

use serde_json::{Value, json};

use super::UdpEcho;
use crate::proto::{self, listener_stats::Detail};
use crate::services::show::{Part, Show, short};

impl Show for UdpEcho {
    type Stats = proto::UdpEchoStats;
    const STATS_KEY: &'static str = "udp_echo";

    fn stats(detail: &Detail) -> Option<&Self::Stats> {
        if let Detail::UdpEcho(u) = detail {
            Some(u)
        } else {
            None
        }
    }

    fn spec_json(spec: &Self::Spec) -> Value {
        // Without `..`: a field added to the proto does not compile until
        // it is shown.
        let proto::UdpEchoSpec {
            listen,
            prefix,
            allow_privileged_sources,
            rate_limit,
            max_sources,
            access_log,
        } = spec;
        json!({
            "listen": listen,
            "prefix": prefix,
            "allow_privileged_sources": allow_privileged_sources,
            "rate_limit": rate_limit,
            "max_sources": max_sources,
            "access_log": access_log.unwrap_or(true),
        })
    }

    fn stats_json(stats: &Self::Stats) -> Value {
        let proto::UdpEchoStats {
            own_source_drops,
            reflector_source_drops,
            rate_limited,
            truncated,
            kernel_drops,
            sources_tracked,
            sources_evicted,
        } = stats;
        json!({
            "own_source_drops": own_source_drops,
            "reflector_source_drops": reflector_source_drops,
            "rate_limited": rate_limited,
            "truncated": truncated,
            "kernel_drops": kernel_drops,
            "sources_tracked": sources_tracked,
            "sources_evicted": sources_evicted,
        })
    }

    fn stats_cell(u: &Self::Stats) -> Vec<String> {
        [
            ("rate-limited", u.rate_limited),
            ("truncated", u.truncated),
            ("kernel-dropped", u.kernel_drops),
            (
                "reflector-dropped",
                u.reflector_source_drops + u.own_source_drops,
            ),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{} {what}", short(n)))
        .collect()
    }

    fn status(u: &Self::Stats) -> Vec<Part> {
        vec![
            Part::line(
                "dropped",
                format!(
                    "{} own source, {} reflector source, {} rate limited, {} by the kernel; {} truncated",
                    u.own_source_drops,
                    u.reflector_source_drops,
                    u.rate_limited,
                    u.kernel_drops,
                    u.truncated
                ),
            ),
            Part::line(
                "sources",
                format!(
                    "{} tracked, {} evicted",
                    u.sources_tracked, u.sources_evicted
                ),
            ),
        ]
    }
}
