//! The packet sniffer: AF_PACKET sockets on one interface, one per ring,
//! spread with PACKET_FANOUT and each read on a dedicated OS thread
//! ([`capture`]), from a TPACKET_V3 ring ([`ring`]) when the kernel offers
//! one and otherwise through pnet's reads plus recvmmsg(2) batches. Every
//! wait is bounded by 100 ms so stop and shutdown are prompt.
//!
//! Rings: one per core (at most [`MAX_DEFAULT_RINGS`]), or
//! `NETD_SNIFFER_RINGS` (1..=[`MAX_RINGS`]) read when a sniffer is
//! validated. With more than one, the sockets form a fanout group of their
//! own (the kernel picks its id) in hash mode with rollover: a flow's
//! packets go to one ring, unless that ring is full. Stats are merged:
//! counters are shared atomics, the flow tables (one per ring) are merged
//! when read ([`flows::merged`]), kernel drops are the sum of every
//! socket's PACKET_STATISTICS, one set of detectors and one pcap file serve
//! all rings.
//!
//! The sockets are created and set up when the listener starts, so a
//! missing CAP_NET_RAW, an unknown interface or a bad filter is reported to
//! the caller: each is opened with protocol 0 (it receives nothing yet),
//! the filter compiled to classic BPF is attached ([`filter`]), the receive
//! buffer is raised, and only then is it bound to the interface for all
//! protocols, so no packet from another interface is ever queued. With
//! several rings, each socket holds a drop-all program until all of them
//! have joined the group, so no packet is taken twice.
//!
//! Each packet is decoded without allocation ([`decode`]), counted per
//! protocol (relaxed atomics), recorded in its ring's bounded flow table
//! ([`flows`]), fed to the detectors ([`alerts`]), written to the pcap file
//! ([`pcap`]) and, only while someone watches, summarised onto a bounded
//! broadcast channel that drops (and counts) what a slow watcher misses.

pub mod alerts;
mod capture;
pub mod decode;
pub mod filter;
pub mod flows;
pub mod metrics;
pub mod pcap;
mod ring;
mod show;
mod socket;

use parking_lot::Mutex;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use pnet::datalink::{self, Channel, NetworkInterface};
use tokio::sync::broadcast;

use super::{
    BindError, ListenerKind, ServiceCtx, Settings, SpecError, Transport, duration_field, size_in,
};
use crate::proto;
use crate::spec::FieldError;
use crate::spec::form::{self, Key, Unit};
use decode::Proto;
use filter::Filter;
use flows::FlowTable;

pub const DEFAULT_PCAP_MAX_BYTES: u64 = 100 * 1024 * 1024;
pub const DEFAULT_PCAP_MAX_FILES: u32 = 3;
pub const DEFAULT_MAX_FLOWS: u32 = 4096;
pub const MAX_FLOWS_LIMIT: u32 = 1_000_000;
pub const DEFAULT_SCAN_PORTS: u32 = 50;
pub const DEFAULT_SCAN_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_SYN_RATE: u32 = 1000;
/// Packet summaries buffered per watcher before the oldest are dropped.
pub const WATCH_BUFFER: usize = 4096;
/// Sets the number of rings (a test and benchmark switch; the default is
/// one per core).
pub const RINGS_ENV: &str = "NETD_SNIFFER_RINGS";
/// Rings by default: one per core, at most this many.
pub const MAX_DEFAULT_RINGS: usize = 8;
/// The most rings `NETD_SNIFFER_RINGS` may ask for.
pub const MAX_RINGS: usize = 64;
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Largest frame read: loopback MTU (64 KiB) plus headers, and GSO frames.
const READ_BUFFER: usize = 256 * 1024;
const RCVBUF: i32 = 16 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct SnifferCounters {
    by_proto: [(AtomicU64, AtomicU64); 4],
    kernel_drops: AtomicU64,
    pub watcher_drops: AtomicU64,
    pcap_packets: AtomicU64,
    alerts: AtomicU64,
    fragments: AtomicU64,
    malformed: AtomicU64,
}

fn proto_index(p: Proto) -> usize {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
        Proto::Icmp => 2,
        Proto::Other => 3,
    }
}

