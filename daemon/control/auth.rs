//! Who is calling the control plane, and what they may do.
//!
//! The caller is learned once per connection, at accept: on the Unix socket
//! from the peer's credentials (`SO_PEERCRED` for uid and gid,
//! `SO_PEERGROUPS` for its supplementary groups), on TLS from the client
//! certificate (subject common name, DNS and URI SANs). [`Policy`] maps that
//! identity to a [`Role`] using `[control.roles]`.
//!
//! What each RPC needs is one table, [`required_role`], enforced by
//! [`AuthLayer`] in front of every service (Control, health, reflection).
//! A method missing from the table needs `admin`, so a new RPC cannot be
//! left open by accident. The layer puts the [`Caller`] into the request's
//! extensions; handlers log mutations with it (target `netd::audit`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::control::conn::ConnInfo;

/// What a caller may do. Ordered: each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Known to the transport but granted nothing (only health checks).
    None,
    /// Read-only: list, status, stats, events, packet summaries.
    Viewer,
    /// Everything, including starting and stopping listeners.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

/// The role an RPC needs, by gRPC path. The single place that decides it.
pub fn required_role(path: &str) -> Role {
    match path {
        "/netd.v1.Control/ListListeners"
        | "/netd.v1.Control/GetListener"
        | "/netd.v1.Control/GetStats"
        | "/netd.v1.Control/WatchStats"
        | "/netd.v1.Control/WatchEvents"
        | "/netd.v1.Control/WatchPackets"
        | "/netd.v1.Control/ListFaults"
        | "/netd.v1.Control/GetCaller" => Role::Viewer,
        "/netd.v1.Control/StartListener"
        | "/netd.v1.Control/StopListener"
        | "/netd.v1.Control/UpdateListener"
        | "/netd.v1.Control/DrainListener"
        | "/netd.v1.Control/ApplyListeners"
        | "/netd.v1.Control/AddFault"
        | "/netd.v1.Control/UpdateFault"
        | "/netd.v1.Control/RemoveFault"
        | "/netd.v1.Control/Reload" => Role::Admin,
        p if p.starts_with("/grpc.health.v1.Health/") => Role::None,
        p if p.starts_with("/grpc.reflection.v1.ServerReflection/")
            || p.starts_with("/grpc.reflection.v1alpha.ServerReflection/") =>
        {
            Role::Viewer
        }
        // Anything not listed above, including RPCs added later.
        _ => Role::Admin,
    }
}

/// One entry of a `[control.roles]` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `uid:0` or `uid:alice`: a Unix peer with this user id.
    Uid(u32),
    /// `group:netd` or `group:0`: a Unix peer in this group (primary or
    /// supplementary).
    Gid(u32),
    /// Anything else: a client certificate whose common name, DNS SAN or
    /// URI SAN is exactly this.
    Name(String),
}

impl Principal {
    /// Parse one entry; user and group names are looked up now, so a typo
    /// is a config error rather than a silent non-match.
    pub fn parse(s: &str) -> Result<Principal, String> {
        if let Some(u) = s.strip_prefix("uid:") {
            return match u.parse::<u32>() {
                Ok(n) => Ok(Principal::Uid(n)),
                Err(_) => crate::sys::user_id(u)
                    .map(Principal::Uid)
                    .ok_or_else(|| format!("'{s}': no user named '{u}' on this host")),
            };
        }
        if let Some(g) = s.strip_prefix("group:") {
            return match g.parse::<u32>() {
                Ok(n) => Ok(Principal::Gid(n)),
                Err(_) => crate::sys::group_id(g)
                    .map(Principal::Gid)
                    .ok_or_else(|| format!("'{s}': no group named '{g}' on this host")),
            };
        }
        if s.is_empty() || s.len() > 255 || s.chars().any(char::is_control) {
            return Err(format!(
                "{s:?} is not an identity: use uid:N, group:NAME or a certificate name (1-255 printable characters)"
            ));
        }
        Ok(Principal::Name(s.to_string()))
    }
}

/// `[control.roles]`: who is admin, who is viewer. `None` means the default.
#[derive(Debug, Clone, Default)]
pub struct RoleConfig {
    /// Default: root, netd's own user and the control socket's group.
    pub admin: Option<Vec<Principal>>,
    /// Default: every other authenticated caller.
    pub viewer: Option<Vec<Principal>>,
}

