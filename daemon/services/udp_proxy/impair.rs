//! The udp-proxy's impairments: what a fault does to one datagram, per
//! client and direction ([`Lane`]), and the queue of datagrams waiting for
//! their time ([`Timed`]).
//!
//! A datagram passes the faults of its direction in list order, each a
//! stage: down and loss drop it, duplicate makes a second copy that goes on
//! through the later stages too, corrupt flips one bit, latency and
//! bandwidth give it a later time (the later stages run then), reorder
//! holds it until `gap` later datagrams have passed that stage (or
//! `max_hold`). Jittered latency reorders datagrams as netem's does, since
//! each is delayed on its own.
//!
//! A change of the faults applies to datagrams received after it; a
//! datagram already waiting (delayed or held) skips the stages after the
//! one that held it if the faults changed meanwhile, rather than run
//! stages that may no longer mean the same thing.
//!
//! Bounds: a bandwidth stage queues at most [`MAX_BACKLOG`] of traffic; a
//! lane holds at most [`MAX_HELD`] datagrams for reordering; a [`Timed`]
//! queue holds at most [`MAX_TIMED`] datagrams; and every datagram waiting
//! anywhere in a listener counts against its [`Budget`] of
//! [`MAX_QUEUED_BYTES`]. A datagram over a bound is dropped and counted as
//! lost by the fault that would have queued it (a reorder hold over its
//! bound lets the datagram pass instead).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use parking_lot::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::fault::{Action, Active, Dir, FaultCounters, FaultSet, MAX_FAULTS, Rng};

/// Most traffic a bandwidth stage queues, in time at its rate.
pub const MAX_BACKLOG: Duration = Duration::from_secs(1);
/// Most datagrams one [`Timed`] queue holds.
pub const MAX_TIMED: usize = 10_000;
/// Most datagrams one lane holds back for reordering.
pub const MAX_HELD: usize = 1_000;
/// Most bytes of datagrams waiting (delayed or held) per listener.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Most copies one received datagram can become through duplicate stages.
const MAX_COPIES: usize = 64;

/// The bytes of datagrams waiting in a listener, bounded.
#[derive(Debug, Clone, Default)]
pub struct Budget(Arc<AtomicUsize>);

