//! The udp-proxy's forwarding: the table of clients, one connected upstream
//! socket per client, and the two directions.
//!
//! A listener has one or more listening sockets (a SO_REUSEPORT group, one
//! per per-core worker: the kernel hashes a client's 4-tuple to one of
//! them, so all its datagrams reach the same socket). Each socket has a
//! receive loop, on its worker ([`crate::net::udp::serve_each`]), that
//! reads it and sends each client's datagrams upstream on that client's
//! socket (with the upstream direction's timed queue for its clients); one
//! task per client, on the same worker, reads its upstream socket and
//! sends the replies to the client from the listening socket its datagrams
//! came to, so they come from the address the client sent to (with the
//! downstream direction's queue of that client). Each loop owns the table
//! of its clients: it admits clients, evicts and expires them, and cancels
//! a client's task when it forgets the client, which closes its socket.
//! The limits are the listener's: `max_clients` and
//! `max_clients_per_source` are counted across the loops in [`Admission`]
//! (a short lock when a client is admitted or forgotten, never per
//! datagram and never across an await), as are the counters, the
//! rate limit's buckets, the fault set and the timed queues' byte budget.
//!
//! Before a datagram is forwarded, the datagram-source guard
//! ([`crate::services::source_guard`]) checks its source; a new client
//! also needs room in the table, room under its source's
//! `max_clients_per_source`, and a permit of netd's descriptor budget for
//! its socket (held by its downstream task, so released when the socket
//! closes).
//!
//! A client counts as idle for eviction (table full) after
//! [`EVICT_IDLE`] (or `idle_timeout` if shorter) without a datagram either
//! way; the table is searched for such clients at most every
//! [`FULL_SWEEP_EVERY`], so a flood of new clients cannot make every
//! datagram scan it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::UdpProxy;
use super::impair::{Budget, Decisions, Lane, Out, Timed, TimedWake};
use crate::fault::{Dir, FaultTable, Rng, Watch};
use crate::net::cancel::CancelWatch;
use crate::net::udp::RecvHealth;
use crate::net::udp_batch::{Gso, RecvBatch, SendBatch};
use crate::services::ServiceCtx;
use crate::services::client_key::{DEFAULT_IPV6_PREFIX, rate_key};
use crate::services::source_guard::{SourceBuckets, SourceGuard};
use crate::telemetry::stats::Stats;
use crate::util::warn_limit::{DEFAULT_INTERVAL, RateLimitedWarn};

/// Datagrams read per call from a client's upstream socket (fewer than on
/// the listening socket: there is one such buffer per client).
const DOWN_BATCH: usize = 8;
/// What each slot of a client's buffer keeps resident between batches
/// (`RecvBatch::trim`): a client holds at most DOWN_BATCH x 4 KiB, as the
/// single 64 KiB buffer before batching held at least a page.
const DOWN_KEEP: usize = 4096;
/// A client quiet this long may be evicted when the table is full.
pub const EVICT_IDLE: Duration = Duration::from_secs(1);
/// With the table full, idle clients are looked for at most this often.
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What both directions of a client share.
#[derive(Debug)]
struct Shared {
    /// Last datagram either way, in ms since the service's epoch.
    last_ms: AtomicU64,
    decisions: Arc<Decisions>,
}

#[derive(Debug)]
struct Client {
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    /// The upstream direction's faults state.
    lane: Lane,
    cancel: CancellationToken,
}

/// What the receive loops of one generation share.
struct Generation {
    admission: Admission,
    buckets: SourceBuckets,
    epoch: Instant,
    budget: Budget,
}

/// The listener-wide client limits, counted across the receive loops.
struct Admission {
    max_clients: usize,
    max_per_source: usize,
    table: parking_lot::Mutex<AdmissionTable>,
    /// The clients of every loop (a copy of the table's count, read
    /// without the lock).
    clients: std::sync::atomic::AtomicUsize,
    /// One per loop, told by another loop that found the table full with
    /// none of its own clients idle: look for idle clients in yours. (One
    /// each, so that waiting on it stays the loop's own business, not a
    /// lock the loops share on every wake-up.)
    want_room: Box<[Notify]>,
    /// One warning per interval for refused clients.
    refused_warn: RateLimitedWarn,
    counters: Arc<super::Counters>,
}

#[derive(Default)]
struct AdmissionTable {
    clients: usize,
    /// Clients per source key (an IPv4 address, an IPv6 /64).
    per_source: HashMap<IpAddr, usize>,
}

