//! `slow_body` (HTTP): the response body is sent at `rate` bytes per
//! second (1 B/s to 10 GB/s).

use super::{Cx, Def, Key, Unit, Val};
use crate::fault::{ActionOn, HttpAction, MAX_RATE, MIN_RATE};
use crate::proto::SlowBodyFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "slow_body",
    tcp: false,
    udp: false,
    http: true,
    toxiproxy: false,
    keys: &[Key::new(
        "rate",
        Unit::Rate,
        "bytes per second, e.g. 1MB/s, 500KB/s, 8Mbit/s",
    )
    .required()],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "rate" => Val::Int(m.rate_bytes_per_sec),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    if key == "rate" {
        m.rate_bytes_per_sec = v.int();
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    let rate = m.rate_bytes_per_sec;
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(cx.err(format!(
            "rate is {rate} B/s; it must be {MIN_RATE} B/s to 10 GB/s"
        )));
    }
    Ok(ActionOn::Http(HttpAction::SlowBody { rate }))
}
