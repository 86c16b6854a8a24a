//! Who is on the other end of a loopback TCP connection: the uid that owns
//! the peer's socket, as the kernel lists it in `/proc/net/tcp` and
//! `/proc/net/tcp6`.
//!
//! Unix sockets tell their peer's credentials (`SO_PEERCRED`); TCP does
//! not. On loopback, though, both ends of a connection are sockets of this
//! host (and network namespace), so the peer's socket is a row of the
//! kernel's TCP table: the one whose *local* address is the peer's address
//! and whose *remote* address is ours. Its `uid` column is the effective
//! uid of the process that created it. That is how netd's own TCP
//! endpoints (the Toxiproxy-compatible API first) identify local callers
//! without a password, the way `identd` answered for a port pair.
//!
//! Rows that no longer say who owns the socket are not trusted: a
//! `TIME_WAIT` row (the kernel prints uid 0 for it) or an orphaned socket
//! (inode 0, its process closed it) gives no identity.
//!
//! Non-loopback peers have no row of ours to read: [`loopback_peer_uid`]
//! answers `None` for them, and the caller decides (refuse, or ask for a
//! token). The files are read on tokio's blocking pool with a deadline
//! ([`LOOKUP_TIMEOUT`]), scanning at most [`MAX_ROWS`] rows per table.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long one lookup may take, both tables and the user database.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows read from one table at most (a host with more TCP sockets than
/// this identifies no one beyond them: the caller is then unidentified).
pub const MAX_ROWS: usize = 1 << 20;

/// The primary gid of a uid without a passwd entry: matches no
/// `group:` rule (the kernel's "no group", `(gid_t)-1`).
pub const NO_GROUP: u32 = u32::MAX;

/// `st` of a `TIME_WAIT` row, whose `uid` is always 0.
const TIME_WAIT: u8 = 0x06;

/// The uid owning the socket at the other end of the loopback TCP
/// connection accepted on `local` from `peer`; `None` if the peer is not on
/// loopback, its socket is not listed (gone, orphaned, another network
/// namespace), or the lookup took longer than [`LOOKUP_TIMEOUT`].
///
/// IPv4, IPv6 and IPv4-mapped IPv6 addresses are all matched (a dual-stack
/// listener sees an IPv4 client as `::ffff:127.0.0.1`, and that client's
/// socket is listed in the IPv4 table).
pub async fn loopback_peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let (local, peer) = (canonical(local), canonical(peer));
    if !peer.ip().is_loopback() || !local.ip().is_loopback() {
        return None;
    }
    let lookup = tokio::task::spawn_blocking(move || lookup(local, peer));
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(uid)) => uid,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, %peer, "looking up the owner of a loopback peer failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "looking up the owner of a loopback peer timed out");
            None
        }
    }
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
    /// The peer as [`crate::auth::Policy::caller`] takes it, so that
    /// `[control.roles]` applies to it as to a Unix-socket caller.
    pub fn peer(&self) -> crate::auth::Peer {
        crate::auth::Peer::Unix {
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

/// [`loopback_peer_uid`] and that uid's name and groups, looked up on the
/// blocking pool (NSS may ask a directory server) within
/// [`LOOKUP_TIMEOUT`]; None as for [`loopback_peer_uid`].
pub async fn loopback_peer_user(local: SocketAddr, peer: SocketAddr) -> Option<LocalUser> {
    let uid = loopback_peer_uid(local, peer).await?;
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
            tracing::warn!(error = %e, uid, "looking up a peer's user failed");
            None
        }
        Err(_) => {
            tracing::warn!(uid, "looking up a peer's user timed out");
            None
        }
    }
}

/// Both tables, the peer's family first (blocking).
fn lookup(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let tables: &[&str] = if peer.is_ipv4() {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/tcp6"]
    };
    tables.iter().find_map(|path| {
        let file = std::fs::File::open(path)
            .map_err(|e| tracing::debug!(path, error = %e, "cannot read the TCP table"))
            .ok()?;
        find_owner(std::io::BufReader::new(file), peer, local)
    })
}

/// The uid of the socket listed in `table` (the text of `/proc/net/tcp` or
/// `tcp6`) with local address `sock` and remote address `remote`, if that
/// row still names its owner.
pub fn find_owner(table: impl BufRead, sock: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (sock, remote) = (canonical(sock), canonical(remote));
    for line in table.lines().take(MAX_ROWS + 1).skip(1) {
        let Ok(line) = line else { return None };
        let Some(row) = Row::parse(&line) else {
            continue;
        };
        if row.local == sock && row.remote == remote {
            let trusted = row.state != TIME_WAIT && row.inode != 0;
            return trusted.then_some(row.uid);
        }
    }
    None
}

/// The fields of one row that identify a socket and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    uid: u32,
    inode: u64,
}