/// Why a new client was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Full,
    Source,
}

impl Admission {
    fn new(svc: &UdpProxy, loops: usize) -> Self {
        // The active clients are this generation's, none so far.
        svc.counters.clients_active.store(0, Relaxed);
        Admission {
            max_clients: svc.max_clients,
            max_per_source: svc.max_clients_per_source,
            table: parking_lot::Mutex::default(),
            clients: Default::default(),
            want_room: (0..loops).map(|_| Notify::new()).collect(),
            refused_warn: RateLimitedWarn::new(DEFAULT_INTERVAL),
            counters: svc.counters.clone(),
        }
    }

    fn full(&self) -> bool {
        self.clients.load(Relaxed) >= self.max_clients
    }

    /// Count `peer` as a client if there is room in the table and under its
    /// source's `max_clients_per_source`.
    fn take(&self, peer: SocketAddr) -> Result<(), Refused> {
        let mut t = self.table.lock();
        if t.clients >= self.max_clients {
            return Err(Refused::Full);
        }
        let n = t.per_source.entry(source_key(peer)).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refused::Source);
        }
        *n += 1;
        t.clients += 1;
        self.set(t.clients);
        Ok(())
    }

    /// `peers` are clients no more.
    fn give_back(&self, peers: &[SocketAddr]) {
        if peers.is_empty() {
            return;
        }
        let mut t = self.table.lock();
        for &peer in peers {
            forget_source(&mut t.per_source, peer);
        }
        t.clients = t.clients.saturating_sub(peers.len());
        if t.per_source.capacity() > 2 * t.per_source.len().max(64) {
            t.per_source.shrink_to_fit();
        }
        self.set(t.clients);
    }

    fn set(&self, clients: usize) {
        self.clients.store(clients, Relaxed);
        self.counters.clients_active.store(clients as u64, Relaxed);
    }
}

/// Everything a receive loop keeps.
struct Proxy<'a> {
    /// Which of the listener's loops this is.
    index: usize,
    svc: &'a UdpProxy,
    ctx: &'a ServiceCtx,
    generation: &'a Generation,
    listen: Arc<UdpSocket>,
    /// This loop's clients.
    clients: HashMap<SocketAddr, Client>,
    /// Clients just forgotten, handed back to the admission in one go.
    gone: Vec<SocketAddr>,
    epoch: Instant,
    budget: Budget,
    /// Cancelled when this generation ends: every client task stops.
    gen_cancel: CancellationToken,
    next_full_sweep: Instant,
    /// Whether GSO is used on the listening socket (replies to clients).
    listen_gso: Gso,
    /// Whether GSO is used toward the upstream (one state for every
    /// client's socket: they share the path).
    up_gso: Gso,
}

/// Datagrams on their way upstream without faults: one client's at a
/// time (consecutive datagrams of a client go in one batch).
struct UpQueue {
    tx: SendBatch,
    pending: Option<SocketAddr>,
}

