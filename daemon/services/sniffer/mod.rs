//! The packet sniffer: pnet's AF_PACKET datalink channel on one interface,
//! read on a dedicated OS thread, from a TPACKET_V3 ring ([`ring`]) when the
//! kernel offers one and otherwise through pnet's reads plus recvmmsg(2)
//! batches. Every wait is bounded by 100 ms so stop and shutdown are prompt.
//!
//! The socket is created and set up when the listener starts, so a missing
//! CAP_NET_RAW, an unknown interface or a bad filter is reported to the
//! caller: it is opened with protocol 0 (it receives nothing yet), the
//! filter compiled to classic BPF is attached ([`filter`]), the receive
//! buffer is raised, and only then is it bound to the interface for all
//! protocols, so no packet from another interface is ever queued.
//!
//! Each packet is decoded without allocation ([`decode`]), counted per
//! protocol (relaxed atomics), recorded in the bounded flow table
//! ([`flows`]), fed to the detectors ([`alerts`]), written to the pcap file
//! ([`pcap`]) and, only while someone watches, summarised onto a bounded
//! broadcast channel that drops (and counts) what a slow watcher misses.

pub mod alerts;
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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use pnet::datalink::{self, Channel, DataLinkReceiver, NetworkInterface};
use tokio::sync::broadcast;

use super::{
    BindError, ListenerKind, ServiceCtx, Settings, SpecError, Transport, duration_field, size_in,
};
use crate::proto::{self, EventKind};
use crate::spec::FieldError;
use crate::spec::form::{self, Key, Unit};
use crate::telemetry::stats::Stats;
use decode::Proto;
use filter::Filter;
use flows::{FlowTable, endpoint};

pub const DEFAULT_PCAP_MAX_BYTES: u64 = 100 * 1024 * 1024;
pub const DEFAULT_PCAP_MAX_FILES: u32 = 3;
pub const DEFAULT_MAX_FLOWS: u32 = 4096;
pub const MAX_FLOWS_LIMIT: u32 = 1_000_000;
pub const DEFAULT_SCAN_PORTS: u32 = 50;
pub const DEFAULT_SCAN_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_SYN_RATE: u32 = 1000;
/// Packet summaries buffered per watcher before the oldest are dropped.
pub const WATCH_BUFFER: usize = 4096;
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
    flows: Arc<Mutex<FlowTable>>,
    packets: broadcast::Sender<proto::PacketSummary>,
}