#[derive(Debug)]
pub struct Sniffer {
    pub interface: String,
    iface: NetworkInterface,
    filter: Filter,
    /// The pcap file: capture_dir and a file name in it.
    pcap: Option<(PathBuf, String)>,
    pcap_max_bytes: u64,
    pcap_max_files: u32,
    scan_ports: u32,
    scan_window: Duration,
    syn_rate: u32,
    counters: Arc<SnifferCounters>,
    /// One flow table per ring, each bounded by its share of max_flows.
    flows: Vec<Mutex<FlowTable>>,
    max_flows: usize,
    /// Rings asked for, and rings the running capture has (fewer when the
    /// kernel refused the fanout group).
    rings: usize,
    rings_open: AtomicU32,
    packets: broadcast::Sender<proto::PacketSummary>,
}

/// The opened capture: one socket per ring, and the pcap file they share.
pub struct Capture {
    taps: Vec<capture::Tap>,
    pcap: Option<pcap::Pcap>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fds: Vec<RawFd> = self.taps.iter().map(|t| t.fd).collect();
        f.debug_struct("Capture")
            .field("fds", &fds)
            .finish_non_exhaustive()
    }
}

/// The number of rings: `NETD_SNIFFER_RINGS` if set, else one per core (at
/// most [`MAX_DEFAULT_RINGS`]).
fn rings_wanted() -> Result<usize, SpecError> {
    match std::env::var(RINGS_ENV) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_RINGS).contains(&n) => Ok(n),
            _ => Err(SpecError::new(format!(
                "{RINGS_ENV}={v:?} (netd's environment): expected a number of rings from 1 to {MAX_RINGS}"
            ))),
        },
        Err(_) => Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_DEFAULT_RINGS)),
    }
}

/// A ring thread's name (at most 15 bytes): "sniff1-" and the listener's.
fn thread_name(ring: usize, listener: &str) -> String {
    let mut n = format!("sniff{ring}-");
    for c in listener.chars() {
        if n.len() + c.len_utf8() > 15 {
            break;
        }
        n.push(c);
    }
    n
}

impl Sniffer {
    fn validate(spec: &proto::SnifferSpec, settings: &Settings) -> Result<Self, SpecError> {
        let all = datalink::interfaces();
        let iface = match all.iter().find(|i| i.name == spec.interface) {
            Some(i) => i.clone(),
            None => {
                let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
                let what = if spec.interface.is_empty() {
                    "an interface is required".to_string()
                } else {
                    format!("unknown interface '{}'", spec.interface)
                };
                return Err(SpecError::at(
                    "interface",
                    format!("{what}; interfaces here: {}", names.join(", ")),
                ));
            }
        };
        let filter = Filter::parse(&spec.filter).map_err(|e| SpecError::at("filter", e))?;
        let max_flows = match spec.max_flows {
            0 => DEFAULT_MAX_FLOWS,
            n if n > MAX_FLOWS_LIMIT => {
                return Err(SpecError::at(
                    "max_flows",
                    format!("max_flows is {n}; the limit is {MAX_FLOWS_LIMIT}"),
                ));
            }
            n => n,
        };
        let pcap_max_files = if spec.pcap_max_files == 0 {
            DEFAULT_PCAP_MAX_FILES
        } else {
            spec.pcap_max_files
        };
        let pcap = match spec.pcap_path.as_str() {
            "" => None,
            path => Some(pcap_target(path, pcap_max_files, settings)?),
        };
        let rings = rings_wanted()?;
        // max_flows shared out: with hash fanout flows spread evenly.
        let per_ring = (max_flows as usize).div_ceil(rings);
        Ok(Sniffer {
            interface: spec.interface.clone(),
            iface,
            filter,
            pcap,
            pcap_max_bytes: if spec.pcap_max_bytes == 0 {
                DEFAULT_PCAP_MAX_BYTES
            } else {
                spec.pcap_max_bytes.max(1024)
            },
            pcap_max_files,
            scan_ports: if spec.port_scan_ports == 0 {
                DEFAULT_SCAN_PORTS
            } else {
                spec.port_scan_ports
            },
            scan_window: duration_field(
                "port_scan_window",
                &spec.port_scan_window,
                DEFAULT_SCAN_WINDOW,
            )?,
            syn_rate: if spec.syn_rate == 0 {
                DEFAULT_SYN_RATE
            } else {
                spec.syn_rate
            },
            counters: Arc::new(SnifferCounters::default()),
            flows: (0..rings)
                .map(|_| Mutex::new(FlowTable::new(per_ring)))
                .collect(),
            max_flows: max_flows as usize,
            rings,
            rings_open: AtomicU32::new(0),
            packets: broadcast::channel(WATCH_BUFFER).0,
        })
    }

