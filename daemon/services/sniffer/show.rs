//! How netctl shows a sniffer: its spec, what it captured by protocol, its
//! flows and its busiest flows.

use serde_json::{Value, json};

use super::Sniffer;
use crate::proto::{self, listener_stats::Detail};
use crate::services::show::{Part, Show, bytes, dur, short};

impl Show for Sniffer {
    type Stats = proto::SnifferStats;
    const STATS_KEY: &'static str = "sniffer";

    fn stats(detail: &Detail) -> Option<&Self::Stats> {
        if let Detail::Sniffer(f) = detail {
            Some(f)
        } else {
            None
        }
    }

    fn spec_json(spec: &Self::Spec) -> Value {
        // Without `..`: a field added to the proto does not compile until
        // it is shown.
        let proto::SnifferSpec {
            interface,
            filter,
            pcap_path,
            pcap_max_bytes,
            pcap_max_files,
            max_flows,
            port_scan_ports,
            port_scan_window,
            syn_rate,
        } = spec;
        json!({
            "interface": interface,
            "filter": filter,
            "pcap_path": pcap_path,
            "pcap_max_bytes": pcap_max_bytes,
            "pcap_max_files": pcap_max_files,
            "max_flows": max_flows,
            "port_scan_ports": port_scan_ports,
            "port_scan_window": dur(port_scan_window),
            "syn_rate": syn_rate,
        })
    }

    fn stats_json(stats: &Self::Stats) -> Value {
        let proto::SnifferStats {
            tcp,
            udp,
            icmp,
            other,
            flows_active,
            flows_evicted,
            top_flows,
            kernel_drops,
            watcher_drops,
            pcap_packets,
            alerts,
            fragments,
            malformed,
            rings,
        } = stats;
        let pc = |p: &Option<proto::ProtocolCount>| {
            let p = p.unwrap_or_default();
            json!({"packets": p.packets, "bytes": p.bytes})
        };
        json!({
            "tcp": pc(tcp),
            "udp": pc(udp),
            "icmp": pc(icmp),
            "other": pc(other),
            "flows_active": flows_active,
            "flows_evicted": flows_evicted,
            "top_flows": top_flows.iter().map(flow_json).collect::<Vec<_>>(),
            "kernel_drops": kernel_drops,
            "watcher_drops": watcher_drops,
            "pcap_packets": pcap_packets,
            "alerts": alerts,
            "fragments": fragments,
            "malformed": malformed,
            "rings": rings,
        })
    }

    fn stats_cell(f: &Self::Stats) -> Vec<String> {
        let mut parts: Vec<String> = [
            ("tcp", &f.tcp),
            ("udp", &f.udp),
            ("icmp", &f.icmp),
            ("other", &f.other),
        ]
        .into_iter()
        .map(|(name, p)| (name, p.unwrap_or_default()))
        .filter(|(_, p)| p.packets > 0)
        .map(|(name, p)| format!("{name} {}/{}", short(p.packets), bytes(p.bytes)))
        .collect();
        if parts.is_empty() {
            parts.push("no packets".into());
        }
        parts.push(format!("{} flows", f.flows_active));
        if f.kernel_drops > 0 {
            parts.push(format!("{} dropped", short(f.kernel_drops)));
        }
        if f.alerts > 0 {
            parts.push(format!("{} alerts", f.alerts));
        }
        parts
    }

    fn status(f: &Self::Stats) -> Vec<Part> {
        let pc = |p: &Option<proto::ProtocolCount>| {
            let p = p.unwrap_or_default();
            format!("{} packets, {}", p.packets, bytes(p.bytes))
        };
        let mut parts = vec![
            Part::line(
                "captured",
                format!(
                    "tcp {}; udp {}; icmp {}; other {} (of these: {} later fragments, {} malformed)",
                    pc(&f.tcp),
                    pc(&f.udp),
                    pc(&f.icmp),
                    pc(&f.other),
                    f.fragments,
                    f.malformed
                ),
            ),
            Part::line(
                "flows",
                format!(
                    "{} active, {} evicted; kernel drops {}, watcher drops {}, pcap {} packets, alerts {}",
                    f.flows_active,
                    f.flows_evicted,
                    f.kernel_drops,
                    f.watcher_drops,
                    f.pcap_packets,
                    f.alerts
                ),
            ),
        ];
        if !f.top_flows.is_empty() {
            let rows = f
                .top_flows
                .iter()
                .map(|t| {
                    vec![
                        format!("  {}", t.protocol),
                        t.src.clone(),
                        t.dst.clone(),
                        t.packets.to_string(),
                        bytes(t.bytes),
                    ]
                })
                .collect();
            parts.push(Part::Table {
                title: "top flows",
                header: &["  PROTO", "SRC", "DST", "PACKETS", "BYTES"],
                rows,
            });
        }
        parts
    }
}

/// One of the busiest flows (when it was first and last seen is not shown).
fn flow_json(flow: &proto::FlowStats) -> Value {
    let proto::FlowStats {
        protocol,
        src,
        dst,
        packets,
        bytes: n,
        first_seen: _,
        last_seen: _,
    } = flow;
    json!({
        "protocol": protocol,
        "src": src,
        "dst": dst,
        "packets": packets,
        "bytes": n,
    })
}
