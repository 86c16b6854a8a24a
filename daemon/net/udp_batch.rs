//! Batched UDP I/O for the UDP kinds' fast path: `recvmmsg(2)` fills a
//! batch of datagrams per system call and `sendmmsg(2)` sends a batch of
//! replies per call; with the kernel's UDP offloads, a receive may hold
//! several datagrams coalesced by UDP GRO (split here by the `gso_size`
//! the kernel reports), and replies of one size to one destination go out
//! as one UDP GSO message (`UDP_SEGMENT`) that the kernel cuts up.
//!
//! The kinds keep their per-datagram logic (source guard, counters, rate
//! limits, faults); only the system calls change. Offloads are used when
//! the kernel has them: a socket that refuses UDP_GRO just gets plain
//! datagrams, and a send batch whose GSO message fails with EINVAL, EIO,
//! EOPNOTSUPP or EMSGSIZE (a path whose MTU is below the datagram size)
//! sends it again as plain datagrams and remembers, for its socket, not to
//! use GSO again ([`Gso`]).
//!
//! Two switches, read once from the environment, for measuring and for
//! kernels or paths where the offloads misbehave: `NETD_UDP_BATCH=N` (1 to
//! [`MAX_BATCH`], default [`DEFAULT_BATCH`]; 1 reads and sends one datagram
//! per call as netd did before) and `NETD_UDP_OFFLOAD=off` (no GRO, no GSO).
//!
//! The unsafe code is the libc calls and reading what the kernel wrote
//! (control messages, source addresses), each with its SAFETY note.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use super::udp::setsockopt_int;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per `recvmmsg`/`sendmmsg` unless `NETD_UDP_BATCH` says.
pub const DEFAULT_BATCH: usize = 32;
/// Most datagrams per call `NETD_UDP_BATCH` may ask for.
pub const MAX_BATCH: usize = 64;
/// Room for one received message: any UDP payload, or the datagrams UDP
/// GRO coalesced into one (at most 64 KiB).
pub const SLOT: usize = 64 * 1024;
/// The kernel's limit of segments in one UDP GSO message.
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one UDP GSO message (an IP packet's 64 KiB less headers).
const MAX_GSO_BYTES: usize = 65_000;
/// Largest datagram sent by GSO: it must fit the device's MTU, and a
/// 1500-byte Ethernet MTU less IPv6 and UDP headers is the common case.
const MAX_GSO_SEGMENT: usize = 1452;

// From linux/udp.h (not in every libc target).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// The fast path's switches, from the environment (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPath {
    /// Datagrams per system call.
    pub batch: usize,
    /// Whether UDP GRO and GSO may be used.
    pub offload: bool,
}

/// The switches, read once.
pub fn fast_path() -> FastPath {
    static FP: OnceLock<FastPath> = OnceLock::new();
    *FP.get_or_init(|| {
        let batch = match std::env::var("NETD_UDP_BATCH") {
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_BATCH).contains(&n) => n,
                _ => {
                    tracing::warn!(
                        value = %v,
                        "NETD_UDP_BATCH must be a number from 1 to {MAX_BATCH}; using {DEFAULT_BATCH}"
                    );
                    DEFAULT_BATCH
                }
            },
            Err(_) => DEFAULT_BATCH,
        };
        let offload = !matches!(
            std::env::var("NETD_UDP_OFFLOAD").as_deref().map(str::trim),
            Ok("off" | "0" | "false" | "no")
        );
        FastPath { batch, offload }
    })
}

/// Ask the kernel to coalesce datagrams for `fd` (UDP GRO) if the switches
/// allow it; whether it is on.
pub fn enable_gro(fd: RawFd) -> bool {
    fast_path().offload && setsockopt_int(fd, SOL_UDP, UDP_GRO, 1).is_ok()
}

/// Whether GSO is still used on one socket: shared by every task that
/// sends on it, turned off for good by the first GSO send the kernel
/// refuses.
#[derive(Debug, Clone)]
pub struct Gso(Arc<AtomicBool>);

impl Gso {
    /// On if the switches allow it.
    pub fn new() -> Self {
        Gso(Arc::new(AtomicBool::new(fast_path().offload)))
    }

    pub fn on(&self) -> bool {
        self.0.load(Relaxed)
    }

    fn off(&self) {
        self.0.store(false, Relaxed);
    }
}

impl Default for Gso {
    fn default() -> Self {
        Self::new()
    }
}

/// One received message: where it is in the buffer, its source, and the
/// size of the datagrams coalesced in it (0: one datagram).
#[derive(Debug, Clone, Copy)]
struct Got {
    len: usize,
    peer: Option<SocketAddr>,
    seg: usize,
}