impl Proxy<'_> {
    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Forget the clients quiet for `idle` or longer; how many.
    fn expire(&mut self, now: Instant, idle: Duration) -> usize {
        let cutoff = self.ms(now).saturating_sub(idle.as_millis() as u64);
        let gone = &mut self.gone;
        self.clients.retain(|peer, c| {
            let keep = c.shared.last_ms.load(Relaxed) > cutoff;
            if !keep {
                c.cancel.cancel();
                gone.push(*peer);
            }
            keep
        });
        let n = gone.len();
        if n > 0 {
            Stats::add(&self.svc.counters.clients_expired, n as u64);
            self.generation.admission.give_back(gone);
            gone.clear();
            if gone.capacity() > 1024 {
                *gone = Vec::new();
            }
            if self.clients.capacity() > 2 * self.clients.len().max(64) {
                self.clients.shrink_to_fit();
            }
        }
        n
    }

    /// The table is full: forget this loop's idle clients (at most every
    /// [`FULL_SWEEP_EVERY`]); false if it has none, and then the other
    /// loops are asked to look in theirs.
    fn make_room(&mut self, now: Instant) -> bool {
        if now < self.next_full_sweep {
            return false;
        }
        self.next_full_sweep = now + FULL_SWEEP_EVERY;
        if self.expire(now, EVICT_IDLE.min(self.svc.idle_timeout)) > 0 {
            return true;
        }
        let others = self.generation.admission.want_room.iter().enumerate();
        for (_, n) in others.filter(|(i, _)| *i != self.index) {
            n.notify_one();
        }
        false
    }

    /// Another loop found the table full: forget the idle clients of this
    /// one, if the table is still full.
    fn room_wanted(&mut self, now: Instant) {
        if self.generation.admission.full() && now >= self.next_full_sweep {
            self.next_full_sweep = now + FULL_SWEEP_EVERY;
            self.expire(now, EVICT_IDLE.min(self.svc.idle_timeout));
        }
    }

    /// A new client refused (counted in `counter`), with a warning at most
    /// once per interval.
    fn refuse(&self, peer: SocketAddr, counter: &AtomicU64, why: &str) {
        Stats::add(counter, 1);
        tracing::debug!(listener = %self.ctx.name, %peer, "dropped: {why}");
        if let Some(suppressed) = self.generation.admission.refused_warn.hit() {
            tracing::warn!(listener = %self.ctx.name, %peer, suppressed, "new clients refused: {why}");
        }
    }

    /// A new client's upstream socket and its downstream task, which holds
    /// `fd` (the socket's share of the descriptor budget).
    fn open(
        &mut self,
        peer: SocketAddr,
        now: Instant,
        fd: crate::net::fd_budget::Permit,
    ) -> std::io::Result<()> {
        let up = self.svc.upstream;
        let local: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // Binding port 0 and connecting a UDP socket do not wait on the
        // network: no blocking on the runtime.
        let std_sock = std::net::UdpSocket::bind(local)?;
        std_sock.connect(up)?;
        std_sock.set_nonblocking(true)?;
        crate::net::udp_batch::enable_gro(std_sock.as_raw_fd());
        let socket = Arc::new(UdpSocket::from_std(std_sock)?);
        let decisions = Arc::new(Decisions::new(peer.ip().to_canonical()));
        let shared = Arc::new(Shared {
            last_ms: AtomicU64::new(self.ms(now)),
            decisions: decisions.clone(),
        });
        let cancel = self.gen_cancel.child_token();
        let task = Downstream {
            peer,
            socket: socket.clone(),
            listen: self.listen.clone(),
            listen_gso: self.listen_gso.clone(),
            shared: shared.clone(),
            faults: self.ctx.faults.clone(),
            stats: self.ctx.stats.clone(),
            counters: self.svc.counters.clone(),
            budget: self.budget.clone(),
            epoch: self.epoch,
            cancel: cancel.clone(),
            _fd: fd,
        };
        let (stats, name) = (self.ctx.stats.clone(), self.ctx.name.clone());
        self.ctx.tracker.spawn(async move {
            crate::net::contain::contain_panic(task.run(), &stats, &name).await;
        });
        self.clients.insert(
            peer,
            Client {
                socket,
                shared,
                lane: Lane::new(Dir::Upstream, decisions, self.budget.clone()),
                cancel,
            },
        );
        Stats::add(&self.svc.counters.clients_total, 1);
        Ok(())
    }

    /// Whether `peer` is a client, or can become one: room in the table
    /// and under its source's `max_clients_per_source` (the listener's,
    /// across its loops), a permit of the descriptor budget, and an
    /// upstream socket. Refusals are counted.
    fn admit_client(&mut self, peer: SocketAddr, now: Instant) -> bool {
        if self.clients.contains_key(&peer) {
            return true;
        }
        let counters = &self.svc.counters;
        let admission = &self.generation.admission;
        // Full: refused without the lock (a flood of new sources while the
        // table is full takes it only to make room).
        let mut taken = if admission.full() {
            Err(Refused::Full)
        } else {
            admission.take(peer)
        };
        if taken == Err(Refused::Full) && self.make_room(now) {
            taken = self.generation.admission.take(peer);
        }
        match taken {
            Ok(()) => {}
            Err(Refused::Full) => {
                self.refuse(peer, &counters.clients_refused, "the client table is full");
                return false;
            }
            Err(Refused::Source) => {
                self.refuse(
                    peer,
                    &counters.source_clients_refused,
                    "the source IP has max_clients_per_source clients",
                );
                return false;
            }
        }
        let Some(fd) = crate::net::fd_budget::try_acquire(1) else {
            self.generation.admission.give_back(&[peer]);
            self.refuse(
                peer,
                &counters.clients_refused,
                "netd's descriptor budget is used up",
            );
            return false;
        };
        if let Err(e) = self.open(peer, now, fd) {
            self.generation.admission.give_back(&[peer]);
            Stats::add(&counters.upstream_errors, 1);
            tracing::debug!(listener = %self.ctx.name, %peer, error = %e, "no upstream socket for a new client");
            return false;
        }
        true
    }

    /// Send the datagrams queued for the upstream (all of one client's,
    /// `up.pending`) on that client's socket.
    async fn flush_up(&self, up: &mut UpQueue) {
        let Some(peer) = up.pending.take() else {
            return;
        };
        let Some(c) = self.clients.get(&peer) else {
            up.tx.clear();
            return;
        };
        let socket = c.socket.clone();
        let sent = up.tx.flush(&socket).await;
        if sent.failed > 0 {
            Stats::add(&self.svc.counters.upstream_errors, sent.failed);
            if let Some(e) = sent.last_error {
                tracing::debug!(error = %e, failed = sent.failed, "send to the upstream failed");
            }
        }
    }

    /// Send datagrams of `peer`'s to the upstream.
    async fn send_up(&self, peer: SocketAddr, datagrams: &mut Vec<Vec<u8>>) {
        let Some(c) = self.clients.get(&peer) else {
            datagrams.clear();
            return;
        };
        for d in datagrams.drain(..) {
            send_upstream(&c.socket, &d, &self.svc.counters.upstream_errors).await;
        }
    }
}

