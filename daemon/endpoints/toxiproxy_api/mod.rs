//! Optional Toxiproxy-compatible HTTP API (`[toxiproxy_api] listen`), so
//! that Toxiproxy client libraries and test set-ups drive netd unchanged.
//!
//! It is a translator onto the supervisor's calls (the ones the gRPC
//! control plane makes), not a second model: a Toxiproxy *proxy* is a netd
//! `proxy` listener made through this API (labelled [`CREATED_BY`]; the
//! config's and netctl's listeners are not its to see or change), a
//! *toxic* is a fault of that listener, with Toxiproxy's attribute names
//! and units converted at this edge (durations in ms or µs, bandwidth
//! `rate` in KB/s of 1000 bytes, sizes in bytes: each attribute's unit is
//! on its fault type's line in `crate::fault::types`). Proxies created here are `ephemeral`, as Toxiproxy keeps no
//! state across restarts (unless `[toxiproxy_api] persist = true`).
//! `enabled: false` is a `down` fault named [`DISABLED`], hidden from the
//! toxics: the listener keeps its port, and clients are reset instead of
//! refused. Netd-only fault types and conditions are not hidden: such a
//! fault is listed with its netd type name, and an update through this API
//! keeps its conditions. What differs from Toxiproxy is listed in the
//! README ("Toxiproxy-compatible API").
//!
//! Least privilege ([`Access`]): each connection's caller is identified
//! once, at accept, as the control socket identifies its callers: a
//! loopback peer by the uid owning its socket ([`crate::control::peer_uid`]), mapped
//! to a role by the same `[control.roles]` rules ([`Policy`]; root, netd's
//! own user and the control socket's group are admin by default). Reading
//! needs `viewer`, changing anything `admin`; a caller that cannot be
//! identified (not on loopback, or its socket not found) may do neither.
//! A request carrying the optional bearer token (`token_file`) is admin
//! from anywhere. Whatever the role, the proxies made here are confined by [`Rules`]:
//! loopback listen addresses on allowed ports, no upstream that is one of
//! netd's own endpoints or listeners, at most `max_proxies` of them. Each
//! mutating call (and each refused one) logs a `netd::audit` line naming
//! the caller: `toxiproxy-api uid:N(user) <peer address>`. Like Toxiproxy,
//! requests from browsers (a `User-Agent` starting `Mozilla/`) are
//! refused, so that a web page cannot drive it from the user's machine.
//!
//! Bounds as for `/metrics` ([`crate::endpoints::metrics::Limits`]: connections,
//! header and idle timeouts), plus [`MAX_BODY_BYTES`] per request body,
//! [`MAX_HEADER_BYTES`] of request head, and [`RESPOND_TIMEOUT`] from the
//! request's headers to its response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use subtle::ConstantTimeEq as _;

use crate::control::auth::{Caller, Role};
use crate::endpoints::http::{self, Limits};
use crate::proto::{self, fault::Kind};
use crate::supervisor::{Supervisor, SupervisorError};

/// Largest request body (a `/populate` list of proxies is the largest).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest request head (request line and headers).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// From a request's headers to its response handed over in full: creating
/// or moving a proxy binds a socket and may resolve its upstream, and a
/// replace waits for the old socket to stop accepting.
pub const RESPOND_TIMEOUT: Duration = Duration::from_secs(30);
/// The fault that stands for `enabled: false`; never listed as a toxic.
pub const DISABLED: &str = "toxiproxy.disabled";
/// The Toxiproxy API version netd answers `/version` with: the release
/// whose HTTP API this module follows, with netd's version as build
/// metadata.
pub const TOXIPROXY_VERSION: &str = "2.12.0";
/// Where a proxy created without `listen` binds (Toxiproxy binds every
/// interface; netd stays on loopback unless told otherwise).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";
/// Label put on the listeners this API starts; the API sees and changes
/// only listeners that carry it.
pub const CREATED_BY: (&str, &str) = ("created-by", "toxiproxy-api");
/// Largest `max_proxies` the config accepts.
pub const MAX_MAX_PROXIES: usize = 4096;
/// How long resolving a `listen` or `upstream` host name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

