//! `bandwidth`: at most `rate` bytes per second pass (TCP: paced; UDP:
//! queued up to a second of traffic, then dropped).

use super::{Cx, Def, Key, Toxiproxy, Unit, Val};
use crate::fault::{ActionOn, MAX_RATE, MIN_RATE, TcpAction, Target, UdpAction};
use crate::proto::BandwidthFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "bandwidth",
    tcp: true,
    udp: true,
    http: false,
    toxiproxy: true,
    keys: &[Key::new(
        "rate",
        Unit::Rate,
        "e.g. 1MB/s, 500KB/s, 8Mbit/s (K, M, G = 1000s; Ki, Mi, Gi = 1024s)",
    )
    .required()
    .toxiproxy(Toxiproxy::KiloBytesPerSec)],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    (key == "rate").then_some(Val::Int(m.rate_bytes_per_sec))
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
    Ok(match cx.target {
        Target::Tcp | Target::Http => ActionOn::Tcp(TcpAction::Bandwidth { rate }),
        Target::Udp => ActionOn::Udp(UdpAction::Bandwidth { rate }),
    })
}
