//! Binding listening sockets, and adopting sockets bound elsewhere (the
//! socket of a listener updated in place, or one handed over by a previous
//! netd), with bind errors classified for the control plane.
//!
//! A listener may hold a *group* of sockets ([`Sockets`]): N sockets bound
//! at one address with SO_REUSEPORT, so that the kernel spreads new
//! connections (and UDP flows, by the 4-tuple hash) over them and each
//! per-core worker waits on its own socket. A group of one is a plain
//! socket without SO_REUSEPORT. The kernel lets a socket join a
//! reuseport group only if it sets SO_REUSEPORT too and its process has
//! the same effective uid; netd itself refuses a second listener on an
//! address one of its listeners holds (the supervisor's check), since the
//! kernel would let two of its own groups share a port.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Why a bind failed, classified so the control plane can pick a status code.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{0} is already in use")]
    InUse(SocketAddr),
    #[error("permission denied binding {0} (ports below 1024 need root or CAP_NET_BIND_SERVICE)")]
    PermissionDenied(SocketAddr),
    #[error("cannot bind {0}: the address is not assigned to any interface on this host")]
    NotAvailable(SocketAddr),
    #[error("cannot bind {0}: {1}")]
    Other(SocketAddr, io::Error),
    /// Something the daemon lacks (a capability, a writable path).
    #[error("{0}")]
    Precondition(String),
}

impl BindError {
    pub fn from_io(addr: SocketAddr, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse(addr),
            io::ErrorKind::PermissionDenied => BindError::PermissionDenied(addr),
            io::ErrorKind::AddrNotAvailable => BindError::NotAvailable(addr),
            _ => BindError::Other(addr, e),
        }
    }
}

/// A socket type a listener binds: a listening TCP socket or a UDP socket.
pub trait IpSocket: Sized + std::os::fd::AsFd {
    /// What [`adopt`] requires of a descriptor.
    const TYPE: socket2::Type;
    /// Bind a new one at `addr`, with SO_REUSEPORT when `reuse_port` (a
    /// member of a group).
    fn bind_new(addr: SocketAddr, reuse_port: bool) -> io::Result<Self>;
    /// Wrap a bound, non-blocking socket.
    fn from_socket(socket: socket2::Socket) -> io::Result<Self>;
    fn local(&self) -> io::Result<SocketAddr>;
}