/// Memory mapped anonymously: its pages become memory only when written,
/// whatever the allocator would do (glibc's raises its mmap threshold
/// after the first large free, and then zeroes large blocks itself, which
/// makes every page resident). A batch's slots are mostly empty (a small
/// datagram writes one page of its 64 KiB slot), and a udp-proxy has one
/// batch per client.
struct Pages {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: `Pages` owns its mapping alone, like a Box<[u8]>.
unsafe impl Send for Pages {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for Pages {}

impl Pages {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; no address given.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Pages { ptr, len })
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes (zero until written),
        // alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pages({} bytes)", self.len)
    }
}

/// Buffers for receiving up to `slots` messages per call. Holds no
/// pointers between calls (so a task owning it is `Send`).
#[derive(Debug)]
pub struct RecvBatch {
    slots: usize,
    buf: Pages,
    got: Vec<Got>,
    drops: Option<u32>,
}

/// Control-message room per message: SO_RXQ_OVFL and UDP_GRO, each a
/// cmsghdr and an int, with room to spare.
const CTRL_WORDS: usize = 8;

impl RecvBatch {
    /// Room for `slots` messages of [`SLOT`] bytes (mapped, so the pages
    /// only become memory when a datagram is written to them).
    pub fn new(slots: usize) -> io::Result<Self> {
        let slots = slots.clamp(1, MAX_BATCH);
        Ok(RecvBatch {
            slots,
            buf: Pages::new(slots * SLOT)?,
            got: Vec::with_capacity(slots),
            drops: None,
        })
    }

    /// The socket's drop count as the kernel last reported it (SO_RXQ_OVFL)
    /// in the last batch.
    pub fn drops(&self) -> Option<u32> {
        self.drops
    }

    /// One `recvmmsg` without blocking: how many messages arrived
    /// (WouldBlock when none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.slots;
        self.got.clear();
        self.drops = None;
        // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
        let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut ctrl = [[0u64; CTRL_WORDS]; MAX_BATCH];
        let base = self.buf.as_mut_ptr();
        for i in 0..n {
            // SAFETY: slot i lies inside `buf` (slots * SLOT bytes).
            iovs[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
            iovs[i].iov_len = SLOT;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of_val(&ctrl[i]) as _;
        }
        // SAFETY: every pointer in `hdrs[..n]` points at a live buffer of
        // the length given, for the duration of the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = rc as usize;
        for (h, name) in hdrs.iter().zip(names.iter()).take(got) {
            let mut seg = 0;
            // SAFETY: the CMSG_* macros walk the control buffer the kernel
            // filled, bounded by msg_controllen; the data is read unaligned.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !cmsg.is_null() {
                    let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
                    if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL {
                        self.drops = Some(std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg).cast::<u32>(),
                        ));
                    } else if level == SOL_UDP && kind == UDP_GRO {
                        let s =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                        seg = usize::try_from(s).unwrap_or(0);
                    }
                    cmsg = libc::CMSG_NXTHDR(&h.msg_hdr, cmsg);
                }
            }
            self.got.push(Got {
                len: (h.msg_len as usize).min(SLOT),
                peer: crate::net::udp::socket_addr(name),
                seg,
            });
        }
        Ok(got)
    }

    /// Give back the pages of the last batch's slots beyond their first
    /// `keep` bytes (rounded up to a page) in the slots that used more: a
    /// batch kept for a long time (a udp-proxy client's) then holds at most
    /// `keep` resident bytes per slot between batches, whatever size of
    /// datagram passed through it. One `madvise` per such slot; nothing
    /// when every datagram was small.
    pub fn trim(&mut self, keep: usize) {
        const PAGE: usize = 4096;
        let keep = keep.div_ceil(PAGE) * PAGE;
        if keep >= SLOT {
            return;
        }
        let base = self.buf.as_mut_ptr();
        for (i, g) in self.got.iter().enumerate() {
            if g.len <= keep {
                continue;
            }
            // SAFETY: slot `i` lies inside the mapping (i < slots), its
            // offset and `keep` are page-aligned, and MADV_DONTNEED on a
            // private anonymous mapping only turns the range back into zero
            // pages; nothing borrows the buffer here (&mut self).
            unsafe {
                libc::madvise(
                    base.add(i * SLOT + keep).cast(),
                    SLOT - keep,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }

    /// Messages received without an IP source (not answerable).
    pub fn without_source(&self) -> usize {
        self.got.iter().filter(|g| g.peer.is_none()).count()
    }

    /// Every datagram of the last batch with its source, in the order
    /// received; coalesced ones split by their `gso_size`.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.got.iter().enumerate().flat_map(move |(i, g)| {
            let data = &self.buf.as_slice()[i * SLOT..i * SLOT + g.len];
            let seg = if g.seg == 0 { g.len.max(1) } else { g.seg };
            let peer = g.peer;
            // A zero-length datagram is one (empty) chunk.
            std::iter::once(data)
                .filter(|d| d.is_empty())
                .chain(data.chunks(seg))
                .filter_map(move |c| peer.map(|p| (p, c)))
        })
    }
}

