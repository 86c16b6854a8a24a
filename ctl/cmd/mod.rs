//! One module per netctl command (or family of commands): each turns its
//! arguments into one or two RPCs and hands the answer to the render layer
//! (`crate::output`, `crate::stats`, `crate::render`). [`Ctx`] is what every
//! command gets: how to reach netd and the output format.

pub mod apply;
pub mod fault;
pub mod listeners;
pub mod probe;
pub mod reload;
pub mod start;
pub mod update;
pub mod watch;

use std::time::Duration;

use anyhow::anyhow;

use crate::dial::Dial;
use crate::render::{self, outln};

/// What every command needs.
pub struct Ctx {
    pub dial: Dial,
    /// `-o json`.
    pub json: bool,
}

pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

pub(crate) fn to_proto_duration(
    flag: &str,
    d: Option<Duration>,
) -> anyhow::Result<Option<prost_types::Duration>> {
    d.map(prost_types::Duration::try_from)
        .transpose()
        .map_err(|_| render::usage(anyhow!("{flag} is too large")))
}

pub(crate) fn print_json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