    /// The pcap file written, resolved in capture_dir.
    pub fn pcap_path(&self) -> Option<PathBuf> {
        self.pcap.as_ref().map(|(dir, name)| dir.join(name))
    }

    /// Subscribe to packet summaries, with the counter of summaries lost.
    pub fn watch(
        &self,
    ) -> (
        broadcast::Receiver<proto::PacketSummary>,
        Arc<SnifferCounters>,
    ) {
        (self.packets.subscribe(), self.counters.clone())
    }

    pub fn stats(&self) -> proto::SnifferStats {
        let c = &self.counters;
        let pc = |i: usize| {
            Some(proto::ProtocolCount {
                packets: c.by_proto[i].0.load(Relaxed),
                bytes: c.by_proto[i].1.load(Relaxed),
            })
        };
        let (flows_active, flows_evicted, top_flows) = flows::merged(&self.flows, 10);
        // Formatted (addresses to strings) with the lock released.
        let top_flows = top_flows.into_proto();
        proto::SnifferStats {
            tcp: pc(0),
            udp: pc(1),
            icmp: pc(2),
            other: pc(3),
            flows_active,
            flows_evicted,
            top_flows,
            kernel_drops: c.kernel_drops.load(Relaxed),
            watcher_drops: c.watcher_drops.load(Relaxed),
            pcap_packets: c.pcap_packets.load(Relaxed),
            alerts: c.alerts.load(Relaxed),
            fragments: c.fragments.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            rings: self.rings_open.load(Relaxed),
        }
    }

    /// Open the capture: one packet socket per ring, each with the filter
    /// attached and bound to the interface, joined in a fanout group when
    /// there are several; create the pcap file (and capture_dir if
    /// missing). Blocks on the file system: call it off the async runtime.
    pub fn open(&self) -> Result<Capture, BindError> {
        let pcap = self.open_pcap()?;
        let prog = self.filter.to_bpf(self.iface.is_loopback());
        let fanout = self.rings > 1;
        let mut taps = Vec::with_capacity(self.rings);
        for _ in 0..self.rings {
            // With several rings a socket takes nothing until all are in
            // the group: before it joins, it would see every packet.
            let first: &[libc::sock_filter] = if fanout { &socket::DROP_ALL } else { &prog };
            taps.push(self.open_tap(first)?);
        }
        if fanout {
            if let Err(e) = join_fanout(&taps) {
                tracing::warn!(interface = %self.interface, error = %e, "cannot spread the capture over rings with PACKET_FANOUT; capturing on one ring");
                // Dropping the others closes them; the first may be alone
                // in a group, which changes nothing for it. Its flow table
                // takes the whole of max_flows.
                taps.truncate(1);
                if let Some(t) = self.flows.first() {
                    t.lock().set_max(self.max_flows);
                }
            }
            for tap in &taps {
                socket::attach_filter(tap.fd, &prog).map_err(|e| {
                    BindError::Precondition(format!("cannot attach the capture filter: {e}"))
                })?;
            }
        }
        self.rings_open.store(taps.len() as u32, Relaxed);
        Ok(Capture { taps, pcap })
    }

    /// The pcap file, created (truncated) now so a bad file fails at start.
    fn open_pcap(&self) -> Result<Option<pcap::Pcap>, BindError> {
        let Some((dir, name)) = &self.pcap else {
            return Ok(None);
        };
        let dir = crate::sys::safe_file::Dir::open_or_create(dir).map_err(|e| {
            BindError::Precondition(format!("cannot open capture_dir {}: {e}", dir.display()))
        })?;
        let path = dir.path().join(name);
        pcap::Pcap::create(dir, name, self.pcap_max_bytes, self.pcap_max_files)
            .map(Some)
            .map_err(|e| {
                BindError::Precondition(format!(
                    "cannot create the pcap file {}: {e}",
                    path.display()
                ))
            })
    }

