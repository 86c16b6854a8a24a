//! `limit_data` (TCP): the connection is closed once `bytes` have passed.

use super::{Cx, Def, Key, Toxiproxy, Unit, Val};
use crate::fault::{ActionOn, TcpAction};
use crate::proto::LimitDataFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "limit_data",
    tcp: true,
    udp: false,
    http: false,
    toxiproxy: true,
    keys: &[Key::new("bytes", Unit::Bytes, "close after this many bytes")
        .toxiproxy(Toxiproxy::Whole)],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    (key == "bytes").then_some(Val::Int(m.bytes))
}

pub fn set(m: &mut F, key: &str, v: Val) {
    if key == "bytes" {
        m.bytes = v.int();
    }
}

pub fn compile(m: &F, _cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    Ok(ActionOn::Tcp(TcpAction::LimitData { bytes: m.bytes }))
}
