//! netd: a network daemon that hosts network services — TCP and UDP echo, a
//! monitored TCP proxy, an HTTP JSON API and a packet sniffer — as
//! supervised listeners driven over a gRPC control plane.
//!
//! Start reading at [`process::server::run`], which wires the pieces
//! together: [`config`] gives the boot listeners, [`supervisor`] owns each
//! listener's lifecycle, [`services`] holds the services themselves,
//! [`telemetry::stats`] their counters, and [`control::service`] exposes it
//! all as `netd.v1.Control`. The CLI `netctl` (in `ctl/`) uses
//! [`control::client`] and [`util::addr`] from here.
//!
//! # Layers
//!
//! The folders below are listed in layer order, lowest first: a module uses
//! its own folder and the folders before it, never one after it, so the
//! module graph has no cycles (`tests/it/layers.rs` fails on a `crate::`
//! path that goes the wrong way).
//!
//! | folder | role |
//! |---|---|
//! | [`sys`] | direct Linux calls: ids, descriptor passing, safe files |
//! | [`util`] | address parsing, paging, rate-limited warnings |
//! | [`spec`] | what specs are made of, below every kind |
//! | [`telemetry`] | counters, events, the access log |
//! | [`net`] | socket plumbing shared by the services, descriptor budget |
//! | [`fault`] | the fault model shared by the kinds that take faults |
//! | [`services`] | the listener kinds |
//! | [`state`] | the persisted runtime state |
//! | [`supervisor`] | each listener's lifecycle |
//! | [`control`] | the gRPC control plane and the admission of any endpoint |
//! | [`endpoints`] | health, `/metrics`, the Toxiproxy-compatible API |
//! | [`config`] | the config file and its export |
//! | [`process`] | start-up, shut-down, hand-over, systemd |
//!
//! # Unsafe code
//!
//! Denied crate-wide; allowed only where netd calls Linux directly and
//! rustix (safe wrappers of the system calls) does not cover the call,
//! each block with a SAFETY note saying why it is sound:
//!
//! - [`sys`] — getpwnam_r/getgrnam_r, getpwuid_r, getgrouplist,
//!   SO_PEERGROUPS (safe wrappers the rest of the crate calls);
//! - [`net::udp`] — recvmsg with SO_RXQ_OVFL for the UDP echo (rustix's
//!   ancillary messages do not include it);
//! - `services::sniffer::socket` and `services::sniffer::ring` — the
//!   AF_PACKET socket's options, recvmmsg and the TPACKET_V3 ring (mmap);
//! - [`sys::fdpass`] — SO_PEERCRED (the peer's pid may be 0, which
//!   rustix's `UCred` cannot hold), tokio's registration of a raw socket
//!   and the descriptors systemd passes, for the socket hand-over;
//! - the kernel reference test of the BPF interpreter (test code only);
//! - [`process::trim`] — malloc_trim.
//!
//! Through rustix, without `unsafe`: geteuid, pipe2/fcntl/splice
//! ([`net::splice`]), sendmsg/recvmsg with SCM_RIGHTS ([`sys::fdpass`]),
//! openat/renameat/unlinkat/fstatat ([`sys::safe_file`]),
//! getrlimit/setrlimit ([`net::fd_budget`]) and the AF_PACKET socket.

#![deny(unsafe_code)]

// The layer order is the table in the doc above.
pub mod config;
pub mod control;
pub mod endpoints;
pub mod fault;
pub mod net;
pub mod process;
pub mod services;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod sys;
pub mod telemetry;
pub mod util;

/// Code generated from `proto/netd/v1/*.proto`.
// Generated: its long functions (the gRPC server's dispatch) are not ours
// to split.
#[allow(clippy::all, clippy::too_many_lines, missing_docs)]
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
            // Reserved in the proto and never sent (StartListener binds
            // before it returns); named for a peer that would send it.
            proto::ListenerState::Starting => "starting",
            proto::ListenerState::Running => "running",
            proto::ListenerState::Stopping => "stopping",
            proto::ListenerState::Stopped => "stopped",
            proto::ListenerState::Failed => "failed",
            proto::ListenerState::Draining => "draining",
        }
    }
}
