//! The faulty path of a proxied connection: one direction's bytes pass
//! through the TCP faults (toxics) acting on it, in list order, with
//! Toxiproxy's semantics. A direction comes here only once a fault acts on
//! it (`forward::copy` checks with one atomic load per read) and stays for
//! the rest of the connection; a connection of a listener without faults
//! never gets here.
//!
//! Each chunk read is stamped with its arrival and passed through the
//! faults in order. A fault turns pieces into pieces with a due time
//! (latency adds to it, bandwidth paces by cumulative due times so the
//! average rate is exact, slicer cuts and spaces), drops them (timeout), or
//! ends the connection (reset_peer, down, limit_data). The writer sends the
//! queue's head when it is due while the reader reads ahead, up to
//! [`MAX_IN_FLIGHT`] bytes queued; beyond that the reader waits and TCP
//! backpressure slows the sender. So latency delays bytes without dividing
//! throughput (up to `MAX_IN_FLIGHT` per latency, e.g. 40 MB/s at 100 ms).
//!
//! Decisions (client network, every-Nth, toxicity) are made once per
//! connection and fault version, shared by both directions
//! ([`ConnFaults`]); time windows and after-bytes thresholds are checked as
//! data flows, and timers (timeout, reset_peer, window edges) wake the
//! direction even when no data does. A change to the listener's faults is
//! seen at the next chunk or timer, or at once by a direction waiting here.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::forward::{Activity, Side, pass_on_eof};
use crate::fault::{Active, Dir, FaultCounters, FaultSet, FaultTable, Rng, TcpAction, Watch};
use crate::telemetry::stats::Stats;

/// Bytes a direction holds queued (read, not yet written) at most.
pub const MAX_IN_FLIGHT: usize = 4 << 20;
/// Largest read on the faulty path: under netd's mmap threshold (see
/// `BUF_SIZE`), so a new read buffer comes from the heap, not mmap(2).
const READ_CHUNK: usize = 32 * 1024;
/// Bandwidth pacing: a chunk is cut into slices of about 1/200 s of data
/// (at most this many bytes), each written when due, so the rate is smooth
/// even over short spans.
const PACE_SLICES_PER_SEC: u64 = 200;
const MAX_PACED_SLICE: usize = 64 * 1024;
/// Decisions kept per connection (older fault versions are forgotten).
const MAX_DECISIONS: usize = 2 * crate::fault::MAX_FAULTS;
/// Most bytes of pieces due at once written with one write (see
/// [`coalesce_due`]).
const MAX_COALESCED: usize = 64 * 1024;

/// A connection's faults: the listener's table, the client's address, and
/// what each fault version decided for this connection (both directions
/// share it, so a fault on both is decided and counted once).
pub(super) struct ConnFaults<'a> {
    pub(super) table: &'a FaultTable,
    peer: IpAddr,
    decided: Mutex<Vec<(u64, bool)>>,
}

impl<'a> ConnFaults<'a> {
    pub(super) fn new(table: &'a FaultTable, peer: IpAddr) -> Self {
        ConnFaults {
            table,
            peer,
            decided: Mutex::new(Vec::new()),
        }
    }

    fn decide(&self, a: &Active) -> bool {
        let mut d = self.decided.lock();
        if let Some(&(_, hit)) = d.iter().find(|(id, _)| *id == a.id) {
            return hit;
        }
        let hit = a.decide(self.peer, &mut Rng::new());
        if d.len() >= MAX_DECISIONS {
            d.remove(0);
        }
        d.push((a.id, hit));
        hit
    }

    /// At accept: whether a `down` fault in its window applies to this
    /// client (it is then reset before any upstream is connected).
    pub(super) fn down(&self) -> bool {
        let mut w = Watch::new(self.table);
        let Some(set) = w.get() else { return false };
        let now = Instant::now();
        for a in &set.faults {
            if matches!(a.fault.action.tcp(), Some(TcpAction::Down))
                && a.in_window(now)
                && self.decide(a)
            {
                FaultCounters::add(&a.counters.connections_closed, 1);
                return true;
            }
        }
        false
    }
}

