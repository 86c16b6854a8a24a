//! Server-streaming of stats samples and lifecycle events.
//!
//! A stats watch is a lazy stream: it reads the counters only when the
//! client is ready for the next message (gRPC flow control stops polling it
//! otherwise), so a slow or stalled client costs a bounded amount of memory
//! (the HTTP/2 windows) and no work at all on the data path. Ticks are
//! anchored at the start of the watch; a client that falls behind skips to
//! the newest tick, the skipped ones are counted in `dropped_samples`, and
//! since every sample carries totals read at its own time, totals stay exact.
//! Rates are computed over the real time between the two samples.
//!
//! After the snapshot, a tick sends only what changed since the previous
//! tick sent: listeners whose totals or state differ (new ones included)
//! and the names of those gone. A tick in which nothing changed is still
//! one message, with no listeners: about 30 bytes on the wire, so 10,000
//! idle listeners cost the same as one. We send it rather than nothing so
//! that a client sees the watch is alive, can tell "idle" (rates 0) from
//! "stalled", and counts ticks as before. A tick with more than
//! [`CHUNK`] listeners to send (the snapshot of a large registry, or many
//! busy listeners) is split into several messages of the same seq, all but
//! the last marked `more`, so no message nears gRPC's 4 MiB limit.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::proto::{self, ListenerRates, ListenerStats, StatsSample};
use crate::supervisor::Supervisor;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

pub type SampleStream = Pin<Box<dyn Stream<Item = Result<StatsSample, Status>> + Send>>;
pub type PacketStream = Pin<Box<dyn Stream<Item = Result<proto::PacketSummary, Status>> + Send>>;
pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

/// Validate a requested interval (unset means the default).
pub fn interval(requested: Option<prost_types::Duration>) -> Result<Duration, Status> {
    let Some(d) = requested else {
        return Ok(DEFAULT_INTERVAL);
    };
    let d = Duration::try_from(d)
        .map_err(|_| Status::invalid_argument("interval must not be negative"))?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        return Err(Status::invalid_argument(format!(
            "interval {} is out of range: use 100ms to 1h",
            humantime::format_duration(d)
        )));
    }
    Ok(d)
}

/// Listeners per WatchStats message; a tick with more is split.
pub const CHUNK: usize = 500;

/// One sample without rates, for GetStats: the one listener named, or a
/// page of all of them.
pub fn snapshot(
    sup: &Supervisor,
    name: Option<&str>,
    page: &crate::util::page::Page,
) -> Result<StatsSample, crate::supervisor::SupervisorError> {
    let (listeners, next) = match name {
        Some(n) => (sup.samples(Some(n))?, None),
        None => sup.samples_page(page),
    };
    Ok(StatsSample {
        time: Some(SystemTime::now().into()),
        listeners,
        next_page_token: next
            .map(|n| crate::util::page::token_after(&n))
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// What a watch last sent of one listener.
struct Sent {
    totals: ListenerStats,
    state: i32,
    /// The tick it was last seen in; older means it is gone.
    seen: u64,
}

struct Watch {
    sup: Supervisor,
    name: Option<String>,
    interval: Duration,
    stop: CancellationToken,
    start: Instant,
    /// Tick of the last sample sent; None before the first.
    seq: Option<u64>,
    dropped: u64,
    prev_at: Instant,
    /// Every listener as of the last tick sent.
    prev: HashMap<String, Sent>,
    /// Messages of the current tick not sent yet.
    pending: VecDeque<StatsSample>,
}

impl Watch {
    /// Wait for the next tick (or skip to the newest if late), then sample.
    async fn next(&mut self) -> Option<StatsSample> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let seq = match self.seq {
            None => 0,
            Some(last) => {
                let due = self.start + self.interval * (last + 1) as u32;
                let now = Instant::now();
                if now < due {
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep_until(due) => {}
                    }
                    last + 1
                } else {
                    let newest =
                        ((now - self.start).as_secs_f64() / self.interval.as_secs_f64()) as u64;
                    self.dropped += newest.saturating_sub(last + 1);
                    newest.max(last + 1)
                }
            }
        };
        if self.stop.is_cancelled() {
            return None;
        }
        let first = self.seq.is_none();
        self.seq = Some(seq);
        let now = Instant::now();
        let elapsed = now - self.prev_at;
        // A listener watched by name that is gone reads as empty: its
        // name then goes out in `removed`. Listeners that did not change
        // are only marked seen (no sample is built for them).
        let prev = &mut self.prev;
        let listeners = self
            .sup
            .changed_samples(self.name.as_deref(), |name, state, totals| {
                match prev.get_mut(name) {
                    Some(p) => {
                        p.seen = seq;
                        !(p.state == state && p.totals == *totals)
                    }
                    None => true,
                }
            });
        let mut changed = Vec::new();
        for mut l in listeners {
            let totals = l.totals.take().unwrap_or_default();
            match self.prev.get_mut(&l.name) {
                Some(p) => {
                    p.seen = seq;
                    l.rates = Some(rates(&p.totals, &totals, elapsed));
                    p.state = l.state;
                    p.totals = totals.clone();
                }
                None => {
                    if !first {
                        l.rates = Some(rates(&ListenerStats::default(), &totals, elapsed));
                    }
                    self.prev.insert(
                        l.name.clone(),
                        Sent {
                            totals: totals.clone(),
                            state: l.state,
                            seen: seq,
                        },
                    );
                }
            }
            l.totals = Some(totals);
            changed.push(l);
        }
        let mut removed = Vec::new();
        self.prev.retain(|name, p| {
            let here = p.seen == seq;
            if !here {
                removed.push(name.clone());
            }
            here
        });
        removed.sort_unstable();
        self.prev_at = now;
        let template = StatsSample {
            time: Some(SystemTime::now().into()),
            elapsed: if first { None } else { elapsed.try_into().ok() },
            seq,
            dropped_samples: self.dropped,
            ..Default::default()
        };
        let mut chunks: Vec<Vec<proto::ListenerStatsSample>> = Vec::new();
        let mut rest = changed.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(CHUNK).collect());
        }
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        for (i, listeners) in chunks.into_iter().enumerate() {
            self.pending.push_back(StatsSample {
                listeners,
                snapshot_complete: first && i == last,
                removed: if i == last {
                    std::mem::take(&mut removed)
                } else {
                    Vec::new()
                },
                more: i != last,
                ..template.clone()
            });
        }
        self.pending.pop_front()
    }
}

