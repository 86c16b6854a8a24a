//! `delay` (HTTP): the request is held for `delay` (+- a uniform `jitter`)
//! before it is forwarded (`phase` "request", the default), or the
//! response before its headers are returned ("response").

use super::{Cx, Def, Key, Unit, Val};
use crate::fault::{ActionOn, HttpAction, MAX_FAULT_DURATION, Phase};
use crate::proto::DelayFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "delay",
    tcp: false,
    udp: false,
    http: true,
    toxiproxy: false,
    keys: &[
        Key::new("delay", Unit::Duration, "hold the request or response this long").required(),
        Key::new("jitter", Unit::Duration, "uniform +- jitter, e.g. 10ms"),
        Key::new(
            "phase",
            Unit::Text,
            "request (before forwarding) or response (before the headers are returned)",
        ),
    ],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "delay" => Val::Dur(m.delay),
        "jitter" => Val::Dur(m.jitter),
        "phase" => Val::Text(m.phase.clone()),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    match key {
        "delay" => m.delay = v.dur(),
        "jitter" => m.jitter = v.dur(),
        "phase" => m.phase = v.text(),
        _ => {}
    }
}

/// "request" or "response" (empty: `default`).
pub fn phase(cx: &Cx<'_>, p: &str, default: Phase) -> Result<Phase, SpecError> {
    match p.trim() {
        "" => Ok(default),
        "request" => Ok(Phase::Request),
        "response" => Ok(Phase::Response),
        o => Err(cx.err(format!("phase '{o}': expected request or response"))),
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    let delay = cx.duration("delay", &m.delay)?.unwrap_or_default();
    let jitter = cx.duration("jitter", &m.jitter)?.unwrap_or_default();
    if delay + jitter > MAX_FAULT_DURATION {
        return Err(cx.err(format!(
            "delay + jitter is {}; at most {}",
            humantime::format_duration(delay + jitter),
            humantime::format_duration(MAX_FAULT_DURATION)
        )));
    }
    Ok(ActionOn::Http(HttpAction::Delay {
        delay,
        jitter,
        phase: phase(cx, &m.phase, Phase::Request)?,
    }))
}
