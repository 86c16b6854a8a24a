//! Reading the capture: one OS thread per ring ([`Tap`]), each reading its
//! own packet socket (a TPACKET_V3 ring, or pnet's reads plus recvmmsg
//! batches where the kernel offers no ring) and accounting for what it
//! reads into the listener's shared state:
//!
//! - counters: relaxed atomics, added once per batch (so the per-protocol
//!   counts, kernel drops and pcap count of all rings are one sum);
//! - flows: the ring's own flow table (see [`super::flows::merged`] for the
//!   merged view), locked per batch by this thread only;
//! - alerts: one set of detectors for all rings, locked only for TCP
//!   connection attempts (a scan's SYNs go to many ports, so to many rings);
//! - pcap: one file, locked per packet, so records of different rings
//!   follow each other whole (never mixed within a record), in the order
//!   the rings' threads wrote them rather than by time stamp.
//!
//! Every wait is bounded by 100 ms, so stop and shutdown are prompt; a
//! thread that fails stops the others.

use parking_lot::Mutex;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use pnet::datalink::DataLinkReceiver;

use super::decode::{self, Proto};
use super::flows::{FlowTable, endpoint};
use super::{BATCH, COALESCE, READ_TIMEOUT, Sniffer, alerts, pcap, proto_index, ring, socket};
use crate::proto::{self, EventKind};
use crate::services::ServiceCtx;
use crate::telemetry::stats::Stats;

/// One packet socket of a capture, bound to the interface (and, with
/// several, joined to the listener's fanout group): pnet's receiver, which
/// owns the descriptor, and the ring mapped on it.
pub struct Tap {
    pub(super) rx: Box<dyn DataLinkReceiver>,
    pub(super) fd: RawFd,
    /// The TPACKET_V3 ring, when the kernel gave us one; else frames are
    /// read through pnet's channel (and recvmmsg batches).
    pub(super) ring: Option<ring::Ring>,
}

/// What the threads of one capture share besides the sniffer itself.
pub(super) struct Shared {
    pub(super) pcap: Mutex<Option<pcap::Pcap>>,
    pub(super) detectors: Mutex<alerts::Detectors>,
    /// Set by a thread that failed: the others stop too.
    pub(super) failed: AtomicBool,
    /// Ring threads still reading: the last one out closes the pcap file.
    pub(super) live: AtomicUsize,
}

/// A ring's thread, leaving [`Shared`] when dropped (also on a panic).
pub(super) struct Leaving<'a>(pub(super) &'a Shared, pub(super) &'a str);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

impl Shared {
    /// A ring's thread is done; the last one writes out and closes the
    /// pcap file (on its thread, not on the async runtime).
    pub(super) fn leave(&self, listener: &str) {
        if self.live.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(mut p) = self.pcap.lock().take() else {
            return;
        };
        if let Err(e) = p.close() {
            tracing::warn!(listener = %listener, error = %e, "finishing the pcap file failed");
        }
    }
}

impl Sniffer {
    /// Read `tap` (ring `index`) until the listener stops or another ring's
    /// thread fails. Runs on a thread of its own.
    pub(super) fn capture_loop(
        &self,
        index: usize,
        mut tap: Tap,
        shared: &Shared,
        ctx: &ServiceCtx,
    ) -> anyhow::Result<()> {
        let flows = &self.flows[index];
        let mut last_stats = Instant::now();
        let mut batch = socket::Batch::new();
        let stopping =
            || ctx.stop_accepting.is_cancelled() || shared.failed.load(Ordering::Relaxed);
        let result = loop {
            if stopping() {
                break Ok(());
            }
            if let Some(ring) = tap.ring.as_mut() {
                let mut acc = self.batch(flows, shared, ctx);
                let got = ring.next_block(tap.fd, READ_TIMEOUT, |frame, ts| acc.take(frame, ts));
                acc.finish();
                if let Err(e) = got {
                    break Err(anyhow::anyhow!("capture on {} failed: {e}", self.interface));
                }
            } else {
                match tap.rx.next() {
                    Ok(frame) => {
                        let mut one = self.batch(flows, shared, ctx);
                        one.take(frame, SystemTime::now());
                        one.finish();
                        // pnet woke us for one packet; now take what is
                        // queued in batches, one recvmmsg(2) per BATCH
                        // frames. While traffic keeps coming, pause COALESCE
                        // between partial batches so packets gather in the
                        // socket buffer (16 MiB, ~100 ms at 200k small
                        // packets/s) and one wakeup serves many, as a
                        // TPACKET_V3 ring's block timeout does for libpcap.
                        while !stopping() {
                            let Ok(n) = batch.recv(tap.fd) else { break };
                            if n == 0 {
                                break;
                            }
                            let now = SystemTime::now();
                            let mut acc = self.batch(flows, shared, ctx);
                            for i in 0..n {
                                acc.take(batch.frame(i), now);
                            }
                            acc.finish();
                            if n < BATCH {
                                std::thread::sleep(COALESCE);
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        break Err(anyhow::anyhow!("capture on {} failed: {e}", self.interface));
                    }
                }
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                self.read_kernel_drops(tap.fd);
            }
        };
        if result.is_err() {
            shared.failed.store(true, Ordering::Relaxed);
        }
        self.read_kernel_drops(tap.fd);
        result
    }

    /// Accounting for a batch of frames (see [`BatchAcc`]).
    fn batch<'a>(
        &'a self,
        flows: &'a Mutex<FlowTable>,
        shared: &'a Shared,
        ctx: &'a ServiceCtx,
    ) -> BatchAcc<'a> {
        BatchAcc {
            sniffer: self,
            shared,
            ctx,
            tally: Tally::default(),
            table: flows,
            flows: None,
        }
    }

