//! The packet socket's system calls: opening it (rustix), socket options,
//! kernel statistics and batched reads (recvmmsg), which rustix does not
//! cover for AF_PACKET. The sniffer's unsafe code is here and in
//! [`super::ring`], each block with its SAFETY note.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{OwnedFd, RawFd};

use super::{BATCH, FRAME_MAX};

/// A raw AF_PACKET socket for all protocols, close-on-exec.
pub(super) fn packet_socket() -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socket_with};
    Ok(socket_with(
        AddressFamily::PACKET,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// PACKET_STATISTICS since the last read (reading resets them).
pub(super) fn packet_stats(fd: RawFd) -> io::Result<libc::tpacket_stats> {
    // SAFETY: an all-zero tpacket_stats is valid (plain integers).
    let mut st: libc::tpacket_stats = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt into a correctly sized tpacket_stats we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Buffers for reading queued frames in batches with recvmmsg(2), which
/// cuts the syscalls per packet at high rates (pnet's channel reads one
/// frame per poll + recvfrom). Lives on the capture thread.
pub(super) struct Batch {
    bufs: Vec<Vec<u8>>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        // calloc'd: pages become resident only once a frame lands in them.
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; FRAME_MAX]).collect();
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero msghdr is valid (no name, no control).
                let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Batch { bufs, iovs, msgs }
    }

    /// Frames queued right now (0 if none), without waiting.
    pub(super) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        debug_assert_eq!(self.iovs.len(), self.msgs.len());
        // SAFETY: msgs point at iovs, which point at bufs; all live in self
        // and none has moved since new().
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        }
    }

    pub(super) fn frame(&self, i: usize) -> &[u8] {
        let len = (self.msgs[i].msg_len as usize).min(FRAME_MAX);
        &self.bufs[i][..len]
    }
}

pub(super) fn setsockopt<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Attach the classic BPF program `prog` to `fd`, replacing any before it.
pub(super) fn attach_filter(fd: RawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::other(format!("{} BPF instructions: too many", prog.len())))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel copies the program and does not write to it.
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

/// A program accepting nothing ("ret #0"): a ring's socket holds it while
/// it joins the fanout group, so it never takes a copy of a packet that
/// the group also delivers.
pub(super) const DROP_ALL: [libc::sock_filter; 1] = [libc::sock_filter {
    code: (libc::BPF_RET | libc::BPF_K) as u16,
    jt: 0,
    jf: 0,
    k: 0,
}];

/// PACKET_FANOUT mode: by flow hash (the kernel's skb hash of addresses
/// and ports), so a flow stays on one ring...
const FANOUT_HASH: u32 = 0;
/// ...unless its ring is full: then the packet goes to a ring with room
/// instead of being dropped.
const FANOUT_FLAG_ROLLOVER: u32 = 0x1000;
/// The kernel picks a group id unused in the network namespace (Linux
/// 4.2+), so no other capture (of this netd or another program) shares it.
const FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// Make the bound socket `fd` the first of a new fanout group and return
/// the group's id, which the kernel chose.
pub(super) fn fanout_create(fd: RawFd) -> io::Result<u16> {
    let arg: u32 = (FANOUT_HASH | FANOUT_FLAG_ROLLOVER | FANOUT_FLAG_UNIQUEID) << 16;
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)?;
    let mut got: u32 = 0;
    let mut len = mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt into a u32 we own, with its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            &mut got as *mut u32 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((got & 0xffff) as u16)
}

/// Join the bound socket `fd` to the fanout group `id`.
pub(super) fn fanout_join(fd: RawFd, id: u16) -> io::Result<()> {
    let arg: u32 = u32::from(id) | ((FANOUT_HASH | FANOUT_FLAG_ROLLOVER) << 16);
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)
}
