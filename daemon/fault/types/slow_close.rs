//! `slow_close` (TCP): the close (FIN) is passed on `delay` late.

use super::{Cx, Def, Key, Toxiproxy, Unit, Val};
use crate::fault::{ActionOn, TcpAction};
use crate::proto::SlowCloseFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "slow_close",
    tcp: true,
    udp: false,
    http: false,
    toxiproxy: true,
    keys: &[Key::new("delay", Unit::Duration, "delay before the close")
        .toxiproxy(Toxiproxy::Millis)],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    (key == "delay").then_some(Val::Dur(m.delay))
}

pub fn set(m: &mut F, key: &str, v: Val) {
    if key == "delay" {
        m.delay = v.dur();
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    Ok(ActionOn::Tcp(TcpAction::SlowClose {
        delay: cx.duration("delay", &m.delay)?.unwrap_or_default(),
    }))
}
