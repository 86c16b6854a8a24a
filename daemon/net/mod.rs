//! Socket plumbing shared by the hosted services, none of it specific to a
//! listener kind: binding and adopting sockets ([`bind`]), the TCP accept
//! loop ([`accept`]), per-connection helpers (idle timers, lingering close,
//! cheap cancellation checks, panic containment), the Linux calls the
//! proxy's forward loop and the UDP kinds need ([`splice`], [`sockopt`],
//! [`udp`], [`udp_batch`]), and the per-core event loops the proxy serves
//! connections on ([`workers`]).
//!
//! This module depends on the leaves [`crate::telemetry::stats`], [`crate::net::fd_budget`]
//! and [`crate::util::warn_limit`] only, never on [`crate::services`]: services
//! use the plumbing, not the other way round.

pub mod accept;
pub mod bind;
pub mod cancel;
pub mod contain;
pub mod drain;
pub mod fd_budget;
pub mod idle;
pub mod own_addrs;
pub mod sockopt;
pub mod splice;
pub mod tls;
pub mod udp;
pub mod udp_batch;
pub mod workers;
