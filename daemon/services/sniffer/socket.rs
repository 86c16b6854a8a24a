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
