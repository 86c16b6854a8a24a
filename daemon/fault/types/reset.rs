//! `reset` (HTTP): the response is cut after its headers and
//! `after_bytes` bytes of its body: HTTP/2 resets the stream
//! (RST_STREAM), HTTP/1 closes the connection before the body is whole.

use super::{Cx, Def, Key, Unit, Val};
use crate::fault::{ActionOn, HttpAction};
use crate::proto::ResetFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "reset",
    tcp: false,
    udp: false,
    http: true,
    toxiproxy: false,
    keys: &[Key::new(
        "after_bytes",
        Unit::Bytes,
        "bytes of the response body sent before the reset (default 0: right after the headers)",
    )],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "after_bytes" => Val::Int(m.after_bytes),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    if key == "after_bytes" {
        m.after_bytes = v.int();
    }
}

pub fn compile(m: &F, _cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    Ok(ActionOn::Http(HttpAction::Reset {
        after_bytes: m.after_bytes,
    }))
}