/// One message to send: `count` datagrams of `seg` bytes (the last may
/// be shorter) at `data[start..end]`, to `dest` (None on a connected
/// socket).
#[derive(Debug, Clone, Copy)]
struct Msg {
    dest: Option<SocketAddr>,
    start: usize,
    end: usize,
    seg: usize,
    count: usize,
    /// A shorter datagram ended it: nothing more may be added.
    closed: bool,
}

/// What a flush did, for the caller's counters.
#[derive(Debug, Default)]
pub struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    pub failed: u64,
    pub last_error: Option<io::Error>,
}

/// Datagrams queued to be sent in as few system calls as the kernel
/// allows.
#[derive(Debug)]
pub struct SendBatch {
    data: Vec<u8>,
    msgs: Vec<Msg>,
    gso: Gso,
}

impl SendBatch {
    /// A batch sending on a socket whose GSO state is `gso`.
    pub fn new(gso: Gso) -> Self {
        SendBatch {
            data: Vec::new(),
            msgs: Vec::new(),
            gso,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Forget what is queued.
    pub fn clear(&mut self) {
        self.msgs.clear();
        self.data.clear();
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.msgs.iter().map(|m| m.count).sum()
    }

    /// Queue a datagram to `dest` (None: the connected peer) whose payload
    /// `fill` appends to the buffer it is given.
    pub fn push_with(&mut self, dest: Option<SocketAddr>, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.data.len();
        fill(&mut self.data);
        let len = self.data.len() - start;
        let end = self.data.len();
        if self.gso.on()
            && let Some(m) = self.msgs.last_mut()
            && !m.closed
            && m.dest == dest
            && len > 0
            && len <= m.seg
            && m.count < MAX_SEGMENTS
            && end - m.start <= MAX_GSO_BYTES
        {
            m.end = end;
            m.count += 1;
            m.closed = len < m.seg;
            return;
        }
        self.msgs.push(Msg {
            dest,
            start,
            end,
            seg: len,
            count: 1,
            closed: len == 0 || len > MAX_GSO_SEGMENT,
        });
    }

    /// Queue a copy of `payload`.
    pub fn push(&mut self, dest: Option<SocketAddr>, payload: &[u8]) {
        self.push_with(dest, |b| b.extend_from_slice(payload));
    }

    /// Send everything queued on `socket`, waiting for room when its send
    /// buffer is full; the batch is empty afterwards. A message the kernel
    /// refuses is counted as failed and skipped; a refused GSO message is
    /// sent again as plain datagrams, and GSO is off for the socket from
    /// then on.
    pub async fn flush(&mut self, socket: &UdpSocket) -> Sent {
        let fd = socket.as_raw_fd();
        let mut sent = Sent::default();
        let mut i = 0;
        // Each pass sends at least one message, skips one, or splits one
        // (at most once per message): bounded by the batch.
        while i < self.msgs.len() {
            let r = socket
                .async_io(Interest::WRITABLE, || self.send_from(fd, i))
                .await;
            match r {
                Ok(k) => {
                    for m in &self.msgs[i..i + k] {
                        sent.datagrams += m.count as u64;
                        sent.bytes += (m.end - m.start) as u64;
                    }
                    i += k;
                }
                Err(e) if self.msgs[i].count > 1 && gso_refused(&e) => {
                    tracing::info!(error = %e, "UDP GSO refused by the kernel; this socket sends plain datagrams from now on");
                    self.gso.off();
                    self.split_from(i);
                }
                Err(e) => {
                    sent.failed += self.msgs[i].count as u64;
                    sent.last_error = Some(e);
                    i += 1;
                }
            }
        }
        self.msgs.clear();
        self.data.clear();
        if self.data.capacity() > 4 * MAX_GSO_BYTES {
            self.data.shrink_to(MAX_GSO_BYTES);
        }
        sent
    }

    /// Make every message from `i` on one plain datagram each.
    fn split_from(&mut self, i: usize) {
        let rest = self.msgs.split_off(i);
        for m in rest {
            let mut at = m.start;
            while at < m.end || (m.start == m.end && at == m.start) {
                let end = (at + m.seg.max(1)).min(m.end);
                self.msgs.push(Msg {
                    dest: m.dest,
                    start: at,
                    end,
                    seg: end - at,
                    count: 1,
                    closed: true,
                });
                if end == at {
                    break;
                }
                at = end;
            }
        }
    }

    /// One `sendmmsg` of the messages from `first` on (at most
    /// [`MAX_BATCH`]): how many the kernel took.
    fn send_from(&self, fd: RawFd, first: usize) -> io::Result<usize> {
        let msgs = &self.msgs[first..];
        let n = msgs.len().min(MAX_BATCH);
        // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
        let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut ctrl = [[0u64; 4]; MAX_BATCH];
        for (i, m) in msgs.iter().take(n).enumerate() {
            iovs[i].iov_base = self.data[m.start..].as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = m.end - m.start;
            let h = &mut hdrs[i].msg_hdr;
            if let Some(dest) = m.dest {
                h.msg_namelen = write_addr(dest, &mut names[i]);
                h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            }
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if m.count > 1 {
                // SAFETY: the control buffer (32 bytes, u64-aligned) has room
                // for one cmsghdr and a u16 (CMSG_SPACE(2) = 24); the header
                // is written through the pointer CMSG_FIRSTHDR returns.
                unsafe {
                    h.msg_control = ctrl[i].as_mut_ptr().cast();
                    h.msg_controllen = libc::CMSG_SPACE(2) as _;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.seg as u16);
                }
            }
        }
        // SAFETY: every pointer in `hdrs[..n]` points at a live buffer of the
        // length given (the kernel only reads them), for the duration of
        // the call.
        let rc =
            unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }
}

/// Whether a send error means the kernel or the path cannot do UDP GSO
/// (EMSGSIZE: a segment is larger than the path's MTU, which plain
/// datagrams get past by IP fragmentation).
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::EOPNOTSUPP | libc::ENOPROTOOPT | libc::EMSGSIZE)
    )
}

