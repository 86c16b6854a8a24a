//! HTTP/1.1 upgrades through the http-proxy (WebSocket, or any
//! `Upgrade:` protocol): the request keeps its `Connection: upgrade` and
//! `Upgrade` headers and goes to the upstream over HTTP/1.1 whatever
//! `upstream_protocol` says; when the upstream answers 101, both sides'
//! connections are taken from hyper and the bytes are copied both ways
//! until both sides have closed, one fails, neither sends anything for the
//! listener's idle timeout, or the listener closes its connections.
//! Counted in `upgrades`, the bytes in `bytes_in`/`bytes_out`.
//!
//! HTTP/2 extended CONNECT (RFC 8441, WebSocket over h2) is not proxied:
//! an HTTP/2 request is forwarded as an ordinary request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::services::ServiceCtx;
use crate::telemetry::stats::Stats;

const COPY_BUF: usize = 16 * 1024;

/// The `Upgrade` header of an HTTP/1.1 request that asks for one
/// (`Connection` names `upgrade`).
pub fn requested(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    h.get(header::UPGRADE).cloned()
}

/// Put back the two headers an upgrade needs (after the hop-by-hop ones
/// were dropped).
pub fn restore(h: &mut HeaderMap, upgrade: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade);
}

/// How long a tunnel waits for a connection slot: the one its HTTP
/// connection frees as it hands the connection over.
const SLOT_WAIT: Duration = Duration::from_secs(1);

/// Join the client's and the upstream's upgraded connections in a task of
/// the listener (stop and shutdown wait for it). The tunnel holds one of
/// the listener's connection slots (`limit`, the one its HTTP connection
/// gave back when it handed over), so tunnels count against
/// max_connections as the connections they came from did.
pub fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    limit: Arc<Semaphore>,
    ctx: &ServiceCtx,
) {
    let ctx2 = ctx.clone();
    ctx.tracker.spawn(async move {
        let ctx = ctx2;
        let (c, u) = tokio::select! {
            r = async { tokio::try_join!(client, upstream) } => match r {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(listener = %ctx.name, error = %e, "upgrade failed");
                    return;
                }
            },
            () = ctx.close_connections.cancelled() => return,
        };
        let Ok(Ok(_slot)) = tokio::time::timeout(SLOT_WAIT, limit.acquire_owned()).await else {
            tracing::debug!(listener = %ctx.name, "no connection slot for an upgraded connection; closing it");
            return;
        };
        let (mut cr, mut cw) = tokio::io::split(TokioIo::new(c));
        let (mut ur, mut uw) = tokio::io::split(TokioIo::new(u));
        let began = Instant::now();
        // Milliseconds since `began` of the last byte either way.
        let last = AtomicU64::new(0);
        let stats = &ctx.stats;
        let up = copy(&mut cr, &mut uw, &stats.bytes_in, &last, began);
        let down = copy(&mut ur, &mut cw, &stats.bytes_out, &last, began);
        let idle_out = async {
            loop {
                let quiet_since = began + Duration::from_millis(last.load(Relaxed));
                let due = quiet_since + idle;
                if Instant::now() >= due {
                    return;
                }
                tokio::time::sleep_until(due).await;
            }
        };
        tokio::select! {
            _ = async { tokio::try_join!(up, down) } => {}
            () = idle_out => {
                tracing::debug!(listener = %ctx.name, "upgraded connection idle; closing");
            }
            () = ctx.close_connections.cancelled() => {}
        }
    });
}

/// Copy one direction until EOF (passed on as a shutdown of the writer)
/// or an error (`Err`: the whole tunnel ends).
async fn copy<R, W>(
    r: &mut R,
    w: &mut W,
    total: &AtomicU64,
    last: &AtomicU64,
    began: Instant,
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = r.read(&mut buf).await.map_err(|_| ())?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).await.map_err(|_| ())?;
        Stats::add(total, n as u64);
        last.store(began.elapsed().as_millis() as u64, Relaxed);
    }
    let _ = w.shutdown().await;
    Ok(())
}
