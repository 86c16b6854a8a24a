//! The hosted services and the interface the supervisor drives them through.
//!
//! Each kind of listener is one module implementing [`ListenerKind`]
//! (see [`kind`]) and one line in the `kinds!` list below; everything
//! else here is generic (the `registry!` macro turns the list into
//! [`Service`] and exhaustive matches over `listener_spec::Kind`). A service is built from a validated spec
//! ([`Service::from_spec`]), binds its socket before StartListener returns
//! ([`Service::bind`], so it can report a port in use; both may block, so
//! the supervisor calls them on tokio's blocking pool), then runs until its
//! `stop_accepting` token is cancelled ([`Service::run`]). Connection tasks
//! go on the context's tracker so stop and shutdown can wait for them; they
//! end early when `close_connections` is cancelled. `run` returning an
//! error (or panicking) means the service failed, and the supervisor
//! restarts it on the same bound address.
//!
//! Socket plumbing the services share (bind, accept loop, drain, ...) is in
//! [`crate::net`].

pub mod client_key;
pub mod fd_cost;
pub mod http;
pub mod http_proxy;
pub mod http_server;
pub mod kind;
pub mod proxy;
pub mod show;
pub mod sniffer;
pub mod source_guard;
pub mod tcp_echo;
pub mod udp_echo;
pub mod udp_proxy;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::net::bind::BindError;
pub use kind::{KindInfo, ListenerKind, Transport};

use crate::net::accept::Accepting;
use crate::proto::{self, listener_spec::Kind};
use crate::telemetry::stats::Stats;
use crate::util::addr::parse_listen_addr;
use kind::KindSocket;

/// Every listener kind: its `listener_spec::Kind` arm (also its
/// `ListenerKind` enum value) and the type implementing [`ListenerKind`].
/// A new kind is one line here.
macro_rules! kinds {
    ($mac:ident) => {
        $mac! {
            TcpEcho => tcp_echo::TcpEcho,
            UdpEcho => udp_echo::UdpEcho,
            Proxy => proxy::Proxy,
            Http => http::Http,
            Sniffer => sniffer::Sniffer,
            UdpProxy => udp_proxy::UdpProxy,
            HttpProxy => http_proxy::HttpProxy,
        }
    };
}
pub(crate) use kinds;