mod access;
mod proxies;

use proxies::{ProxyInput, proxy_spec};

pub use access::{Access, MIN_TOKEN_BYTES, Rules, Token};

/// Serve the API on `listener` within `limits` until `stop` is cancelled;
/// then connections finish the response in flight and close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: Limits,
    supervisor: Supervisor,
    access: Access,
    stop: CancellationToken,
) {
    let refused = AtomicU64::new(0);
    let access = Arc::new(access);
    let how = http::ConnLimits {
        what: "toxiproxy API",
        limits,
        respond: RESPOND_TIMEOUT,
        max_head: Some(MAX_HEADER_BYTES),
    };
    http::serve(
        listener,
        crate::control::admission::Gate::new(
            "toxiproxy_api",
            crate::control::admission::Limits::for_max(limits.max_connections, false),
        ),
        &stop,
        &refused,
        "toxiproxy API",
        |stream, peer, source, slot| {
            let supervisor = supervisor.clone();
            let access = access.clone();
            let stop = stop.clone();
            async move {
                // The connection's place at the endpoint, until it ends.
                let _slot = slot;
                // The caller is identified once, at accept.
                let caller = access.identify(source, peer).await;
                let api = Arc::new(Api {
                    supervisor,
                    access,
                    caller,
                    peer,
                });
                http::serve_connection(stream, how, &stop, move |req| {
                    let api = api.clone();
                    async move { api.handle(req).await }
                })
                .await;
            }
        },
    )
    .await;
}

/// An error answered the way Toxiproxy does: `{"error": ..., "status": ...}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_body(why: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {why}"))
    }

    fn missing(field: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("missing required field: {field}"),
        )
    }

    fn proxy_not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "proxy not found")
    }

    fn toxic_not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "toxic not found")
    }

    fn body(&self) -> Value {
        json!({"error": self.message, "status": self.status.as_u16()})
    }
}

/// Supervisor errors in Toxiproxy's terms: names that exist are 409, names
/// that do not are 404, what netd refuses as invalid is 400, and the rest
/// (a port in use, shutting down) 500 or 503.
fn from_supervisor(e: SupervisorError) -> ApiError {
    use SupervisorError as E;
    let msg = e.to_string();
    match e {
        E::AlreadyExists(_) => ApiError::new(StatusCode::CONFLICT, "proxy already exists"),
        E::FaultExists(..) => ApiError::new(StatusCode::CONFLICT, "toxic already exists"),
        E::NotFound(_) | E::NoFaults(..) => ApiError::proxy_not_found(),
        E::FaultNotFound(..) => ApiError::toxic_not_found(),
        E::InvalidSpec(_) => ApiError::new(StatusCode::BAD_REQUEST, msg),
        E::Bind(crate::services::BindError::NotAvailable(_)) => {
            ApiError::new(StatusCode::BAD_REQUEST, msg)
        }
        E::ShuttingDown | E::HandingOver => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg),
        E::Bind(_) | E::TooMany(_) | E::Leaving(_) | E::Persist(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
        }
    }
}

/// What a request asks for, by path and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Version,
    Reset,
    Populate,
    ProxyIndex,
    ProxyCreate,
    ProxyShow,
    ProxyUpdate,
    ProxyDelete,
    ToxicIndex,
    ToxicCreate,
    ToxicShow,
    ToxicUpdate,
    ToxicDelete,
}

impl Op {
    /// Whether the call changes anything (and so is audited).
    fn mutating(self) -> bool {
        !matches!(
            self,
            Op::Version | Op::ProxyIndex | Op::ProxyShow | Op::ToxicIndex | Op::ToxicShow
        )
    }

    fn name(self) -> &'static str {
        match self {
            Op::Version => "Version",
            Op::Reset => "ResetState",
            Op::Populate => "Populate",
            Op::ProxyIndex => "ProxyIndex",
            Op::ProxyCreate => "ProxyCreate",
            Op::ProxyShow => "ProxyShow",
            Op::ProxyUpdate => "ProxyUpdate",
            Op::ProxyDelete => "ProxyDelete",
            Op::ToxicIndex => "ToxicIndex",
            Op::ToxicCreate => "ToxicCreate",
            Op::ToxicShow => "ToxicShow",
            Op::ToxicUpdate => "ToxicUpdate",
            Op::ToxicDelete => "ToxicDelete",
        }
    }
}