    /// One ring's socket with `prog` attached, bound to the interface, with
    /// its TPACKET_V3 ring when the kernel gives one.
    fn open_tap(&self, prog: &[libc::sock_filter]) -> Result<capture::Tap, BindError> {
        let owned = socket::packet_socket().map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                BindError::Precondition(
                    "capturing packets needs CAP_NET_RAW: run netd as root, or grant the capability \
                     (systemd: AmbientCapabilities=CAP_NET_RAW; otherwise: setcap cap_net_raw+ep $(command -v netd))"
                        .into(),
                )
            } else {
                BindError::Precondition(format!("cannot open a packet socket: {e}"))
            }
        })?;
        socket::attach_filter(owned.as_raw_fd(), prog).map_err(|e| {
            BindError::Precondition(format!("cannot attach the capture filter: {e}"))
        })?;
        if socket::setsockopt(
            owned.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &RCVBUF,
        )
        .is_err()
        {
            let _ = socket::setsockopt(
                owned.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &RCVBUF,
            );
        }
        let raw = owned.into_raw_fd();
        let config = datalink::Config {
            read_timeout: Some(READ_TIMEOUT),
            read_buffer_size: READ_BUFFER,
            write_buffer_size: 64,
            promiscuous: false,
            socket_fd: Some(raw),
            ..Default::default()
        };
        // pnet binds the socket to the interface for all protocols and owns
        // (closes) it from here on, also on error.
        match datalink::channel(&self.iface, config) {
            Ok(Channel::Ethernet(_tx, rx)) => {
                let ring = match ring::Ring::new(raw, ring::blocks_per_ring(self.rings)) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::info!(interface = %self.interface, error = %e, "no TPACKET_V3 ring; reading frames one by one");
                        None
                    }
                };
                Ok(capture::Tap { rx, fd: raw, ring })
            }
            Ok(_) => Err(BindError::Precondition(
                "unsupported datalink channel type".into(),
            )),
            Err(e) => Err(BindError::Precondition(format!(
                "cannot capture on {}: {e}",
                self.interface
            ))),
        }
    }

    /// Read the capture: a thread per ring; returns when all have ended
    /// (stop, or the first failure, which stops the others).
    async fn run_on(self: &Arc<Self>, capture: Capture, ctx: ServiceCtx) -> anyhow::Result<()> {
        let Capture { taps, pcap } = capture;
        self.rings_open.store(taps.len() as u32, Relaxed);
        let shared = Arc::new(capture::Shared {
            pcap: Mutex::new(pcap),
            detectors: Mutex::new(alerts::Detectors::new(
                self.scan_ports,
                self.scan_window,
                self.syn_rate,
            )),
            failed: AtomicBool::new(false),
            live: AtomicUsize::new(taps.len()),
        });
        let ctx = Arc::new(ctx);
        let name = ctx.name.to_string();
        let mut done = Vec::with_capacity(taps.len());
        let mut result = Ok(());
        let rings = taps.len();
        for (i, tap) in taps.into_iter().enumerate() {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let (me, shared_t, ctx_t) = (self.clone(), shared.clone(), ctx.clone());
            let spawned = std::thread::Builder::new()
                .name(thread_name(i, &name))
                .spawn(move || {
                    // Leaves (the last one out closing the pcap file) also
                    // if the loop panics.
                    let leaving = capture::Leaving(&shared_t, &ctx_t.name);
                    let result = me.capture_loop(i, tap, &shared_t, &ctx_t);
                    drop(leaving);
                    let _ = done_tx.send(result);
                });
            match spawned {
                Ok(_) => done.push(done_rx),
                Err(e) => {
                    shared.failed.store(true, Relaxed);
                    result = Err(anyhow::anyhow!("cannot start a capture thread: {e}"));
                    // The rings without a thread leave now (off the
                    // runtime: the last one out closes the pcap file).
                    let (shared, name) = (shared.clone(), name.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        for _ in i..rings {
                            shared.leave(&name);
                        }
                    })
                    .await;
                    break;
                }
            }
        }
        for done_rx in done {
            let r = match done_rx.await {
                Ok(r) => r,
                Err(_) => {
                    shared.failed.store(true, Relaxed);
                    Err(anyhow::anyhow!("a capture thread of '{name}' panicked"))
                }
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl ListenerKind for Sniffer {
    type Spec = proto::SnifferSpec;
    type Socket = Capture;
    const SLUG: &'static str = "sniffer";
    const KIND: proto::ListenerKind = proto::ListenerKind::Sniffer;
    const TRANSPORT: Transport = Transport::Packet;
    const ABOUT: &'static str = "Packet sniffer on an interface (needs CAP_NET_RAW): per-protocol counts, flows, live packets (`netctl sniff`), pcap export, alerts.";
    const KEYS: &'static [Key] = &[
        Key::new("interface", "interface", Unit::Interface, "Interface to capture on, e.g. lo.")
            .short('i')
            .required("interface is required, e.g. \"lo\""),
        Key::new("filter", "filter", Unit::Expr, "Filter: terms joined by \"and\": tcp | udp | icmp | port N | host IP. As in tcpdump, tcp/udp/icmp match every fragment and port N only a first fragment; IPv6 extension headers are walked; malformed packets match only an empty or a host filter.")
            .short('f'),
        Key::new("pcap_path", "pcap", Unit::Path, "Write captured packets to this pcap file, in the daemon's capture_dir (default /var/lib/netd/captures as root): a file name, or an absolute path directly in that directory; anything else is refused. Rotated files are PATH.1 ... PATH.N."),
        Key::new("pcap_max_bytes", "pcap-max-bytes", Unit::Bytes, "Rotate the pcap file at this many bytes (default 100 MiB)."),
        Key::new("pcap_max_files", "pcap-max-files", Unit::Count, "Rotated pcap files kept (default 3)."),
        Key::new("max_flows", "max-flows", Unit::Count, "Flow table size (default 4096)."),
        Key::new("port_scan_ports", "scan-ports", Unit::Count, "Port-scan alert: distinct destination ports per source (default 50)."),
        Key::new("port_scan_window", "scan-window", Unit::Duration, "Port-scan alert window (default 10s)."),
        Key::new("syn_rate", "syn-rate", Unit::Count, "SYN-rate alert: SYNs per second (default 1000)."),
    ];
    const FAMILIES: &'static dyn crate::telemetry::families::DetailFamilies = &metrics::FAMILIES;

    fn read_config(t: &toml::Table, _opts: &form::ReadOptions) -> Result<Self::Spec, FieldError> {
        Ok(proto::SnifferSpec {
            interface: form::text(t, "interface")?,
            filter: form::text(t, "filter")?,
            pcap_path: form::text(t, "pcap_path")?,
            pcap_max_bytes: form::u64(t, "pcap_max_bytes")?,
            pcap_max_files: form::u32(t, "pcap_max_files")?,
            max_flows: form::u32(t, "max_flows")?,
            port_scan_ports: form::u32(t, "port_scan_ports")?,
            port_scan_window: form::duration(t, "port_scan_window")?,
            syn_rate: form::u32(t, "syn_rate")?,
        })
    }

    fn write_config(spec: &Self::Spec, t: &mut crate::spec::Table) -> Result<(), String> {
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
        t.string("interface", interface);
        t.string("filter", filter);
        t.string("pcap_path", pcap_path);
        t.u64("pcap_max_bytes", *pcap_max_bytes)?;
        t.u64("pcap_max_files", (*pcap_max_files).into())?;
        t.u64("max_flows", (*max_flows).into())?;
        t.u64("port_scan_ports", (*port_scan_ports).into())?;
        t.duration("port_scan_window", port_scan_window)?;
        t.u64("syn_rate", (*syn_rate).into())?;
        Ok(())
    }

    fn spec_listen(_spec: &Self::Spec) -> Option<&str> {
        None
    }

    fn from_spec(spec: &Self::Spec, settings: &Settings) -> Result<Self, SpecError> {
        size_in(
            "pcap_max_bytes",
            spec.pcap_max_bytes,
            DEFAULT_PCAP_MAX_BYTES,
            1..=1 << 40,
        )?;
        size_in(
            "pcap_max_files",
            u64::from(spec.pcap_max_files),
            DEFAULT_PCAP_MAX_FILES.into(),
            1..=1000,
        )?;
        Self::validate(spec, settings)
    }

    /// The pcap path as resolved in capture_dir.
    fn show(&self, mut spec: Self::Spec) -> Self::Spec {
        if let Some(p) = self.pcap_path() {
            spec.pcap_path = p.to_string_lossy().into_owned();
        }
        spec
    }

    /// The packet counters are the listener's, and so is the count of
    /// flows evicted; the flow table itself is the new capture's.
    fn carry_over(&mut self, prev: &Self) {
        self.counters = prev.counters.clone();
        let evicted = prev.flows.iter().map(|t| t.lock().evicted).sum();
        if let Some(t) = self.flows.first() {
            t.lock().evicted = evicted;
        }
    }

    fn effective_spec(&self, shown: &Self::Spec) -> Self::Spec {
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        proto::SnifferSpec {
            pcap_max_bytes: match shown.pcap_max_bytes {
                0 => DEFAULT_PCAP_MAX_BYTES,
                n => n,
            },
            pcap_max_files: or(shown.pcap_max_files, DEFAULT_PCAP_MAX_FILES),
            max_flows: or(shown.max_flows, DEFAULT_MAX_FLOWS),
            port_scan_ports: or(shown.port_scan_ports, DEFAULT_SCAN_PORTS),
            port_scan_window: super::effective_duration(
                &shown.port_scan_window,
                DEFAULT_SCAN_WINDOW,
            ),
            syn_rate: or(shown.syn_rate, DEFAULT_SYN_RATE),
            ..shown.clone()
        }
    }

    /// A pcap file as its absolute path in capture_dir (netd shows it so,
    /// and `netctl export` writes what netd shows), so that "x.pcap" and
    /// "/var/lib/netd/captures/x.pcap" are the same spec. A path that does
    /// not resolve is left for validation to refuse.
    fn normalize(spec: &mut Self::Spec, settings: &Settings) {
        if let (false, Some(dir)) = (spec.pcap_path.is_empty(), &settings.capture_dir) {
            if let Ok(name) = crate::sys::safe_file::resolve_name(dir, &spec.pcap_path) {
                spec.pcap_path = dir.join(name).to_string_lossy().into_owned();
            }
        }
    }

    /// Where a pcap file may go is netd's capture_dir, not the caller's.
    fn clear_netd_paths(spec: &mut Self::Spec) {
        spec.pcap_path.clear();
    }

    /// The same pcap file: the old capture must close it first.
    fn needs_old_closed(old: &Self::Spec, new: &Self::Spec) -> bool {
        !old.pcap_path.is_empty() && old.pcap_path == new.pcap_path
    }

    fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }

    /// The interface captured on.
    fn describe_bound(&self, _bound: Option<std::net::SocketAddr>) -> String {
        self.interface.clone()
    }

    fn bind(&self, _addr: Option<std::net::SocketAddr>) -> Result<Capture, BindError> {
        self.open()
    }

    /// A capture is never handed over: a new one is opened.
    fn adopt(
        &self,
        _fds: Vec<std::os::fd::OwnedFd>,
        _expect_addr: bool,
    ) -> Result<Capture, BindError> {
        self.open()
    }

    async fn run(self: Arc<Self>, socket: Capture, ctx: ServiceCtx) -> anyhow::Result<()> {
        self.run_on(socket, ctx).await
    }

    fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
        Some(proto::listener_stats::Detail::Sniffer(self.stats()))
    }

    /// None beyond its capture socket.
    fn descriptors(_spec: &Self::Spec, _budget: &crate::net::fd_budget::Budget) -> u64 {
        0
    }
}

