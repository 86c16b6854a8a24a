//! The UDP addresses netd itself listens on, shared by every listener.
//!
//! A datagram whose source is one of these was, or claims to be, sent by
//! netd: answering it would feed one of netd's own sockets, and a spoofed
//! one starts a loop between two echo listeners (or a listener and itself)
//! that never ends. The UDP echo drops such datagrams; the supervisor keeps
//! this set current as listeners bind and stop.
//!
//! Only UDP sockets are registered: TCP and UDP ports are separate spaces,
//! and a UDP reply to a TCP listener's port reaches no one (the kernel
//! answers with an ICMP error, which no netd socket reads).
//!
//! The set changes rarely and is read per datagram, so readers keep a
//! cached copy ([`OwnAddrsView`]) and reload it only when a version number
//! has moved.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use parking_lot::RwLock;

/// netd's own UDP listening addresses; cheap to clone (one shared set).
#[derive(Clone, Debug, Default)]
pub struct OwnAddrs {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    version: AtomicU64,
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bound addresses, counted (a restart may register before the old
    /// socket is forgotten).
    bound: HashMap<SocketAddr, usize>,
    snapshot: Arc<OwnSet>,
}

/// One version of the set, as the data path reads it.
#[derive(Debug, Default)]
pub struct OwnSet {
    /// Specific addresses bound (e.g. 127.0.0.1:7007).
    exact: HashSet<SocketAddr>,
    /// Ports bound on 0.0.0.0 (false) or :: (true).
    wildcard: HashSet<(bool, u16)>,
    /// The host's addresses when a wildcard was last registered: a wildcard
    /// bind answers on each of them.
    local_ips: HashSet<IpAddr>,
}

impl OwnSet {
    /// Whether `src` is one of netd's own UDP listening addresses: bound
    /// exactly, or on a port bound on the wildcard address from loopback or
    /// one of the host's own addresses.
    pub fn contains(&self, src: SocketAddr) -> bool {
        let ip = src.ip().to_canonical();
        let src = SocketAddr::new(ip, src.port());
        if self.exact.contains(&src) {
            return true;
        }
        self.wildcard.contains(&(ip.is_ipv6(), src.port()))
            && (ip.is_loopback() || self.local_ips.contains(&ip))
    }
}

impl OwnAddrs {
    /// Note that a UDP socket is bound at `addr`.
    pub fn insert(&self, addr: SocketAddr) {
        // Listing interfaces asks the kernel; do it outside the lock, and
        // only when a wildcard bind needs it.
        let local_ips = addr.ip().is_unspecified().then(host_ips);
        let mut st = self.write();
        *st.bound.entry(addr).or_insert(0) += 1;
        st.rebuild(local_ips);
        self.inner.version.fetch_add(1, Ordering::Release);
    }

    /// Forget one registration of `addr` (its socket is closed).
    pub fn remove(&self, addr: SocketAddr) {
        let mut st = self.write();
        if let Some(n) = st.bound.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                st.bound.remove(&addr);
            }
        }
        st.rebuild(None);
        self.inner.version.fetch_add(1, Ordering::Release);
    }

    /// A cached reader for one task.
    pub fn view(&self) -> OwnAddrsView {
        let version = self.inner.version.load(Ordering::Acquire);
        let set = self.read_snapshot();
        OwnAddrsView {
            own: self.clone(),
            version,
            set,
        }
    }

    fn read_snapshot(&self) -> Arc<OwnSet> {
        let st = self.inner.state.read();
        st.snapshot.clone()
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, State> {
        self.inner.state.write()
    }
}

impl State {
    fn rebuild(&mut self, local_ips: Option<HashSet<IpAddr>>) {
        let mut set = OwnSet {
            local_ips: local_ips.unwrap_or_else(|| self.snapshot.local_ips.clone()),
            ..OwnSet::default()
        };
        for a in self.bound.keys() {
            if a.ip().is_unspecified() {
                set.wildcard.insert((a.is_ipv6(), a.port()));
            } else {
                set.exact
                    .insert(SocketAddr::new(a.ip().to_canonical(), a.port()));
            }
        }
        self.snapshot = Arc::new(set);
    }
}

/// A task's copy of the set, refreshed when the set changes.
#[derive(Debug)]
pub struct OwnAddrsView {
    own: OwnAddrs,
    version: u64,
    set: Arc<OwnSet>,
}

impl OwnAddrsView {
    /// See [`OwnSet::contains`]; one atomic load when nothing changed.
    pub fn contains(&mut self, src: SocketAddr) -> bool {
        let v = self.own.inner.version.load(Ordering::Acquire);
        if v != self.version {
            self.version = v;
            self.set = self.own.read_snapshot();
        }
        self.set.contains(src)
    }
}

/// The addresses of the host's interfaces (empty if they cannot be listed:
/// loopback is matched anyway).
fn host_ips() -> HashSet<IpAddr> {
    pnet::datalink::interfaces()
        .into_iter()
        .flat_map(|i| i.ips.into_iter().map(|n| n.ip().to_canonical()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_wildcard_and_removal() {
        let own = OwnAddrs::default();
        let mut view = own.view();
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(!view.contains(a));
        own.insert(a);
        assert!(view.contains(a));
        assert!(!view.contains("127.0.0.1:4001".parse().unwrap()));
        own.insert("0.0.0.0:5000".parse().unwrap());
        assert!(view.contains("127.0.0.9:5000".parse().unwrap()));
        assert!(!view.contains("[::1]:5000".parse().unwrap()));
        assert!(!view.contains("192.0.2.1:5000".parse().unwrap()));
        own.insert("[::]:6000".parse().unwrap());
        assert!(view.contains("[::1]:6000".parse().unwrap()));
        own.remove(a);
        assert!(!view.contains(a));
    }
}
