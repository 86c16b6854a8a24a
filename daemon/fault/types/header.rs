//! `header` (HTTP): headers changed on the response (`phase` "response",
//! the default) or on the request before it is forwarded ("request"):
//! `set` replaces ("name: value"), `add` appends ("name: value"),
//! `remove` drops (names); at most 16 each.

use super::{Cx, Def, Key, Unit, Val};
use crate::fault::http::{MAX_ITEMS, header_line, header_name};
use crate::fault::{ActionOn, HttpAction, Phase};
use crate::proto::HeaderFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "header",
    tcp: false,
    udp: false,
    http: true,
    toxiproxy: false,
    keys: &[
        Key::new(
            "phase",
            Unit::Text,
            "response (the default) or request (before forwarding)",
        ),
        Key::new("set", Unit::Texts, "set a header, \"name: value\" (repeat for several)"),
        Key::new("add", Unit::Texts, "add a header, \"name: value\" (repeat for several)"),
        Key::new("remove", Unit::Texts, "remove a header by name (repeat for several)"),
    ],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "phase" => Val::Text(m.phase.clone()),
        "set" => Val::Texts(m.set.clone()),
        "add" => Val::Texts(m.add.clone()),
        "remove" => Val::Texts(m.remove.clone()),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    match key {
        "phase" => m.phase = v.text(),
        "set" => m.set = v.texts(),
        "add" => m.add = v.texts(),
        "remove" => m.remove = v.texts(),
        _ => {}
    }
}

/// Headers of one connection, not of the message (RFC 9110 7.6.1): HTTP/2
/// forbids them, and the proxy sets them itself on HTTP/1.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

fn count(cx: &Cx<'_>, field: &str, n: usize) -> Result<(), SpecError> {
    if n > MAX_ITEMS {
        return Err(cx.err(format!("{field}: {n} given; at most {MAX_ITEMS}")));
    }
    Ok(())
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    count(cx, "set", m.set.len())?;
    count(cx, "add", m.add.len())?;
    count(cx, "remove", m.remove.len())?;
    if m.set.is_empty() && m.add.is_empty() && m.remove.is_empty() {
        return Err(cx.err("a header fault needs set, add or remove"));
    }
    let lines = |field: &str, v: &[String]| {
        v.iter()
            .map(|l| {
                let (n, v) = header_line(field, l).map_err(|e| cx.err(e))?;
                if HOP_BY_HOP.contains(&n.as_str()) {
                    return Err(cx.err(format!(
                        "{field}: {n} is a connection header ({}), not one a fault may set",
                        HOP_BY_HOP.join(", ")
                    )));
                }
                Ok((n, v))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(ActionOn::Http(HttpAction::Header {
        phase: super::delay::phase(cx, &m.phase, Phase::Response)?,
        set: lines("set", &m.set)?,
        add: lines("add", &m.add)?,
        remove: m
            .remove
            .iter()
            .map(|n| header_name("remove", n).map_err(|e| cx.err(e)))
            .collect::<Result<_, _>>()?,
    }))
}
