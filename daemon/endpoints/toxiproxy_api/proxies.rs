//! The proxy calls of the Toxiproxy API: create, enable/disable, update,
//! populate and reset, with the checks on what a proxy made here may
//! listen on and forward to.

use std::net::{IpAddr, SocketAddr};

use hyper::StatusCode;
use serde_json::{Value, json};

use super::*;

impl Api {
    /// Start a proxy listener for `p` (ephemeral unless `persist`),
    /// disabled if asked, within the [`Rules`].
    pub(super) async fn create_proxy(&self, p: &ProxyInput) -> Result<proto::Listener, ApiError> {
        if self.supervisor.get(&p.name).is_ok() {
            return Err(ApiError::new(StatusCode::CONFLICT, "proxy already exists"));
        }
        // Checks and start under one lock, so that two proxies made at
        // once cannot each pass the other's check (a loop).
        let _one_at_a_time = self.access.creating.lock().await;
        self.check_listen(&p.listen).await?;
        self.check_upstream(&p.upstream).await?;
        let max = self.access.rules.max_proxies;
        let made = self
            .supervisor
            .list()
            .iter()
            .filter(|l| api_made(l))
            .count();
        if made >= max {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{made} proxies made through this API exist and [toxiproxy_api] max_proxies is {max}: delete one first"
                ),
            ));
        }
        let spec = proto::ListenerSpec {
            kind: Some(proto::listener_spec::Kind::Proxy(proto::ProxySpec {
                listen: p.listen.clone(),
                upstreams: vec![p.upstream.clone()],
                ..Default::default()
            })),
        };
        let labels = [(CREATED_BY.0.to_string(), CREATED_BY.1.to_string())].into();
        let l = self
            .supervisor
            .start(&p.name, spec, labels, !self.access.rules.persist)
            .await
            .map_err(from_supervisor)?;
        if !p.enabled {
            self.set_enabled(&p.name, false).await?;
        }
        Ok(l)
    }

    /// Add or remove the [`DISABLED`] fault.
    pub(super) async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), ApiError> {
        let disabled = self.faults(name).iter().any(|f| f.name == DISABLED);
        if enabled && disabled {
            self.supervisor
                .remove_fault(name, Some(DISABLED))
                .await
                .map_err(from_supervisor)?;
        } else if !enabled && !disabled {
            let down = proto::Fault {
                name: DISABLED.to_string(),
                direction: proto::FaultDirection::Both as i32,
                kind: Some(Kind::Down(proto::DownFault {})),
                ..Default::default()
            };
            self.supervisor
                .add_fault(name, down)
                .await
                .map_err(from_supervisor)?;
        }
        Ok(())
    }

    /// A proxy made here listens on loopback, on port 0 or an allowed one,
    /// and not where a netd proxy forwards to (which would make a loop of
    /// two proxies, each forwarding to the other, or put it between a
    /// config proxy and its upstream).
    pub(super) async fn check_listen(&self, listen: &str) -> Result<(), ApiError> {
        let allowed = &self.access.rules.allowed_ports;
        let addrs = resolve("listen", listen).await?;
        let upstreams = self.proxy_upstreams().await;
        for a in addrs {
            if let Some((_, name)) = upstreams.iter().find(|(t, _)| reaches(*t, a, &[])) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "listen {listen} is the upstream of netd listener '{name}': proxies made through the Toxiproxy API cannot listen where netd forwards to"
                    ),
                ));
            }
            if !a.ip().to_canonical().is_loopback() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "listen {listen} is not a loopback address: proxies made through the Toxiproxy API listen on loopback only"
                    ),
                ));
            }
            if a.port() != 0 && !allowed.contains(&a.port()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "listen {listen}: port {} is outside [toxiproxy_api] allowed_ports ({}-{})",
                        a.port(),
                        allowed.start(),
                        allowed.end()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where netd's TCP proxies forward to, with each one's name: upstreams
    /// given as addresses, and those given as host names by proxies made
    /// here (resolved at once, each within [`RESOLVE_TIMEOUT`]; a name
    /// that does not resolve is left out).
    pub(super) async fn proxy_upstreams(&self) -> Vec<(SocketAddr, String)> {
        let mut found = Vec::new();
        let mut names = Vec::new();
        for l in self.supervisor.list() {
            if l.kind() != proto::ListenerKind::Proxy {
                continue;
            }
            let made_here = api_made(&l);
            for u in proxy_spec(&l).upstreams {
                match u.trim().parse::<SocketAddr>() {
                    Ok(a) => found.push((a, l.name.clone())),
                    Err(_) if made_here => names.push((u, l.name.clone())),
                    Err(_) => {}
                }
            }
        }
        let resolved =
            futures_util::future::join_all(names.iter().map(|(u, _)| resolve("upstream", u))).await;
        for ((_, name), r) in names.iter().zip(resolved) {
            for a in r.unwrap_or_default() {
                found.push((a, name.clone()));
            }
        }
        found
    }

    /// A proxy made here never forwards to netd itself: not to one of its
    /// own endpoints (control, metrics, health, this API), nor to the
    /// address of any of its TCP listeners (which would relay to them or
    /// loop).
    pub(super) async fn check_upstream(&self, upstream: &str) -> Result<(), ApiError> {
        let targets = resolve("upstream", upstream).await?;
        let mut own: Vec<(SocketAddr, String)> = self
            .access
            .own_endpoints
            .iter()
            .map(|a| (*a, "one of netd's own endpoints".to_string()))
            .collect();
        for l in self.supervisor.list() {
            let udp = crate::services::KINDS
                .iter()
                .any(|k| k.kind == l.kind() && k.transport == crate::services::Transport::Udp);
            if udp {
                continue;
            }
            if let Ok(a) = l.bound_addr.parse::<SocketAddr>() {
                own.push((a, format!("the address of netd listener '{}'", l.name)));
            }
        }
        // The host's addresses, only when a wildcard bind needs them.
        let host_ips = if own.iter().any(|(a, _)| a.ip().is_unspecified()) {
            tokio::task::spawn_blocking(host_ips)
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        for t in &targets {
            if let Some((_, what)) = own.iter().find(|(a, _)| reaches(*t, *a, &host_ips)) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "upstream {upstream} is {what}: proxies made through the Toxiproxy API cannot forward to netd itself"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) async fn update_proxy(&self, name: &str, body: &Value) -> Reply {
        let l = self.proxy(name)?;
        let obj = object(body)?;
        let listen = opt_str(obj, "listen")?;
        let upstream = opt_str(obj, "upstream")?;
        let enabled = opt_bool(obj, "enabled")?;
        let cur = proxy_spec(&l);
        let mut new = cur.clone();
        let _one_at_a_time = self.access.creating.lock().await;
        if let Some(listen) = listen.filter(|a| *a != cur.listen && *a != l.bound_addr) {
            self.check_listen(&listen).await?;
            new.listen = listen;
        }
        if let Some(up) = upstream.filter(|u| *u != cur.upstreams.join(",")) {
            self.check_upstream(&up).await?;
            new.upstreams = vec![up];
        }
        if new != cur {
            let spec = proto::ListenerSpec {
                kind: Some(proto::listener_spec::Kind::Proxy(new)),
            };
            self.supervisor
                .update(name, spec, None)
                .await
                .map_err(from_supervisor)?;
        }
        if let Some(enabled) = enabled {
            self.set_enabled(name, enabled).await?;
        }
        let l = self.proxy(name)?;
        Ok((StatusCode::OK, self.proxy_json(&l)))
    }

    /// Create or replace each proxy of a list. One that exists with the
    /// same listen address and upstream is kept as it is (toxics too); one
    /// that differs is stopped and created anew, as Toxiproxy does. Every
    /// entry is checked before anything changes; an error part-way answers
    /// with the error and the proxies done so far.
    pub(super) async fn populate(&self, body: Value) -> Reply {
        let Value::Array(items) = body else {
            return Err(ApiError::bad_body("expected a JSON array of proxies"));
        };
        let mut inputs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            inputs.push(ProxyInput::parse(item, Some(i + 1))?);
        }
        let mut done: Vec<Value> = Vec::new();
        for p in &inputs {
            let r = self.populate_one(p).await;
            match r {
                Ok(l) => done.push(self.proxy_json(&l)),
                Err(e) => {
                    let mut v = e.body();
                    v["proxies"] = Value::Array(done);
                    return Ok((e.status, v));
                }
            }
        }
        Ok((StatusCode::CREATED, json!({"proxies": done})))
    }

    pub(super) async fn populate_one(&self, p: &ProxyInput) -> Result<proto::Listener, ApiError> {
        match self.supervisor.get(&p.name) {
            Err(_) => self.create_proxy(p).await,
            // Not this API's to replace: another kind, or the config's or
            // netctl's.
            Ok(l) if l.kind() != proto::ListenerKind::Proxy || !api_made(&l) => {
                Err(ApiError::new(StatusCode::CONFLICT, "proxy already exists"))
            }
            Ok(l) => {
                let cur = proxy_spec(&l);
                let same = (p.listen == cur.listen || p.listen == l.bound_addr)
                    && cur.upstreams == [p.upstream.clone()];
                if same {
                    self.set_enabled(&p.name, p.enabled).await?;
                    return self.proxy(&p.name);
                }
                self.supervisor
                    .stop(&p.name)
                    .await
                    .map_err(from_supervisor)?;
                self.create_proxy(p).await
            }
        }
    }

    /// Enable every proxy made here and remove its toxics.
    pub(super) async fn reset(&self) -> Reply {
        for l in self.supervisor.list() {
            if l.kind() != proto::ListenerKind::Proxy
                || !api_made(&l)
                || self.faults(&l.name).is_empty()
            {
                continue;
            }
            match self.supervisor.remove_fault(&l.name, None).await {
                Ok(_) | Err(SupervisorError::NotFound(_) | SupervisorError::Leaving(_)) => {}
                Err(e) => return Err(from_supervisor(e)),
            }
        }
        Ok((StatusCode::NO_CONTENT, Value::Null))
    }
}

/// The addresses `addr` (`host:port`) stands for, resolved off the
/// runtime within [`RESOLVE_TIMEOUT`]; `what` names the field in errors.
async fn resolve(what: &str, addr: &str) -> Result<Vec<SocketAddr>, ApiError> {
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, format!("{what} {addr}: {why}"));
    if let Ok(a) = addr.trim().parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr.trim()))
        .await
        .map_err(|_| bad("resolving the host name timed out".into()))?
        .map_err(|e| bad(format!("cannot resolve the host name: {e}")))?;
    // Bounded: a name with more addresses than this is refused.
    let addrs: Vec<SocketAddr> = found.take(65).collect();
    if addrs.is_empty() || addrs.len() > 64 {
        return Err(bad(format!(
            "the host name resolved to {} addresses (1 to 64 taken)",
            addrs.len()
        )));
    }
    Ok(addrs)
}

