//! The detail pane of `netctl top`: the selected listener's own figures,
//! by kind (from `ListenerStats.detail`), its faults with their counters,
//! and its recent events.

use netd::proto::{self, listener_stats::Detail};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use super::model::{self, HostState};
use crate::escape::escape;
use crate::output::bytes;

/// Flows shown for a sniffer.
const TOP_FLOWS: usize = 5;

fn title(s: &str) -> Line<'static> {
    Line::from(Span::styled(
        s.to_string(),
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

fn plain(s: String) -> Line<'static> {
    Line::from(s)
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.1}ms")
    }
}

/// Every line of the pane for listener `l` of `host`.
pub fn lines(host: &HostState, l: &proto::ListenerStatsSample) -> Vec<Line<'static>> {
    let kind = model::kind_of(l);
    let mut out = vec![title(&format!(
        "{} ({}, {})",
        escape(&l.name),
        kind.slug(),
        model::state_of(l).slug()
    ))];
    if let Some(lab) = host.labels.get(&l.name) {
        out.push(plain(format!("labels {}", escape(lab))));
    }
    let t = l.totals.clone().unwrap_or_default();
    out.push(plain(format!(
        "total in {} out {}, conns {} (active {}, refused {}), dgrams {}/{}, errors {}",
        bytes(t.bytes_in),
        bytes(t.bytes_out),
        t.connections_total,
        t.connections_active,
        t.connections_refused,
        t.datagrams_in,
        t.datagrams_out,
        t.errors
    )));
    match &t.detail {
        Some(Detail::Proxy(p)) => proxy(&mut out, p),
        Some(Detail::Http(h)) => http(&mut out, h),
        Some(Detail::HttpProxy(h)) => http_proxy(&mut out, h),
        Some(Detail::UdpProxy(u)) => udp_proxy(&mut out, u),
        Some(Detail::UdpEcho(u)) => out.push(plain(format!(
            "drops: own source {}, reflector {}, rate limited {}, kernel {}; truncated {}",
            u.own_source_drops,
            u.reflector_source_drops,
            u.rate_limited,
            u.kernel_drops,
            u.truncated
        ))),
        Some(Detail::Sniffer(s)) => sniffer(&mut out, s),
        None => {}
    }
    faults(&mut out, host, l, &t.faults);
    events(&mut out, host, &l.name);
    out
}

fn upstreams(out: &mut Vec<Line<'static>>, ups: &[proto::UpstreamStatus]) {
    out.push(title("upstreams"));
    if ups.is_empty() {
        out.push(plain("  (none)".into()));
    }
    for u in ups {
        let (word, color) = if u.healthy {
            ("healthy", Color::Green)
        } else {
            ("DOWN", Color::Red)
        };
        let mut spans = vec![
            Span::raw(format!("  {} ", escape(&u.addr))),
            Span::styled(word, Style::default().fg(color)),
            Span::raw(format!(
                " conns {} fails {} pool idle {}",
                u.connections, u.connect_failures, u.pool_idle
            )),
        ];
        if !u.last_error.is_empty() {
            spans.push(Span::raw(format!(" ({})", escape(&u.last_error))));
        }
        out.push(Line::from(spans));
    }
}

fn proxy(out: &mut Vec<Line<'static>>, p: &proto::ProxyStats) {
    out.push(plain(format!(
        "connect failures {} timeouts {}; pool hits {} misses {} stale {}",
        p.connect_failures, p.connect_timeouts, p.pool_hits, p.pool_misses, p.pool_stale
    )));
    upstreams(out, &p.upstreams);
}

fn http(out: &mut Vec<Line<'static>>, h: &proto::HttpStats) {
    out.push(plain(format!(
        "requests {}: 2xx {} 3xx {} 4xx {} 5xx {} (401 {}, 429 {})",
        h.requests,
        h.responses_2xx,
        h.responses_3xx,
        h.responses_4xx,
        h.responses_5xx,
        h.unauthorized,
        h.rate_limited
    )));
    out.push(plain(format!(
        "latency p50 {} p90 {} p99 {}",
        ms(h.latency_p50_ms),
        ms(h.latency_p90_ms),
        ms(h.latency_p99_ms)
    )));
}

