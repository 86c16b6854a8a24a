//! What the services count and report: per-listener counters ([`stats`]),
//! the event stream ([`events`]) and the access log ([`access_log`]).

pub mod access_log;
pub mod events;
pub mod stats;