/// Whether connecting to `target` reaches a TCP socket bound at `bound`:
/// the same port, and the same address, or `bound` is a wildcard and
/// `target` one of this host's addresses. Connecting to 0.0.0.0 (::)
/// reaches loopback.
pub(super) fn reaches(target: SocketAddr, bound: SocketAddr, host_ips: &[IpAddr]) -> bool {
    if target.port() != bound.port() || target.port() == 0 {
        return false;
    }
    let local = |ip: IpAddr| match ip {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let t = local(target.ip().to_canonical());
    let b = bound.ip().to_canonical();
    if b.is_unspecified() {
        // A dual-stack wildcard takes IPv4 too: any local target matches.
        t.is_loopback() || host_ips.contains(&t)
    } else {
        t == b
    }
}

/// The addresses of the host's interfaces (empty if they cannot be listed:
/// loopback is matched anyway).
fn host_ips() -> Vec<IpAddr> {
    pnet::datalink::interfaces()
        .into_iter()
        .flat_map(|i| i.ips.into_iter().map(|n| n.ip().to_canonical()))
        .collect()
}

/// A proxy as `POST /proxies` and `/populate` give it.
#[derive(Debug)]
pub(super) struct ProxyInput {
    name: String,
    listen: String,
    upstream: String,
    enabled: bool,
}

impl ProxyInput {
    /// `index`: its place in a `/populate` list (1-based), for errors.
    pub(super) fn parse(v: &Value, index: Option<usize>) -> Result<ProxyInput, ApiError> {
        let obj = object(v)?;
        let at = |field: &str| match index {
            Some(i) => format!("{field} at proxy {i}"),
            None => field.to_string(),
        };
        let name = opt_str(obj, "name")?.unwrap_or_default();
        if name.is_empty() {
            return Err(ApiError::missing(&at("name")));
        }
        let upstream = opt_str(obj, "upstream")?.unwrap_or_default();
        if upstream.is_empty() {
            return Err(ApiError::missing(&at("upstream")));
        }
        let listen = opt_str(obj, "listen")?
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        Ok(ProxyInput {
            name,
            listen,
            upstream,
            enabled: opt_bool(obj, "enabled")?.unwrap_or(true),
        })
    }
}

/// The proxy spec of a proxy listener, as shown (faults included).
pub(super) fn proxy_spec(l: &proto::Listener) -> proto::ProxySpec {
    match l.spec.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(proto::listener_spec::Kind::Proxy(p)) => p.clone(),
        _ => proto::ProxySpec::default(),
    }
}