/// The operation for `method` on `path`, with the proxy and toxic names
/// from the path; Err is 404 (no such path) or 405 (not that method).
fn route<'p>(method: &Method, path: &'p str) -> Result<(Op, &'p str, &'p str), StatusCode> {
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let update = *method == Method::POST || *method == Method::PATCH;
    let (op, proxy, toxic) = match segs.as_slice() {
        ["version"] if *method == Method::GET => (Op::Version, "", ""),
        ["reset"] if *method == Method::POST => (Op::Reset, "", ""),
        ["populate"] if *method == Method::POST => (Op::Populate, "", ""),
        ["proxies"] if *method == Method::GET => (Op::ProxyIndex, "", ""),
        ["proxies"] if *method == Method::POST => (Op::ProxyCreate, "", ""),
        ["proxies", p] if !p.is_empty() && *method == Method::GET => (Op::ProxyShow, *p, ""),
        ["proxies", p] if !p.is_empty() && update => (Op::ProxyUpdate, *p, ""),
        ["proxies", p] if !p.is_empty() && *method == Method::DELETE => (Op::ProxyDelete, *p, ""),
        ["proxies", p, "toxics"] if !p.is_empty() && *method == Method::GET => {
            (Op::ToxicIndex, *p, "")
        }
        ["proxies", p, "toxics"] if !p.is_empty() && *method == Method::POST => {
            (Op::ToxicCreate, *p, "")
        }
        ["proxies", p, "toxics", t] if !p.is_empty() && !t.is_empty() => match *method {
            Method::GET => (Op::ToxicShow, *p, *t),
            Method::DELETE => (Op::ToxicDelete, *p, *t),
            _ if update => (Op::ToxicUpdate, *p, *t),
            _ => return Err(StatusCode::METHOD_NOT_ALLOWED),
        },
        ["version" | "reset" | "populate" | "proxies"]
        | ["proxies", _]
        | ["proxies", _, "toxics"] => return Err(StatusCode::METHOD_NOT_ALLOWED),
        _ => return Err(StatusCode::NOT_FOUND),
    };
    Ok((op, proxy, toxic))
}

/// One connection's view of the API: the supervisor, the rules and who is
/// calling.
struct Api {
    supervisor: Supervisor,
    access: Arc<Access>,
    /// Identified at accept (by uid); a request with the bearer token
    /// acts as admin instead.
    caller: Caller,
    peer: SocketAddr,
}

/// Whether the API made listener `l` (and so may see and change it).
fn api_made(l: &proto::Listener) -> bool {
    l.labels.get(CREATED_BY.0).map(String::as_str) == Some(CREATED_BY.1)
}

type Reply = Result<(StatusCode, Value), ApiError>;

