//! `abort` (HTTP): the request is answered by the proxy, not forwarded:
//! with `http_status` (200-599) and `body` (empty: a short JSON error),
//! or, for a gRPC call, with `grpc_status` (1-16, trailers-only, HTTP
//! 200) and `body` as its grpc-message. Exactly one of the two statuses.

use super::{Cx, Def, Key, Unit, Val};
use crate::fault::{ActionOn, HttpAction};
use crate::proto::AbortFault as F;
use crate::spec::SpecError;

/// Largest body of an abort or replace_body fault.
pub const MAX_BODY: usize = 64 * 1024;

pub const DEF: Def = Def {
    name: "abort",
    tcp: false,
    udp: false,
    http: true,
    toxiproxy: false,
    keys: &[
        Key::new("http_status", Unit::Count, "answer with this HTTP status, 200-599"),
        Key::new(
            "grpc_status",
            Unit::Count,
            "answer a gRPC call with this status, 1-16 (14: UNAVAILABLE)",
        ),
        Key::new(
            "body",
            Unit::Text,
            "the answer's body (gRPC: its grpc-message), at most 64 KiB",
        ),
    ],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "http_status" => Val::Int(m.http_status.into()),
        "grpc_status" => Val::Int(m.grpc_status.into()),
        "body" => Val::Text(m.body.clone()),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    match key {
        "http_status" => m.http_status = v.int32(),
        "grpc_status" => m.grpc_status = v.int32(),
        "body" => m.body = v.text(),
        _ => {}
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    let (http_status, grpc_status) = match (m.http_status, m.grpc_status) {
        (0, 0) => {
            return Err(cx.err(
                "an abort needs http_status (200-599) or grpc_status (1-16)",
            ));
        }
        (h, g) if h != 0 && g != 0 => {
            return Err(cx.err(format!(
                "give http_status ({h}) or grpc_status ({g}), not both"
            )));
        }
        (0, g) if !(1..=16).contains(&g) => {
            return Err(cx.err(format!("grpc_status is {g}; it must be 1 to 16")));
        }
        (0, g) => (None, Some(g)),
        (h, _) => {
            let s = u16::try_from(h)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .and_then(|s| http::StatusCode::from_u16(s).ok())
                .ok_or_else(|| cx.err(format!("http_status is {h}; it must be 200 to 599")))?;
            (Some(s), None)
        }
    };
    if m.body.len() > MAX_BODY {
        return Err(cx.err(format!(
            "body is {} bytes; at most {MAX_BODY}",
            m.body.len()
        )));
    }
    if grpc_status.is_some() && m.body.bytes().any(|b| b.is_ascii_control()) {
        return Err(cx.err("body (the grpc-message) must be one line of text"));
    }
    Ok(ActionOn::Http(HttpAction::Abort {
        http_status,
        grpc_status,
        body: bytes::Bytes::from(m.body.clone()),
    }))
}