/// Whether a fault acts on direction `d`: the fast path's check, one
/// atomic load while the listener never had a fault.
#[inline]
pub(super) fn acts_on(watch: &mut Watch<'_>, d: Dir) -> bool {
    match watch.get() {
        None => false,
        Some(set) => set.on(d).any(|a| a.fault.action.tcp().is_some()),
    }
}

enum Item {
    Data(Bytes),
    /// The reader's EOF, passed on as a half-close.
    Eof,
    /// A fault closes the connection here (after the data before it).
    Close,
}

struct Piece {
    item: Item,
    due: Instant,
    /// Offset in the direction's stream of its first byte (for an EOF,
    /// the stream's length).
    off: u64,
}

impl Piece {
    fn len(&self) -> usize {
        match &self.item {
            Item::Data(d) => d.len(),
            Item::Eof | Item::Close => 0,
        }
    }
}

/// How a fault ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Close,
    Reset,
}

impl From<Stop> for Side {
    fn from(s: Stop) -> Side {
        match s {
            Stop::Close => Side::FaultClosed,
            Stop::Reset => Side::FaultReset,
        }
    }
}

/// One fault as this direction of this connection sees it.
struct State {
    active: Arc<Active>,
    hit: bool,
    /// When the fault began to apply here (timeout, reset_peer).
    began: Option<Instant>,
    /// Latency and slicer: when the next piece may be due (keeps order).
    /// Bandwidth: when the last paced byte is due.
    pace: Instant,
    /// Bandwidth: start of the current busy period and bytes paced in it.
    base: Instant,
    sent: u64,
    /// limit_data: bytes passed so far.
    passed: u64,
}

impl State {
    fn counters(&self) -> &FaultCounters {
        &self.active.counters
    }

    /// Pass one piece through this fault (in its window) into `out`.
    fn apply(
        &mut self,
        mut p: Piece,
        tail: Instant,
        rng: &mut Rng,
        out: &mut Vec<Piece>,
    ) -> Result<(), Stop> {
        let f = &self.active.fault;
        // A udp-proxy's fault never reaches here (the table compiles
        // faults for its listener's transport).
        let (true, Some(&action)) = (self.hit, f.action.tcp()) else {
            out.push(p);
            return Ok(());
        };
        let after = f.when.after_bytes;
        let d = match p.item {
            Item::Data(d) => d,
            Item::Eof => {
                if let TcpAction::SlowClose { delay } = action {
                    if p.off >= after {
                        p.due = p.due.max(tail) + delay;
                    }
                }
                out.push(p);
                return Ok(());
            }
            Item::Close => {
                out.push(p);
                return Ok(());
            }
        };
        // Only the bytes after the first `after_bytes` of the direction.
        let mut d = d;
        if p.off.saturating_add(d.len() as u64) <= after {
            p.item = Item::Data(d);
            out.push(p);
            return Ok(());
        }
        if p.off < after {
            let k = (after - p.off) as usize;
            out.push(Piece {
                item: Item::Data(d.split_to(k)),
                due: p.due,
                off: p.off,
            });
            p.off = after;
        }
        let (due, off) = (p.due, p.off);
        let len = d.len() as u64;
        match action {
            TcpAction::Latency { latency, jitter } => {
                let delay = rng.jitter(latency, jitter);
                let at = (due + delay).max(self.pace);
                self.pace = at;
                if at > due {
                    FaultCounters::add(&self.counters().bytes_delayed, len);
                }
                out.push(Piece {
                    item: Item::Data(d),
                    due: at,
                    off,
                });
            }
            TcpAction::Bandwidth { rate } => {
                self.pace_bandwidth(d, due, off, rate, out);
                FaultCounters::add(&self.counters().bytes_delayed, len);
            }
            TcpAction::Slicer { delay, .. } if delay.is_zero() => {
                // Slices due at once are written together anyway
                // ([`coalesce_due`]): cutting them would only cost.
                let at = due.max(self.pace);
                self.pace = at;
                if at > due {
                    FaultCounters::add(&self.counters().bytes_delayed, len);
                }
                out.push(Piece {
                    item: Item::Data(d),
                    due: at,
                    off,
                });
            }
            TcpAction::Slicer {
                average,
                variation,
                delay,
            } => self.slice(d, (due, off), (average, variation, delay), rng, out),
            TcpAction::Timeout { .. } => {
                FaultCounters::add(&self.counters().bytes_dropped, len);
            }
            TcpAction::ResetPeer { timeout } => {
                if timeout.is_zero() {
                    FaultCounters::add(&self.counters().bytes_dropped, len);
                    FaultCounters::add(&self.counters().connections_closed, 1);
                    return Err(Stop::Reset);
                }
                out.push(Piece {
                    item: Item::Data(d),
                    due,
                    off,
                });
            }
            TcpAction::LimitData { bytes } => {
                let left = bytes.saturating_sub(self.passed);
                if len < left {
                    self.passed += len;
                    out.push(Piece {
                        item: Item::Data(d),
                        due,
                        off,
                    });
                } else {
                    self.passed = bytes;
                    if left > 0 {
                        out.push(Piece {
                            item: Item::Data(d.split_to(left as usize)),
                            due,
                            off,
                        });
                    }
                    FaultCounters::add(&self.counters().bytes_dropped, len - left);
                    FaultCounters::add(&self.counters().connections_closed, 1);
                    out.push(Piece {
                        item: Item::Close,
                        due,
                        off: off + left,
                    });
                }
            }
            TcpAction::Down => {
                FaultCounters::add(&self.counters().bytes_dropped, len);
                FaultCounters::add(&self.counters().connections_closed, 1);
                return Err(Stop::Reset);
            }
            // Acts on the EOF only (above); the data passes.
            TcpAction::SlowClose { .. } => out.push(Piece {
                item: Item::Data(d),
                due,
                off,
            }),
        }
        Ok(())
    }

