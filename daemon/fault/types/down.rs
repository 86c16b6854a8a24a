//! `down`: the service is down — new connections are reset once accepted
//! and open ones are reset (TCP); every datagram is dropped (UDP).

use super::{Cx, Def, Val};
use crate::fault::{ActionOn, TcpAction, Target, UdpAction};
use crate::proto::DownFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "down",
    tcp: true,
    udp: true,
    http: false,
    toxiproxy: false,
    keys: &[],
};

pub fn get(_m: &F, _key: &str) -> Option<Val> {
    None
}

pub fn set(_m: &mut F, _key: &str, _v: Val) {}

pub fn compile(_m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    Ok(match cx.target {
        Target::Tcp | Target::Http => ActionOn::Tcp(TcpAction::Down),
        Target::Udp => ActionOn::Udp(UdpAction::Down),
    })
}
