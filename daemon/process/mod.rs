//! The process around the listeners: start-up and shut-down ([`server`]),
//! the socket hand-over on upgrade ([`handover`]), systemd readiness and
//! watchdog ([`notify`]), logging set-up ([`logging`]), heap trimming
//! ([`trim`]) and the man pages and completions ([`docs`]).

pub mod docs;
pub mod handover;
pub mod logging;
pub mod notify;
pub mod server;
pub mod trim;
