//! netd's integration tests: one test crate (one build, one link), a
//! module per concern. Every test starts the real `netd` binary (the
//! harness is in `common/`: starting and stopping netd, netctl and tonic
//! clients, network namespaces, test upstreams, raw HTTP/2) and talks to it
//! over loopback or network namespaces the test creates.
//!
//! Run one module with `cargo test --test it durability::`.

mod common;

mod access_log;
mod admission;
mod control;
mod durability;
mod echo;
mod exit_codes;
mod faults;
mod faults_tcp;
mod fd_budget;
mod fleet;
mod grafana;
mod grpc_interop;
mod hardening_files;
mod hardening_http;
mod hardening_udp;
mod http;
mod http_proxy;
mod http_proxy_faults;
mod http_proxy_load;
mod http_proxy_surface;
mod in_process;
mod kubernetes;
mod layers;
mod lifecycle;
mod memory;
mod metrics;
mod output;
mod packaging;
mod proxy;
mod readme;
mod reflection;
mod reload;
mod reuseport;
mod scale;
mod security;
mod sniffer;
mod stats;
mod systemd;
mod systemd_live;
mod tls;
mod tls_http;
mod tls_proxy;
mod tls_reload;
mod top;
mod toxiproxy_api;
mod toxiproxy_security;
mod udp_fast;
mod udp_proxy;
mod udp_workers;
mod update_counters;
mod update_options;
mod upgrade;
