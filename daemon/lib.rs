//! netd: a network daemon that hosts network services — TCP and UDP echo, a
//! monitored TCP proxy, an HTTP JSON API and a packet sniffer — as
//! supervised listeners driven over a gRPC control plane.
//!
//! Start reading at [`server::run`], which wires the pieces together:
//! [`config`] gives the boot listeners, [`supervisor`] owns each listener's
//! lifecycle, [`services`] holds the services themselves, [`stats`] their
//! counters, and [`control`] exposes it all as `netd.v1.Control`. The CLI
//! `netctl` (in `ctl/`) uses [`client`] and [`addr`] from here.
//!
//! # Unsafe code
//!
//! Denied crate-wide; allowed only where netd calls Linux directly, each
//! block with a SAFETY note saying why it is sound:
//!
//! - [`sys`] — geteuid, getpwnam_r/getgrnam_r, getpwuid_r, getgrouplist,
//!   SO_PEERGROUPS (safe wrappers the rest of the crate calls);
//! - [`net::splice`] — pipe2, fcntl and splice for the proxy's zero-copy path;
//! - [`net::udp`] — recvmsg with SO_RXQ_OVFL for the UDP echo;
//! - `services::sniffer::socket` and `services::sniffer::ring` — the
//!   AF_PACKET socket, its options, recvmmsg and the TPACKET_V3 ring;
//! - [`fdpass`] — sendmsg/recvmsg with SCM_RIGHTS and the descriptors
//!   systemd passes, for the socket hand-over;
//! - [`safe_file`] — openat/renameat/unlinkat/fstatat relative to a
//!   directory descriptor;
//! - the kernel reference test of the BPF interpreter (test code only);
//! - [`trim`] — malloc_trim;
//! - [`server::raise_fd_limit`] — getrlimit/setrlimit;
//! - [`fd_budget`] — getrlimit.

#![deny(unsafe_code)]

pub mod access_log;
pub mod addr;
pub mod admission;
pub mod auth;
pub mod client;
pub mod config;
pub mod control;
pub mod control_conn;
pub mod docs;
pub mod events;
pub mod export;
pub mod fault;
pub mod fd_budget;
pub mod fdpass;
pub mod fdstore;
#[cfg(test)]
mod fuzz_support;
pub mod handover;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod own_addrs;
pub mod page;
pub mod peer_uid;
pub mod safe_file;
pub mod server;
pub mod services;
pub mod spec_diff;
pub mod state;
pub mod stats;
pub mod supervisor;
pub mod sys;
pub mod toxiproxy_api;
pub mod trim;
pub mod warn_limit;
pub mod watch;

/// Code generated from `proto/netd/v1/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("netd.v1");

    /// Encoded descriptors of the netd.v1 protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("netd_descriptor");
}

impl proto::ListenerKind {
    /// The name used in configs, on the command line and in JSON output
    /// (each kind's [`services::ListenerKind::SLUG`]).
    pub fn slug(self) -> &'static str {
        services::KINDS
            .iter()
            .find(|k| k.kind == self)
            .map_or("unspecified", |k| k.slug)
    }
}

impl proto::ListenerState {
    /// Lower-case state name for people and JSON output.
    pub fn slug(self) -> &'static str {
        match self {
            proto::ListenerState::Unspecified => "unspecified",
            proto::ListenerState::Starting => "starting",
            proto::ListenerState::Running => "running",
            proto::ListenerState::Stopping => "stopping",
            proto::ListenerState::Stopped => "stopped",
            proto::ListenerState::Failed => "failed",
            proto::ListenerState::Draining => "draining",
        }
    }
}