/// The per-source key of a client: its IP, an IPv6 one by /64.
fn source_key(peer: SocketAddr) -> IpAddr {
    rate_key(peer.ip(), DEFAULT_IPV6_PREFIX)
}

fn forget_source(per_source: &mut HashMap<IpAddr, usize>, peer: SocketAddr) {
    let key = source_key(peer);
    if let Some(n) = per_source.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per_source.remove(&key);
        }
    }
}

async fn send_upstream(socket: &UdpSocket, d: &[u8], errors: &AtomicU64) {
    if let Err(e) = socket.send(d).await {
        Stats::add(errors, 1);
        tracing::debug!(error = %e, "send to the upstream failed");
    }
}

/// Queue a lane's timed datagrams; those over the queue's bounds are
/// counted (or released) by the lane, and what it releases is sent now.
fn queue_later<K: Copy>(
    timed: &mut Timed<K>,
    key: K,
    lane: &mut Lane,
    out: &mut Out,
    now: Instant,
    rng: &mut Rng,
) {
    while let Some((at, wake)) = out.later.pop() {
        if let Err(wake) = timed.push(at, key, wake) {
            lane.overflow(wake, now, rng, out);
        }
    }
}

/// Serve `sockets` (bound at the listen address; several with
/// SO_REUSEPORT) with one receive loop each, on the per-core workers.
pub(super) async fn run(
    svc: Arc<UdpProxy>,
    sockets: Vec<UdpSocket>,
    ctx: ServiceCtx,
) -> anyhow::Result<()> {
    let generation = Arc::new(Generation {
        admission: Admission::new(&svc, sockets.len()),
        buckets: SourceBuckets::new(&svc.rules),
        epoch: Instant::now(),
        budget: Budget::default(),
    });
    let stop = ctx.stop_accepting.clone();
    crate::net::udp::serve_each(sockets, &stop, move |i, socket, stop| {
        let (svc, ctx, generation) = (svc.clone(), ctx.clone(), generation.clone());
        async move { run_loop(i, &svc, socket, &ctx, &stop, &generation).await }
    })
    .await
}