impl Api {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let browser = req
            .headers()
            .get(header::USER_AGENT)
            .is_some_and(|ua| ua.as_bytes().starts_with(b"Mozilla/"));
        if browser {
            return http::plain(StatusCode::FORBIDDEN, "User agent not allowed\n");
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let (op, proxy, toxic) = match route(&method, &path) {
            Ok(r) => r,
            Err(StatusCode::METHOD_NOT_ALLOWED) => {
                return http::plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            }
            Err(_) => return http::plain(StatusCode::NOT_FOUND, "404 page not found\n"),
        };
        let need = if op.mutating() {
            Role::Admin
        } else {
            Role::Viewer
        };
        let caller = match self.authenticate(&req) {
            Ok(c) => c,
            Err(e) => {
                if let Some(suppressed) = crate::control::auth::AUDIT_DENIED.hit() {
                    tracing::warn!(target: "netd::audit", caller = %self.caller.identity, rpc = %format!("Toxiproxy{}", op.name()), listener = ?proxy, error = ?e.message, suppressed, "audit: denied");
                }
                let mut r = http::json(e.status, &e.body());
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        };
        let caller = caller.as_ref().unwrap_or(&self.caller);
        if caller.role < need {
            let mut e = ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} needs the {} role; {} has the {} role",
                    op.name(),
                    need.as_str(),
                    caller.identity,
                    caller.role.as_str()
                ),
            );
            // Without an identity, the token is the way in.
            if caller.role == Role::None && self.access.token.is_some() {
                e.status = StatusCode::UNAUTHORIZED;
            }
            if let Some(suppressed) = crate::control::auth::AUDIT_DENIED.hit() {
                tracing::warn!(target: "netd::audit", caller = %caller.identity, role = caller.role.as_str(), rpc = %format!("Toxiproxy{}", op.name()), listener = ?proxy, suppressed, "audit: denied");
            }
            let mut r = http::json(e.status, &e.body());
            if e.status == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return r;
        }
        let mut named = String::new();
        let reply = match self.body_of(req, op).await {
            Err(e) => Err(e),
            Ok(body) => {
                // The audit line names what a create is for.
                if let Some(n) = body.get("name").and_then(Value::as_str) {
                    named = n.chars().take(64).collect();
                }
                self.call(op, proxy, toxic, body).await
            }
        };
        if op.mutating() {
            let (proxy, toxic) = match op {
                Op::ProxyCreate => (named.as_str(), toxic),
                Op::ToxicCreate => (proxy, named.as_str()),
                _ => (proxy, toxic),
            };
            self.audit(caller, op, proxy, toxic, &reply);
        }
        match reply {
            Ok((status, Value::Null)) => http::empty(status),
            Ok((status, v)) => http::json(status, &v),
            Err(e) => http::json(e.status, &e.body()),
        }
    }

    /// The request body as JSON, for the calls that take one (Null for the
    /// others, whose body is not read).
    async fn body_of(&self, req: Request<Incoming>, op: Op) -> Result<Value, ApiError> {
        if !matches!(
            op,
            Op::Populate | Op::ProxyCreate | Op::ProxyUpdate | Op::ToxicCreate | Op::ToxicUpdate
        ) {
            return Ok(Value::Null);
        }
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        };
        let bytes = match http::read_body(req, MAX_BODY_BYTES).await {
            Ok(b) => b,
            Err(http::BodyError::TooLarge) => return Err(too_large()),
            Err(http::BodyError::Read(e)) => return Err(ApiError::bad_body(e)),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_body("EOF"));
        }
        serde_json::from_slice(&bytes).map_err(ApiError::bad_body)
    }

    async fn call(&self, op: Op, proxy: &str, toxic: &str, body: Value) -> Reply {
        match op {
            Op::Version => Ok((
                StatusCode::OK,
                json!({"version": format!("{TOXIPROXY_VERSION}+netd.{}", env!("CARGO_PKG_VERSION"))}),
            )),
            Op::Reset => self.reset().await,
            Op::Populate => self.populate(body).await,
            Op::ProxyIndex => {
                let mut all = Map::new();
                for l in self.supervisor.list() {
                    if l.kind() == proto::ListenerKind::Proxy && api_made(&l) {
                        let v = self.proxy_json(&l);
                        all.insert(l.name.clone(), v);
                    }
                }
                Ok((StatusCode::OK, Value::Object(all)))
            }
            Op::ProxyCreate => {
                let p = ProxyInput::parse(&body, None)?;
                let l = self.create_proxy(&p).await?;
                Ok((StatusCode::CREATED, self.proxy_json(&l)))
            }
            Op::ProxyShow => {
                let l = self.proxy(proxy)?;
                Ok((StatusCode::OK, self.proxy_json(&l)))
            }
            Op::ProxyUpdate => self.update_proxy(proxy, &body).await,
            Op::ProxyDelete => {
                self.proxy(proxy)?;
                self.supervisor.stop(proxy).await.map_err(from_supervisor)?;
                Ok((StatusCode::NO_CONTENT, Value::Null))
            }
            Op::ToxicIndex => {
                self.proxy(proxy)?;
                Ok((StatusCode::OK, Value::Array(self.toxics(proxy))))
            }
            Op::ToxicCreate => self.create_toxic(proxy, &body).await,
            Op::ToxicShow => {
                self.proxy(proxy)?;
                let f = self.toxic(proxy, toxic)?;
                Ok((StatusCode::OK, toxic_json(&f)))
            }
            Op::ToxicUpdate => self.update_toxic(proxy, toxic, &body).await,
            Op::ToxicDelete => {
                self.proxy(proxy)?;
                if toxic == DISABLED {
                    return Err(ApiError::toxic_not_found());
                }
                self.supervisor
                    .remove_fault(proxy, Some(toxic))
                    .await
                    .map_err(from_supervisor)?;
                Ok((StatusCode::NO_CONTENT, Value::Null))
            }
        }
    }

    /// The caller of a request that presents `Authorization: Bearer`:
    /// admin when it is `[toxiproxy_api] token_file`'s token (compared in
    /// constant time), 401 when it is not or no token is set; None (the
    /// connection's caller) when the request presents none.
    fn authenticate(&self, req: &Request<Incoming>) -> Result<Option<Caller>, ApiError> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token");
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or_else(unauthorized)?;
        let token = self.access.token.as_ref().ok_or_else(unauthorized)?;
        if !bool::from(presented.ct_eq(token.0.as_bytes())) {
            return Err(unauthorized());
        }
        Ok(Some(Caller {
            identity: format!("toxiproxy-api token {}", self.peer),
            role: Role::Admin,
        }))
    }

    /// One `netd::audit` line, as the control plane writes them.
    fn audit(&self, caller: &Caller, op: Op, proxy: &str, toxic: &str, reply: &Reply) {
        let role = caller.role.as_str();
        let caller = &caller.identity;
        let rpc = format!("Toxiproxy{}", op.name());
        match reply {
            Ok((status, _)) => {
                tracing::info!(target: "netd::audit", caller = %caller, role, rpc = %rpc, listener = ?proxy, toxic = ?toxic, status = status.as_u16(), "audit: ok")
            }
            Err(e) => {
                tracing::info!(target: "netd::audit", caller = %caller, role, rpc = %rpc, listener = ?proxy, toxic = ?toxic, status = e.status.as_u16(), error = ?e.message, "audit: refused")
            }
        }
    }

    /// The proxy listener `name` made through this API (404 for no
    /// listener, one of another kind, or one from the config or netctl).
    fn proxy(&self, name: &str) -> Result<proto::Listener, ApiError> {
        match self.supervisor.get(name) {
            Ok(l) if l.kind() == proto::ListenerKind::Proxy && api_made(&l) => Ok(l),
            _ => Err(ApiError::proxy_not_found()),
        }
    }

    /// The faults of proxy `name` (empty if it is gone).
    fn faults(&self, name: &str) -> Vec<proto::Fault> {
        self.supervisor
            .list_faults(name)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| s.fault)
            .collect()
    }

    /// Toxiproxy's toxic list: upstream ones first, then downstream (then
    /// netd's `both`), each in the order they act.
    fn toxics(&self, name: &str) -> Vec<Value> {
        let mut faults: Vec<proto::Fault> = self
            .faults(name)
            .into_iter()
            .filter(|f| f.name != DISABLED)
            .collect();
        faults.sort_by_key(|f| match f.direction() {
            proto::FaultDirection::Upstream => 0,
            proto::FaultDirection::Downstream | proto::FaultDirection::Unspecified => 1,
            proto::FaultDirection::Both => 2,
        });
        faults.iter().map(toxic_json).collect()
    }

    fn toxic(&self, proxy: &str, name: &str) -> Result<proto::Fault, ApiError> {
        if name == DISABLED {
            return Err(ApiError::toxic_not_found());
        }
        self.faults(proxy)
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(ApiError::toxic_not_found)
    }

    fn proxy_json(&self, l: &proto::Listener) -> Value {
        let spec = proxy_spec(l);
        let faults = self.faults(&l.name);
        let disabled = faults.iter().any(|f| f.name == DISABLED);
        json!({
            "name": l.name,
            "listen": if l.bound_addr.is_empty() { spec.listen.clone() } else { l.bound_addr.clone() },
            "upstream": spec.upstreams.join(","),
            "enabled": !disabled,
            "toxics": self.toxics(&l.name),
        })
    }

    async fn create_toxic(&self, proxy: &str, body: &Value) -> Reply {
        self.proxy(proxy)?;
        let obj = object(body)?;
        let stream = opt_str(obj, "stream")?.unwrap_or_else(|| "downstream".into());
        let direction = match stream.to_ascii_lowercase().as_str() {
            "downstream" => proto::FaultDirection::Downstream,
            "upstream" => proto::FaultDirection::Upstream,
            "both" => proto::FaultDirection::Both,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "stream was invalid, can be either upstream or downstream",
                ));
            }
        };
        let ty = opt_str(obj, "type")?.unwrap_or_default();
        let name = opt_str(obj, "name")?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{ty}_{stream}"));
        let Some(mut kind) = new_kind(&ty) else {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid toxic type"));
        };
        if name == DISABLED {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the toxic name {DISABLED} is reserved (it stands for enabled: false)"),
            ));
        }
        // Before the attributes, as Toxiproxy checks.
        if self.faults(proxy).iter().any(|f| f.name == name) {
            return Err(ApiError::new(StatusCode::CONFLICT, "toxic already exists"));
        }
        let toxicity = opt_f64(obj, "toxicity")?.unwrap_or(1.0);
        if let Some(attrs) = opt_object(obj, "attributes")? {
            for (k, v) in attrs {
                set_attr(&mut kind, k, v)?;
            }
        }
        let fault = proto::Fault {
            name,
            direction: direction as i32,
            toxicity: Some(toxicity),
            when: None,
            kind: Some(kind),
        };
        let s = self
            .supervisor
            .add_fault(proxy, fault)
            .await
            .map_err(from_supervisor)?;
        Ok((StatusCode::OK, toxic_json(&s.fault.unwrap_or_default())))
    }

    /// Merge the given attributes (and toxicity) into the toxic, as
    /// Toxiproxy does; its name, type, stream and netd conditions stay.
    async fn update_toxic(&self, proxy: &str, name: &str, body: &Value) -> Reply {
        self.proxy(proxy)?;
        let mut fault = self.toxic(proxy, name)?;
        let obj = object(body)?;
        if let Some(t) = opt_f64(obj, "toxicity")? {
            fault.toxicity = Some(t);
        }
        if let (Some(attrs), Some(kind)) = (opt_object(obj, "attributes")?, fault.kind.as_mut()) {
            for (k, v) in attrs {
                set_attr(kind, k, v)?;
            }
        }
        let s = self
            .supervisor
            .update_fault(proxy, fault)
            .await
            .map_err(from_supervisor)?;
        Ok((StatusCode::OK, toxic_json(&s.fault.unwrap_or_default())))
    }
}