    /// Bandwidth: cut `d` into slices of about 1/[`PACE_SLICES_PER_SEC`]
    /// s, each due when `rate` allows (cumulative over the busy period, so
    /// the average is exact).
    fn pace_bandwidth(
        &mut self,
        mut d: Bytes,
        due: Instant,
        mut off: u64,
        rate: u64,
        out: &mut Vec<Piece>,
    ) {
        let slice = ((rate / PACE_SLICES_PER_SEC) as usize).clamp(1, MAX_PACED_SLICE);
        while !d.is_empty() {
            let s = d.split_to(slice.min(d.len()));
            if due >= self.pace {
                // Idle until now: a new busy period.
                self.base = due;
                self.sent = 0;
            }
            self.sent += s.len() as u64;
            let ns = u128::from(self.sent) * 1_000_000_000 / u128::from(rate);
            let at = self.base + Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64);
            self.pace = at;
            let n = s.len() as u64;
            out.push(Piece {
                item: Item::Data(s),
                due: at,
                off,
            });
            off += n;
        }
    }

    /// Slicer: cut `d` into slices of `average` +- `variation` bytes,
    /// `delay` apart.
    fn slice(
        &mut self,
        mut d: Bytes,
        (due, mut off): (Instant, u64),
        (average, variation, delay): (u32, u32, Duration),
        rng: &mut Rng,
        out: &mut Vec<Piece>,
    ) {
        while !d.is_empty() {
            let size = u64::from(average - variation) + rng.below(2 * u64::from(variation) + 1);
            let s = d.split_to((size.max(1) as usize).min(d.len()));
            let at = due.max(self.pace);
            self.pace = at + delay;
            let n = s.len() as u64;
            if at > due {
                FaultCounters::add(&self.counters().bytes_delayed, n);
            }
            out.push(Piece {
                item: Item::Data(s),
                due: at,
                off,
            });
            off += n;
        }
    }
}

/// The faults of one direction of one connection.
struct Engine {
    dir: Dir,
    set: Option<Arc<FaultSet>>,
    states: Vec<State>,
    rng: Rng,
    /// The latest due time queued (slow_close counts from it).
    tail: Instant,
    scratch: (Vec<Piece>, Vec<Piece>),
}