impl Budget {
    /// Take `n` bytes if they fit.
    fn take(&self, n: usize) -> bool {
        self.0
            .fetch_update(Relaxed, Relaxed, |used| {
                let next = used.checked_add(n)?;
                (next <= MAX_QUEUED_BYTES).then_some(next)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.0.fetch_sub(n, Relaxed);
    }
}

/// The decisions made for one client, fault by fault (its network, every
/// Nth, toxicity): made once per fault version and shared by the client's
/// two lanes. Touched only when the faults change, never per datagram.
#[derive(Debug)]
pub struct Decisions {
    peer: IpAddr,
    made: Mutex<Vec<(u64, bool)>>,
}

impl Decisions {
    pub fn new(peer: IpAddr) -> Self {
        Decisions {
            peer,
            made: Mutex::new(Vec::new()),
        }
    }

    /// Whether each fault of `set` acting on `dir` applies to this client
    /// (by position); decides the ones not decided yet, and forgets the
    /// faults that are gone.
    fn for_set(&self, set: &FaultSet, dir: Dir, rng: &mut Rng) -> Vec<bool> {
        let mut made = self.made.lock();
        made.retain(|(id, _)| set.faults.iter().any(|f| f.id == *id));
        set.faults
            .iter()
            .map(|f| {
                if !f.fault.dirs.has(dir) {
                    return false;
                }
                if let Some(&(_, d)) = made.iter().find(|(id, _)| *id == f.id) {
                    return d;
                }
                let d = f.decide(self.peer, rng);
                if made.len() < 2 * MAX_FAULTS {
                    made.push((f.id, d));
                }
                d
            })
            .collect()
    }
}

/// What happens to a datagram waiting in a [`Timed`] queue when its time
/// comes.
#[derive(Debug)]
pub enum Wake {
    /// Go on through `set` from `stage`.
    Resume {
        set: Arc<FaultSet>,
        stage: usize,
        data: Vec<u8>,
    },
    /// A reordered datagram's `max_hold` is over: release it if still held.
    Release(u64),
}

impl Wake {
    fn bytes(&self) -> usize {
        match self {
            Wake::Resume { data, .. } => data.len(),
            Wake::Release(_) => 0,
        }
    }
}

/// What [`Lane::admit`] and [`Lane::wake`] make of a datagram.
#[derive(Debug, Default)]
pub struct Out {
    /// To send now, in order.
    pub now: Vec<Vec<u8>>,
    /// To put in the [`Timed`] queue.
    pub later: Vec<(Instant, Wake)>,
}

/// A datagram held back by a reorder stage.
#[derive(Debug)]
struct Held {
    id: u64,
    fault: u64,
    /// Datagrams still to pass that stage before this one goes.
    remaining: u32,
    set: Arc<FaultSet>,
    stage: usize,
    data: Vec<u8>,
}

/// One direction of one client: the faults' decisions and state (loss
/// bursts, the bandwidth link, reorder holds).
#[derive(Debug)]
pub struct Lane {
    dir: Dir,
    decisions: Arc<Decisions>,
    budget: Budget,
    /// The set the decisions in `applies` are for.
    set: Option<Arc<FaultSet>>,
    applies: Vec<bool>,
    /// Gilbert-Elliott: in the bad state, per loss fault.
    bursts: Vec<(u64, bool)>,
    /// Bandwidth: when the link is free again, per bandwidth fault.
    links: Vec<(u64, Instant)>,
    held: Vec<Held>,
    next_held: u64,
}

impl Lane {
    pub fn new(dir: Dir, decisions: Arc<Decisions>, budget: Budget) -> Self {
        Lane {
            dir,
            decisions,
            budget,
            set: None,
            applies: Vec::new(),
            bursts: Vec::new(),
            links: Vec::new(),
            held: Vec::new(),
            next_held: 1,
        }
    }

    fn refresh(&mut self, set: &Arc<FaultSet>, rng: &mut Rng) {
        if self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, set)) {
            return;
        }
        self.applies = self.decisions.for_set(set, self.dir, rng);
        let live = |id: &u64| set.faults.iter().any(|f| f.id == *id);
        self.bursts.retain(|(id, _)| live(id));
        self.links.retain(|(id, _)| live(id));
        self.set = Some(set.clone());
    }

