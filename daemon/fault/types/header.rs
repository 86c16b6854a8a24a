//! `header`: an HTTP fault of the http-proxy (see `HeaderFault` in the proto).
//! Placeholder while the HTTP fault layer is built: refused at compile.

use super::{Cx, Def, Val};
use crate::fault::ActionOn;
use crate::proto::HeaderFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "header",
    tcp: false,
    udp: false,
    toxiproxy: false,
    keys: &[],
};

pub fn get(_m: &F, _key: &str) -> Option<Val> {
    None
}

pub fn set(_m: &mut F, _key: &str, _v: Val) {}

pub fn compile(_m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    Err(cx.err("HTTP faults are not available yet"))
}
