//! What a listener kind is: the [`ListenerKind`] trait every hosted service
//! implements, in its own module, and registers with one line in the
//! `kinds!` list of [`super`].
//!
//! The trait carries everything the rest of netd asks of a kind: its names
//! (the slug used in configs, on the command line and in JSON; the proto
//! enum value), its spec (validation, the effective spec with defaults
//! filled in and secrets redacted, the config keys it takes), and its
//! life (bind, adopt a socket, run, kind-specific stats). The registry
//! turns the list of kinds into the `Service` enum and the matches over
//! `listener_spec::Kind`, all exhaustive, so a kind added to the proto but
//! not registered, or registered without a piece, does not compile.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};

use super::{Bound, ServiceCtx, Settings, SpecError};
use crate::net::bind::{BindError, Sockets};
use crate::proto;
use crate::telemetry::families::{DetailFamilies, NoFamilies};

/// How a kind takes its traffic; decides which listeners can clash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A listening TCP socket.
    Tcp,
    /// A UDP socket.
    Udp,
    /// A packet capture on an interface (binds no address).
    Packet,
}

/// What a kind's `bind` gives its `run`, and how it is kept in a [`Bound`]
/// while the supervisor holds it: one socket, or a group of sockets
/// bound at one address ([`Sockets`], for kinds with a loop per worker).
pub trait KindSocket: Sized + Send + 'static {
    /// New sockets bound at `addr`: `n` of them for a group, one else (see
    /// [`crate::net::bind::bind_group`]).
    fn bind_at(addr: SocketAddr, n: usize) -> Result<Self, BindError>;
    /// Already bound sockets taken over, the first required (see
    /// [`crate::net::bind::adopt_group`]); a group is made `n` strong.
    fn adopt_at(
        fds: Vec<OwnedFd>,
        spec_addr: SocketAddr,
        expect_addr: bool,
        n: usize,
    ) -> Result<Self, BindError>;
    fn into_bound(self) -> Bound;
    /// The socket back out of a [`Bound`]; None if it is of another type.
    fn from_bound(bound: Bound) -> Option<Self>;
}

/// The first of `fds` (the rest are closed), or an error naming `at`.
fn first_fd(fds: Vec<OwnedFd>, at: SocketAddr) -> Result<OwnedFd, BindError> {
    fds.into_iter()
        .next()
        .ok_or_else(|| crate::net::bind::none_handed_over(at))
}

impl KindSocket for TcpListener {
    fn bind_at(addr: SocketAddr, _n: usize) -> Result<Self, BindError> {
        crate::net::bind::bind(addr)
    }
    fn adopt_at(
        fds: Vec<OwnedFd>,
        spec_addr: SocketAddr,
        expect_addr: bool,
        _n: usize,
    ) -> Result<Self, BindError> {
        crate::net::bind::adopt(first_fd(fds, spec_addr)?, spec_addr, expect_addr)
    }
    fn into_bound(self) -> Bound {
        Bound::Tcp(Sockets::one(self))
    }
    /// The first socket of a group (the others are closed).
    fn from_bound(bound: Bound) -> Option<Self> {
        Sockets::<Self>::from_bound(bound).and_then(|s| s.into_vec().into_iter().next())
    }
}

impl KindSocket for UdpSocket {
    fn bind_at(addr: SocketAddr, _n: usize) -> Result<Self, BindError> {
        crate::net::bind::bind(addr)
    }
    fn adopt_at(
        fds: Vec<OwnedFd>,
        spec_addr: SocketAddr,
        expect_addr: bool,
        _n: usize,
    ) -> Result<Self, BindError> {
        crate::net::bind::adopt(first_fd(fds, spec_addr)?, spec_addr, expect_addr)
    }
    fn into_bound(self) -> Bound {
        Bound::Udp(Sockets::one(self))
    }
    /// The first socket of a group (the others are closed).
    fn from_bound(bound: Bound) -> Option<Self> {
        Sockets::<Self>::from_bound(bound).and_then(|s| s.into_vec().into_iter().next())
    }
}

impl KindSocket for Sockets<TcpListener> {
    fn bind_at(addr: SocketAddr, n: usize) -> Result<Self, BindError> {
        crate::net::bind::bind_group(addr, n)
    }
    fn adopt_at(
        fds: Vec<OwnedFd>,
        spec_addr: SocketAddr,
        expect_addr: bool,
        n: usize,
    ) -> Result<Self, BindError> {
        crate::net::bind::adopt_group(fds, spec_addr, expect_addr, n)
    }
    fn into_bound(self) -> Bound {
        Bound::Tcp(self)
    }
    fn from_bound(bound: Bound) -> Option<Self> {
        match bound {
            Bound::Tcp(l) => Some(l),
            Bound::Udp(_) | Bound::Packet(_) => None,
        }
    }
}