/// The opened capture: pnet's receiver plus what the thread needs.
pub struct Capture {
    rx: Box<dyn DataLinkReceiver>,
    fd: RawFd,
    pcap: Option<pcap::Pcap>,
    /// The TPACKET_V3 ring, when the kernel gave us one; else frames are
    /// read through pnet's channel (and recvmmsg batches).
    ring: Option<ring::Ring>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
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
            flows: Arc::new(Mutex::new(FlowTable::new(max_flows as usize))),
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
        let (flows_active, flows_evicted, top_flows) = {
            let t = self.flows.lock();
            (t.len() as u64, t.evicted, t.top(10))
        };
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
        }
    }

    /// Open the packet socket, attach the filter and bind it to the
    /// interface; create the pcap file (and capture_dir if missing). Blocks
    /// on the file system: call it off the async runtime.
    pub fn open(&self) -> Result<Capture, BindError> {
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
        let loopback = self.iface.is_loopback();
        let prog = self.filter.to_bpf(loopback);
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        socket::setsockopt(
            owned.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
        )
        .map_err(|e| BindError::Precondition(format!("cannot attach the capture filter: {e}")))?;
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
        let pcap = match &self.pcap {
            None => None,
            Some((dir, name)) => {
                let dir = crate::sys::safe_file::Dir::open_or_create(dir).map_err(|e| {
                    BindError::Precondition(format!(
                        "cannot open capture_dir {}: {e}",
                        dir.display()
                    ))
                })?;
                let path = dir.path().join(name);
                Some(
                    pcap::Pcap::create(dir, name, self.pcap_max_bytes, self.pcap_max_files)
                        .map_err(|e| {
                            BindError::Precondition(format!(
                                "cannot create the pcap file {}: {e}",
                                path.display()
                            ))
                        })?,
                )
            }
        };
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
                let ring = match ring::Ring::new(raw) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::info!(interface = %self.interface, error = %e, "no TPACKET_V3 ring; reading frames one by one");
                        None
                    }
                };
                Ok(Capture {
                    rx,
                    fd: raw,
                    pcap,
                    ring,
                })
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

    async fn run_on(self: &Arc<Self>, capture: Capture, ctx: ServiceCtx) -> anyhow::Result<()> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let name = ctx.name.to_string();
        std::thread::Builder::new()
            .name(format!(
                "sniff-{}",
                name.chars().take(9).collect::<String>()
            ))
            .spawn(move || {
                let result = me.capture_loop(capture, &ctx);
                let _ = done_tx.send(result);
            })?;
        match done_rx.await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the capture thread of '{name}' panicked"),
        }
    }

    fn capture_loop(&self, mut cap: Capture, ctx: &ServiceCtx) -> anyhow::Result<()> {
        let mut detectors =
            alerts::Detectors::new(self.scan_ports, self.scan_window, self.syn_rate);
        let mut last_stats = Instant::now();
        let mut batch = socket::Batch::new();
        let result = loop {
            if ctx.stop_accepting.is_cancelled() {
                break Ok(());
            }
            if let Some(ring) = cap.ring.as_mut() {
                let mut acc = self.batch(&mut detectors, &mut cap.pcap, ctx);
                let got = ring.next_block(cap.fd, READ_TIMEOUT, |frame, ts| acc.take(frame, ts));
                acc.finish();
                if let Err(e) = got {
                    break Err(anyhow::anyhow!("capture on {} failed: {e}", self.interface));
                }
            } else {
                match cap.rx.next() {
                    Ok(frame) => {
                        let mut one = self.batch(&mut detectors, &mut cap.pcap, ctx);
                        one.take(frame, SystemTime::now());
                        one.finish();
                        // pnet woke us for one packet; now take what is
                        // queued in batches, one recvmmsg(2) per BATCH
                        // frames. While traffic keeps coming, pause COALESCE
                        // between partial batches so packets gather in the
                        // socket buffer (16 MiB, ~100 ms at 200k small
                        // packets/s) and one wakeup serves many, as a
                        // TPACKET_V3 ring's block timeout does for libpcap.
                        while !ctx.stop_accepting.is_cancelled() {
                            let Ok(n) = batch.recv(cap.fd) else { break };
                            if n == 0 {
                                break;
                            }
                            let now = SystemTime::now();
                            let mut acc = self.batch(&mut detectors, &mut cap.pcap, ctx);
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
                self.read_kernel_drops(cap.fd);
            }
        };
        self.read_kernel_drops(cap.fd);
        if let Some(p) = cap.pcap.as_mut() {
            if let Err(e) = p.close() {
                tracing::warn!(listener = %ctx.name, error = %e, "finishing the pcap file failed");
            }
        }
        result
    }

    /// Accounting for a batch of frames (see [`BatchAcc`]).
    fn batch<'a>(
        &'a self,
        detectors: &'a mut alerts::Detectors,
        pcap: &'a mut Option<pcap::Pcap>,
        ctx: &'a ServiceCtx,
    ) -> BatchAcc<'a> {
        BatchAcc {
            sniffer: self,
            detectors,
            pcap,
            ctx,
            tally: Tally::default(),
            flows: None,
        }
    }

    /// Add the kernel's drop count since the last read (PACKET_STATISTICS
    /// resets on read).
    fn read_kernel_drops(&self, fd: RawFd) {
        if let Ok(st) = socket::packet_stats(fd) {
            Stats::add(&self.counters.kernel_drops, st.tp_drops as u64);
        }
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
        let evicted = prev.flows.lock().evicted;
        self.flows.lock().evicted = evicted;
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
    fn adopt(&self, _fd: std::os::fd::OwnedFd, _expect_addr: bool) -> Result<Capture, BindError> {
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
/// atomics once at the end, and the flow table is locked on first use and
/// released at the end (never across a wait), so the per-packet cost stays
/// a few adds and one hash lookup.
struct BatchAcc<'a> {
    sniffer: &'a Sniffer,
    detectors: &'a mut alerts::Detectors,
    pcap: &'a mut Option<pcap::Pcap>,
    ctx: &'a ServiceCtx,
    tally: Tally,
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
        self.flows
            .get_or_insert_with(|| sniffer.flows.lock())
            .record(&d, now);
        if let Some(alert) = self.detectors.observe(&d) {
            Stats::add(&sniffer.counters.alerts, 1);
            tracing::warn!(listener = %ctx.name, alert = %alert, "alert");
            ctx.events.publish(
                EventKind::Alert,
                &ctx.name,
                proto::ListenerKind::Sniffer,
                alert,
            );
        }
        if let Some(p) = self.pcap.as_mut() {
            match p.write(now, frame) {
                Ok(()) => Stats::add(&sniffer.counters.pcap_packets, 1),
                Err(e) => {
                    Stats::add(&ctx.stats.errors, 1);
                    tracing::warn!(listener = %ctx.name, error = %e, "pcap write failed; pcap export stopped");
                    *self.pcap = None;
                }
            }
        }
        if sniffer.packets.receiver_count() > 0 {
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
                length: frame.len() as u32,
                tcp_flags: if d.proto == Proto::Tcp {
                    decode::flags_string(d.tcp_flags)
                } else {
                    String::new()
                },
                dropped_before: 0,
            });
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

/// Frames read per recvmmsg(2).
const BATCH: usize = 64;
/// Pause between partial batches while traffic flows (see capture_loop).
const COALESCE: Duration = Duration::from_millis(2);
/// Largest frame a batch slot holds: a 64 KiB IP packet plus link header.
const FRAME_MAX: usize = 65_600;
