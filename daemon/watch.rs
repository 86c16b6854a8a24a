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

use std::collections::HashMap;
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

/// One sample without rates, for GetStats.
pub fn snapshot(
    sup: &Supervisor,
    name: Option<&str>,
) -> Result<StatsSample, crate::supervisor::SupervisorError> {
    Ok(StatsSample {
        time: Some(SystemTime::now().into()),
        elapsed: None,
        listeners: sup.samples(name)?,
        seq: 0,
        dropped_samples: 0,
    })
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
    prev: HashMap<String, ListenerStats>,
}

impl Watch {
    /// Wait for the next tick (or skip to the newest if late), then sample.
    async fn next(&mut self) -> Option<StatsSample> {
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
        let mut listeners = self.sup.samples(None).unwrap_or_default();
        if let Some(n) = &self.name {
            listeners.retain(|l| &l.name == n);
        }
        let mut prev = HashMap::with_capacity(listeners.len());
        for l in &mut listeners {
            let cur = l.totals.clone().unwrap_or_default();
            if !first {
                let before = self.prev.get(&l.name).cloned().unwrap_or_default();
                l.rates = Some(rates(&before, &cur, elapsed));
            }
            prev.insert(l.name.clone(), cur);
        }
        self.prev = prev;
        self.prev_at = now;
        Some(StatsSample {
            time: Some(SystemTime::now().into()),
            elapsed: if first { None } else { elapsed.try_into().ok() },
            listeners,
            seq,
            dropped_samples: self.dropped,
        })
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
                        return Some((Ok(crate::events::dropped(n)), (rx, name, stop)));
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