    fn is_current(&self, set: &Arc<FaultSet>) -> bool {
        self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, set))
    }

    /// A datagram just received, through the faults of `set` (the
    /// listener's faults now).
    pub fn admit(
        &mut self,
        set: &Arc<FaultSet>,
        data: Vec<u8>,
        now: Instant,
        rng: &mut Rng,
        out: &mut Out,
    ) {
        self.refresh(set, rng);
        self.run(set, 0, data, now, rng, out);
    }

    /// A waiting datagram's time has come; `current` is the listener's
    /// faults now.
    pub fn wake(
        &mut self,
        current: Option<&Arc<FaultSet>>,
        wake: Wake,
        now: Instant,
        rng: &mut Rng,
        out: &mut Out,
    ) {
        if let Some(c) = current {
            self.refresh(c, rng);
        }
        let (set, stage, data) = match wake {
            Wake::Resume { set, stage, data } => (set, stage, data),
            Wake::Release(id) => {
                let Some(i) = self.held.iter().position(|h| h.id == id) else {
                    return;
                };
                let h = self.held.swap_remove(i);
                self.budget.give(h.data.len());
                (h.set, h.stage + 1, h.data)
            }
        };
        if self.is_current(&set) {
            self.run(&set, stage, data, now, rng, out);
        } else {
            out.now.push(data);
        }
    }

    /// A waiting datagram could not be queued: counted as lost by the
    /// fault that queued it, or (a reorder hold) released at once.
    pub fn overflow(&mut self, wake: Wake, now: Instant, rng: &mut Rng, out: &mut Out) {
        match wake {
            Wake::Resume { set, stage, data } => {
                if let Some(f) = stage.checked_sub(1).and_then(|i| set.faults.get(i)) {
                    lost(&f.counters, data.len());
                }
            }
            w @ Wake::Release(_) => self.wake(None, w, now, rng, out),
        }
    }

    /// Run `data` through `set` from `stage` on.
    fn run(
        &mut self,
        set: &Arc<FaultSet>,
        stage: usize,
        data: Vec<u8>,
        now: Instant,
        rng: &mut Rng,
        out: &mut Out,
    ) {
        let mut work: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
        work.push_back((stage, data));
        let mut copies = 1usize;
        'datagram: while let Some((from, mut data)) = work.pop_front() {
            for (i, f) in set.faults.iter().enumerate().skip(from) {
                if !self.applies.get(i).copied().unwrap_or(false) || !f.in_window(now) {
                    continue;
                }
                let c = &f.counters;
                match &f.fault.action {
                    Action::Down => {
                        lost(c, data.len());
                        continue 'datagram;
                    }
                    Action::Loss { probability, burst } => {
                        let lose = match burst {
                            None => rng.chance(*probability),
                            Some((enter, exit, bad_loss, good_loss)) => {
                                let bad = self.burst_state(f);
                                *bad = if *bad {
                                    !rng.chance(*exit)
                                } else {
                                    rng.chance(*enter)
                                };
                                rng.chance(if *bad { *bad_loss } else { *good_loss })
                            }
                        };
                        if lose {
                            lost(c, data.len());
                            continue 'datagram;
                        }
                    }
                    Action::Duplicate { probability } => {
                        if copies < MAX_COPIES && rng.chance(*probability) {
                            copies += 1;
                            FaultCounters::add(&c.datagrams_duplicated, 1);
                            work.push_back((i + 1, data.clone()));
                        }
                    }
                    Action::Corrupt { probability } => {
                        if !data.is_empty() && rng.chance(*probability) {
                            let bit = rng.below(data.len() as u64 * 8);
                            data[(bit / 8) as usize] ^= 1 << (bit % 8);
                            FaultCounters::add(&c.datagrams_corrupted, 1);
                        }
                    }
                    Action::Latency { latency, jitter } => {
                        let d = rng.jitter(*latency, *jitter);
                        if !d.is_zero() {
                            FaultCounters::add(&c.datagrams_delayed, 1);
                            FaultCounters::add(&c.bytes_delayed, data.len() as u64);
                            later(set, i, data, now + d, out);
                            continue 'datagram;
                        }
                    }
                    Action::Bandwidth { rate } => {
                        let link = self.link_state(f, now);
                        let start = (*link).max(now);
                        if start - now > MAX_BACKLOG {
                            lost(c, data.len());
                            continue 'datagram;
                        }
                        let ns = (data.len() as u128 * 1_000_000_000 / u128::from(*rate))
                            .min(u128::from(u64::MAX)) as u64;
                        *link = start + Duration::from_nanos(ns);
                        if start > now {
                            FaultCounters::add(&c.datagrams_delayed, 1);
                            FaultCounters::add(&c.bytes_delayed, data.len() as u64);
                            later(set, i, data, start, out);
                            continue 'datagram;
                        }
                    }
                    Action::Reorder {
                        probability,
                        gap,
                        max_hold,
                    } => {
                        // This datagram passes the stage: held ones it was
                        // the last of `gap` for go right after it.
                        let mut k = 0;
                        while k < self.held.len() {
                            let h = &mut self.held[k];
                            if h.fault == f.id {
                                h.remaining = h.remaining.saturating_sub(1);
                                if h.remaining == 0 {
                                    let h = self.held.swap_remove(k);
                                    self.budget.give(h.data.len());
                                    if self.is_current(&h.set) {
                                        work.push_back((h.stage + 1, h.data));
                                    } else {
                                        out.now.push(h.data);
                                    }
                                    continue;
                                }
                            }
                            k += 1;
                        }
                        if self.held.len() < MAX_HELD
                            && rng.chance(*probability)
                            && self.budget.take(data.len())
                        {
                            let id = self.next_held;
                            self.next_held += 1;
                            FaultCounters::add(&c.datagrams_reordered, 1);
                            self.held.push(Held {
                                id,
                                fault: f.id,
                                remaining: *gap,
                                set: set.clone(),
                                stage: i,
                                data,
                            });
                            out.later.push((now + *max_hold, Wake::Release(id)));
                            continue 'datagram;
                        }
                    }
                    Action::SlowClose { .. }
                    | Action::Timeout { .. }
                    | Action::ResetPeer { .. }
                    | Action::Slicer { .. }
                    | Action::LimitData { .. } => {}
                }
            }
            out.now.push(data);
        }
    }

    fn burst_state(&mut self, f: &Active) -> &mut bool {
        let i = match self.bursts.iter().position(|(id, _)| *id == f.id) {
            Some(i) => i,
            None => {
                self.bursts.push((f.id, false));
                self.bursts.len() - 1
            }
        };
        &mut self.bursts[i].1
    }

    fn link_state(&mut self, f: &Active, now: Instant) -> &mut Instant {
        let i = match self.links.iter().position(|(id, _)| *id == f.id) {
            Some(i) => i,
            None => {
                self.links.push((f.id, now));
                self.links.len() - 1
            }
        };
        &mut self.links[i].1
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let held: usize = self.held.iter().map(|h| h.data.len()).sum();
        self.budget.give(held);
    }
}