impl KindSocket for Sockets<UdpSocket> {
    fn bind_at(addr: SocketAddr, n: usize) -> Result<Self, BindError> {
        crate::net::bind::bind_group(addr, n)
    }
    fn adopt_at(
        fds: Vec<OwnedFd>,
        spec_addr: SocketAddr,
        expect_addr: bool,
        n: usize,
    ) -> Result<Self, BindError> {
        crate::net::bind::adopt_group(fds, spec_addr, expect_addr, n)
    }
    fn into_bound(self) -> Bound {
        Bound::Udp(self)
    }
    fn from_bound(bound: Bound) -> Option<Self> {
        match bound {
            Bound::Udp(s) => Some(s),
            Bound::Tcp(_) | Bound::Packet(_) => None,
        }
    }
}

/// A capture binds no address: the sniffer opens one itself (its own
/// [`ListenerKind::bind`] and [`ListenerKind::adopt`]).
impl KindSocket for super::sniffer::Capture {
    fn bind_at(addr: SocketAddr, _n: usize) -> Result<Self, BindError> {
        Err(BindError::Precondition(format!(
            "a capture is not bound to an address ({addr})"
        )))
    }
    fn adopt_at(
        _fds: Vec<OwnedFd>,
        spec_addr: SocketAddr,
        _expect_addr: bool,
        n: usize,
    ) -> Result<Self, BindError> {
        Self::bind_at(spec_addr, n)
    }
    fn into_bound(self) -> Bound {
        Bound::Packet(self)
    }
    fn from_bound(bound: Bound) -> Option<Self> {
        match bound {
            Bound::Packet(c) => Some(c),
            Bound::Tcp(_) | Bound::Udp(_) => None,
        }
    }
}

