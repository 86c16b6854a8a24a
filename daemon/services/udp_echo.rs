//! UDP echo: each datagram is answered to its sender, optionally behind a
//! prefix. Datagrams up to 64 KiB are read whole; a reply that the prefix
//! would push past the largest UDP payload is truncated to fit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{ServiceCtx, SpecError, listen_field};
use crate::proto;
use crate::stats::Stats;

/// Largest datagram read; bigger than any UDP payload over IPv4 or IPv6
/// without jumbograms.
const RECV_BUF: usize = 64 * 1024;
/// Largest UDP payload that IPv4 can carry (65535 - 8 - 20).
pub const MAX_REPLY: usize = 65_507;
/// Longest prefix accepted.
pub const MAX_PREFIX: usize = 1024;
/// Consecutive socket errors after which the service counts as failed and
/// the supervisor rebinds it.
const MAX_CONSECUTIVE_ERRORS: u32 = 100;

#[derive(Debug)]
pub struct UdpEcho {
    pub listen: SocketAddr,
    prefix: Arc<[u8]>,
}

impl UdpEcho {
    pub fn from_spec(spec: &proto::UdpEchoSpec) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        if spec.prefix.len() > MAX_PREFIX {
            return Err(SpecError(format!(
                "prefix is {} bytes; the limit is {MAX_PREFIX}",
                spec.prefix.len()
            )));
        }
        Ok(UdpEcho {
            listen,
            prefix: spec.prefix.as_bytes().into(),
        })
    }

    pub async fn run(&self, socket: UdpSocket, ctx: ServiceCtx) -> anyhow::Result<()> {
        let p = self.prefix.len();
        let mut buf = vec![0u8; p + RECV_BUF];
        buf[..p].copy_from_slice(&self.prefix);
        let mut consecutive_errors = 0u32;
        let mut stop = super::CancelWatch::new(&ctx.stop_accepting);
        loop {
            let received = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                r = socket.recv_from(&mut buf[p..]) => r,
            };
            let (n, peer) = match received {
                Ok(r) => r,
                Err(e) => {
                    Stats::add(&ctx.stats.errors, 1);
                    consecutive_errors += 1;
                    if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                        anyhow::bail!("{consecutive_errors} consecutive receive errors, last: {e}");
                    }
                    tracing::debug!(listener = %ctx.name, error = %e, "receive failed");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            consecutive_errors = 0;
            Stats::add(&ctx.stats.datagrams_in, 1);
            Stats::add(&ctx.stats.bytes_in, n as u64);
            let reply = &buf[..(p + n).min(MAX_REPLY)];
            match socket.send_to(reply, peer).await {
                Ok(sent) => {
                    Stats::add(&ctx.stats.datagrams_out, 1);
                    Stats::add(&ctx.stats.bytes_out, sent as u64);
                }
                Err(e) => {
                    Stats::add(&ctx.stats.errors, 1);
                    tracing::debug!(listener = %ctx.name, %peer, error = %e, "reply failed");
                }
            }
        }
    }
}
