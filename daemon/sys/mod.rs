//! netd's direct calls into Linux, each file allowing `unsafe` for itself
//! only: user and group ids ([`ids`], re-exported here), descriptor passing
//! and systemd's fd store ([`fdpass`], [`fdstore`]) and files opened
//! relative to a directory descriptor ([`safe_file`]).

pub mod fdpass;
pub mod fdstore;
mod ids;
pub mod safe_file;

pub use ids::*;
