//! `timeout` (TCP): no data passes; the connection is closed after
//! `timeout` (unset or zero: never).

use super::{Cx, Def, Key, Toxiproxy, Unit, Val};
use crate::fault::{ActionOn, TcpAction};
use crate::proto::TimeoutFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "timeout",
    tcp: true,
    udp: false,
    http: false,
    toxiproxy: true,
    keys: &[Key::new(
        "timeout",
        Unit::Duration,
        "close after this long (unset: never close)",
    )
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
    Ok(ActionOn::Tcp(TcpAction::Timeout {
        timeout: cx.duration("timeout", &m.timeout)?.filter(|d| !d.is_zero()),
    }))
}