/// One kind of listener. Implemented by the validated service value (built
/// by [`ListenerKind::from_spec`]); static facts are associated items.
pub trait ListenerKind: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The proto message of this kind's arm of `ListenerSpec.kind`.
    type Spec: prost::Message + Clone + Default + PartialEq;
    /// What the kind binds and runs on.
    type Socket: KindSocket;

    /// The name in configs (`kind = "tcp-echo"`), on netctl's command line
    /// and in JSON output.
    const SLUG: &'static str;
    /// The value in `Listener.kind`, stats and events.
    const KIND: proto::ListenerKind;
    const TRANSPORT: Transport;
    /// What the kind is, in one paragraph: `netctl start KIND`'s help.
    const ABOUT: &'static str;
    /// The keys of this kind's flat form (its `[[listener]]` keys besides
    /// `name`, `kind` and `labels`; any other key is refused with "does
    /// not apply"), with what netctl needs to make a flag of each.
    const KEYS: &'static [crate::spec::Key];

    /// The address field of a spec, unparsed (None for kinds that bind
    /// none): for clash checks across listeners and in-place updates.
    fn spec_listen(spec: &Self::Spec) -> Option<&str>;

    /// Write the spec as `[[listener]]` keys for `netctl export` (the
    /// inverse of the config file's reading; `name` and `kind` are written
    /// by the caller). Destructure the spec without `..`, so that a field
    /// added to the proto does not compile until it is written.
    fn write_config(spec: &Self::Spec, t: &mut crate::spec::Table) -> Result<(), String>;

    /// Read the spec from its flat form (the inverse of
    /// [`ListenerKind::write_config`]): a key left out is its zero. Only
    /// the keys in [`ListenerKind::KEYS`] are looked at; the caller refuses
    /// others.
    fn read_config(
        t: &toml::Table,
        opts: &crate::spec::form::ReadOptions,
    ) -> Result<Self::Spec, crate::spec::FieldError>;

    /// Validate a spec against the daemon's settings. May block (an
    /// upstream name is resolved, interfaces are listed).
    fn from_spec(spec: &Self::Spec, settings: &Settings) -> Result<Self, SpecError>;

    /// Take over from `prev`, the generation this freshly built one
    /// replaces (an update, in place or by a new socket), what belongs to
    /// the listener rather than to one generation: the kind's counters
    /// (shared, so that what the old generation still counts while its
    /// connections finish is not lost) and state such as an upstream's
    /// health. Called before the new generation runs. Default: the kind
    /// has nothing of its own to carry (its base counters are the
    /// listener's already).
    fn carry_over(&mut self, _prev: &Self) {}

    /// The spec as it is in effect: `shown` (the requested spec as netd
    /// shows it, see [`ListenerKind::show`]) with every unset field filled
    /// in with its default.
    fn effective_spec(&self, shown: &Self::Spec) -> Self::Spec;

    /// The requested spec as netd reports it back: secrets redacted, and
    /// whatever validation resolved (a sniffer's pcap path).
    fn show(&self, mut spec: Self::Spec) -> Self::Spec {
        Self::redact(&mut spec);
        spec
    }

    /// Replace secrets with a placeholder. Default: the kind has none.
    fn redact(_spec: &mut Self::Spec) {}

    /// Where a placeholder written by [`ListenerKind::redact`] comes back
    /// (an update, an apply of an exported file), take the secret from
    /// `current`. Default: the kind has no secrets.
    fn keep_secrets(_new: &mut Self::Spec, _current: &Self::Spec) {}

    /// Clear what only netd can check (a path it resolves against its own
    /// settings), for a spec validated outside netd: an apply file read by
    /// netctl. Default: nothing.
    fn clear_netd_paths(_spec: &mut Self::Spec) {}

    /// The one form netd stores and compares a spec in (see the
    /// supervisor's `normalize`). Default: as given.
    fn normalize(_spec: &mut Self::Spec, _settings: &Settings) {}

    /// Whether a new generation with spec `new` needs something the running
    /// one (spec `old`) holds, so that the old one must close before the
    /// new one starts (a sniffer writing the same pcap file). Default: no,
    /// the old one serves until the new one is ready.
    fn needs_old_closed(_old: &Self::Spec, _new: &Self::Spec) -> bool {
        false
    }

    /// The address the spec asked for (port may be 0), if the kind binds one.
    fn listen_addr(&self) -> Option<SocketAddr>;

    /// What a person should see as the bound address.
    fn describe_bound(&self, bound: Option<SocketAddr>) -> String {
        bound.map(|a| a.to_string()).unwrap_or_default()
    }

    /// How many sockets the kind binds at its address: 1, or one per
    /// per-core worker for a kind with an accept or receive loop on each
    /// ([`crate::net::workers::socket_count`]) and `Socket = Sockets<_>`.
    fn sockets(&self) -> usize {
        1
    }

    /// Bind, at `addr` when given (a restart rebinds the address first
    /// bound), else where the spec says. Called off the runtime's workers.
    /// Default: [`ListenerKind::sockets`] sockets of the kind's type at
    /// that address.
    fn bind(&self, addr: Option<SocketAddr>) -> Result<Self::Socket, BindError> {
        let at = addr.or(self.listen_addr()).ok_or_else(no_address)?;
        Self::Socket::bind_at(at, self.sockets())
    }

    /// Take over already bound sockets instead (see
    /// [`crate::net::bind::adopt_group`]): `fds` in member order. Default:
    /// checked against the spec's address.
    fn adopt(&self, fds: Vec<OwnedFd>, expect_addr: bool) -> Result<Self::Socket, BindError> {
        let at = self.listen_addr().ok_or_else(no_address)?;
        Self::Socket::adopt_at(fds, at, expect_addr, self.sockets())
    }

    /// Checks that need the address actually bound (port 0 resolved).
    fn check_bound(&self, _local: SocketAddr) -> Result<(), SpecError> {
        Ok(())
    }

    /// Serve until `ctx.stop_accepting`; an error (or a panic) means the
    /// service failed and the supervisor restarts it.
    fn run(
        self: Arc<Self>,
        socket: Self::Socket,
        ctx: ServiceCtx,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Kind-specific counters for the stats message, if the kind has any.
    fn detail_stats(&self) -> Option<proto::listener_stats::Detail>;

    /// The listener's TLS counters, when it serves or originates TLS.
    /// Default: the kind has no TLS.
    fn tls_stats(&self) -> Option<proto::TlsStats> {
        None
    }

    /// Descriptors a listener of this spec may hold at its limits besides
    /// its socket: one per connection, two for a proxy, one per udp-proxy
    /// client (see [`super::fd_cost`]). No default: each kind says.
    fn descriptors(spec: &Self::Spec, budget: &crate::net::fd_budget::Budget) -> u64;

    /// The spec's faults and the transport whose fault types apply, for a
    /// kind that takes faults (its `faults` key). Default: it takes none.
    fn faults(_spec: &Self::Spec) -> Option<(&Vec<proto::Fault>, crate::fault::Target)> {
        None
    }

    /// The spec's faults, to change them (see [`ListenerKind::faults`]).
    fn faults_mut(_spec: &mut Self::Spec) -> Option<&mut Vec<proto::Fault>> {
        None
    }

    /// The Prometheus families read from those counters (the kind's
    /// `metrics.rs`, see [`crate::telemetry::families`]): `/metrics`
    /// exports these for the kind's listeners. Default: none.
    const FAMILIES: &'static dyn DetailFamilies = &NoFamilies;
}

fn no_address() -> BindError {
    BindError::Precondition("this kind's spec names no address to bind".into())
}

/// The facts about a kind that need no spec, for lookups by slug or enum.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    pub slug: &'static str,
    pub kind: proto::ListenerKind,
    pub transport: Transport,
    /// The kind's own Prometheus families ([`ListenerKind::FAMILIES`]).
    pub families: &'static dyn DetailFamilies,
    /// What the kind is ([`ListenerKind::ABOUT`]).
    pub about: &'static str,
    /// The keys of its flat form ([`ListenerKind::KEYS`]).
    pub keys: &'static [crate::spec::Key],
}

impl KindInfo {
    /// Whether the kind's form has `key`.
    pub fn takes(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k.key == key)
    }

    pub const fn of<K: ListenerKind>() -> KindInfo {
        KindInfo {
            slug: K::SLUG,
            kind: K::KIND,
            transport: K::TRANSPORT,
            families: K::FAMILIES,
            about: K::ABOUT,
            keys: K::KEYS,
        }
    }
}