impl IpSocket for tokio::net::TcpListener {
    const TYPE: socket2::Type = socket2::Type::STREAM;
    fn bind_new(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        bind_tcp(addr, reuse_port)
    }
    fn from_socket(socket: socket2::Socket) -> io::Result<Self> {
        tokio::net::TcpListener::from_std(socket.into())
    }
    fn local(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

impl IpSocket for tokio::net::UdpSocket {
    const TYPE: socket2::Type = socket2::Type::DGRAM;
    fn bind_new(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        bind_udp(addr, reuse_port)
    }
    fn from_socket(socket: socket2::Socket) -> io::Result<Self> {
        tokio::net::UdpSocket::from_std(socket.into())
    }
    fn local(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

/// Bind a new socket at `addr`.
pub fn bind<S: IpSocket>(addr: SocketAddr) -> Result<S, BindError> {
    S::bind_new(addr, false).map_err(|e| BindError::from_io(addr, e))
}

/// A non-empty set of sockets of type `S` bound at the same address: one
/// plain socket, or a group of several that all have SO_REUSEPORT (set
/// before bind). What a listener with per-core workers binds (see
/// [`bind_group`]), kept whole by the supervisor across in-place updates,
/// restarts and hand-overs.
#[derive(Debug)]
pub struct Sockets<S> {
    all: Vec<S>,
}

impl<S> Sockets<S> {
    /// A set of one.
    pub fn one(socket: S) -> Self {
        Sockets { all: vec![socket] }
    }

    /// None if `all` is empty.
    pub fn from_vec(all: Vec<S>) -> Option<Self> {
        (!all.is_empty()).then_some(Sockets { all })
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Never true; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn first(&self) -> &S {
        &self.all[0]
    }

    pub fn iter(&self) -> std::slice::Iter<'_, S> {
        self.all.iter()
    }

    pub fn into_vec(self) -> Vec<S> {
        self.all
    }
}

impl<S: IpSocket> Sockets<S> {
    /// The address bound (the same for every member).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.first().local()
    }

    /// Duplicates of every member's descriptor, in order.
    pub fn dup_all(&self) -> io::Result<Vec<OwnedFd>> {
        self.all
            .iter()
            .map(|s| s.as_fd().try_clone_to_owned())
            .collect()
    }
}

/// Bind `n` sockets at `addr` (at least one): one plain socket for `n` ≤ 1,
/// else a group with SO_REUSEPORT. For port 0, the first member gets a
/// port and the others join it there.
///
/// A UDP socket with SO_REUSEPORT bound at port 0 may be given a port a
/// reuseport socket of the same user already holds (TCP's port choice
/// avoids that; UDP's does not), so a UDP group's port is first reserved
/// by a plain socket, released, and the group bound there.
pub fn bind_group<S: IpSocket>(addr: SocketAddr, n: usize) -> Result<Sockets<S>, BindError> {
    if n <= 1 {
        return bind(addr).map(Sockets::one);
    }
    let first_at = if addr.port() == 0 && S::TYPE == socket2::Type::DGRAM {
        let probe: S = bind(addr)?;
        probe.local().map_err(|e| BindError::from_io(addr, e))?
    } else {
        addr
    };
    let first = S::bind_new(first_at, true).map_err(|e| BindError::from_io(addr, e))?;
    let at = first.local().map_err(|e| BindError::from_io(addr, e))?;
    let mut all = Vec::with_capacity(n);
    all.push(first);
    grow(&mut all, at, n)?;
    Ok(Sockets { all })
}

/// Bind members at `at` until there are `n`.
fn grow<S: IpSocket>(all: &mut Vec<S>, at: SocketAddr, n: usize) -> Result<(), BindError> {
    while all.len() < n {
        all.push(S::bind_new(at, true).map_err(|e| BindError::from_io(at, e))?);
    }
    Ok(())
}

/// Take over a group handed over (see [`adopt`]): `fds` in member order,
/// the first one required; members that do not fit are closed. Then make
/// it `want` members: more bound at its address if it has fewer (possible
/// only when the members have SO_REUSEPORT; a plain socket from a netd
/// that ran it alone stays alone until the listener rebinds), extras
/// closed if it has more (their queued connections move to the others
/// where the kernel migrates them, see `net.ipv4.tcp_migrate_req`).
pub fn adopt_group<S: IpSocket>(
    fds: Vec<OwnedFd>,
    spec_addr: SocketAddr,
    expect_addr: bool,
    want: usize,
) -> Result<Sockets<S>, BindError> {
    let mut fds = fds.into_iter();
    let first_fd = fds.next().ok_or_else(|| none_handed_over(spec_addr))?;
    let first: S = adopt(first_fd, spec_addr, expect_addr)?;
    let at = first
        .local()
        .map_err(|e| BindError::from_io(spec_addr, e))?;
    let grouped = socket2::SockRef::from(&first).reuse_port().unwrap_or(false);
    let mut all = vec![first];
    while let Some(fd) = fds.next() {
        if all.len() >= want.max(1) {
            let extra = 1 + fds.by_ref().count();
            if S::TYPE == socket2::Type::STREAM && migrate_req() != Some(true) {
                tracing::warn!(addr = %at, extra, "closing the sockets of the group beyond this netd's workers: connections waiting in their accept queues are reset (net.ipv4.tcp_migrate_req is not 1)");
            }
            break;
        }
        // Members are checked against the first one's address: a member
        // bound elsewhere is not part of the group.
        match adopt::<S>(fd, at, true) {
            Ok(s) => all.push(s),
            Err(e) => {
                tracing::warn!(addr = %at, error = %e, "a socket handed over does not fit its group; closed")
            }
        }
    }
    if grouped {
        grow(&mut all, at, want)?;
    } else if want > 1 {
        tracing::info!(addr = %at, "the socket handed over has no SO_REUSEPORT: it stays alone (one socket, not {want}) until the listener binds anew");
    }
    Ok(Sockets { all })
}

/// The error for a take-over at `at` with no socket to take.
pub fn none_handed_over(at: SocketAddr) -> BindError {
    BindError::Precondition(format!(
        "cannot take over the socket for {at}: none was handed over"
    ))
}

/// Take over an already bound socket instead of binding one: the socket of
/// a listener replaced in place, or one handed over by a previous netd
/// (`--upgrade`, systemd's fd store). It must be of the type `S` (a
/// listening TCP socket, or a UDP socket); with `expect_addr`, also bound
/// where `spec_addr` says (an inherited socket from an older config may
/// not be).
pub fn adopt<S: IpSocket>(
    fd: OwnedFd,
    spec_addr: SocketAddr,
    expect_addr: bool,
) -> Result<S, BindError> {
    use socket2::{Socket, Type};
    let want = S::TYPE;
    let socket = Socket::from(fd);
    let bad = |why: String| {
        BindError::Precondition(format!(
            "cannot take over the socket for {spec_addr}: {why}"
        ))
    };
    let ty = socket.r#type().map_err(|e| bad(e.to_string()))?;
    if ty != want {
        return Err(bad("it is not of the listener's type".into()));
    }
    if want == Type::STREAM && !socket.is_listener().map_err(|e| bad(e.to_string()))? {
        return Err(bad("it is not listening".into()));
    }
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| bad("it has no IP address".into()))?;
    if expect_addr
        && (local.ip() != spec_addr.ip()
            || (spec_addr.port() != 0 && local.port() != spec_addr.port()))
    {
        return Err(bad(format!("it is bound to {local}")));
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| BindError::from_io(local, e))?;
    S::from_socket(socket).map_err(|e| BindError::from_io(local, e))
}

/// Whether the kernel moves the connections waiting in a closing
/// listening socket's accept queue to another socket of its SO_REUSEPORT
/// group (`net.ipv4.tcp_migrate_req`, Linux 5.14+); None when the kernel
/// has no such setting. Without it, those connections are reset. Reads a
/// file: call off the async runtime.
pub fn migrate_req() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .ok()
        .map(|v| v.trim() == "1")
}

/// Backlog for TCP listening sockets.
const BACKLOG: i32 = 1024;

fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Every TCP service wants Nagle off on its connections. Set on the
    // listening socket, it is inherited by each accepted socket (Linux and
    // the BSDs copy TCP_NODELAY from the listener), which saves a
    // setsockopt(2) per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Would two sockets of the same protocol bound at `a` and `b` clash? Same
/// (fixed) port and family, and the same IP or either the wildcard (IPv6
/// sockets are bound v6-only, so `[::]` does not cover IPv4).
pub fn addrs_clash(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;
    use tokio::net::{TcpListener, UdpSocket};

    fn reuse_port<S: IpSocket>(s: &S) -> bool {
        socket2::SockRef::from(s).reuse_port().unwrap()
    }

    #[tokio::test]
    async fn a_group_shares_one_port_with_so_reuseport_and_one_socket_is_plain() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let g = bind_group::<TcpListener>(any, 3).unwrap();
        assert_eq!(g.len(), 3);
        let at = g.local_addr().unwrap();
        assert_ne!(at.port(), 0);
        assert!(
            g.iter()
                .all(|s| s.local_addr().unwrap() == at && reuse_port(s))
        );
        let u = bind_group::<UdpSocket>(any, 2).unwrap();
        let uat = u.local_addr().unwrap();
        assert!(
            u.iter()
                .all(|s| s.local_addr().unwrap() == uat && reuse_port(s))
        );
        let one = bind_group::<TcpListener>(any, 1).unwrap();
        assert_eq!(one.len(), 1);
        assert!(!reuse_port(one.first()));
        // A plain socket cannot join a group, nor a group a plain socket.
        assert!(matches!(bind::<TcpListener>(at), Err(BindError::InUse(_))));
        let plain = one.local_addr().unwrap();
        assert!(matches!(
            bind_group::<TcpListener>(plain, 2),
            Err(BindError::InUse(_))
        ));
    }