impl RoleConfig {
    pub fn parse(
        admin: Option<Vec<String>>,
        viewer: Option<Vec<String>>,
    ) -> Result<RoleConfig, String> {
        let list = |what: &str, v: Option<Vec<String>>| -> Result<_, String> {
            v.map(|v| {
                v.iter()
                    .map(|s| Principal::parse(s).map_err(|e| format!("roles.{what}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
        };
        Ok(RoleConfig {
            admin: list("admin", admin)?,
            viewer: list("viewer", viewer)?,
        })
    }
}

/// The peer of a control connection, as the transport knows it.
#[derive(Debug, Clone)]
pub enum Peer {
    Unix {
        uid: u32,
        gid: u32,
        /// Supplementary groups at connect time.
        groups: Vec<u32>,
        pid: Option<i32>,
    },
    Tcp(SocketAddr),
}

/// An authenticated caller: a name for logs and the role it was given.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: String,
    pub role: Role,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.identity, self.role.as_str())
    }
}

/// Maps identities to roles.
#[derive(Debug)]
pub struct Policy {
    roles: RoleConfig,
    /// The control socket's group: admin by default.
    socket_gid: Option<u32>,
    own_uid: u32,
    /// Plain TCP was allowed with `insecure`: whoever connects is admin.
    insecure_tcp: bool,
}

impl Policy {
    /// Whether plain TCP was allowed (`insecure`): its loopback callers
    /// are then identified by the uid owning their socket.
    pub fn insecure_tcp(&self) -> bool {
        self.insecure_tcp
    }

    pub fn new(roles: RoleConfig, socket_gid: Option<u32>, insecure_tcp: bool) -> Policy {
        Policy {
            roles,
            socket_gid,
            own_uid: crate::sys::euid(),
            insecure_tcp,
        }
    }

    /// The caller behind `peer`, with the client certificate chain when the
    /// connection is TLS (`tls` = true).
    pub fn caller(&self, peer: &Peer, tls: bool, certs: Option<&[Vec<u8>]>) -> Caller {
        match peer {
            Peer::Unix {
                uid,
                gid,
                groups,
                pid,
            } => {
                let in_group = |g: u32| *gid == g || groups.contains(&g);
                let matches = |p: &Principal| match p {
                    Principal::Uid(u) => u == uid,
                    Principal::Gid(g) => in_group(*g),
                    Principal::Name(_) => false,
                };
                let admin = match &self.roles.admin {
                    Some(list) => list.iter().any(matches),
                    None => {
                        *uid == 0 || *uid == self.own_uid || self.socket_gid.is_some_and(in_group)
                    }
                };
                let identity = match pid {
                    Some(pid) => format!("uid:{uid} pid:{pid}"),
                    None => format!("uid:{uid}"),
                };
                Caller {
                    identity,
                    role: self.role_for(admin, matches),
                }
            }
            Peer::Tcp(addr) if !tls => Caller {
                identity: format!("insecure-tcp:{addr}"),
                role: if self.insecure_tcp {
                    Role::Admin
                } else {
                    Role::None
                },
            },
            Peer::Tcp(addr) => {
                let names = certs
                    .and_then(|c| c.first())
                    .map(|leaf| cert_names(leaf))
                    .unwrap_or_default();
                let Some(first) = names.first() else {
                    // TLS without a client certificate (no client_ca set).
                    return Caller {
                        identity: format!("tls:{addr}"),
                        role: self.role_for(false, |_| false),
                    };
                };
                let matches = |p: &Principal| match p {
                    Principal::Name(n) => names.iter().any(|x| x == n),
                    _ => false,
                };
                let admin = self
                    .roles
                    .admin
                    .as_ref()
                    .is_some_and(|l| l.iter().any(matches));
                Caller {
                    identity: format!("cert:{first}"),
                    role: self.role_for(admin, matches),
                }
            }
        }
    }

    fn role_for(&self, admin: bool, matches: impl Fn(&Principal) -> bool) -> Role {
        if admin {
            Role::Admin
        } else {
            match &self.roles.viewer {
                None => Role::Viewer,
                Some(list) if list.iter().any(matches) => Role::Viewer,
                Some(_) => Role::None,
            }
        }
    }
}

/// Common name first, then DNS and URI SANs, of a DER certificate. Empty if
/// it does not parse (rustls has already verified it, so that means a
/// certificate without names).
fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::URI(u) => names.push(u.to_string()),
                _ => {}
            }
        }
    }
    names.retain(|n| !n.is_empty() && !n.chars().any(char::is_control));
    names
}

