//! TCP echo (RFC 862): everything a client sends is sent back, optionally
//! behind a prefix per chunk, until the client closes.
//!
//! Bounds: `max_connections` concurrent clients (the rest are accepted and
//! closed at once, counted as refused), a 16 KiB buffer per connection, and
//! an idle timeout that closes clients silent in both directions.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ServiceCtx, SpecError, listen_field};
use crate::proto;
use crate::stats::Stats;

/// Read buffer per connection.
const BUF_SIZE: usize = 16 * 1024;
/// Longest prefix accepted, so a reply chunk stays bounded.
pub const MAX_PREFIX: usize = 1024;

#[derive(Debug)]
pub struct TcpEcho {
    pub listen: SocketAddr,
    prefix: Arc<[u8]>,
    idle_timeout: Duration,
    /// Shared across restarts so connections that outlive a failed accept
    /// loop still count against the limit.
    limit: Arc<Semaphore>,
}

impl TcpEcho {
    pub fn from_spec(spec: &proto::TcpEchoSpec) -> Result<Self, SpecError> {
        let listen = listen_field("listen", &spec.listen)?;
        if spec.prefix.len() > MAX_PREFIX {
            return Err(SpecError(format!(
                "prefix is {} bytes; the limit is {MAX_PREFIX}",
                spec.prefix.len()
            )));
        }
        let max = match spec.max_connections {
            0 => DEFAULT_MAX_CONNECTIONS,
            n => n as usize,
        };
        let idle_timeout =
            super::duration_field("idle_timeout", &spec.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
        Ok(TcpEcho {
            listen,
            prefix: spec.prefix.as_bytes().into(),
            idle_timeout,
            limit: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        })
    }

    pub async fn run(&self, listener: TcpListener, ctx: ServiceCtx) -> anyhow::Result<()> {
        super::accept_loop(&listener, &ctx, &self.limit, |stream, peer| {
            let conn = Conn {
                prefix: self.prefix.clone(),
                idle: self.idle_timeout,
                stats: ctx.stats.clone(),
                close: ctx.close_connections.clone(),
            };
            let name = ctx.name.clone();
            async move {
                match conn.echo(stream).await {
                    Ok(end) => tracing::debug!(listener = %name, %peer, end, "connection closed"),
                    Err(e) => {
                        Stats::add(&conn.stats.errors, 1);
                        tracing::debug!(listener = %name, %peer, error = %e, "connection failed");
                    }
                }
            }
        })
        .await
    }
}

struct Conn {
    prefix: Arc<[u8]>,
    idle: Duration,
    stats: Arc<Stats>,
    close: CancellationToken,
}

impl Conn {
    /// Echo until the client closes, goes idle, or the listener closes its
    /// connections; says which.
    async fn echo(&self, mut stream: TcpStream) -> io::Result<&'static str> {
        let p = self.prefix.len();
        let mut buf = vec![0u8; p + BUF_SIZE];
        buf[..p].copy_from_slice(&self.prefix);
        let mut closed = super::CancelWatch::new(&self.close);
        // One timer per connection, re-armed only when it fires: each read
        // and write just notes the time.
        let mut last = Instant::now();
        let idle = tokio::time::sleep_until(last + self.idle);
        tokio::pin!(idle);
        loop {
            let n = tokio::select! {
                _ = closed.cancelled() => return Ok("closed by netd"),
                r = stream.read(&mut buf[p..]) => r?,
                _ = &mut idle => {
                    if super::idle_expired(idle.as_mut(), last, self.idle) {
                        return Ok("idle timeout");
                    }
                    continue;
                }
            };
            last = Instant::now();
            if n == 0 {
                // The client finished sending and everything is echoed.
                let _ = stream.shutdown().await;
                return Ok("client closed");
            }
            Stats::add(&self.stats.bytes_in, n as u64);
            let mut write = std::pin::pin!(stream.write_all(&buf[..p + n]));
            loop {
                tokio::select! {
                    _ = closed.cancelled() => return Ok("closed by netd"),
                    r = &mut write => {
                        r?;
                        break;
                    }
                    _ = &mut idle => {
                        if super::idle_expired(idle.as_mut(), last, self.idle) {
                            return Ok("idle timeout (client not reading)");
                        }
                    }
                }
            }
            last = Instant::now();
            Stats::add(&self.stats.bytes_out, (p + n) as u64);
        }
    }
}
