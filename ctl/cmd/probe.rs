//! `netctl probe tcp|udp ADDR`.

use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use netd::util::addr::parse_listen_addr;

use super::*;
use crate::render::{self, out, outln};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProbeProtocol {
    Tcp,
    Udp,
}

pub(crate) async fn run(
    ctx: &Ctx,
    protocol: ProbeProtocol,
    addr: String,
    message: String,
    timeout: Duration,
) -> anyhow::Result<()> {
    let json = ctx.json;
    let target = parse_listen_addr(&addr).map_err(render::usage)?;
    let reply = match protocol {
        ProbeProtocol::Tcp => crate::probe::tcp(target, message.as_bytes(), timeout).await,
        ProbeProtocol::Udp => crate::probe::udp(target, message.as_bytes(), timeout).await,
    }
    .with_context(|| {
        format!(
            "probe {} {addr}",
            if protocol == ProbeProtocol::Tcp {
                "tcp"
            } else {
                "udp"
            }
        )
    })?;
    let text = String::from_utf8_lossy(&reply.bytes);
    if json {
        print_json(&serde_json::json!({
            "protocol": if protocol == ProbeProtocol::Tcp { "tcp" } else { "udp" },
            "addr": target.to_string(),
            "sent_bytes": message.len(),
            "reply": text,
            "reply_bytes": reply.bytes.len(),
            "rtt_ms": reply.rtt.as_secs_f64() * 1000.0,
        }));
    } else {
        out!("{text}");
        if !text.ends_with('\n') {
            outln!();
        }
    }
    Ok(())
}