/// Write `addr` into `storage` as the kernel wants it; its length.
fn write_addr(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let sa = socket2::SockAddr::from(addr);
    let len = sa.len() as usize;
    // SAFETY: `sa` holds `len` bytes of a socket address, and a
    // sockaddr_storage is large enough for any.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len.min(std::mem::size_of::<libc::sockaddr_storage>()),
        );
    }
    len as libc::socklen_t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(gso: bool) -> SendBatch {
        let g = Gso::new();
        if !gso {
            g.off();
        }
        SendBatch::new(g)
    }

    #[test]
    fn same_size_datagrams_to_one_destination_coalesce() {
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let mut s = batch(true);
        if !s.gso.on() {
            return; // NETD_UDP_OFFLOAD=off in the environment
        }
        s.push(Some(a), &[1; 100]);
        s.push(Some(a), &[2; 100]);
        s.push(Some(a), &[3; 40]); // shorter: ends the message
        s.push(Some(a), &[4; 40]);
        s.push(Some(b), &[5; 40]);
        s.push(Some(b), &[6; 50]); // longer: a new message
        assert_eq!(s.msgs.len(), 4);
        assert_eq!(s.msgs[0].count, 3);
        assert_eq!(s.len(), 6);
        s.split_from(0);
        assert_eq!(s.msgs.len(), 6);
        assert!(s.msgs.iter().all(|m| m.count == 1));
        assert_eq!(s.msgs[2].end - s.msgs[2].start, 40);
    }

    #[test]
    fn without_gso_each_datagram_is_a_message() {
        let a: SocketAddr = "[::1]:9".parse().unwrap();
        let mut s = batch(false);
        for _ in 0..5 {
            s.push(Some(a), &[0; 10]);
        }
        s.push(Some(a), &[]);
        assert_eq!(s.msgs.len(), 6);
    }

    /// `trim` gives back what a large datagram made resident beyond the
    /// kept bytes (read back as zeroes), and leaves a small one alone.
    #[test]
    fn trim_returns_the_pages_of_large_datagrams() {
        use std::os::fd::AsRawFd;
        let rx_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx_sock.set_nonblocking(true).unwrap();
        let tx_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx_sock.local_addr().unwrap();
        tx_sock.send_to(&[7u8; 20_000], to).unwrap();
        tx_sock.send_to(&[9u8; 100], to).unwrap();
        let mut rx = RecvBatch::new(4).unwrap();
        let mut got = 0;
        for _ in 0..1000 {
            match rx.recv(rx_sock.as_raw_fd()) {
                Ok(n) if n > 0 => {
                    got += n;
                    if got >= 2 {
                        break;
                    }
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        // Both in one batch (sent before the first read).
        assert_eq!(rx.got.len(), 2);
        let slot0 = &rx.buf.as_slice()[..SLOT];
        assert!(slot0[..20_000].iter().all(|b| *b == 7));
        rx.trim(4096);
        let buf = rx.buf.as_slice();
        assert!(buf[..4096].iter().all(|b| *b == 7), "the kept page stays");
        assert!(buf[4096..20_000].iter().all(|b| *b == 0), "given back");
        assert!(buf[SLOT..SLOT + 100].iter().all(|b| *b == 9), "small: kept");
    }
}
