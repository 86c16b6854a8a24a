//! What a compiled fault does: a [`TcpAction`] for a proxy's byte streams
//! (`services/proxy/toxic.rs`), a [`UdpAction`] for a udp-proxy's
//! datagrams (`services/udp_proxy/impair.rs`) or an [`HttpAction`] for an
//! http-proxy's requests (`services/http_proxy/fault.rs`), with its attributes checked
//! and converted by its type's module (`types/`). Each engine matches only
//! its own enum.

use std::time::Duration;

/// What a TCP fault (toxic) does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TcpAction {
    Latency {
        latency: Duration,
        jitter: Duration,
    },
    Bandwidth {
        rate: u64,
    },
    SlowClose {
        delay: Duration,
    },
    /// None: never close.
    Timeout {
        timeout: Option<Duration>,
    },
    ResetPeer {
        timeout: Duration,
    },
    Slicer {
        average: u32,
        variation: u32,
        delay: Duration,
    },
    LimitData {
        bytes: u64,
    },
    Down,
}

/// What a UDP fault (impairment) does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UdpAction {
    Latency {
        latency: Duration,
        jitter: Duration,
    },
    Bandwidth {
        rate: u64,
    },
    Loss {
        probability: f64,
        /// Gilbert-Elliott: (enter, exit, bad loss, good loss).
        burst: Option<(f64, f64, f64, f64)>,
    },
    Duplicate {
        probability: f64,
    },
    Reorder {
        probability: f64,
        gap: u32,
        max_hold: Duration,
    },
    Corrupt {
        probability: f64,
    },
    Down,
}

/// Which message of an exchange an HTTP fault changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
}

/// What an HTTP fault does to a request or its response.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpAction {
    /// Answer without forwarding: an HTTP status with `body` (empty: a
    /// short JSON error), or a gRPC status (HTTP 200, trailers-only) with
    /// `body` as its grpc-message.
    Abort {
        http_status: Option<http::StatusCode>,
        grpc_status: Option<u32>,
        body: bytes::Bytes,
    },
    Delay {
        delay: Duration,
        jitter: Duration,
        phase: Phase,
    },
    /// The response body at `rate` bytes per second.
    SlowBody { rate: u64 },
    /// The response body fails after `after_bytes`.
    Reset { after_bytes: u64 },
    Header {
        phase: Phase,
        set: Vec<(http::HeaderName, http::HeaderValue)>,
        add: Vec<(http::HeaderName, http::HeaderValue)>,
        remove: Vec<http::HeaderName>,
    },
    ReplaceBody {
        body: bytes::Bytes,
        content_type: Option<http::HeaderValue>,
    },
}

/// A type's action for one transport.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionOn {
    Tcp(TcpAction),
    Udp(UdpAction),
    Http(HttpAction),
}

/// What a fault does, with its type's name.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub(super) ty: &'static str,
    pub(super) on: ActionOn,
}

impl Action {
    /// The type's name, as in `--type` and the Toxiproxy API.
    pub fn type_name(&self) -> &'static str {
        self.ty
    }

    /// The action on a proxy's streams (None on a udp-proxy's fault).
    pub fn tcp(&self) -> Option<&TcpAction> {
        match &self.on {
            ActionOn::Tcp(a) => Some(a),
            ActionOn::Udp(_) | ActionOn::Http(_) => None,
        }
    }

    /// The action on a udp-proxy's datagrams (None on a proxy's fault).
    pub fn udp(&self) -> Option<&UdpAction> {
        match &self.on {
            ActionOn::Udp(a) => Some(a),
            ActionOn::Tcp(_) | ActionOn::Http(_) => None,
        }
    }

    /// The action on an http-proxy's requests (None on a byte or
    /// datagram fault).
    pub fn http(&self) -> Option<&HttpAction> {
        match &self.on {
            ActionOn::Http(a) => Some(a),
            ActionOn::Tcp(_) | ActionOn::Udp(_) => None,
        }
    }
}