    #[tokio::test]
    async fn adopting_a_group_grows_or_shrinks_it_to_the_count_wanted() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let g = bind_group::<TcpListener>(any, 2).unwrap();
        let at = g.local_addr().unwrap();
        let grown = adopt_group::<TcpListener>(g.dup_all().unwrap(), at, true, 4).unwrap();
        assert_eq!(grown.len(), 4);
        assert!(grown.iter().all(|s| s.local_addr().unwrap() == at));
        let shrunk = adopt_group::<TcpListener>(grown.dup_all().unwrap(), at, true, 1).unwrap();
        assert_eq!(shrunk.len(), 1);
        // A plain socket stays alone: it cannot take members.
        let one = bind_group::<TcpListener>(any, 1).unwrap();
        let fd = one.first().as_fd().try_clone_to_owned().unwrap();
        let alone =
            adopt_group::<TcpListener>(vec![fd], one.local_addr().unwrap(), true, 3).unwrap();
        assert_eq!(alone.len(), 1);
        // Nothing to adopt, or a first socket elsewhere: an error.
        assert!(adopt_group::<TcpListener>(Vec::new(), at, true, 2).is_err());
        let elsewhere: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert!(adopt_group::<TcpListener>(g.dup_all().unwrap(), elsewhere, true, 2).is_err());
    }
}
