//! A TPACKET_V3 receive ring on the packet socket, as libpcap uses: the
//! kernel writes frames straight into blocks of a memory map shared with
//! netd and hands over a whole block when it is full or after a short
//! timeout, so one wakeup serves many packets and no read syscall or copy
//! to a user buffer is spent per packet.
//!
//! Protocol: a block belongs to netd while its status has TP_STATUS_USER;
//! netd walks its packets (each a `tpacket3_hdr` followed by the frame at
//! `tp_mac`), then gives the block back by storing TP_STATUS_KERNEL. Blocks
//! are used in order.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Block size: 1 MiB (a multiple of the page size, room for 64 KiB frames).
const BLOCK_SIZE: u32 = 1 << 20;
/// Blocks in a capture's one ring: 16 MiB in all. With several rings
/// (fanout) each has [`blocks_per_ring`].
const BLOCK_NR: u32 = 16;
/// The fewest blocks a ring has, whatever the number of rings.
const MIN_BLOCKS: u32 = 4;

/// Blocks of each ring of a capture over `rings` rings: 16 (16 MiB) for
/// one or two rings, then 32 MiB shared out, but at least 4 MiB a ring.
pub fn blocks_per_ring(rings: usize) -> u32 {
    let rings = u32::try_from(rings.max(1)).unwrap_or(u32::MAX);
    (2 * BLOCK_NR / rings).clamp(MIN_BLOCKS, BLOCK_NR)
}
/// Nominal frame size, only used to size the request (V3 packs frames).
const FRAME_SIZE: u32 = 2048;
/// A block is handed over after this long even if not full, in ms: the
/// most a packet waits before netd sees it (and `netctl sniff` shows it),
/// and at low rates the number of wakeups per second (20).
const RETIRE_MS: u32 = 50;

pub struct Ring {
    base: *mut u8,
    len: usize,
    current: u32,
    blocks: u32,
}

// SAFETY: the mapping is used by the one capture thread that owns the Ring.
unsafe impl Send for Ring {}

impl Ring {
    /// Switch the (bound) packet socket `fd` to a TPACKET_V3 ring of
    /// `blocks` blocks of 1 MiB.
    pub fn new(fd: RawFd, blocks: u32) -> io::Result<Ring> {
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        super::socket::setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        let req = libc::tpacket_req3 {
            tp_block_size: BLOCK_SIZE,
            tp_block_nr: blocks,
            tp_frame_size: FRAME_SIZE,
            tp_frame_nr: BLOCK_SIZE / FRAME_SIZE * blocks,
            tp_retire_blk_tov: RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        super::socket::setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let len = (BLOCK_SIZE * blocks) as usize;
        // SAFETY: mapping the ring the kernel just set up on fd.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring {
            base: base.cast(),
            len,
            current: 0,
            blocks,
        })
    }

    /// Process the next block if the kernel has handed it over; otherwise
    /// wait up to `timeout` for one. Returns whether a block was processed.
    pub fn next_block(
        &mut self,
        fd: RawFd,
        timeout: Duration,
        mut f: impl FnMut(&[u8], SystemTime),
    ) -> io::Result<bool> {
        // SAFETY: current < blocks, so the block lies inside the mapping;
        // the kernel initialised every block descriptor.
        let block = unsafe { self.base.add((self.current * BLOCK_SIZE) as usize) }
            as *mut libc::tpacket_block_desc;
        let status = unsafe { std::ptr::addr_of!((*block).hdr.bh1.block_status).read_volatile() };
        if status & libc::TP_STATUS_USER == 0 {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            return Ok(false);
        }
        fence(Ordering::Acquire);
        // SAFETY: the block is ours until we store TP_STATUS_KERNEL; every
        // offset comes from the kernel and stays within the block.
        unsafe {
            let bh = &(*block).hdr.bh1;
            let mut at = (block as *const u8).add(bh.offset_to_first_pkt as usize);
            for _ in 0..bh.num_pkts {
                let h = &*(at as *const libc::tpacket3_hdr);
                let frame =
                    std::slice::from_raw_parts(at.add(h.tp_mac as usize), h.tp_snaplen as usize);
                let ts = UNIX_EPOCH + Duration::new(h.tp_sec as u64, h.tp_nsec);
                f(frame, ts);
                at = at.add(h.tp_next_offset as usize);
            }
            fence(Ordering::Release);
            std::ptr::addr_of_mut!((*block).hdr.bh1.block_status)
                .write_volatile(libc::TP_STATUS_KERNEL);
        }
        self.current = (self.current + 1) % self.blocks;
        Ok(true)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
