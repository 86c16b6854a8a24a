//! `duplicate` (UDP): a datagram is sent twice with `probability`.

use super::{Cx, Def, Key, Unit, Val};
use crate::fault::{ActionOn, UdpAction};
use crate::proto::DuplicateFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "duplicate",
    tcp: false,
    udp: true,
    http: false,
    toxiproxy: false,
    keys: &[Key::new(
        "probability",
        Unit::Probability,
        "probability per datagram (0 to 1)",
    )],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    (key == "probability").then_some(Val::of_f64(m.probability))
}

pub fn set(m: &mut F, key: &str, v: Val) {
    if key == "probability" {
        m.probability = v.float().unwrap_or(0.0);
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    Ok(ActionOn::Udp(UdpAction::Duplicate {
        probability: cx.probability("probability", m.probability)?,
    }))
}
