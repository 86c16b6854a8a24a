//! What every UDP listener's receive loop shares: the kernel's per-socket
//! drop count (SO_RXQ_OVFL, which tokio's `recv_from` does not expose; the
//! batched receive in [`super::udp_batch`] reads it), the source address
//! the kernel wrote, and the run of receive errors. The unsafe code is the
//! libc call and reading the address, each with its SAFETY note.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Ask the kernel to report the socket's drop count with each datagram.
pub fn enable_rxq_ovfl(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
}

/// Set the integer socket option `level`/`name` of `fd` to `v`.
pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the
    // length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The IP socket address the kernel wrote into `storage`.
pub(crate) fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says a sockaddr_in is stored; the storage
            // is large and aligned enough for any socket address.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Consecutive receive errors on a listening socket after which its
/// service counts as failed (the supervisor rebinds it).
pub const MAX_CONSECUTIVE_ERRORS: u32 = 100;

/// What a UDP listener's receive loop keeps between datagrams: its run of
/// failed receives, and the socket's drop count as last reported (it starts
/// at 0 on each new socket, and wraps at 2^32).
#[derive(Debug, Default)]
pub struct RecvHealth {
    consecutive_errors: u32,
    drops_seen: u32,
}

impl RecvHealth {
    /// A receive failed: counted in `errors`; after
    /// [`MAX_CONSECUTIVE_ERRORS`] in a row an error for the supervisor, else
    /// a millisecond's pause before the next try (a socket error does not
    /// become a busy loop).
    pub async fn failed(
        &mut self,
        e: io::Error,
        errors: &std::sync::atomic::AtomicU64,
        listener: &str,
    ) -> anyhow::Result<()> {
        crate::telemetry::stats::Stats::add(errors, 1);
        self.consecutive_errors += 1;
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            anyhow::bail!(
                "{} consecutive receive errors, last: {e}",
                self.consecutive_errors
            );
        }
        tracing::debug!(listener, error = %e, "receive failed");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        Ok(())
    }

    /// A datagram arrived with the socket's drop count `drops` (if the
    /// kernel sent one): the run of errors ends, and the drops since the
    /// last report are added to `kernel_drops`.
    pub fn received(&mut self, drops: Option<u32>, kernel_drops: &std::sync::atomic::AtomicU64) {
        self.consecutive_errors = 0;
        if let Some(d) = drops {
            crate::telemetry::stats::Stats::add(
                kernel_drops,
                u64::from(d.wrapping_sub(self.drops_seen)),
            );
            self.drops_seen = d;
        }
    }
}

/// Serve each socket of a UDP listener with its own receive loop: loop `i`
/// runs on per-core worker `i` (modulo their number, see
/// [`super::workers`]) and registers its socket with that worker's
/// reactor, so its datagrams, its replies and whatever it spawns stay on
/// one thread; without workers (one core), the loops run on the current
/// runtime. With several sockets bound with SO_REUSEPORT at one address,
/// the kernel picks a socket by a hash of the 4-tuple, so a client's
/// datagrams all reach the same loop.
///
/// `serve(i, socket, stop)` is called on the loop's runtime; `stop` is a
/// child of `stop`, cancelled when this future ends however it ends (an
/// error of one loop ends them all, and is returned), so no loop outlives
/// the listener's `run`.
pub async fn serve_each<F, Fut>(
    sockets: Vec<tokio::net::UdpSocket>,
    stop: &tokio_util::sync::CancellationToken,
    serve: F,
) -> anyhow::Result<()>
where
    F: Fn(usize, tokio::net::UdpSocket, tokio_util::sync::CancellationToken) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    // Out of the current runtime's reactor, into the loop's.
    let sockets = sockets
        .into_iter()
        .map(tokio::net::UdpSocket::into_std)
        .collect::<std::io::Result<Vec<_>>>()?;
    super::workers::run_each(sockets, stop, "a receive loop", move |i, socket, stop| {
        let serve = serve.clone();
        async move { serve(i, tokio::net::UdpSocket::from_std(socket)?, stop).await }
    })
    .await
}
