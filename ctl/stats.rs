//! `netctl stats` and `netctl events`: render stats samples and lifecycle
//! events as tables, lines or JSON lines.
//!
//! A WatchStats stream sends a snapshot and then only what changed; a
//! [`View`] keeps the last row of every listener so that each tick is shown
//! (and printed as JSON) whole, with rates 0 for the listeners that did not
//! change.

use crate::render::{out, outln};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use netd::proto::{self, ListenerKind, ListenerState, StatsSample};
use netd::services::show;
use serde_json::{Value, json};

use crate::escape::escape;
use crate::output::{bytes, table};

pub fn time(t: Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

fn rate(v: f64) -> String {
    if v < 1024.0 {
        format!("{v:.0} B/s")
    } else {
        format!("{}/s", bytes(v as u64))
    }
}

fn per_sec(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}/s")
    } else {
        format!("{v:.1}/s")
    }
}

pub fn sample_json(s: &StatsSample) -> Value {
    let listeners: Vec<Value> = s
        .listeners
        .iter()
        .map(|l| {
            let t = l.totals.clone().unwrap_or_default();
            json!({
                "name": l.name,
                "kind": ListenerKind::try_from(l.kind).unwrap_or_default().slug(),
                "state": ListenerState::try_from(l.state).unwrap_or_default().slug(),
                "totals": crate::output::stats_json(&t),
                "rates": l.rates.map(|r| json!({
                    "connections_per_sec": r.connections_per_sec,
                    "bytes_in_per_sec": r.bytes_in_per_sec,
                    "bytes_out_per_sec": r.bytes_out_per_sec,
                    "datagrams_in_per_sec": r.datagrams_in_per_sec,
                    "datagrams_out_per_sec": r.datagrams_out_per_sec,
                    "errors_per_sec": r.errors_per_sec,
                })),
            })
        })
        .collect();
    json!({
        "time": time(s.time),
        "seq": s.seq,
        "dropped_samples": s.dropped_samples,
        "elapsed_ms": s.elapsed.and_then(|d| std::time::Duration::try_from(d).ok()).map(|d| d.as_secs_f64() * 1000.0),
        "listeners": listeners,
    })
}

/// The columns of `netctl stats`. A column a kind has no figure for reads
/// "-" (connections of a UDP or capture kind, datagrams of a TCP kind);
/// DETAIL holds the kind's own figures.
pub const HEADER: [&str; 12] = [
    "NAME",
    "KIND",
    "STATE",
    "ACTIVE",
    "CONNS",
    "DGRAMS",
    "IN",
    "OUT",
    "IN/s",
    "OUT/s",
    "CONN|DGRAM/s",
    "DETAIL",
];