/// One listening socket's receive loop, until `stop`.
async fn run_loop(
    index: usize,
    svc: &UdpProxy,
    socket: UdpSocket,
    ctx: &ServiceCtx,
    stop: &CancellationToken,
    generation: &Generation,
) -> anyhow::Result<()> {
    let fd = socket.as_raw_fd();
    if let Err(e) = crate::net::udp::enable_rxq_ovfl(fd) {
        tracing::debug!(listener = %ctx.name, error = %e, "SO_RXQ_OVFL unavailable");
    }
    let listen = Arc::new(socket);
    let gen_cancel = ctx.close_connections.child_token();
    // However the loop ends, its clients' tasks end with it.
    let _gen_guard = gen_cancel.clone().drop_guard();
    let mut p = Proxy {
        index,
        svc,
        ctx,
        generation,
        listen: listen.clone(),
        clients: HashMap::new(),
        gone: Vec::new(),
        epoch: generation.epoch,
        budget: generation.budget.clone(),
        gen_cancel,
        next_full_sweep: Instant::now(),
        listen_gso: Gso::new(),
        up_gso: Gso::new(),
    };
    let mut timed: Timed<SocketAddr> = Timed::new(generation.budget.clone());
    let mut watch = Watch::new(&ctx.faults);
    let mut rng = Rng::new();
    let mut out = Out::default();
    let mut stop = CancelWatch::new(stop);
    let fast = crate::net::udp_batch::fast_path();
    let gro = crate::net::udp_batch::enable_gro(fd);
    let mut rx = RecvBatch::new(fast.batch)?;
    let mut up = UpQueue {
        tx: SendBatch::new(p.up_gso.clone()),
        pending: None,
    };
    tracing::info!(listener = %ctx.name, batch = fast.batch, gro, gso = p.listen_gso.on(), "udp fast path");
    let mut health = RecvHealth::default();
    let mut guard = SourceGuard::new(&svc.rules, &svc.own, &svc.counters.guard, &ctx.name)
        .never_from(svc.upstream)
        .sharing(&generation.buckets);

    let sweep_every =
        (svc.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let sweep = tokio::time::sleep(sweep_every);
    tokio::pin!(sweep);
    let mut wake = TimedWake::default();
    let room_wanted = &generation.admission.want_room[index];

    loop {
        wake.follow(&timed);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            () = wake.due() => {
                let now = Instant::now();
                let current = watch.get().cloned();
                while let Some((peer, wake)) = timed.pop_due(now) {
                    let Some(c) = p.clients.get_mut(&peer) else { continue };
                    c.lane.wake(current.as_ref(), wake, now, &mut rng, &mut out);
                    queue_later(&mut timed, peer, &mut c.lane, &mut out, now, &mut rng);
                    p.send_up(peer, &mut out.now).await;
                }
            }
            _ = &mut sweep => {
                p.expire(Instant::now(), svc.idle_timeout);
                sweep.as_mut().reset(Instant::now() + sweep_every);
            }
            () = room_wanted.notified() => p.room_wanted(Instant::now()),
            r = listen.async_io(Interest::READABLE, || rx.recv(fd)) => {
                if let Err(e) = r {
                    health.failed(e, &ctx.stats.errors, &ctx.name).await?;
                    continue;
                }
                health.received(rx.drops(), &svc.counters.kernel_drops);
                Stats::add(&ctx.stats.errors, rx.without_source() as u64);
                let now = Instant::now();
                let ms = p.ms(now);
                // The fault set once per batch, not per datagram.
                let set = watch.get().filter(|s| !s.is_empty()).cloned();
                // The listener's counters (shared by its loops) once per batch,
                // before any of its datagrams is forwarded or dropped.
                let (count, bytes) = rx
                    .datagrams()
                    .fold((0, 0), |(n, b), (_, d)| (n + 1, b + d.len() as u64));
                Stats::add(&ctx.stats.datagrams_in, count);
                Stats::add(&ctx.stats.bytes_in, bytes);
                for (peer, data) in rx.datagrams() {
                    if !guard.admit(peer, now) || !p.admit_client(peer, now) {
                        continue;
                    }
                    // One client's datagrams per batch, in order: what is
                    // queued for another client goes first. (Nothing is
                    // queued here in a batch with faults: those datagrams
                    // go through their lanes, and each batch ends flushed.)
                    if up.pending.is_some_and(|q| q != peer) {
                        p.flush_up(&mut up).await;
                    }
                    let Some(c) = p.clients.get_mut(&peer) else { continue };
                    c.shared.last_ms.store(ms, Relaxed);
                    match &set {
                        Some(set) => {
                            c.lane.admit(set, data.to_vec(), now, &mut rng, &mut out);
                            queue_later(&mut timed, peer, &mut c.lane, &mut out, now, &mut rng);
                            p.send_up(peer, &mut out.now).await;
                        }
                        None => {
                            up.pending = Some(peer);
                            up.tx.push(None, data);
                        }
                    }
                }
                p.flush_up(&mut up).await;
            }
        }
    }
}

