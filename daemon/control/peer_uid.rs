//! The user behind a loopback TCP connection.
//!
//! A TCP peer on the same host is a socket of this host's, and the kernel
//! knows which user owns it. netd's own endpoints use that as the peer's
//! identity, the way `SO_PEERCRED` does on a Unix socket, so that local
//! users are told apart (and capped apart) though they all come from
//! 127.0.0.1 — or from one of the host's other addresses, which a local
//! user may bind as the source of a connection to any of them (so that on
//! a node with several addresses, one user cannot pass for several
//! sources, nor share a source with the kubelet probing the node's
//! address). Only for sockets in netd's own network namespace: a remote
//! peer's socket is not the host's, and the kernel finds none.
//!
//! The lookup is one `sock_diag` request for exactly that socket (the
//! kernel finds it by its 4-tuple, as `ss` does): a netlink round trip of
//! a few microseconds whatever the number of sockets, so the accept loops
//! make it inline, like `SO_PEERCRED`. The reply's layout is Linux's
//! `inet_diag_msg`.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
/// Offset of `idiag_uid` in `inet_diag_msg`: family, state, timer,
/// retrans (4), the socket id (48), expires, rqueue, wqueue (12); the
/// inode follows it.
const UID_OFFSET: usize = 64;
const INODE_OFFSET: usize = 68;
/// `idiag_state` of a socket in TIME_WAIT.
const TCP_TIME_WAIT: u8 = 6;
/// Name and groups of a uid are looked up within this.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The primary group of a uid without a passwd entry: none.
pub const NO_GROUP: u32 = u32::MAX;

/// The uid owning the socket at `peer` connected to `local` (the address
/// the connection was accepted on), if the kernel finds that socket in
/// this network namespace: a loopback peer, or one on another of the
/// host's own addresses (the name is older than that). A remote peer has
/// no socket here: None.
pub fn loopback_peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let (peer, local) = (canonical(peer), canonical(local));
    if peer.ip().is_unspecified() || peer.ip().is_multicast() {
        return None;
    }
    if let Some(uid) = query(&request(peer, local)?).ok().flatten() {
        return Some(uid);
    }
    // An IPv6 client socket connected to a v4-mapped address.
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => Some(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port())),
        IpAddr::V6(_) => None,
    };
    query(&request(mapped(peer)?, mapped(local)?)?)
        .ok()
        .flatten()
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// A `SOCK_DIAG_BY_FAMILY` request for the TCP socket whose source is
/// `src` and destination `dst` (the peer's own view of the connection).
fn request(src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET as u8,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6 as u8,
        _ => return None,
    };
    let addr = |ip: IpAddr| -> [u8; 16] {
        let mut a = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => a = v6.octets(),
        }
        a
    };
    let len = NLMSG_HDRLEN + 56;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    // inet_diag_req_v2
    m.push(family);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // ext
    m.push(0); // pad
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    // inet_diag_sockid: ports and addresses in network byte order
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    m.extend_from_slice(&addr(src.ip()));
    m.extend_from_slice(&addr(dst.ip()));
    m.extend_from_slice(&0u32.to_ne_bytes()); // interface: any
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    debug_assert_eq!(m.len(), len);
    Some(m)
}

fn query(req: &[u8]) -> std::io::Result<Option<u32>> {
    let mut s = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM.cloexec(),
        Some(Protocol::from(NETLINK_SOCK_DIAG)),
    )?;
    // The kernel answers at once; this only guards against the
    // unexpected.
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    s.write_all(req)?;
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf)?;
    Ok(parse_reply(&buf[..n]))
}

/// The uid of the first `inet_diag_msg` in a reply; `None` for an error
/// (no such socket), a short reply, or a socket that names no one: in
/// TIME_WAIT or orphaned (closed by its process, inode 0), the kernel
/// reports uid 0 for it, which must not pass for root.
fn parse_reply(reply: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind == NLMSG_ERROR {
        return None;
    }
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?))
    };
    let state = *reply.get(NLMSG_HDRLEN + 1)?;
    let uid = word(NLMSG_HDRLEN + UID_OFFSET)?;
    let inode = word(NLMSG_HDRLEN + INODE_OFFSET)?;
    (state != TCP_TIME_WAIT && inode != 0).then_some(uid)
}

