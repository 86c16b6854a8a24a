//! `latency`: each chunk (TCP) or datagram (UDP) is delayed by `latency`
//! plus a uniform random amount in [-jitter, +jitter] (never below zero).

use super::{Cx, Def, Key, Toxiproxy, Unit, Val};
use crate::fault::{ActionOn, TcpAction, Target, UdpAction};
use crate::proto::LatencyFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "latency",
    tcp: true,
    udp: true,
    http: false,
    toxiproxy: true,
    keys: &[
        Key::new("latency", Unit::Duration, "added delay, e.g. 100ms")
            .toxiproxy(Toxiproxy::Millis),
        Key::new("jitter", Unit::Duration, "uniform +- jitter, e.g. 10ms")
            .toxiproxy(Toxiproxy::Millis),
    ],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "latency" => Val::Dur(m.latency),
        "jitter" => Val::Dur(m.jitter),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    match key {
        "latency" => m.latency = v.dur(),
        "jitter" => m.jitter = v.dur(),
        _ => {}
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    let latency = cx.duration("latency", &m.latency)?.unwrap_or_default();
    let jitter = cx.duration("jitter", &m.jitter)?.unwrap_or_default();
    Ok(match cx.target {
        Target::Tcp | Target::Http => ActionOn::Tcp(TcpAction::Latency { latency, jitter }),
        Target::Udp => ActionOn::Udp(UdpAction::Latency { latency, jitter }),
    })
}