/// The uid of the system account `netd` (the systemd unit's `User=`), if
/// the host has one. netctl trusts a socket served by it.
pub fn netd_system_uid() -> Option<u32> {
    crate::sys::user_id("netd")
}

/// Refused calls are audited, but a caller who repeats one at will must
/// not fill the disk: a few lines per interval, then one with the number
/// left out (`suppressed`). Shared by every endpoint that audits denials.
pub static AUDIT_DENIED: crate::util::warn_limit::RateLimitedWarn =
    crate::util::warn_limit::RateLimitedWarn::with_burst(
        crate::util::warn_limit::DEFAULT_INTERVAL,
        20,
    );

/// Tower layer enforcing [`required_role`] on every call, with the caller
/// each connection was admitted as ([`ConnInfo::caller`]).
#[derive(Debug, Clone, Default)]
pub struct AuthLayer;

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
}

type Resp = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let info = req.extensions().get::<ConnInfo>().cloned();
        let path = req.uri().path().to_string();
        let need = required_role(&path);
        let caller = match &info {
            Some(i) => i.caller.clone(),
            None => Caller {
                identity: "unknown".into(),
                role: Role::None,
            },
        };
        if caller.role < need {
            if let Some(suppressed) = AUDIT_DENIED.hit() {
                tracing::warn!(target: "netd::audit", caller = %caller.identity, role = caller.role.as_str(), rpc = %path, suppressed, "audit: denied");
            }
            let status = tonic::Status::permission_denied(format!(
                "{} needs the {} role; {} has the {} role",
                path.rsplit('/').next().unwrap_or(&path),
                need.as_str(),
                caller.identity,
                caller.role.as_str()
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let guard = info.as_ref().map(|i| i.state.stream_started());
        req.extensions_mut().insert(caller);
        // The service polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(match guard {
                None => resp,
                Some(g) => resp
                    .map(|b| tonic::body::Body::new(crate::control::conn::CountedBody::new(b, g))),
            })
        })
    }
}

/// The caller of a request that went through [`AuthLayer`].
pub fn caller_of<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller {
        identity: "unknown".into(),
        role: Role::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_methods_need_admin() {
        assert_eq!(
            required_role("/netd.v1.Control/ListListeners"),
            Role::Viewer
        );
        assert_eq!(required_role("/netd.v1.Control/StartListener"), Role::Admin);
        assert_eq!(required_role("/netd.v1.Control/Reload"), Role::Admin);
        assert_eq!(required_role("/netd.v1.Control/SomethingNew"), Role::Admin);
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), Role::None);
        assert_eq!(required_role("/other.Service/Call"), Role::Admin);
    }

    #[test]
    fn unix_defaults_and_lists() {
        let p = Policy::new(RoleConfig::default(), Some(4242), false);
        let unix = |uid, gid, groups: Vec<u32>| Peer::Unix {
            uid,
            gid,
            groups,
            pid: None,
        };
        assert_eq!(p.caller(&unix(0, 0, vec![]), false, None).role, Role::Admin);
        assert_eq!(
            p.caller(&unix(1000, 100, vec![4242]), false, None).role,
            Role::Admin
        );
        assert_eq!(
            p.caller(&unix(1000, 100, vec![5]), false, None).role,
            Role::Viewer
        );
        let roles = RoleConfig::parse(
            Some(vec!["uid:1000".into(), "ops".into()]),
            Some(vec!["group:7".into()]),
        )
        .unwrap();
        let p = Policy::new(roles, Some(4242), false);
        assert_eq!(
            p.caller(&unix(1000, 1, vec![]), false, None).role,
            Role::Admin
        );
        assert_eq!(p.caller(&unix(0, 0, vec![]), false, None).role, Role::None);
        assert_eq!(
            p.caller(&unix(5, 5, vec![7]), false, None).role,
            Role::Viewer
        );
        let tcp = Peer::Tcp("127.0.0.1:1".parse().unwrap());
        assert_eq!(p.caller(&tcp, false, None).role, Role::None);
        assert!(Principal::parse("uid:no-such-user-here").is_err());
        assert!(Principal::parse("bad\u{1b}name").is_err());
    }
}
