//! Passing descriptors between processes: `sendmsg`/`recvmsg` with
//! SCM_RIGHTS, the peer's credentials (SO_PEERCRED), and taking the
//! descriptors systemd passes at start (LISTEN_FDS). sendmsg/recvmsg are
//! rustix's; the only `unsafe` of the socket hand-over (SO_PEERCRED, tokio
//! registration, systemd's descriptors) lives here;
//! [`crate::process::handover`] and [`crate::sys::fdstore`] are written on
//! top of it.
//!
//! All calls are blocking (or fail with WouldBlock on a non-blocking
//! socket): callers run them off the async workers.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

/// Most descriptors one message can carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Send `data` on the socket `sock` with `fds` attached (at most
/// [`MAX_FDS_PER_MESSAGE`]). Returns the bytes sent.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message; at most {MAX_FDS_PER_MESSAGE}",
                fds.len()
            ),
        ));
    }
    let mut space = if fds.is_empty() {
        Vec::new()
    } else {
        vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))]
    };
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "no room for the descriptors in the control buffer",
        ));
    }
    let n = sendmsg(
        sock,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(n)
}

/// Receive one message into `buf` with the descriptors attached to it
/// (close-on-exec). Returns the bytes received (0 at end of stream) and the
/// descriptors. A message whose descriptors did not fit is an error (the
/// ones that did arrive are closed).
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space =
        vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::other("descriptors were truncated"));
    }
    if msg.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::other("message truncated"));
    }
    Ok((msg.bytes, fds))
}

/// The peer of a connected Unix socket: (pid, uid). libc's, not rustix's
/// `socket_peercred`: the kernel reports pid 0 for a peer outside this
/// process's pid namespace, which rustix's `UCred` (a non-zero `Pid`)
/// cannot hold.
pub fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we
    // own.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}

/// Register a non-blocking socket with tokio's reactor, to wait for its
/// readiness (tokio has no type for SOCK_SEQPACKET). Call within a runtime.
pub fn register(sock: socket2::Socket) -> io::Result<tokio::io::unix::AsyncFd<socket2::Socket>> {
    sock.set_nonblocking(true)?;
    // SAFETY: the Socket owns a valid descriptor, and the AsyncFd owns the
    // Socket: nothing else can close or replace the descriptor while it is
    // registered.
    unsafe { tokio::io::unix::AsyncFd::register(sock) }.map_err(|e| e.into())
}

/// This process's effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The descriptors systemd passed (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES),
/// with their names, owned by this process from now on and close-on-exec;
/// the variables are unset. Call before any thread starts (it changes the
/// environment).
pub fn take_listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    let fds = sd_notify::listen_fds_with_names(true)?;
    Ok(fds
        .map(|(fd, name)| {
            // SAFETY: systemd passed these descriptors to this process
            // (LISTEN_PID is ours, checked by listen_fds_with_names) and
            // nothing else in it owns them; they are taken exactly once
            // since the variables are now unset.
            (name, unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn descriptors_travel_with_their_message() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(
            send_with_fds(a.as_fd(), b"one", &[l.as_fd(), l.as_fd()]).unwrap(),
            3
        );
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        assert_eq!(fds.len(), 2);
        let got = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(got.local_addr().unwrap(), addr);
        send_with_fds(a.as_fd(), b"none", &[]).unwrap();
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"none"[..], 0));
        let (pid, uid) = peer_cred(a.as_fd()).unwrap();
        assert_eq!((pid as u32, uid), (std::process::id(), euid()));
    }
}
