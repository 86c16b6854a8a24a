//! netd's own endpoints besides the control plane: gRPC health
//! ([`health`]), Prometheus `/metrics` ([`metrics`]) and the
//! Toxiproxy-compatible HTTP API ([`toxiproxy_api`]).

pub mod health;
pub mod http;
pub mod metrics;
pub mod toxiproxy_api;
