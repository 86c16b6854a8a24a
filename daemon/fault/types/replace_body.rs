//! `replace_body` (HTTP): the response body is replaced by `body` (at most
//! 64 KiB; Content-Length set to match), with Content-Type
//! `content_type` when given.

use super::abort::MAX_BODY;
use super::{Cx, Def, Key, Unit, Val};
use crate::fault::http::header_value;
use crate::fault::{ActionOn, HttpAction};
use crate::proto::ReplaceBodyFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "replace_body",
    tcp: false,
    udp: false,
    http: true,
    toxiproxy: false,
    keys: &[
        Key::new("body", Unit::Text, "the new body, at most 64 KiB"),
        Key::new(
            "content_type",
            Unit::Text,
            "the new body's Content-Type (default: the response's)",
        ),
    ],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "body" => Val::Text(m.body.clone()),
        "content_type" => Val::Text(m.content_type.clone()),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    match key {
        "body" => m.body = v.text(),
        "content_type" => m.content_type = v.text(),
        _ => {}
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    if m.body.len() > MAX_BODY {
        return Err(cx.err(format!(
            "body is {} bytes; at most {MAX_BODY}",
            m.body.len()
        )));
    }
    let content_type = if m.content_type.trim().is_empty() {
        None
    } else {
        Some(header_value("content_type", &m.content_type).map_err(|e| cx.err(e))?)
    };
    Ok(ActionOn::Http(HttpAction::ReplaceBody {
        body: bytes::Bytes::from(m.body.clone()),
        content_type,
    }))
}
