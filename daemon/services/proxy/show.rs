//! How netctl shows a TCP proxy: its spec, its connects and pool, and each
//! upstream's health.

use serde_json::{Value, json};

use super::Proxy;
use crate::proto::{self, listener_stats::Detail};
use crate::services::show::{
    Part, Show, dur, faults_json, short, tls_client_json, tls_server_json,
};

impl Show for Proxy {
    type Stats = proto::ProxyStats;
    const STATS_KEY: &'static str = "proxy";

    fn stats(detail: &Detail) -> Option<&Self::Stats> {
        if let Detail::Proxy(p) = detail {
            Some(p)
        } else {
            None
        }
    }

    fn spec_json(spec: &Self::Spec) -> Value {
        // Without `..`: a field added to the proto does not compile until
        // it is shown.
        let proto::ProxySpec {
            listen,
            upstreams,
            preconnect,
            connect_timeout,
            idle_timeout,
            max_connections,
            upstream_backoff,
            resolve_interval,
            access_log,
            faults,
            tls,
            upstream_tls,
        } = spec;
        let mut v = json!({
            "listen": listen,
            "upstreams": upstreams,
            "preconnect": preconnect,
            "connect_timeout": dur(connect_timeout),
            "idle_timeout": dur(idle_timeout),
            "max_connections": max_connections,
            "upstream_backoff": dur(upstream_backoff),
            "resolve_interval": dur(resolve_interval),
            "access_log": access_log.unwrap_or(true),
            "faults": faults_json(faults),
        });
        if let Some(t) = tls_server_json(tls.as_ref()) {
            v["tls"] = t;
        }
        if let Some(t) = tls_client_json(upstream_tls.as_ref()) {
            v["upstream_tls"] = t;
        }
        v
    }

    fn spec_faults(spec: &Self::Spec) -> &[proto::Fault] {
        &spec.faults
    }

    fn stats_json(stats: &Self::Stats) -> Value {
        let proto::ProxyStats {
            connect_failures,
            connect_timeouts,
            pool_hits,
            pool_misses,
            pool_stale,
            upstreams,
            resolve_failures,
            resolves,
        } = stats;
        json!({
            "connect_failures": connect_failures,
            "connect_timeouts": connect_timeouts,
            "pool_hits": pool_hits,
            "pool_misses": pool_misses,
            "pool_stale": pool_stale,
            "resolve_failures": resolve_failures,
            "resolves": resolves,
            "upstreams": upstreams.iter().map(upstream_json).collect::<Vec<_>>(),
        })
    }

    fn stats_cell(p: &Self::Stats) -> Vec<String> {
        let up = p.upstreams.iter().filter(|u| u.healthy).count();
        let mut parts = vec![format!("{up}/{} up", p.upstreams.len())];
        if p.connect_failures + p.connect_timeouts > 0 {
            parts.push(format!(
                "{} connect failed",
                short(p.connect_failures + p.connect_timeouts)
            ));
        }
        if p.pool_hits > 0 {
            parts.push(format!("{} pooled", short(p.pool_hits)));
        }
        parts
    }

    fn status(p: &Self::Stats) -> Vec<Part> {
        let mut parts = vec![Part::line(
            "connects",
            format!(
                "{} failed, {} timed out; pool {} hits, {} misses, {} stale",
                p.connect_failures, p.connect_timeouts, p.pool_hits, p.pool_misses, p.pool_stale
            ),
        )];
        if p.resolve_failures > 0 {
            parts.push(Part::line(
                "lookups",
                format!("{} failed (last good addresses kept)", p.resolve_failures),
            ));
        }
        let rows = p
            .upstreams
            .iter()
            .map(|u| {
                vec![
                    format!("  {}", u.addr),
                    if u.healthy { "healthy" } else { "down" }.into(),
                    u.connections.to_string(),
                    u.connect_failures.to_string(),
                    u.pool_idle.to_string(),
                    if u.last_error.is_empty() {
                        "-".into()
                    } else {
                        u.last_error.clone()
                    },
                ]
            })
            .collect();
        parts.push(Part::Table {
            title: "upstreams",
            header: &[
                "  ADDR",
                "HEALTH",
                "CONNS",
                "FAILURES",
                "WARM",
                "LAST_ERROR",
            ],
            rows,
        });
        parts
    }
}

/// One upstream's health and counters.
pub(crate) fn upstream_json(upstream: &proto::UpstreamStatus) -> Value {
    let proto::UpstreamStatus {
        addr,
        healthy,
        connections,
        connect_failures,
        last_error,
        pool_idle,
    } = upstream;
    json!({
        "addr": addr,
        "healthy": healthy,
        "connections": connections,
        "connect_failures": connect_failures,
        "last_error": last_error,
        "pool_idle": pool_idle,
    })
}