/// The DETAIL cell: what only this kind counts (each kind says what, see
/// [`show::stats_cell`]), or "-".
pub fn detail(t: &proto::ListenerStats) -> String {
    let mut parts = t.detail.as_ref().map(show::stats_cell).unwrap_or_default();
    parts.extend(t.tls.as_ref().map(show::tls_cell));
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// One row of [`HEADER`] cells per listener of a sample.
pub fn rows(s: &StatsSample) -> Vec<Vec<String>> {
    s.listeners
        .iter()
        .map(|l| {
            let t = l.totals.clone().unwrap_or_default();
            let kind = ListenerKind::try_from(l.kind).unwrap_or_default();
            let (rin, rout, revents) = match &l.rates {
                Some(r) => {
                    // A listener counts connections (TCP kinds) or
                    // datagrams/packets (UDP and capture kinds), never both:
                    // the sum is whichever it has, with no list of kinds.
                    let events = r.connections_per_sec + r.datagrams_in_per_sec;
                    (
                        rate(r.bytes_in_per_sec),
                        rate(r.bytes_out_per_sec),
                        per_sec(events),
                    )
                }
                None => ("-".into(), "-".into(), "-".into()),
            };
            let (active, conns, dgrams) = if show::counts_connections(kind) {
                (
                    t.connections_active.to_string(),
                    t.connections_total.to_string(),
                    "-".to_string(),
                )
            } else {
                ("-".into(), "-".into(), t.datagrams_in.to_string())
            };
            vec![
                l.name.clone(),
                kind.slug().into(),
                ListenerState::try_from(l.state)
                    .unwrap_or_default()
                    .slug()
                    .into(),
                active,
                conns,
                dgrams,
                bytes(t.bytes_in),
                bytes(t.bytes_out),
                rin,
                rout,
                revents,
                detail(&t),
            ]
        })
        .collect()
}

/// What a WatchStats stream has said so far: the last row of every
/// listener.
#[derive(Default)]
pub struct View {
    rows: BTreeMap<String, proto::ListenerStatsSample>,
    /// Inside a tick split over several messages.
    mid_tick: bool,
    /// The daemon sends changes only (it marked its snapshot complete); an
    /// older one sends every listener every tick.
    deltas: bool,
}

impl View {
    /// Take one message of the stream; when it ends a tick, the whole
    /// picture at that tick (every listener, sorted by name; those not in
    /// the tick keep their totals with rates 0).
    pub fn apply(&mut self, s: StatsSample) -> Option<StatsSample> {
        let tick_start = !self.mid_tick;
        if tick_start && !self.deltas {
            // A daemon that sends whole ticks: start over each tick.
            self.rows.clear();
        }
        if tick_start && s.elapsed.is_some() {
            let idle = proto::ListenerRates::default();
            for r in self.rows.values_mut() {
                r.rates = Some(idle);
            }
        }
        for n in &s.removed {
            self.rows.remove(n);
        }
        for l in s.listeners {
            self.rows.insert(l.name.clone(), l);
        }
        self.deltas |= s.snapshot_complete;
        self.mid_tick = s.more;
        if s.more {
            return None;
        }
        Some(StatsSample {
            time: s.time,
            elapsed: s.elapsed,
            seq: s.seq,
            dropped_samples: s.dropped_samples,
            listeners: self.rows.values().cloned().collect(),
            ..Default::default()
        })
    }
}

/// Print one sample as a table.
pub fn print_table(s: &StatsSample) {
    print_table_with(s, None);
}

/// The header of the sparkline column `netctl stats --watch` adds on a
/// terminal (before DETAIL), and its width in blocks (3 s each).
pub const SPARK_HEADER: &str = "LAST 1m";
pub const SPARK_WIDTH: usize = 20;

/// Print one sample as a table; with `spark`, a sparkline column of each
/// listener's last minute before DETAIL.
fn print_table_with(s: &StatsSample, spark: Option<&crate::spark::Histories>) {
    if s.listeners.is_empty() {
        outln!("no listeners");
        return;
    }
    match spark {
        None => table(&HEADER, &rows(s)),
        Some(h) => {
            let at = HEADER.len() - 1;
            let mut header = HEADER.to_vec();
            header.insert(at, SPARK_HEADER);
            let now = crate::spark::sample_secs(s);
            let rows: Vec<Vec<String>> = rows(s)
                .into_iter()
                .zip(&s.listeners)
                .map(|(mut r, l)| {
                    let line = h
                        .get(&l.name)
                        .map_or_else(|| " ".repeat(SPARK_WIDTH), |h| h.render(SPARK_WIDTH, now));
                    r.insert(at, line);
                    r
                })
                .collect();
            table(&header, &rows);
        }
    }
    print_faults(s);
}

/// Each fault's counters, under the listeners' table (when any listener
/// has faults).
fn print_faults(s: &StatsSample) {
    let rows: Vec<Vec<String>> = s
        .listeners
        .iter()
        .flat_map(|l| {
            l.totals.iter().flat_map(|t| &t.faults).map(|f| {
                vec![
                    l.name.clone(),
                    f.name.clone(),
                    f.r#type.clone(),
                    if f.active { "yes" } else { "no" }.to_string(),
                    crate::cmd::fault::counters(f),
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        outln!();
        table(&["LISTENER", "FAULT", "TYPE", "ACTIVE", "COUNTERS"], &rows);
    }
}

/// Renders a stream of samples: redraws in place on a terminal, else one
/// line per listener per sample with a time column (header once).
/// On a terminal, a sparkline column of the last minute (unless
/// `--no-spark`); the line form and JSON have none.
pub struct Watcher {
    tty: bool,
    header_done: bool,
    interval: std::time::Duration,
    spark: Option<crate::spark::Histories>,
}

impl Watcher {
    pub fn new(interval: std::time::Duration, spark: bool) -> Self {
        let tty = std::io::stdout().is_terminal();
        Watcher {
            tty,
            header_done: false,
            interval,
            spark: (tty && spark).then(crate::spark::Histories::default),
        }
    }

    pub fn show(&mut self, s: &StatsSample) {
        if self.tty {
            // Home the cursor and clear the screen, then draw.
            out!("\x1b[H\x1b[2J");
            outln!(
                "netd stats every {} at {}{} (Ctrl-C to quit)\n",
                humantime::format_duration(self.interval),
                time(s.time),
                if s.dropped_samples > 0 {
                    format!(", {} samples dropped", s.dropped_samples)
                } else {
                    String::new()
                }
            );
            if let Some(h) = &mut self.spark {
                h.update(s);
            }
            print_table_with(s, self.spark.as_ref());
        } else {
            let mut header = vec!["TIME"];
            header.extend_from_slice(&HEADER);
            let t = time(s.time);
            let rows: Vec<Vec<String>> = rows(s)
                .into_iter()
                .map(|r| std::iter::once(t.clone()).chain(r).collect())
                .collect();
            if !self.header_done {
                outln!("{}", header.join("\t"));
                self.header_done = true;
            }
            for r in rows {
                let cells: Vec<_> = r.iter().map(|c| escape(c)).collect();
                outln!("{}", cells.join("\t"));
            }
        }
        let _ = std::io::stdout().flush();
    }
}

pub fn event_json(e: &proto::Event) -> Value {
    json!({
        "time": time(e.time),
        "kind": event_kind(e),
        "listener": e.listener,
        "listener_kind": ListenerKind::try_from(e.listener_kind).unwrap_or_default().slug(),
        "message": e.message,
    })
}

fn event_kind(e: &proto::Event) -> &'static str {
    match proto::EventKind::try_from(e.kind).unwrap_or_default() {
        proto::EventKind::Unspecified => "unspecified",
        proto::EventKind::Started => "started",
        proto::EventKind::Stopped => "stopped",
        proto::EventKind::Failed => "failed",
        proto::EventKind::Restarted => "restarted",
        proto::EventKind::EventsDropped => "events_dropped",
        proto::EventKind::Alert => "alert",
        proto::EventKind::Updated => "updated",
        proto::EventKind::Draining => "draining",
        proto::EventKind::Reloaded => "reloaded",
        proto::EventKind::ReloadFailed => "reload_failed",
        proto::EventKind::FaultAdded => "fault_added",
        proto::EventKind::FaultUpdated => "fault_updated",
        proto::EventKind::FaultRemoved => "fault_removed",
    }
}

/// The column an event's kind is padded to: the longest kind
/// ("events_dropped"), so the listener column lines up for every kind.
const EVENT_KIND_WIDTH: usize = 14;

pub fn event_line(e: &proto::Event) -> String {
    let who = if e.listener.is_empty() {
        String::from("-")
    } else {
        format!(
            "{} ({})",
            escape(&e.listener),
            ListenerKind::try_from(e.listener_kind)
                .unwrap_or_default()
                .slug()
        )
    };
    format!(
        "{}  {:<EVENT_KIND_WIDTH$} {}: {}",
        time(e.time),
        event_kind(e),
        who,
        escape(&e.message)
    )
}

/// One captured packet, tcpdump-style.
pub fn packet_line(p: &proto::PacketSummary) -> String {
    let t = p
        .time
        .and_then(|t| SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_micros(t).to_string())
        .unwrap_or_default();
    let flags = if p.tcp_flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", escape(&p.tcp_flags))
    };
    let lost = if p.dropped_before > 0 {
        format!(
            "  ({} packets not shown: reader too slow)",
            p.dropped_before
        )
    } else {
        String::new()
    };
    format!(
        "{t} {} {} > {}{flags} length {}{lost}",
        escape(&p.protocol.to_uppercase()),
        escape(&p.src),
        escape(&p.dst),
        p.length
    )
}

pub fn packet_json(p: &proto::PacketSummary) -> Value {
    json!({
        "time": time(p.time),
        "protocol": p.protocol,
        "src": p.src,
        "dst": p.dst,
        "length": p.length,
        "tcp_flags": p.tcp_flags,
        "dropped_before": p.dropped_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event kind fits its column, so the listener column lines up
    /// (it did not for fault_updated and reload_failed).
    #[test]
    fn event_kinds_fit_their_column() {
        let mut seen = 0;
        for k in 0..=i32::from(u8::MAX) {
            let Ok(kind) = proto::EventKind::try_from(k) else {
                continue;
            };
            seen += 1;
            let e = proto::Event {
                kind: kind as i32,
                listener: "l".into(),
                ..Default::default()
            };
            assert!(
                event_kind(&e).len() <= EVENT_KIND_WIDTH,
                "{} is wider than {EVENT_KIND_WIDTH}",
                event_kind(&e)
            );
            let line = event_line(&e);
            let (_, rest) = line.split_once("  ").expect("time, then the kind");
            assert_eq!(
                rest.find("l (").expect("the listener"),
                EVENT_KIND_WIDTH + 1,
                "{line}"
            );
        }
        assert!(seen > 10, "only {seen} event kinds");
    }
}