fn object(v: &Value) -> Result<&Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::bad_body("expected a JSON object"))
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_body(format!("{key} must be a string"))),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad_body(format!("{key} must be true or false"))),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::bad_body(format!("{key} must be a number"))),
    }
}

fn opt_object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(ApiError::bad_body(format!("{key} must be an object"))),
    }
}

/// A fault kind for a Toxiproxy toxic type, with Toxiproxy's defaults
/// (every attribute 0; a rate of 0 is no limit). Only the types the list
/// (`crate::fault::types`) offers to Toxiproxy; netd's own (`down`, the
/// UDP ones) are not.
fn new_kind(ty: &str) -> Option<Kind> {
    use crate::fault::types::{self, Toxiproxy, Val};
    let def = types::by_name(ty).filter(|d| d.toxiproxy)?;
    let mut kind = types::default_kind(ty)?;
    for key in def.keys {
        if key.toxiproxy == Some(Toxiproxy::KiloBytesPerSec) {
            types::set(&mut kind, key.name, Val::Int(crate::fault::MAX_RATE));
        }
    }
    Some(kind)
}

fn millis(ms: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn micros(us: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1000) as i32,
    })
}

/// A duration in whole units of `unit_nanos`, rounded down (0 if unset or
/// negative).
fn whole(d: &Option<prost_types::Duration>, unit_nanos: i128) -> i64 {
    let Some(d) = d else { return 0 };
    let nanos = i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos);
    (nanos.max(0) / unit_nanos).min(i128::from(i64::MAX)) as i64
}