/// One client's downstream direction.
struct Downstream {
    peer: SocketAddr,
    socket: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    listen_gso: Gso,
    shared: Arc<Shared>,
    faults: Arc<FaultTable>,
    stats: Arc<Stats>,
    counters: Arc<super::Counters>,
    budget: Budget,
    epoch: Instant,
    cancel: CancellationToken,
    /// The socket's permit of the descriptor budget, released with it.
    _fd: crate::net::fd_budget::Permit,
}

impl Downstream {
    async fn run(self) {
        let mut watch = Watch::new(&self.faults);
        let mut lane = Lane::new(
            Dir::Downstream,
            self.shared.decisions.clone(),
            self.budget.clone(),
        );
        let mut timed: Timed<()> = Timed::new(self.budget.clone());
        let mut rng = Rng::new();
        let mut out = Out::default();
        let mut stop = CancelWatch::new(&self.cancel);
        let fd = self.socket.as_raw_fd();
        let mut rx = match RecvBatch::new(DOWN_BATCH.min(crate::net::udp_batch::fast_path().batch))
        {
            Ok(rx) => rx,
            Err(e) => {
                // Out of memory for the mapping: the client gets no answers
                // (counted), as when its socket cannot be made.
                Stats::add(&self.counters.upstream_errors, 1);
                tracing::warn!(peer = %self.peer, error = %e, "no receive buffer for a client");
                return;
            }
        };
        let mut tx = SendBatch::new(self.listen_gso.clone());
        let mut wake = TimedWake::default();
        loop {
            wake.follow(&timed);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                () = wake.due() => {
                    let now = Instant::now();
                    let current = watch.get().cloned();
                    while let Some(((), wake)) = timed.pop_due(now) {
                        lane.wake(current.as_ref(), wake, now, &mut rng, &mut out);
                        queue_later(&mut timed, (), &mut lane, &mut out, now, &mut rng);
                        for d in out.now.drain(..) {
                            self.send(&d).await;
                        }
                    }
                }
                r = self.socket.async_io(Interest::READABLE.add(Interest::ERROR), || rx.recv(fd)) => {
                    if let Err(e) = r {
                        // Typically ECONNREFUSED: the upstream answered
                        // an earlier datagram with ICMP port unreachable
                        // (woken for it by the ERROR interest: with a
                        // client's datagrams sent in one call, no later
                        // send of the batch reports it).
                        Stats::add(&self.counters.upstream_errors, 1);
                        tracing::debug!(peer = %self.peer, error = %e, "receive from the upstream failed");
                        if e.kind() != std::io::ErrorKind::ConnectionRefused {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        continue;
                    }
                    let now = Instant::now();
                    self.shared.last_ms.store(
                        now.saturating_duration_since(self.epoch).as_millis() as u64,
                        Relaxed,
                    );
                    let set = watch.get().filter(|s| !s.is_empty()).cloned();
                    for (_, data) in rx.datagrams() {
                        match &set {
                            Some(set) => {
                                lane.admit(set, data.to_vec(), now, &mut rng, &mut out);
                                queue_later(&mut timed, (), &mut lane, &mut out, now, &mut rng);
                                for d in out.now.drain(..) {
                                    tx.push(Some(self.peer), &d);
                                }
                            }
                            None => tx.push(Some(self.peer), data),
                        }
                    }
                    // One such buffer per client: large answers must not
                    // leave up to DOWN_BATCH x 64 KiB resident per client.
                    rx.trim(DOWN_KEEP);
                    self.flush(&mut tx).await;
                }
            }
        }
    }

    /// Send the replies queued in `tx` to the client.
    async fn flush(&self, tx: &mut SendBatch) {
        if tx.is_empty() {
            return;
        }
        let sent = tx.flush(&self.listen).await;
        Stats::add(&self.stats.datagrams_out, sent.datagrams);
        Stats::add(&self.stats.bytes_out, sent.bytes);
        if sent.failed > 0 {
            Stats::add(&self.stats.errors, sent.failed);
            if let Some(e) = sent.last_error {
                tracing::debug!(peer = %self.peer, error = %e, "send to the client failed");
            }
        }
    }

    async fn send(&self, d: &[u8]) {
        match self.listen.send_to(d, self.peer).await {
            Ok(sent) => {
                Stats::add(&self.stats.datagrams_out, 1);
                Stats::add(&self.stats.bytes_out, sent as u64);
            }
            Err(e) => {
                Stats::add(&self.stats.errors, 1);
                tracing::debug!(peer = %self.peer, error = %e, "send to the client failed");
            }
        }
    }
}