fn lost(c: &FaultCounters, len: usize) {
    FaultCounters::add(&c.datagrams_lost, 1);
    FaultCounters::add(&c.bytes_dropped, len as u64);
}

fn later(set: &Arc<FaultSet>, i: usize, data: Vec<u8>, at: Instant, out: &mut Out) {
    out.later.push((
        at,
        Wake::Resume {
            set: set.clone(),
            stage: i + 1,
            data,
        },
    ));
}

/// A sleep until the earliest entry of a [`Timed`] queue, for a receive
/// loop's `select!`: re-armed only when that entry changes.
pub struct TimedWake {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// What the sleep is armed for; None while the queue is empty (or
    /// since the sleep last completed).
    at: Option<Instant>,
}

impl Default for TimedWake {
    /// Needs a tokio runtime with time enabled.
    fn default() -> Self {
        TimedWake {
            sleep: Box::pin(tokio::time::sleep_until(Self::far())),
            at: None,
        }
    }
}

impl TimedWake {
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(86_400)
    }

    /// Arm for the queue's earliest entry, if that changed.
    pub fn follow<K>(&mut self, timed: &Timed<K>) {
        let next = timed.next_at();
        if next != self.at {
            self.at = next;
            self.sleep.as_mut().reset(next.unwrap_or_else(Self::far));
        }
    }

    /// Completes when the followed entry is due; never while the queue was
    /// empty at the last [`follow`](Self::follow).
    pub async fn due(&mut self) {
        if self.at.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.at = None;
    }
}

/// Datagrams waiting for their time, earliest first; `K` says whose.
#[derive(Debug)]
pub struct Timed<K> {
    heap: BinaryHeap<Entry<K>>,
    seq: u64,
    budget: Budget,
}

#[derive(Debug)]
struct Entry<K> {
    at: Instant,
    seq: u64,
    key: K,
    wake: Wake,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Entry<K> {
    /// Reversed: the heap's top is the earliest (and, at one time, the
    /// first queued).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<K> Timed<K> {
    pub fn new(budget: Budget) -> Self {
        Timed {
            heap: BinaryHeap::new(),
            seq: 0,
            budget,
        }
    }

    /// When the earliest entry is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// Queue `wake` for `at`; gives it back if a bound is reached.
    pub fn push(&mut self, at: Instant, key: K, wake: Wake) -> Result<(), Wake> {
        if self.heap.len() >= MAX_TIMED || !self.budget.take(wake.bytes()) {
            return Err(wake);
        }
        self.seq += 1;
        self.heap.push(Entry {
            at,
            seq: self.seq,
            key,
            wake,
        });
        Ok(())
    }

    /// The earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, Wake)> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let e = self.heap.pop()?;
        self.budget.give(e.wake.bytes());
        Some((e.key, e.wake))
    }
}