fn ms_of(d: &Option<prost_types::Duration>) -> i64 {
    whole(d, 1_000_000)
}

fn us_of(d: &Option<prost_types::Duration>) -> i64 {
    whole(d, 1_000)
}

/// Set one attribute of `kind` from Toxiproxy's JSON (its name and unit).
/// Unknown names are ignored, as Toxiproxy's JSON decoding does; a value
/// must be a whole number, 0 or more.
fn set_attr(kind: &mut Kind, key: &str, v: &Value) -> Result<(), ApiError> {
    use crate::fault::types::{self, Toxiproxy, Val};
    if v.is_null() {
        return Ok(());
    }
    let n = match v.as_u64() {
        Some(n) => n,
        None if v.as_i64().is_some() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("attribute {key} must not be negative"),
            ));
        }
        None => {
            return Err(ApiError::bad_body(format!(
                "attribute {key} must be a whole number"
            )));
        }
    };
    let too_large = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("attribute {key} is too large"),
        )
    };
    let def = types::def_of(kind);
    let Some(unit) = def
        .key(key)
        .and_then(|k| k.toxiproxy)
        .filter(|_| def.toxiproxy)
    else {
        return Ok(());
    };
    let val = match unit {
        Toxiproxy::Millis => Val::Dur(millis(n)),
        Toxiproxy::Micros => Val::Dur(micros(n)),
        // Toxiproxy's 0 is "no limit": netd's largest rate, shown as 0.
        Toxiproxy::KiloBytesPerSec if n == 0 => Val::Int(crate::fault::MAX_RATE),
        Toxiproxy::KiloBytesPerSec => Val::Int(n.checked_mul(1000).ok_or_else(too_large)?),
        Toxiproxy::Whole32 => Val::Int(u32::try_from(n).map_err(|_| too_large())?.into()),
        Toxiproxy::Whole => Val::Int(n),
    };
    types::set(kind, key, val);
    Ok(())
}