impl Engine {
    /// Follow the listener's faults: keep the state of each fault version
    /// still there, decide the new ones.
    fn sync(&mut self, set: &Arc<FaultSet>, conn: &ConnFaults<'_>, now: Instant) {
        if self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, set)) {
            return;
        }
        let mut old = std::mem::take(&mut self.states);
        // An http-proxy's table also holds its HTTP faults: they act on
        // requests (services/http_proxy/fault.rs), not here.
        for a in set.on(self.dir).filter(|a| a.fault.action.tcp().is_some()) {
            if let Some(i) = old.iter().position(|s| s.active.id == a.id) {
                self.states.push(old.swap_remove(i));
                continue;
            }
            self.states.push(State {
                active: a.clone(),
                hit: conn.decide(a),
                began: None,
                pace: now,
                base: now,
                sent: 0,
                passed: 0,
            });
        }
        self.set = Some(set.clone());
    }

    /// Timers: faults that act without data (timeout, reset_peer, down)
    /// and their windows. Ends the connection when one is due; otherwise
    /// the next time to look again.
    fn tick(&mut self, now: Instant) -> Result<Option<Instant>, Stop> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        for s in &mut self.states {
            if !s.hit {
                continue;
            }
            let a = &s.active;
            let (after, stop) = match a.fault.action.tcp() {
                Some(&TcpAction::Timeout { timeout }) => (timeout, Stop::Close),
                Some(&TcpAction::ResetPeer { timeout }) if !timeout.is_zero() => {
                    (Some(timeout), Stop::Reset)
                }
                Some(TcpAction::Down) => (Some(Duration::ZERO), Stop::Reset),
                _ => continue,
            };
            if a.in_window(now) {
                let began = *s.began.get_or_insert(now);
                if let Some(t) = after {
                    if now >= began + t {
                        FaultCounters::add(&a.counters.connections_closed, 1);
                        return Err(stop);
                    }
                    at(began + t);
                }
                if let Some(c) = a.closes_at() {
                    at(c);
                }
            } else {
                s.began = None;
                if let Some(o) = a.opens_at(now) {
                    at(o);
                }
            }
        }
        Ok(wake)
    }

    /// Pass a piece through every fault, in order, onto the queue.
    fn process(
        &mut self,
        p: Piece,
        now: Instant,
        queue: &mut VecDeque<Piece>,
    ) -> Result<usize, Stop> {
        let (mut cur, mut next) = std::mem::take(&mut self.scratch);
        cur.clear();
        cur.push(p);
        for s in &mut self.states {
            if cur.is_empty() {
                break;
            }
            next.clear();
            // The window is checked here, per fault, as data flows.
            let in_window = s.active.in_window(now);
            for piece in cur.drain(..) {
                if !in_window {
                    next.push(piece);
                    continue;
                }
                // An error ends the connection: the scratch is not needed.
                s.apply(piece, self.tail, &mut self.rng, &mut next)?;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        let mut bytes = 0;
        for piece in cur.drain(..) {
            self.tail = self.tail.max(piece.due);
            bytes += piece.len();
            queue.push_back(piece);
        }
        self.scratch = (cur, next);
        Ok(bytes)
    }
}

/// Copy one direction through its faults until EOF (passed on, possibly
/// late), an error, or a fault ending the connection. Generic over the
/// stream: a TCP socket's halves, or the plaintext halves of a TLS
/// connection (the faults then act on the plaintext).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<R, W>(
    mut r: R,
    mut w: W,
    activity: &Activity,
    total: &AtomicU64,
    mine: &AtomicU64,
    conn: &ConnFaults<'_>,
    dir: Dir,
    mut watch: Watch<'_>,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let now = Instant::now();
    let mut eng = Engine {
        dir,
        set: None,
        states: Vec::new(),
        rng: Rng::new(),
        tail: now,
        scratch: (Vec::new(), Vec::new()),
    };
    let mut queue: VecDeque<Piece> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut written = 0usize;
    let mut buf = BytesMut::new();
    let mut off = 0u64;
    let mut reading = true;
    // Registered once and again after each change (not per chunk: the
    // registration takes the table's lock).
    let changed = conn.table.notified();
    tokio::pin!(changed);
    changed.as_mut().enable();
    loop {
        let now = Instant::now();
        if let Some(set) = watch.get() {
            eng.sync(set, conn, now);
        }
        let wake = eng.tick(now).map_err(Side::from)?;
        // A marker due at the head acts now; data is written below.
        if let Some(p) = queue.front().filter(|p| p.due <= now) {
            match p.item {
                Item::Data(_) => {}
                Item::Eof => {
                    pass_on_eof(&mut w, activity).await;
                    return Ok(());
                }
                Item::Close => return Err(Side::FaultClosed),
            }
        }
        if written == 0 {
            coalesce_due(&mut queue, now);
        }
        let head_due = queue.front().map(|p| p.due);
        let write_now = head_due.is_some_and(|d| d <= now);
        let sleep_to = match (head_due.filter(|_| !write_now), wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let can_read = reading && in_flight < MAX_IN_FLIGHT;
        if can_read && buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let head: &[u8] = match queue.front().map(|p| &p.item) {
            Some(Item::Data(d)) if write_now => &d[written..],
            _ => &[],
        };
        tokio::select! {
            biased;
            res = w.write(head), if write_now => {
                let n = res.map_err(|_| Side::Writer)?;
                if n == 0 {
                    return Err(Side::Writer);
                }
                written += n;
                Stats::add(total, n as u64);
                mine.fetch_add(n as u64, Relaxed);
                activity.touch();
                if queue.front().is_some_and(|p| p.len() == written) {
                    queue.pop_front();
                    in_flight -= written;
                    written = 0;
                }
            }
            res = r.read_buf(&mut buf), if can_read => {
                let n = res.map_err(|_| Side::Reader)?;
                let now = Instant::now();
                activity.touch();
                let piece = if n == 0 {
                    reading = false;
                    Piece { item: Item::Eof, due: now, off }
                } else {
                    let chunk = buf.split().freeze();
                    let p = Piece { item: Item::Data(chunk), due: now, off };
                    off += n as u64;
                    p
                };
                in_flight += eng.process(piece, now, &mut queue).map_err(Side::from)?;
                if queue.back().is_some_and(|p| matches!(p.item, Item::Close)) {
                    reading = false;
                }
            }
            () = sleep_until_opt(sleep_to), if sleep_to.is_some() => {}
            () = &mut changed => {
                changed.set(conn.table.notified());
                changed.as_mut().enable();
            }
        }
    }
}

/// Join the data pieces at the head of `queue` that are all due by `now`
/// into one (at most [`MAX_COALESCED`] bytes), so that they cost one write.
///
/// Pieces due at the same time are not apart in time on the wire either:
/// a slicer without delay (or with one shorter than the timer's tick)
/// cuts a chunk into pieces that were written one by one, a write and a
/// TCP segment per byte with `average_size = 1` (1.1 s of CPU per 200 KB).
/// Pieces due later (a slicer's delay, latency, bandwidth pacing) stay
/// apart. Linear: each byte is copied at most once per write.
fn coalesce_due(queue: &mut VecDeque<Piece>, now: Instant) {
    let mut total = 0usize;
    let mut count = 0usize;
    for p in queue.iter() {
        match &p.item {
            Item::Data(d) if p.due <= now && total + d.len() <= MAX_COALESCED => {
                total += d.len();
                count += 1;
            }
            _ => break,
        }
    }
    if count < 2 {
        return;
    }
    let mut joined = BytesMut::with_capacity(total);
    let mut first: Option<(Instant, u64)> = None;
    for p in queue.drain(..count) {
        first.get_or_insert((p.due, p.off));
        if let Item::Data(d) = p.item {
            joined.extend_from_slice(&d);
        }
    }
    let Some((due, off)) = first else {
        return;
    };
    queue.push_front(Piece {
        item: Item::Data(joined.freeze()),
        due,
        off,
    });
}

async fn sleep_until_opt(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Target;
    use crate::proto::{self, fault::Kind};

    fn engine_with(kind: Kind, when: Option<proto::FaultCondition>) -> (FaultTable, Engine) {
        let table = FaultTable::new(Target::Tcp);
        table
            .add(proto::Fault {
                name: "f".into(),
                kind: Some(kind),
                when,
                ..Default::default()
            })
            .unwrap();
        let eng = Engine {
            dir: Dir::Downstream,
            set: None,
            states: Vec::new(),
            rng: Rng::seeded(1),
            tail: Instant::now(),
            scratch: (Vec::new(), Vec::new()),
        };
        (table, eng)
    }

    fn data(n: usize, off: u64, due: Instant) -> Piece {
        Piece {
            item: Item::Data(Bytes::from(vec![0u8; n])),
            due,
            off,
        }
    }

    #[test]
    fn pieces_due_together_are_written_together() {
        let now = Instant::now();
        let later = now + Duration::from_millis(5);
        let mut queue: VecDeque<Piece> = (0..1000u64).map(|i| data(1, i, now)).collect();
        queue.push_back(data(1, 1000, later));
        queue.push_back(Piece {
            item: Item::Eof,
            due: later,
            off: 1001,
        });
        coalesce_due(&mut queue, now);
        assert_eq!(queue.len(), 3);
        let head = queue.front().unwrap();
        assert_eq!((head.len(), head.off, head.due), (1000, 0, now));
        // What is not due yet stays apart, and nothing crosses a marker.
        coalesce_due(&mut queue, later);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.front().unwrap().len(), 1001);
        assert!(matches!(queue.back().unwrap().item, Item::Eof));
        // At most MAX_COALESCED bytes at once.
        let mut big: VecDeque<Piece> = (0..3)
            .map(|i| data(MAX_COALESCED / 2, i * (MAX_COALESCED / 2) as u64, now))
            .collect();
        coalesce_due(&mut big, now);
        assert_eq!(big.len(), 2);
        assert_eq!(big.front().unwrap().len(), MAX_COALESCED);
    }

    #[test]
    fn bandwidth_due_times_are_exact_and_smooth() {
        let (table, mut eng) = engine_with(
            Kind::Bandwidth(proto::BandwidthFault {
                rate_bytes_per_sec: 1_000_000,
            }),
            None,
        );
        let conn = ConnFaults::new(&table, "127.0.0.1".parse().unwrap());
        let t0 = Instant::now();
        eng.sync(&table.current(), &conn, t0);
        let mut q = VecDeque::new();
        // 1 MB in 64 KiB chunks arriving at once: due over exactly 1 s, in
        // slices of 5 ms.
        let mut off = 0;
        while off < 1_000_000 {
            let n = 65_536.min(1_000_000 - off as usize);
            eng.process(data(n, off, t0), t0, &mut q).unwrap();
            off += n as u64;
        }
        assert!(q.iter().all(|p| p.len() <= 5_000));
        assert_eq!(q.back().unwrap().due - t0, Duration::from_secs(1));
        assert!(q.iter().zip(q.iter().skip(1)).all(|(a, b)| a.due <= b.due));
    }

    #[test]
    fn slicer_and_after_bytes_split_where_they_should() {
        let (table, mut eng) = engine_with(
            Kind::Slicer(proto::SlicerFault {
                average_size: 10,
                size_variation: 0,
                delay: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
            }),
            Some(proto::FaultCondition {
                after_bytes: 5,
                ..Default::default()
            }),
        );
        let conn = ConnFaults::new(&table, "127.0.0.1".parse().unwrap());
        let t0 = Instant::now();
        eng.sync(&table.current(), &conn, t0);
        let mut q = VecDeque::new();
        eng.process(data(35, 0, t0), t0, &mut q).unwrap();
        let sizes: Vec<usize> = q.iter().map(|p| p.len()).collect();
        assert_eq!(sizes, [5, 10, 10, 10]);
        let dues: Vec<Duration> = q.iter().map(|p| p.due - t0).collect();
        assert_eq!(dues, [0, 0, 1, 2].map(Duration::from_millis));
        assert_eq!(
            table.current().faults[0]
                .counters
                .bytes_delayed
                .load(Relaxed),
            20
        );
    }
}
