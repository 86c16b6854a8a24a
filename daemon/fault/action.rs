//! What a compiled fault does: a [`TcpAction`] for a proxy's byte streams
//! (`services/proxy/toxic.rs`) or a [`UdpAction`] for a udp-proxy's
//! datagrams (`services/udp_proxy/impair.rs`), with its attributes checked
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

/// A type's action for one transport.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionOn {
    Tcp(TcpAction),
    Udp(UdpAction),
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
            ActionOn::Udp(_) => None,
        }
    }

    /// The action on a udp-proxy's datagrams (None on a proxy's fault).
    pub fn udp(&self) -> Option<&UdpAction> {
        match &self.on {
            ActionOn::Udp(a) => Some(a),
            ActionOn::Tcp(_) => None,
        }
    }
}