/// A fault's attributes in Toxiproxy's names and units.
fn attributes(kind: Option<&Kind>) -> Value {
    use crate::fault::types::{self, Toxiproxy, Val};
    let mut out = Map::new();
    let Some(kind) = kind.filter(|k| types::def_of(k).toxiproxy) else {
        return Value::Object(out);
    };
    for key in types::def_of(kind).keys {
        let (Some(unit), Some(v)) = (key.toxiproxy, types::get(kind, key.name)) else {
            continue;
        };
        let n = match (unit, v) {
            (Toxiproxy::Millis, Val::Dur(d)) => json!(ms_of(&d)),
            (Toxiproxy::Micros, Val::Dur(d)) => json!(us_of(&d)),
            (Toxiproxy::KiloBytesPerSec, Val::Int(r)) if r >= crate::fault::MAX_RATE => json!(0),
            (Toxiproxy::KiloBytesPerSec, Val::Int(r)) => json!(r / 1000),
            (Toxiproxy::Whole32 | Toxiproxy::Whole, Val::Int(n)) => json!(n),
            _ => continue,
        };
        out.insert(key.name.into(), n);
    }
    Value::Object(out)
}

/// A fault as a Toxiproxy toxic.
fn toxic_json(f: &proto::Fault) -> Value {
    let stream = match f.direction() {
        proto::FaultDirection::Upstream => "upstream",
        proto::FaultDirection::Downstream | proto::FaultDirection::Unspecified => "downstream",
        proto::FaultDirection::Both => "both",
    };
    json!({
        "attributes": attributes(f.kind.as_ref()),
        "name": f.name,
        "type": crate::fault::type_of(f),
        "stream": stream,
        "toxicity": f.toxicity.unwrap_or(1.0),
    })
}

#[cfg(test)]
mod tests;