impl Row {
    /// ` sl local_address rem_address st tx:rx tr:when retrnsmt uid
    /// timeout inode ...`; None for the header or a malformed line.
    fn parse(line: &str) -> Option<Row> {
        let mut f = line.split_whitespace();
        let _sl = f.next()?.strip_suffix(':')?;
        let local = parse_addr(f.next()?)?;
        let remote = parse_addr(f.next()?)?;
        let state = u8::from_str_radix(f.next()?, 16).ok()?;
        let _queues = f.next()?;
        let _timer = f.next()?;
        let _retransmits = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let _timeout = f.next()?;
        let inode = f.next()?.parse().ok()?;
        Some(Row {
            local,
            remote,
            state,
            uid,
            inode,
        })
    }
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6): the kernel
/// prints each 32-bit word of the address as a number in the host's byte
/// order, and the port as a number. IPv4-mapped addresses come back as
/// IPv4.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

/// IPv4-mapped IPv6 addresses as IPv4, so both tables compare alike.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as the kernel prints them on a little-endian host: netd's
    /// API listening on 127.0.0.1:8474 (0x211A), a client of uid 65534 on
    /// port 40000 (0x9C40), netd's accepted socket, a TIME_WAIT and an
    /// orphaned row.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:211A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:211A 01 00000000:00000000 00:00000000 00000000 65534        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:211A 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:9C41 0100007F:211A 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 0100007F:9C42 0100007F:211A 05 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1
";

    /// The same connection from an IPv6 socket (`::ffff:127.0.0.1`), and
    /// one over ::1 (port 0x9C43).
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:211A 01 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 20 4 30 10 -1
   1: 00000000000000000000000001000000:9C43 00000000000000000000000001000000:211A 01 00000000:00000000 00:00000000 00000000    42        0 5555 1 0000000000000000 20 4 30 10 -1
";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn finds_the_peer_row_not_our_own() {
        if cfg!(target_endian = "big") {
            return;
        }
        let api = a("127.0.0.1:8474");
        assert_eq!(
            find_owner(TCP.as_bytes(), a("127.0.0.1:40000"), api),
            Some(65534)
        );
        // Our own accepted socket (uid 0) is the reverse row: never taken
        // for the peer's.
        assert_eq!(
            find_owner(TCP.as_bytes(), api, a("127.0.0.1:40000")),
            Some(0)
        );
        assert_eq!(find_owner(TCP.as_bytes(), a("127.0.0.1:40001"), api), None);
        // As a dual-stack listener sees it.
        assert_eq!(
            find_owner(
                TCP.as_bytes(),
                a("[::ffff:127.0.0.1]:40000"),
                a("[::ffff:127.0.0.1]:8474")
            ),
            Some(65534)
        );
    }

    #[test]
    fn time_wait_and_orphaned_rows_name_no_one() {
        if cfg!(target_endian = "big") {
            return;
        }
        let api = a("127.0.0.1:8474");
        assert_eq!(find_owner(TCP.as_bytes(), a("127.0.0.1:40001"), api), None);
        assert_eq!(find_owner(TCP.as_bytes(), a("127.0.0.1:40002"), api), None);
    }

    #[test]
    fn ipv6_rows_and_mapped_addresses() {
        if cfg!(target_endian = "big") {
            return;
        }
        assert_eq!(
            find_owner(TCP6.as_bytes(), a("127.0.0.1:40000"), a("127.0.0.1:8474")),
            Some(1000)
        );
        assert_eq!(
            find_owner(TCP6.as_bytes(), a("[::1]:40003"), a("[::1]:8474")),
            Some(42)
        );
        assert_eq!(
            find_owner(TCP6.as_bytes(), a("[::1]:40003"), a("[::1]:8475")),
            None
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "header\n garbage\n 0: 0100007F:ZZZZ 0100007F:211A 01\n 1: 01:2 3:4\n";
        assert_eq!(
            find_owner(text.as_bytes(), a("127.0.0.1:1"), a("127.0.0.1:2")),
            None
        );
        assert_eq!(parse_addr("0100007F"), None);
        assert_eq!(parse_addr("0100007F:10000"), None);
    }

    #[tokio::test]
    async fn non_loopback_peers_are_not_looked_up() {
        assert_eq!(
            loopback_peer_uid(a("192.0.2.1:8474"), a("192.0.2.2:40000")).await,
            None
        );
        assert_eq!(
            loopback_peer_uid(a("127.0.0.1:8474"), a("192.0.2.2:40000")).await,
            None
        );
    }

    /// A real connection on this host: the client socket is ours.
    #[tokio::test]
    async fn a_real_loopback_connection_is_ours() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, peer) = l.accept().await.unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(
            loopback_peer_uid(s.local_addr().unwrap(), peer).await,
            Some(crate::sys::euid())
        );
    }
}