impl<K> Drop for Timed<K> {
    fn drop(&mut self) {
        let n: usize = self.heap.iter().map(|e| e.wake.bytes()).sum();
        self.budget.give(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{FaultTable, Target};
    use crate::proto::{self, fault::Kind};

    fn set_of(kinds: Vec<Kind>) -> Arc<FaultSet> {
        let t = FaultTable::new(Target::Udp);
        for (i, k) in kinds.into_iter().enumerate() {
            t.add(proto::Fault {
                name: format!("f{i}"),
                direction: proto::FaultDirection::Upstream.into(),
                kind: Some(k),
                ..Default::default()
            })
            .unwrap();
        }
        t.current()
    }

    fn lane(budget: &Budget) -> Lane {
        let d = Arc::new(Decisions::new("127.0.0.1".parse().unwrap()));
        Lane::new(Dir::Upstream, d, budget.clone())
    }

    #[test]
    fn reorder_releases_a_held_datagram_after_gap_others() {
        let set = set_of(vec![Kind::Reorder(proto::ReorderFault {
            probability: 1.0,
            gap: 2,
            max_hold: None,
        })]);
        let budget = Budget::default();
        let mut l = lane(&budget);
        let mut rng = Rng::seeded(1);
        let now = Instant::now();
        let mut out = Out::default();
        for i in 0..3u8 {
            l.admit(&set, vec![i], now, &mut rng, &mut out);
        }
        // Every one is held (probability 1); the first has seen two pass.
        assert_eq!(out.now, vec![vec![0u8]]);
        assert_eq!(out.later.len(), 3);
        assert_eq!(budget.0.load(Relaxed), 2);
        // max_hold of the second: it goes; the first's timer finds nothing.
        let mut out2 = Out::default();
        let (_, w) = out.later.remove(1);
        l.wake(Some(&set), w, now, &mut rng, &mut out2);
        let (_, w) = out.later.remove(0);
        l.wake(Some(&set), w, now, &mut rng, &mut out2);
        assert_eq!(out2.now, vec![vec![1u8]]);
        drop(l);
        assert_eq!(budget.0.load(Relaxed), 0, "held bytes given back");
        assert_eq!(set.faults[0].counters.datagrams_reordered.load(Relaxed), 3);
    }

    #[test]
    fn bandwidth_queues_one_second_then_drops() {
        let set = set_of(vec![Kind::Bandwidth(proto::BandwidthFault {
            rate_bytes_per_sec: 1000,
        })]);
        let mut l = lane(&Budget::default());
        let mut rng = Rng::seeded(1);
        let now = Instant::now();
        let mut out = Out::default();
        for _ in 0..15 {
            l.admit(&set, vec![0; 100], now, &mut rng, &mut out);
        }
        // 100 bytes take 100ms: one now, ten queued up to 1s, four lost.
        assert_eq!(out.now.len(), 1);
        assert_eq!(out.later.len(), 10);
        assert_eq!(
            out.later.last().unwrap().0 - now,
            Duration::from_millis(1000)
        );
        let c = &set.faults[0].counters;
        assert_eq!(c.datagrams_lost.load(Relaxed), 4);
        assert_eq!(c.bytes_dropped.load(Relaxed), 400);
        assert_eq!(c.datagrams_delayed.load(Relaxed), 10);
    }

    #[test]
    fn duplicates_are_capped_and_later_stages_see_each_copy() {
        let mut kinds: Vec<Kind> = (0..10)
            .map(|_| Kind::Duplicate(proto::DuplicateFault { probability: 1.0 }))
            .collect();
        kinds.push(Kind::Corrupt(proto::CorruptFault { probability: 1.0 }));
        let set = set_of(kinds);
        let mut l = lane(&Budget::default());
        let mut rng = Rng::seeded(1);
        let mut out = Out::default();
        l.admit(&set, vec![0; 8], Instant::now(), &mut rng, &mut out);
        assert_eq!(out.now.len(), MAX_COPIES);
        assert!(
            out.now
                .iter()
                .all(|d| d.iter().map(|b| b.count_ones()).sum::<u32>() == 1)
        );
    }

    #[test]
    fn timed_queue_is_bounded_by_the_budget_and_orders_by_time() {
        let budget = Budget::default();
        let mut t: Timed<u8> = Timed::new(budget.clone());
        let set = Arc::new(FaultSet::default());
        let now = Instant::now();
        let resume = |n: usize| Wake::Resume {
            set: set.clone(),
            stage: 0,
            data: vec![0; n],
        };
        t.push(now + Duration::from_millis(5), 1, resume(10))
            .unwrap();
        t.push(now + Duration::from_millis(1), 2, resume(10))
            .unwrap();
        assert!(t.push(now, 3, resume(MAX_QUEUED_BYTES)).is_err());
        assert_eq!(t.pop_due(now).map(|(k, _)| k), None);
        assert_eq!(t.next_at(), Some(now + Duration::from_millis(1)));
        let later = now + Duration::from_millis(10);
        assert_eq!(t.pop_due(later).map(|(k, _)| k), Some(2));
        assert_eq!(budget.0.load(Relaxed), 10);
        drop(t);
        assert_eq!(budget.0.load(Relaxed), 0);
    }
}