    /// Add the kernel's drop count of one socket since the last read
    /// (PACKET_STATISTICS resets on read): the listener's kernel drops are
    /// the sum over its rings.
    fn read_kernel_drops(&self, fd: RawFd) {
        if let Ok(st) = socket::packet_stats(fd) {
            Stats::add(&self.counters.kernel_drops, st.tp_drops as u64);
        }
    }
}

/// Counts gathered over a batch of packets, added to the shared atomics
/// once at the end.
#[derive(Default)]
struct Tally {
    packets: [u64; 4],
    bytes: [u64; 4],
    fragments: u64,
    malformed: u64,
}

/// One batch's accounting. Counters go to a tally added to the shared
/// atomics once at the end, and the ring's flow table is locked on first
/// use and released at the end (never across a wait; only stats readers
/// contend for it), so the per-packet cost stays a few adds and one hash
/// lookup.
struct BatchAcc<'a> {
    sniffer: &'a Sniffer,
    shared: &'a Shared,
    ctx: &'a ServiceCtx,
    tally: Tally,
    table: &'a Mutex<FlowTable>,
    flows: Option<parking_lot::MutexGuard<'a, FlowTable>>,
}

impl BatchAcc<'_> {
    /// Decode one frame and, if it passes the filter, account for it.
    fn take(&mut self, frame: &[u8], now: SystemTime) {
        let sniffer = self.sniffer;
        let ctx = self.ctx;
        let d = decode::decode(frame);
        if !sniffer.filter.matches(&d) {
            return;
        }
        let len = frame.len() as u64;
        let i = proto_index(d.proto);
        self.tally.packets[i] += 1;
        self.tally.bytes[i] += len;
        self.tally.fragments += d.fragment as u64;
        self.tally.malformed += d.malformed as u64;
        let table = self.table;
        self.flows
            .get_or_insert_with(|| table.lock())
            .record(&d, now);
        if alerts::Detectors::concerns(&d) {
            if let Some(alert) = self.shared.detectors.lock().observe(&d) {
                Stats::add(&sniffer.counters.alerts, 1);
                tracing::warn!(listener = %ctx.name, alert = %alert, "alert");
                ctx.events.publish(
                    EventKind::Alert,
                    &ctx.name,
                    proto::ListenerKind::Sniffer,
                    alert,
                );
            }
        }
        self.write_pcap(frame, now);
        if sniffer.packets.receiver_count() > 0 {
            summarise(sniffer, &d, frame.len(), now);
        }
    }

    /// One whole record, under the file's lock.
    fn write_pcap(&self, frame: &[u8], now: SystemTime) {
        if self.sniffer.pcap.is_none() {
            return;
        }
        let mut pcap = self.shared.pcap.lock();
        let Some(p) = pcap.as_mut() else { return };
        match p.write(now, frame) {
            Ok(()) => Stats::add(&self.sniffer.counters.pcap_packets, 1),
            Err(e) => {
                Stats::add(&self.ctx.stats.errors, 1);
                tracing::warn!(listener = %self.ctx.name, error = %e, "pcap write failed; pcap export stopped");
                *pcap = None;
            }
        }
    }

    fn finish(self) {
        drop(self.flows);
        let (mut packets, mut bytes) = (0, 0);
        for i in 0..4 {
            if self.tally.packets[i] > 0 {
                let (p, b) = &self.sniffer.counters.by_proto[i];
                Stats::add(p, self.tally.packets[i]);
                Stats::add(b, self.tally.bytes[i]);
                packets += self.tally.packets[i];
                bytes += self.tally.bytes[i];
            }
        }
        let c = &self.sniffer.counters;
        if self.tally.fragments > 0 {
            Stats::add(&c.fragments, self.tally.fragments);
        }
        if self.tally.malformed > 0 {
            Stats::add(&c.malformed, self.tally.malformed);
        }
        if packets > 0 {
            Stats::add(&self.ctx.stats.datagrams_in, packets);
            Stats::add(&self.ctx.stats.bytes_in, bytes);
        }
    }
}

/// A packet's summary for `netctl sniff` (only while someone watches).
fn summarise(sniffer: &Sniffer, d: &decode::Decoded, len: usize, now: SystemTime) {
    let (src, dst) = match d.proto {
        Proto::Other if d.src.is_none() => {
            (format!("ethertype 0x{:04x}", d.ethertype), "-".to_string())
        }
        _ => (
            endpoint(d.src, d.ports.then_some(d.src_port)),
            endpoint(d.dst, d.ports.then_some(d.dst_port)),
        ),
    };
    let _ = sniffer.packets.send(proto::PacketSummary {
        time: Some(now.into()),
        protocol: d.proto.as_str().into(),
        src,
        dst,
        length: len as u32,
        tcp_flags: if d.proto == Proto::Tcp {
            decode::flags_string(d.tcp_flags)
        } else {
            String::new()
        },
        dropped_before: 0,
    });
}
