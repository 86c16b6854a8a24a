//! `slicer` (TCP): data is cut into slices of `average_size` +-
//! `size_variation` bytes, `delay` apart.

use super::{Cx, Def, Key, Toxiproxy, Unit, Val};
use crate::fault::{ActionOn, TcpAction};
use crate::proto::SlicerFault as F;
use crate::spec::SpecError;

/// Largest slice of a slicer.
pub const MAX_SLICE: u32 = 1 << 20;

pub const DEF: Def = Def {
    name: "slicer",
    tcp: true,
    udp: false,
    http: false,
    toxiproxy: true,
    keys: &[
        Key::new("average_size", Unit::Size, "average slice size in bytes")
            .toxiproxy(Toxiproxy::Whole32),
        Key::new("size_variation", Unit::Size, "+- variation of the slice size")
            .toxiproxy(Toxiproxy::Whole32),
        Key::new("delay", Unit::Duration, "delay between slices").toxiproxy(Toxiproxy::Micros),
    ],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "average_size" => Val::Int(m.average_size.into()),
        "size_variation" => Val::Int(m.size_variation.into()),
        "delay" => Val::Dur(m.delay),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    match key {
        "average_size" => m.average_size = v.int32(),
        "size_variation" => m.size_variation = v.int32(),
        "delay" => m.delay = v.dur(),
        _ => {}
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    if m.average_size == 0 || m.average_size > MAX_SLICE {
        return Err(cx.err(format!(
            "average_size is {}; it must be 1 to {MAX_SLICE}",
            m.average_size
        )));
    }
    if m.size_variation >= m.average_size {
        return Err(cx.err(format!(
            "size_variation ({}) must be smaller than average_size ({})",
            m.size_variation, m.average_size
        )));
    }
    Ok(ActionOn::Tcp(TcpAction::Slicer {
        average: m.average_size,
        variation: m.size_variation,
        delay: cx.duration("delay", &m.delay)?.unwrap_or_default(),
    }))
}
