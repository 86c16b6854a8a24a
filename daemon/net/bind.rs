//! Binding listening sockets, and adopting sockets bound elsewhere (the
//! socket of a listener updated in place, or one handed over by a previous
//! netd), with bind errors classified for the control plane.

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
pub trait IpSocket: Sized {
    /// What [`adopt`] requires of a descriptor.
    const TYPE: socket2::Type;
    /// Bind a new one at `addr`.
    fn bind_new(addr: SocketAddr) -> io::Result<Self>;
    /// Wrap a bound, non-blocking socket.
    fn from_socket(socket: socket2::Socket) -> io::Result<Self>;
}

impl IpSocket for tokio::net::TcpListener {
    const TYPE: socket2::Type = socket2::Type::STREAM;
    fn bind_new(addr: SocketAddr) -> io::Result<Self> {
        bind_tcp(addr)
    }
    fn from_socket(socket: socket2::Socket) -> io::Result<Self> {
        tokio::net::TcpListener::from_std(socket.into())
    }
}

impl IpSocket for tokio::net::UdpSocket {
    const TYPE: socket2::Type = socket2::Type::DGRAM;
    fn bind_new(addr: SocketAddr) -> io::Result<Self> {
        bind_udp(addr)
    }
    fn from_socket(socket: socket2::Socket) -> io::Result<Self> {
        tokio::net::UdpSocket::from_std(socket.into())
    }
}

/// Bind a new socket at `addr`.
pub fn bind<S: IpSocket>(addr: SocketAddr) -> Result<S, BindError> {
    S::bind_new(addr).map_err(|e| BindError::from_io(addr, e))
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

/// Backlog for TCP listening sockets.
const BACKLOG: i32 = 1024;

fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
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

fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
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