fn rates(before: &ListenerStats, now: &ListenerStats, elapsed: Duration) -> ListenerRates {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let r = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    ListenerRates {
        connections_per_sec: r(before.connections_total, now.connections_total),
        bytes_in_per_sec: r(before.bytes_in, now.bytes_in),
        bytes_out_per_sec: r(before.bytes_out, now.bytes_out),
        datagrams_in_per_sec: r(before.datagrams_in, now.datagrams_in),
        datagrams_out_per_sec: r(before.datagrams_out, now.datagrams_out),
        errors_per_sec: r(before.errors, now.errors),
    }
}

/// The WatchStats stream: a snapshot now, then one sample per interval until
/// the client goes away or `stop` is cancelled.
pub fn stats(
    sup: Supervisor,
    name: Option<String>,
    interval: Duration,
    stop: CancellationToken,
) -> SampleStream {
    let now = Instant::now();
    let watch = Watch {
        sup,
        name,
        interval,
        stop,
        start: now,
        seq: None,
        dropped: 0,
        prev_at: now,
        prev: HashMap::new(),
        pending: VecDeque::new(),
    };
    Box::pin(futures_util::stream::unfold(watch, |mut w| async move {
        let sample = w.next().await?;
        Some((Ok(sample), w))
    }))
}

/// The WatchEvents stream, optionally for one listener.
pub fn events(sup: &Supervisor, name: Option<String>, stop: CancellationToken) -> EventStream {
    let rx = sup.events().subscribe();
    Box::pin(futures_util::stream::unfold(
        (rx, name, stop),
        |(mut rx, name, stop)| async move {
            loop {
                let r = tokio::select! {
                    _ = stop.cancelled() => return None,
                    r = rx.recv() => r,
                };
                match r {
                    Ok(ev) if name.as_ref().is_none_or(|n| *n == ev.listener) => {
                        return Some((Ok(ev), (rx, name, stop)));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        return Some((Ok(crate::telemetry::events::dropped(n)), (rx, name, stop)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    ))
}

/// The WatchPackets stream: summaries as the sniffer captures them; what a
/// slow reader misses is counted (per watcher in `dropped_before`, and in
/// the sniffer's `watcher_drops`).
pub fn packets(
    rx: tokio::sync::broadcast::Receiver<proto::PacketSummary>,
    counters: std::sync::Arc<crate::services::sniffer::SnifferCounters>,
    stop: CancellationToken,
) -> PacketStream {
    Box::pin(futures_util::stream::unfold(
        (rx, counters, stop),
        |(mut rx, counters, stop)| async move {
            let mut dropped = 0u64;
            loop {
                let r = tokio::select! {
                    _ = stop.cancelled() => return None,
                    r = rx.recv() => r,
                };
                match r {
                    Ok(mut p) => {
                        p.dropped_before = dropped;
                        return Some((Ok(p), (rx, counters, stop)));
                    }
                    Err(RecvError::Lagged(n)) => {
                        dropped += n;
                        counters
                            .watcher_drops
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    ))
}