/// A local account as netd's role rules see it: uid, name, primary group
/// and every group it is in (from the user database, not from the process:
/// a TCP peer has no credentials to ask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub uid: u32,
    /// None if the uid has no passwd entry (then it is in no group:
    /// `gid` is [`NO_GROUP`] and `groups` is empty).
    pub name: Option<String>,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl LocalUser {
    /// The peer as [`crate::control::auth::Policy::caller`] takes it, so that
    /// `[control.roles]` applies to it as to a Unix-socket caller.
    pub fn peer(&self) -> crate::control::auth::Peer {
        crate::control::auth::Peer::Unix {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            pid: None,
        }
    }

    /// `uid:1000(alice)`, or `uid:1000` without a passwd entry.
    pub fn identity(&self) -> String {
        match &self.name {
            Some(n) => format!("uid:{}({n})", self.uid),
            None => format!("uid:{}", self.uid),
        }
    }
}

/// One warning per interval when looking up peers' users fails (a slow
/// directory server makes that happen per connection).
static LOOKUP_WARN: crate::util::warn_limit::RateLimitedWarn =
    crate::util::warn_limit::RateLimitedWarn::new(crate::util::warn_limit::DEFAULT_INTERVAL);

/// The name and groups of `uid` (a peer's, from [`loopback_peer_uid`]),
/// looked up on the blocking pool (NSS may ask a directory server) within
/// [`LOOKUP_TIMEOUT`]; None if that fails or times out.
pub async fn local_user(uid: u32) -> Option<LocalUser> {
    let lookup = tokio::task::spawn_blocking(move || match crate::sys::user_of_uid(uid) {
        Some((name, gid)) => LocalUser {
            uid,
            groups: crate::sys::groups_of_user(&name, gid),
            name: Some(name),
            gid,
        },
        None => LocalUser {
            uid,
            name: None,
            gid: NO_GROUP,
            groups: Vec::new(),
        },
    });
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(user)) => Some(user),
        Ok(Err(e)) => {
            if let Some(suppressed) = LOOKUP_WARN.hit() {
                tracing::warn!(error = %e, uid, suppressed, "looking up a peer's user failed");
            }
            None
        }
        Err(_) => {
            if let Some(suppressed) = LOOKUP_WARN.hit() {
                tracing::warn!(uid, suppressed, "looking up a peer's user timed out");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_loopback_connection_is_ours_and_a_remote_one_unknown() {
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = std::net::TcpListener::bind(host) else {
                continue; // no IPv6 here
            };
            let local = l.local_addr().unwrap();
            let c = std::net::TcpStream::connect(local).unwrap();
            let (_s, peer) = l.accept().unwrap();
            assert_eq!(peer, c.local_addr().unwrap());
            assert_eq!(
                loopback_peer_uid(local, peer),
                Some(crate::sys::euid()),
                "{host}"
            );
            // A port nobody uses: no such socket.
            let gone = SocketAddr::new(peer.ip(), 1);
            assert_eq!(loopback_peer_uid(local, gone), None);
        }
        let remote: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert_eq!(
            loopback_peer_uid("127.0.0.1:1".parse().unwrap(), remote),
            None
        );
    }

    #[test]
    fn the_uid_in_a_reply_as_the_kernel_lays_it_out() {
        let mut reply = vec![0u8; NLMSG_HDRLEN + 72];
        reply[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        reply[NLMSG_HDRLEN + 1] = 1; // ESTABLISHED
        reply[NLMSG_HDRLEN + UID_OFFSET..NLMSG_HDRLEN + UID_OFFSET + 4]
            .copy_from_slice(&65534u32.to_ne_bytes());
        // An orphaned socket (inode 0) names no one.
        assert_eq!(parse_reply(&reply), None);
        reply[NLMSG_HDRLEN + INODE_OFFSET..NLMSG_HDRLEN + INODE_OFFSET + 4]
            .copy_from_slice(&4242u32.to_ne_bytes());
        assert_eq!(parse_reply(&reply), Some(65534));
        reply[NLMSG_HDRLEN + 1] = TCP_TIME_WAIT;
        assert_eq!(parse_reply(&reply), None);
        reply[NLMSG_HDRLEN + 1] = 1;
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_reply(&reply), None);
        assert_eq!(parse_reply(&[0u8; 8]), None);
    }
}