fn http_proxy(out: &mut Vec<Line<'static>>, h: &proto::HttpProxyStats) {
    out.push(plain(format!(
        "requests {}: 1xx {} 2xx {} 3xx {} 4xx {} 5xx {}",
        h.requests,
        h.responses_1xx,
        h.responses_2xx,
        h.responses_3xx,
        h.responses_4xx,
        h.responses_5xx
    )));
    out.push(plain(format!(
        "latency p50 {} p90 {} p99 {}; upstream errors {} timeouts {} retries {}",
        ms(h.latency_p50_ms),
        ms(h.latency_p90_ms),
        ms(h.latency_p99_ms),
        h.upstream_errors,
        h.upstream_timeouts,
        h.retries
    )));
    if !h.routes.is_empty() {
        out.push(title("routes"));
        for r in &h.routes {
            out.push(plain(format!(
                "  {} requests {} 2xx {} 4xx {} 5xx {} p50 {} p99 {}",
                escape(&r.route),
                r.requests,
                r.responses_2xx,
                r.responses_4xx,
                r.responses_5xx,
                ms(r.latency_p50_ms),
                ms(r.latency_p99_ms)
            )));
        }
    }
    upstreams(out, &h.upstreams);
}

fn udp_proxy(out: &mut Vec<Line<'static>>, u: &proto::UdpProxyStats) {
    out.push(plain(format!(
        "clients active {} total {} expired {} refused {}",
        u.clients_active, u.clients_total, u.clients_expired, u.clients_refused
    )));
    out.push(plain(format!(
        "drops: kernel {}, own source {}, reflector {}, rate limited {}, per-source {}; upstream errors {}",
        u.kernel_drops,
        u.own_source_drops,
        u.reflector_source_drops,
        u.rate_limited,
        u.source_clients_refused,
        u.upstream_errors
    )));
}

fn sniffer(out: &mut Vec<Line<'static>>, s: &proto::SnifferStats) {
    let p = |c: &Option<proto::ProtocolCount>| {
        let c = c.unwrap_or_default();
        format!("{} pkts {}", c.packets, bytes(c.bytes))
    };
    out.push(plain(format!(
        "tcp {}, udp {}, icmp {}, other {}",
        p(&s.tcp),
        p(&s.udp),
        p(&s.icmp),
        p(&s.other)
    )));
    out.push(plain(format!(
        "kernel drops {}, watcher drops {}, flows {} (evicted {}), alerts {}",
        s.kernel_drops, s.watcher_drops, s.flows_active, s.flows_evicted, s.alerts
    )));
    if !s.top_flows.is_empty() {
        out.push(title("top flows"));
        for f in s.top_flows.iter().take(TOP_FLOWS) {
            out.push(plain(format!(
                "  {} {} > {} {} pkts {}",
                escape(&f.protocol),
                escape(&f.src),
                escape(&f.dst),
                f.packets,
                bytes(f.bytes)
            )));
        }
    }
}

fn faults(
    out: &mut Vec<Line<'static>>,
    host: &HostState,
    l: &proto::ListenerStatsSample,
    faults: &[proto::FaultStats],
) {
    if faults.is_empty() {
        return;
    }
    let firing = host.firing(&l.name);
    out.push(title(if firing { "faults (firing)" } else { "faults" }));
    for (n, f) in faults.iter().enumerate() {
        out.push(plain(format!(
            "  {}. {} ({}{}) {}",
            n + 1,
            escape(&f.name),
            f.r#type,
            if f.active { "" } else { ", outside its window" },
            crate::cmd::fault::counters(f)
        )));
    }
}

fn events(out: &mut Vec<Line<'static>>, host: &HostState, name: &str) {
    let Some(q) = host.events.get(name) else {
        return;
    };
    out.push(title("recent events"));
    for e in q.iter().rev() {
        out.push(plain(format!("  {}", crate::stats::event_line(e))));
    }
}