/// Generates [`Service`] and the dispatch over kinds from the list in
/// [`kinds!`]. Every match here is exhaustive over `listener_spec::Kind`
/// or `Service`, so the compiler finds a kind left out.
macro_rules! registry {
    ($($arm:ident => $ty:ty),+ $(,)?) => {
        /// A validated listener spec, ready to bind and run: one variant
        /// per kind.
        #[derive(Debug)]
        pub enum Service {
            $($arm(Arc<$ty>),)+
        }

        /// Every kind, in registry order.
        pub const KINDS: &[KindInfo] = &[$(KindInfo::of::<$ty>(),)+];

        /// Every kind's slug, in registry order (for "expected one of").
        pub const SLUGS: &[&str] = &[$(<$ty as ListenerKind>::SLUG,)+];

        /// The facts about the kind a spec arm names.
        pub fn info(kind: &Kind) -> KindInfo {
            match kind {
                $(Kind::$arm(_) => KindInfo::of::<$ty>(),)+
            }
        }

        /// The slugs of the kinds whose listeners take faults of `target`
        /// (a kind takes faults when its spec has them, [`ListenerKind::faults`]).
        pub fn fault_kinds(target: crate::fault::Target) -> Vec<&'static str> {
            let mut out = Vec::new();
            $(
                if <$ty as ListenerKind>::faults(&Default::default())
                    .is_some_and(|(_, t)| t == target)
                {
                    out.push(<$ty as ListenerKind>::SLUG);
                }
            )+
            out
        }

        /// Write a spec arm's keys for `netctl export`.
        pub fn write_config(kind: &Kind, t: &mut crate::spec::Table) -> Result<(), String> {
            match kind {
                $(Kind::$arm(s) => <$ty>::write_config(s, t),)+
            }
        }

        /// Read a spec arm of kind `kind` from its flat form (see
        /// [`ListenerKind::read_config`]).
        pub fn read_config(
            kind: proto::ListenerKind,
            t: &toml::Table,
            opts: &crate::spec::form::ReadOptions,
        ) -> Result<Kind, crate::spec::FieldError> {
            $(if kind == <$ty as ListenerKind>::KIND {
                return <$ty>::read_config(t, opts).map(Kind::$arm);
            })+
            Err(crate::spec::FieldError::new(
                "kind",
                crate::spec::form::Class::Listener,
                "no kind",
            ))
        }

        /// The unparsed address field of a spec arm, for kinds that bind one.
        fn spec_listen(kind: &Kind) -> Option<&str> {
            match kind {
                $(Kind::$arm(s) => <$ty>::spec_listen(s),)+
            }
        }

        /// Replace the secrets in a spec arm with a placeholder.
        fn redact_kind(kind: &mut Kind) {
            match kind {
                $(Kind::$arm(s) => <$ty>::redact(s),)+
            }
        }

        /// Secrets given as the placeholder in `new` are taken from
        /// `current` (of the same kind; else nothing to keep).
        fn keep_secrets_kind(new: &mut Kind, current: &Kind) {
            match new {
                $(Kind::$arm(n) => {
                    if let Kind::$arm(c) = current {
                        <$ty>::keep_secrets(n, c);
                    }
                })+
            }
        }

        fn needs_old_closed_kind(old: &Kind, new: &Kind) -> bool {
            match old {
                $(Kind::$arm(o) => {
                    if let Kind::$arm(n) = new {
                        <$ty>::needs_old_closed(o, n)
                    } else {
                        false
                    }
                })+
            }
        }

        /// Descriptors a spec arm may hold at its limits besides its socket.
        pub(crate) fn descriptors_kind(kind: &Kind, budget: &crate::net::fd_budget::Budget) -> u64 {
            match kind {
                $(Kind::$arm(s) => <$ty>::descriptors(s, budget),)+
            }
        }

        fn faults_kind(kind: &Kind) -> Option<(&Vec<proto::Fault>, crate::fault::Target)> {
            match kind {
                $(Kind::$arm(s) => <$ty>::faults(s),)+
            }
        }

        fn faults_kind_mut(kind: &mut Kind) -> Option<&mut Vec<proto::Fault>> {
            match kind {
                $(Kind::$arm(s) => <$ty>::faults_mut(s),)+
            }
        }

        fn clear_netd_paths_kind(kind: &mut Kind) {
            match kind {
                $(Kind::$arm(s) => <$ty>::clear_netd_paths(s),)+
            }
        }

        fn normalize_kind(kind: &mut Kind, settings: &Settings) {
            match kind {
                $(Kind::$arm(s) => <$ty>::normalize(s, settings),)+
            }
        }

        impl Service {
            fn build(kind: &Kind, settings: &Settings) -> Result<Self, SpecError> {
                match kind {
                    $(Kind::$arm(s) => Ok(Service::$arm(Arc::new(<$ty>::from_spec(s, settings)?))),)+
                }
            }

            /// As [`Service::build`], carrying over from `prev` (of the same
            /// kind; else nothing is carried) what belongs to the listener.
            fn build_after(kind: &Kind, settings: &Settings, prev: &Service) -> Result<Self, SpecError> {
                match kind {
                    $(Kind::$arm(s) => {
                        let mut k = <$ty>::from_spec(s, settings)?;
                        if let Service::$arm(p) = prev {
                            k.carry_over(p);
                        }
                        Ok(Service::$arm(Arc::new(k)))
                    })+
                }
            }

            pub fn kind(&self) -> proto::ListenerKind {
                match self {
                    $(Service::$arm(_) => <$ty as ListenerKind>::KIND,)+
                }
            }

            /// The address the spec asked for (port may be 0); None for
            /// services that do not bind an IP address (the sniffer).
            pub fn listen_addr(&self) -> Option<SocketAddr> {
                match self {
                    $(Service::$arm(s) => s.listen_addr(),)+
                }
            }

            /// What a person should see as the bound address: the socket
            /// address, or the interface a sniffer captures on.
            pub fn describe_bound(&self, bound: Option<SocketAddr>) -> String {
                match self {
                    $(Service::$arm(s) => s.describe_bound(bound),)+
                }
            }

            /// The spec as netd reports it back (`Listener.spec`): secrets
            /// redacted, and a sniffer's pcap path as resolved in
            /// capture_dir.
            fn show_kind(&self, kind: Kind) -> Kind {
                match self {
                    $(Service::$arm(s) => match kind {
                        Kind::$arm(k) => Kind::$arm(s.show(k)),
                        mut other => {
                            redact_kind(&mut other);
                            other
                        }
                    },)+
                }
            }

            /// The spec in effect (`Listener.effective_spec`): as shown, with
            /// every unset field filled in with netd's default. None if
            /// `kind` is not this service's kind.
            fn effective_kind(&self, kind: &Kind) -> Option<Kind> {
                match self {
                    $(Service::$arm(s) => {
                        if let Kind::$arm(k) = kind {
                            Some(Kind::$arm(s.effective_spec(k)))
                        } else {
                            None
                        }
                    })+
                }
            }

            /// Kind-specific counters for the stats message, if the kind has any.
            pub fn detail_stats(&self) -> Option<proto::listener_stats::Detail> {
                match self {
                    $(Service::$arm(s) => s.detail_stats(),)+
                }
            }

            /// The listener's TLS counters, if it has TLS.
            pub fn tls_stats(&self) -> Option<proto::TlsStats> {
                match self {
                    $(Service::$arm(s) => s.tls_stats(),)+
                }
            }

            /// Bind the service's socket, at `addr` when given (a restart
            /// rebinds the address first bound) or else where the spec says.
            /// Must be called within a tokio runtime, off its workers: a
            /// sniffer's bind opens its pcap file.
            pub fn bind(&self, addr: Option<SocketAddr>) -> Result<Bound, BindError> {
                match self {
                    $(Service::$arm(s) => s.bind(addr).map(KindSocket::into_bound),)+
                }
            }

            /// Take over an already bound socket instead of binding one: the
            /// socket of the listener this service replaces in place, or one
            /// handed over by a previous netd (`--upgrade`, systemd's fd
            /// store). It must be of the service's type; with `expect_addr`,
            /// also bound where the spec asks. A sniffer opens a new capture
            /// instead.
            pub fn adopt(&self, fds: Vec<std::os::fd::OwnedFd>, expect_addr: bool) -> Result<Bound, BindError> {
                match self {
                    $(Service::$arm(s) => s.adopt(fds, expect_addr).map(KindSocket::into_bound),)+
                }
            }

            /// Checks that need the address actually bound (port 0
            /// resolved): a proxy must not have itself as an upstream.
            pub fn check_bound(&self, bound: &Bound) -> Result<(), SpecError> {
                let Ok(Some(local)) = bound.local_addr() else {
                    return Ok(());
                };
                match self {
                    $(Service::$arm(s) => s.check_bound(local),)+
                }
            }

            pub async fn run(self: Arc<Self>, bound: Bound, ctx: ServiceCtx) -> anyhow::Result<()> {
                let mismatch = || anyhow::anyhow!("internal error: socket type does not match the service");
                match &*self {
                    $(Service::$arm(s) => {
                        let socket = KindSocket::from_bound(bound).ok_or_else(mismatch)?;
                        s.clone().run(socket, ctx).await
                    })+
                }
            }
        }
    };
}