/// Put the sockets of `taps` in one new fanout group (see
/// [`socket::fanout_create`]).
fn join_fanout(taps: &[capture::Tap]) -> io::Result<()> {
    let Some((first, rest)) = taps.split_first() else {
        return Ok(());
    };
    let id = socket::fanout_create(first.fd)?;
    for tap in rest {
        socket::fanout_join(tap.fd, id)?;
    }
    Ok(())
}

/// Where `pcap_path` puts the file: a plain file name in capture_dir, or an
/// absolute path directly in it. Anything else is refused, naming
/// capture_dir.
fn pcap_target(
    path: &str,
    max_files: u32,
    settings: &Settings,
) -> Result<(PathBuf, String), SpecError> {
    let Some(dir) = &settings.capture_dir else {
        return Err(SpecError::at(
            "pcap_path",
            "pcap_path: netd has no capture_dir (set capture_dir in its config; \
             none could be derived because HOME is not set)",
        ));
    };
    // Quoted as given, control characters escaped.
    let shown = path.escape_debug();
    let name = crate::sys::safe_file::resolve_name(dir, path).map_err(|why| {
        SpecError::at(
            "pcap_path",
            format!(
                "pcap_path '{shown}': {why}; pcap files are written only in capture_dir {} \
             (give a file name, or an absolute path directly in that directory)",
                dir.display()
            ),
        )
    })?;
    // Rotation appends ".N": that must fit in a file name too.
    let longest = name.len() + 1 + max_files.to_string().len();
    if longest > crate::sys::safe_file::MAX_NAME_BYTES {
        return Err(SpecError::at(
            "pcap_path",
            format!(
                "pcap_path '{shown}': the file name is too long to add a rotation suffix \
             (at most {} bytes with pcap_max_files {max_files})",
                crate::sys::safe_file::MAX_NAME_BYTES + name.len() - longest
            ),
        ));
    }
    Ok((dir.clone(), name.to_string()))
}

/// Frames read per recvmmsg(2).
const BATCH: usize = 64;
/// Pause between partial batches while traffic flows (see capture_loop).
const COALESCE: Duration = Duration::from_millis(2);
/// Largest frame a batch slot holds: a 64 KiB IP packet plus link header.
const FRAME_MAX: usize = 65_600;
