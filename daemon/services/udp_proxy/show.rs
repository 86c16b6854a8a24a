//! How netctl shows a UDP proxy: its spec, its clients and what it dropped.

use serde_json::{Value, json};

use super::UdpProxy;
use crate::proto::{self, listener_stats::Detail};
use crate::services::show::{Part, Show, dur, faults_json, short};

impl Show for UdpProxy {
    type Stats = proto::UdpProxyStats;
    const STATS_KEY: &'static str = "udp_proxy";

    fn stats(detail: &Detail) -> Option<&Self::Stats> {
        if let Detail::UdpProxy(u) = detail {
            Some(u)
        } else {
            None
        }
    }

    fn spec_json(spec: &Self::Spec) -> Value {
        // Without `..`: a field added to the proto does not compile until
        // it is shown.
        let proto::UdpProxySpec {
            listen,
            upstream,
            max_clients,
            idle_timeout,
            faults,
            allow_privileged_sources,
            rate_limit,
            max_sources,
            max_clients_per_source,
        } = spec;
        json!({
            "listen": listen,
            "upstream": upstream,
            "max_clients": max_clients,
            "max_clients_per_source": max_clients_per_source,
            "idle_timeout": dur(idle_timeout),
            "allow_privileged_sources": allow_privileged_sources,
            "rate_limit": rate_limit,
            "max_sources": max_sources,
            "faults": faults_json(faults),
        })
    }

    fn spec_faults(spec: &Self::Spec) -> &[proto::Fault] {
        &spec.faults
    }

    fn stats_json(stats: &Self::Stats) -> Value {
        let proto::UdpProxyStats {
            clients_active,
            clients_total,
            clients_expired,
            clients_refused,
            upstream_errors,
            kernel_drops,
            own_source_drops,
            reflector_source_drops,
            rate_limited,
            sources_tracked,
            sources_evicted,
            source_clients_refused,
        } = stats;
        json!({
            "clients_active": clients_active,
            "clients_total": clients_total,
            "clients_expired": clients_expired,
            "clients_refused": clients_refused,
            "upstream_errors": upstream_errors,
            "kernel_drops": kernel_drops,
            "own_source_drops": own_source_drops,
            "reflector_source_drops": reflector_source_drops,
            "rate_limited": rate_limited,
            "sources_tracked": sources_tracked,
            "sources_evicted": sources_evicted,
            "source_clients_refused": source_clients_refused,
        })
    }

    fn stats_cell(u: &Self::Stats) -> Vec<String> {
        let mut parts = vec![format!("{} clients", u.clients_active)];
        parts.extend(
            [
                ("refused", u.clients_refused + u.source_clients_refused),
                ("upstream errors", u.upstream_errors),
                ("kernel-dropped", u.kernel_drops),
                ("rate-limited", u.rate_limited),
                (
                    "reflector-dropped",
                    u.reflector_source_drops + u.own_source_drops,
                ),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{} {what}", short(n))),
        );
        parts
    }

    fn status(u: &Self::Stats) -> Vec<Part> {
        vec![
            Part::line(
                "clients",
                format!(
                    "{} active, {} total, {} expired, {} refused (table full), {} refused (per-source cap)",
                    u.clients_active,
                    u.clients_total,
                    u.clients_expired,
                    u.clients_refused,
                    u.source_clients_refused
                ),
            ),
            Part::line(
                "dropped",
                format!(
                    "{} own source, {} reflector source, {} rate limited, {} by the kernel; {} upstream errors",
                    u.own_source_drops,
                    u.reflector_source_drops,
                    u.rate_limited,
                    u.kernel_drops,
                    u.upstream_errors
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
