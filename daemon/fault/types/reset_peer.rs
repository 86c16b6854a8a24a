//! `reset_peer` (TCP): the connection is reset (RST) after `timeout`
//! (zero: at the next data).

use super::{Cx, Def, Key, Toxiproxy, Unit, Val};
use crate::fault::{ActionOn, TcpAction};
use crate::proto::ResetPeerFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "reset_peer",
    tcp: true,
    udp: false,
    http: false,
    toxiproxy: true,
    keys: &[Key::new("timeout", Unit::Duration, "reset after this long")
        .toxiproxy(Toxiproxy::Millis)],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    (key == "timeout").then_some(Val::Dur(m.timeout))
}

pub fn set(m: &mut F, key: &str, v: Val) {
    if key == "timeout" {
        m.timeout = v.dur();
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    Ok(ActionOn::Tcp(TcpAction::ResetPeer {
        timeout: cx.duration("timeout", &m.timeout)?.unwrap_or_default(),
    }))
}
