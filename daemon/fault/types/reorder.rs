//! `reorder` (UDP): a datagram is held, with `probability`, until `gap`
//! later ones have passed (or `max_hold`).

use std::time::Duration;

use super::{Cx, Def, Key, Unit, Val};
use crate::fault::{ActionOn, UdpAction};
use crate::proto::ReorderFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "reorder",
    tcp: false,
    udp: true,
    http: false,
    toxiproxy: false,
    keys: &[
        Key::new(
            "probability",
            Unit::Probability,
            "probability per datagram (0 to 1)",
        ),
        Key::new(
            "gap",
            Unit::Count,
            "datagrams that overtake a held one (default 1)",
        ),
        Key::new("max_hold", Unit::Duration, "longest hold (default 100ms)"),
    ],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "probability" => Val::of_f64(m.probability),
        "gap" => Val::Int(m.gap.into()),
        "max_hold" => Val::Dur(m.max_hold),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    match key {
        "probability" => m.probability = v.float().unwrap_or(0.0),
        "gap" => m.gap = v.int32(),
        "max_hold" => m.max_hold = v.dur(),
        _ => {}
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    if m.gap > 1000 {
        return Err(cx.err(format!("gap is {}; at most 1000", m.gap)));
    }
    Ok(ActionOn::Udp(UdpAction::Reorder {
        probability: cx.probability("probability", m.probability)?,
        gap: m.gap.max(1),
        max_hold: cx
            .duration("max_hold", &m.max_hold)?
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(100)),
    }))
}
