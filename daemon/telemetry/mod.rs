//! What the services count and report: per-listener counters ([`stats`]),
//! the event stream ([`events`]) and the access log ([`access_log`]), and
//! the form in which kinds and faults declare their Prometheus families
//! ([`families`]).

pub mod access_log;
pub mod events;
pub mod families;
pub mod stats;
