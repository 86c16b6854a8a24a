//! How netctl shows a TCP echo: its spec (it has no stats detail; its
//! connections and bytes are the common counters).

use serde_json::{Value, json};

use super::TcpEcho;
use crate::proto;
use crate::services::show::{Show, dur, tls_server_json};

impl Show for TcpEcho {
    type Stats = ();

    fn spec_json(spec: &Self::Spec) -> Value {
        // Without `..`: a field added to the proto does not compile until
        // it is shown.
        let proto::TcpEchoSpec {
            listen,
            prefix,
            max_connections,
            idle_timeout,
            access_log,
            tls,
        } = spec;
        let mut v = json!({
            "listen": listen,
            "prefix": prefix,
            "max_connections": max_connections,
            "idle_timeout": dur(idle_timeout),
            "access_log": access_log.unwrap_or(true),
        });
        if let Some(t) = tls_server_json(tls.as_ref()) {
            v["tls"] = t;
        }
        v
    }
}