kinds!(registry);

impl Service {
    /// Validate `spec` against the daemon's `settings`. May block (an
    /// upstream name is resolved, interfaces are listed).
    pub fn from_spec(spec: &proto::ListenerSpec, settings: &Settings) -> Result<Self, SpecError> {
        match &spec.kind {
            None => Err(SpecError::new(format!(
                "the listener spec names no kind ({})",
                KINDS
                    .iter()
                    .map(|k| k.slug.replace('-', "_"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Some(kind) => Self::build(kind, settings),
        }
    }

    /// As [`Service::from_spec`], for the next generation of a listener
    /// whose current one is `prev`: the counters and health state that
    /// belong to the listener are carried over (see
    /// [`ListenerKind::carry_over`]), so an update never resets them.
    pub fn from_spec_after(
        spec: &proto::ListenerSpec,
        settings: &Settings,
        prev: &Service,
    ) -> Result<Self, SpecError> {
        match &spec.kind {
            Some(kind) => Self::build_after(kind, settings, prev),
            None => Self::from_spec(spec, settings),
        }
    }

    /// The address a spec asks for and its transport, if it is valid and
    /// binds one (port may be 0); for checks across listeners, such as
    /// clashing ports.
    pub fn spec_listen_addr(spec: &proto::ListenerSpec) -> Option<(SocketAddr, Transport)> {
        let kind = spec.kind.as_ref()?;
        let addr = parse_listen_addr(spec_listen(kind)?).ok()?;
        Some((addr, info(kind).transport))
    }

    /// Whether going from `old` to `new` keeps the socket: the same kind
    /// and the same listen address, for kinds that have a socket to keep (a
    /// sniffer always opens a new capture).
    pub fn same_socket(old: &proto::ListenerSpec, new: &proto::ListenerSpec) -> bool {
        let (Some(a), Some(b)) = (&old.kind, &new.kind) else {
            return false;
        };
        info(a).kind == info(b).kind
            && info(a).transport != Transport::Packet
            && spec_listen(a).is_some()
            && spec_listen(a) == spec_listen(b)
    }

    /// The kind a spec names (Unspecified for none).
    pub fn spec_kind(spec: &proto::ListenerSpec) -> proto::ListenerKind {
        spec.kind
            .as_ref()
            .map_or(proto::ListenerKind::Unspecified, |k| info(k).kind)
    }

    /// Whether going from `old` to `new` must close the old generation
    /// before the new one starts (see [`ListenerKind::needs_old_closed`]).
    pub fn needs_old_closed(old: &proto::ListenerSpec, new: &proto::ListenerSpec) -> bool {
        match (&old.kind, &new.kind) {
            (Some(o), Some(n)) => needs_old_closed_kind(o, n),
            (None, _) | (_, None) => false,
        }
    }

    /// The spec as netd shows it: secrets (an HTTP token) replaced.
    pub fn redact(spec: &mut proto::ListenerSpec) {
        if let Some(k) = &mut spec.kind {
            redact_kind(k);
        }
    }

    /// A placeholder secret in `spec` (as netd shows it, and as `netctl
    /// export` writes it) means "keep the current one".
    pub fn keep_secrets(
        mut spec: proto::ListenerSpec,
        current: &proto::ListenerSpec,
    ) -> proto::ListenerSpec {
        if let (Some(n), Some(c)) = (&mut spec.kind, &current.kind) {
            keep_secrets_kind(n, c);
        }
        spec
    }

    /// The spec without what only netd can check (see
    /// [`ListenerKind::clear_netd_paths`]).
    pub fn clear_netd_paths(mut spec: proto::ListenerSpec) -> proto::ListenerSpec {
        if let Some(k) = &mut spec.kind {
            clear_netd_paths_kind(k);
        }
        spec
    }

    /// A spec in the one form netd stores and compares (see
    /// [`ListenerKind::normalize`]).
    pub fn normalize(mut spec: proto::ListenerSpec, settings: &Settings) -> proto::ListenerSpec {
        if let Some(k) = &mut spec.kind {
            normalize_kind(k, settings);
        }
        spec
    }

    /// The spec as netd reports it back: secrets redacted, and a sniffer's
    /// pcap path as resolved in capture_dir.
    pub fn shown_spec(&self, spec: proto::ListenerSpec) -> proto::ListenerSpec {
        proto::ListenerSpec {
            kind: spec.kind.map(|k| self.show_kind(k)),
        }
    }

    /// The spec in effect: `shown` (from [`Service::shown_spec`]) with
    /// every unset field filled in with netd's default.
    pub fn effective_spec(&self, shown: &proto::ListenerSpec) -> proto::ListenerSpec {
        proto::ListenerSpec {
            kind: shown.kind.as_ref().and_then(|k| self.effective_kind(k)),
        }
    }

    /// The sniffer behind this service, if it is one.
    pub fn as_sniffer(&self) -> Option<&Arc<sniffer::Sniffer>> {
        if let Service::Sniffer(s) = self {
            Some(s)
        } else {
            None
        }
    }
}

/// The faults of a spec, for the kinds that take them.
pub fn faults_of(spec: &proto::ListenerSpec) -> Option<&Vec<proto::Fault>> {
    faults_kind(spec.kind.as_ref()?).map(|(f, _)| f)
}

pub fn faults_of_mut(spec: &mut proto::ListenerSpec) -> Option<&mut Vec<proto::Fault>> {
    faults_kind_mut(spec.kind.as_mut()?)
}

/// The fault target of a spec's kind, if it takes faults.
pub fn target_of(spec: &proto::ListenerSpec) -> Option<crate::fault::Target> {
    faults_kind(spec.kind.as_ref()?).map(|(_, t)| t)
}

/// `spec` with its faults cleared, for comparing the rest.
pub fn without_faults(spec: &proto::ListenerSpec) -> proto::ListenerSpec {
    let mut s = spec.clone();
    if let Some(f) = faults_of_mut(&mut s) {
        f.clear();
    }
    s
}

/// The kind with this slug ("tcp-echo").
pub fn kind_by_slug(slug: &str) -> Option<KindInfo> {
    KINDS.iter().find(|k| k.slug == slug).copied()
}

/// Daemon-wide settings from the config that shape how services are built.
/// The supervisor holds one and passes it to every [`Service::from_spec`].
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The one directory pcap files may be written to (`capture_dir`); None
    /// when the config sets none and no default could be derived.
    pub capture_dir: Option<PathBuf>,
    /// netd's own UDP listening addresses, kept by the supervisor; the UDP
    /// echo drops datagrams from them (a spoofed one would start a loop).
    pub own_udp_addrs: crate::net::own_addrs::OwnAddrs,
}

/// What a running service receives from the supervisor.
#[derive(Clone, Debug)]
pub struct ServiceCtx {
    pub name: Arc<str>,
    pub stats: Arc<Stats>,
    /// Stop accepting new connections or datagrams and return from `run`.
    pub stop_accepting: CancellationToken,
    /// Close open connections now (stop, or shutdown after the grace period).
    pub close_connections: CancellationToken,
    /// Spawn connection tasks here; stop and shutdown wait for them.
    pub tracker: TaskTracker,
    /// For alerts a service raises.
    pub events: crate::telemetry::events::EventBus,
    /// The listener's live faults (only proxy and udp-proxy have any).
    pub faults: Arc<crate::fault::FaultTable>,
}

impl ServiceCtx {
    /// What the shared accept loop needs of this listener.
    pub fn accepting(&self) -> Accepting<'_> {
        Accepting {
            name: &self.name,
            stats: &self.stats,
            stop: &self.stop_accepting,
            tracker: &self.tracker,
        }
    }
}

/// The sockets bound for a service (one, or a SO_REUSEPORT group), handed
/// to [`Service::run`].
#[derive(Debug)]
pub enum Bound {
    Tcp(crate::net::bind::Sockets<tokio::net::TcpListener>),
    Udp(crate::net::bind::Sockets<tokio::net::UdpSocket>),
    Packet(sniffer::Capture),
}

impl Bound {
    /// Duplicate descriptors of the listening sockets (TCP and UDP), in
    /// member order, kept by the supervisor so that an update can run a
    /// new service on the same sockets and an upgrade can hand them over.
    /// Empty for a capture.
    /// How many listening sockets: a group's members, 0 for a capture.
    pub fn socket_count(&self) -> usize {
        match self {
            Bound::Tcp(l) => l.len(),
            Bound::Udp(s) => s.len(),
            Bound::Packet(_) => 0,
        }
    }

    pub fn dup_sockets(&self) -> io::Result<Vec<std::os::fd::OwnedFd>> {
        match self {
            Bound::Tcp(l) => l.dup_all(),
            Bound::Udp(s) => s.dup_all(),
            Bound::Packet(_) => Ok(Vec::new()),
        }
    }

    /// The socket address bound, for IP services.
    pub fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        match self {
            Bound::Tcp(l) => l.local_addr().map(Some),
            Bound::Udp(s) => s.local_addr().map(Some),
            Bound::Packet(_) => Ok(None),
        }
    }
}

pub use crate::spec::SpecError;

/// Default bound on concurrent connections per TCP listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default idle timeout for TCP connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The `faults` key of a kind that takes faults: each table compiled by
/// [`crate::fault::attrs::from_table`], an error naming the fault by its
/// place in the list.
pub(crate) fn read_faults(t: &toml::Table) -> Result<Vec<proto::Fault>, crate::spec::FieldError> {
    crate::spec::form::tables(t, "faults")?
        .iter()
        .enumerate()
        .map(|(i, f)| {
            crate::fault::attrs::from_table(f).map_err(|e| {
                crate::spec::FieldError::new(
                    "faults",
                    crate::spec::form::Class::Listener,
                    format!("fault {}: {e}", i + 1),
                )
            })
        })
        .collect()
}

/// Largest `max_connections` of any TCP listener.
pub const MAX_MAX_CONNECTIONS: u64 = 1_000_000;

/// `max_connections` of a TCP kind: checked before the kind's own
/// validation, so its error comes first wherever the spec came from.
pub(crate) fn check_max_connections(max_connections: u32) -> Result<(), SpecError> {
    size_in(
        "max_connections",
        u64::from(max_connections),
        DEFAULT_MAX_CONNECTIONS as u64,
        1..=MAX_MAX_CONNECTIONS,
    )
    .map(|_| ())
}

/// The effective `max_connections` (0 is the default).
pub(crate) fn effective_max_connections(v: u32) -> u32 {
    if v == 0 {
        DEFAULT_MAX_CONNECTIONS as u32
    } else {
        v
    }
}

/// The effective value of a duration field (unset is `default`).
pub(crate) fn effective_duration(
    v: &Option<prost_types::Duration>,
    default: Duration,
) -> Option<prost_types::Duration> {
    Some(v.unwrap_or_else(|| prost_types::Duration::try_from(default).unwrap_or_default()))
}

/// The range any duration in a listener spec must fall in unless its field
/// says narrower (see [`duration_in`]): long enough for every timeout and
/// window netd has, short enough that adding it to a clock reading can
/// never overflow.
pub const DURATION_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(7 * 24 * 3600);

/// A duration field: unset means `default`; otherwise it must be within
/// [`DURATION_RANGE`] (1ms to 7 days).
pub(crate) fn duration_field(
    field: &str,
    value: &Option<prost_types::Duration>,
    default: Duration,
) -> Result<Duration, SpecError> {
    duration_in(field, value, default, DURATION_RANGE)
}

/// A duration field that must be within `range`; unset means `default`.
/// The error names the field and the bounds.
pub(crate) fn duration_in(
    field: &str,
    value: &Option<prost_types::Duration>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, SpecError> {
    let Some(d) = value else { return Ok(default) };
    let bounds = || {
        format!(
            "{} to {}",
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        )
    };
    let d = Duration::try_from(*d).map_err(|_| {
        SpecError::at(
            field,
            format!("{field} must not be negative (it must be {})", bounds()),
        )
    })?;
    if d.is_zero() {
        return Err(SpecError::at(
            field,
            format!(
                "{field} must be greater than zero (it must be {})",
                bounds()
            ),
        ));
    }
    if !range.contains(&d) {
        return Err(SpecError::at(
            field,
            format!(
                "{field} is {}; it must be {}",
                humantime::format_duration(d),
                bounds()
            ),
        ));
    }
    Ok(d)
}

/// A size or count field: 0 means `default`; otherwise it must be within
/// `range`. The error names the field and the bounds.
pub(crate) fn size_in(
    field: &str,
    value: u64,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SpecError> {
    match value {
        0 => Ok(default),
        n if range.contains(&n) => Ok(n),
        n => Err(SpecError::at(
            field,
            format!(
                "{field} is {n}; it must be {} to {} (0 for the default, {default})",
                range.start(),
                range.end()
            ),
        )),
    }
}

pub(crate) fn listen_field(field: &str, value: &str) -> Result<SocketAddr, SpecError> {
    if value.trim().is_empty() {
        return Err(SpecError::at(
            field,
            format!("{field} is required (host:port, e.g. 127.0.0.1:8080)"),
        ));
    }
    parse_listen_addr(value).map_err(|e| SpecError::at(field, format!("{field}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal spec of every registered kind (the compiler asks for a new
    /// kind here too).
    fn minimal(kind: KindInfo) -> proto::ListenerSpec {
        let listen = "127.0.0.1:0".to_string();
        let kind = match kind.kind {
            proto::ListenerKind::Unspecified => unreachable!("not a registered kind"),
            proto::ListenerKind::TcpEcho => Kind::TcpEcho(proto::TcpEchoSpec {
                listen,
                ..Default::default()
            }),
            proto::ListenerKind::UdpEcho => Kind::UdpEcho(proto::UdpEchoSpec {
                listen,
                ..Default::default()
            }),
            proto::ListenerKind::Proxy => Kind::Proxy(proto::ProxySpec {
                listen,
                upstreams: vec!["127.0.0.1:9".into()],
                ..Default::default()
            }),
            proto::ListenerKind::Http => Kind::Http(proto::HttpSpec {
                listen,
                token: "secret".into(),
                ..Default::default()
            }),
            proto::ListenerKind::Sniffer => Kind::Sniffer(proto::SnifferSpec {
                interface: "lo".into(),
                ..Default::default()
            }),
            proto::ListenerKind::UdpProxy => Kind::UdpProxy(proto::UdpProxySpec {
                listen,
                upstream: "127.0.0.1:9".into(),
                ..Default::default()
            }),
            proto::ListenerKind::HttpProxy => Kind::HttpProxy(proto::HttpProxySpec {
                listen,
                upstreams: vec!["127.0.0.1:9".into()],
                ..Default::default()
            }),
        };
        proto::ListenerSpec { kind: Some(kind) }
    }

    /// The effective spec fills every default: it is itself a valid spec,
    /// its own effective spec, and differs from the minimal one exactly in
    /// the fields left unset (and a redacted secret).
    #[test]
    fn effective_specs_are_complete_valid_and_stable() {
        let settings = Settings::default();
        for k in KINDS {
            let spec = minimal(*k);
            let service = Service::from_spec(&spec, &settings).expect(k.slug);
            assert_eq!(service.kind(), k.kind);
            let shown = service.shown_spec(spec.clone());
            let effective = service.effective_spec(&shown);
            assert_eq!(Service::spec_kind(&effective), k.kind);
            let valid = Service::keep_secrets(effective.clone(), &spec);
            let again = Service::from_spec(&valid, &settings)
                .unwrap_or_else(|e| panic!("{}: the effective spec is refused: {e}", k.slug));
            assert_eq!(again.effective_spec(&effective), effective, "{}", k.slug);
            assert!(
                !crate::spec::diff::changed_fields(&shown, &effective).is_empty(),
                "{}: no default filled in",
                k.slug
            );
        }
        // The secret never shows.
        let http = minimal(kind_by_slug("http").unwrap());
        let service = Service::from_spec(&http, &settings).unwrap();
        let effective = service.effective_spec(&service.shown_spec(http));
        let Some(Kind::Http(h)) = effective.kind else {
            panic!("not http")
        };
        assert_eq!(h.token, http::REDACTED);
        assert_eq!(h.max_connections, DEFAULT_MAX_CONNECTIONS as u32);
    }

    #[test]
    fn durations_beyond_their_range_are_refused() {
        let huge = Some(prost_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        });
        let e = duration_field("idle_timeout", &huge, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.message.starts_with("idle_timeout is ")
                && e.message.ends_with("; it must be 1ms to 7days"),
            "{e}"
        );
        let zero = Some(prost_types::Duration::default());
        assert!(duration_field("x", &zero, Duration::from_secs(1)).is_err());
        assert_eq!(
            duration_field("x", &None, Duration::from_secs(3)).unwrap(),
            Duration::from_secs(3)
        );
    }
}
