//! TLS in the proxy: it terminates TLS from its clients (`tls_cert`...),
//! originates TLS to its upstreams (`upstream_tls`...), both (re-encrypt),
//! or neither. With neither, nothing here runs: [`Proxy::serve`] takes
//! one branch at connection start and the plaintext forward loop (splice
//! included) is today's.
//!
//! With TLS on either side the bytes are forwarded by a copy loop over the
//! plaintext ([`forward_io`]): bytes_in/out count plaintext, and the TCP
//! faults act on the plaintext between the two TLS sides (the same
//! [`toxic::run`], generic over the stream).
//!
//! - Terminate only: the client's handshake (served ALPN `tls_alpn`, else
//!   none) finishes before an upstream is connected, within the handshake
//!   timeout, inside the connection task (it holds a connection slot).
//! - Originate only: after the TCP connect, a handshake with the upstream
//!   (SNI `upstream_sni` or the upstream's host as written), within the
//!   connect timeout. A failed one is counted (`upstream_failures`), put in
//!   the upstream's `last_error`, marks it down for `upstream_backoff`, and
//!   closes the client.
//! - Re-encrypt: the client's ClientHello is read first; the upstream is
//!   offered the client's ALPN protocols (those also in `tls_alpn`, when
//!   set) and the client's handshake is finished offering only what the
//!   upstream chose, so h2 or http/1.1 passes through end to end.
//! - Warm pool (`preconnect`): the pool holds TCP connections; the TLS
//!   handshake to the upstream is done when a client takes one.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forward::{Activity, End, Side, pass_on_eof, until_end};
use super::toxic::{self, ConnFaults};
use super::{Connected, Proxy, ServiceCtx, Upstream};
use crate::fault::{Dir, Watch};
use crate::net::drain::Drain;
use crate::net::sockopt::abort;
use crate::net::tls::server::Negotiated;
use crate::net::tls::{Reason, ServedTls, TlsCounters, UpstreamTls};
use crate::proto;
use crate::spec::SpecError;
use crate::telemetry::stats::Stats;

/// Plaintext read buffer per direction of a TLS connection, held while the
/// connection lives (next to rustls' own record buffers): it starts at
/// [`TLS_COPY_BUF_START`] and grows to this size the first time a read
/// fills it, so a connection that only ever exchanges small messages
/// (most idle ones) holds 2 × 2 KiB rather than 2 × 16 KiB, and a bulk
/// one moves full TLS records (bench/tls_bench.sh, idle memory and bulk).
const TLS_COPY_BUF: usize = 16 * 1024;
const TLS_COPY_BUF_START: usize = 2 * 1024;

/// A proxy generation's TLS, both sides.
#[derive(Debug, Default)]
pub(super) struct ProxyTls {
    served: Option<Arc<ServedTls>>,
    upstream: Option<Arc<UpstreamTls>>,
    /// The served TLS's counters, or the proxy's own when it only
    /// originates (then only `upstream_*` move).
    counters: Arc<TlsCounters>,
}

impl ProxyTls {
    /// Validate both sides and read their files (blocking: from_spec).
    pub(super) fn from_spec(spec: &proto::ProxySpec) -> Result<Self, SpecError> {
        let served = ServedTls::from_spec(spec.tls.as_ref(), &[])?.map(Arc::new);
        let upstream = UpstreamTls::from_spec(spec.upstream_tls.as_ref())?.map(Arc::new);
        let counters = served
            .as_ref()
            .map_or_else(Arc::default, |s| s.counters().clone());
        Ok(ProxyTls {
            served,
            upstream,
            counters,
        })
    }

    /// Whether a connection leaves the plaintext path.
    #[inline]
    pub(super) fn is_on(&self) -> bool {
        self.served.is_some() || self.upstream.is_some()
    }

    /// The counters go on with the listener while it keeps the same TLS
    /// shape (served or not); turning served TLS on or off starts afresh.
    pub(super) fn carry_over(&mut self, prev: &ProxyTls) {
        match (&mut self.served, &prev.served) {
            (Some(new), Some(old)) => {
                if let Some(new) = Arc::get_mut(new) {
                    new.carry_over(old);
                }
                self.counters = new.counters().clone();
            }
            (None, None) => self.counters = prev.counters.clone(),
            _ => {}
        }
    }

    pub(super) fn stats(&self) -> Option<proto::TlsStats> {
        if let Some(s) = &self.served {
            return Some(s.stats());
        }
        self.upstream.as_ref()?;
        Some(proto::TlsStats {
            upstream_handshakes: self.counters.upstream_handshakes.load(Relaxed),
            upstream_failures: self.counters.upstream_failures.load(Relaxed),
            ..Default::default()
        })
    }

    /// At each start of the listener: watch the served files, and say
    /// loudly that upstream certificates go unchecked.
    pub(super) fn start(&self, ctx: &ServiceCtx) {
        if let Some(s) = &self.served {
            s.watch(
                ctx.name.clone(),
                ctx.stop_accepting.clone(),
                &ctx.tracker,
                Some((ctx.events.clone(), proto::ListenerKind::Proxy)),
            );
        }
        if self.upstream.as_ref().is_some_and(|u| u.insecure) {
            tracing::warn!(
                listener = %ctx.name,
                "upstream_insecure is set: upstream TLS certificates are NOT verified, \
                 anyone on the path can pose as the upstream (for lab self-signed upstreams only)"
            );
        }
    }
}

/// A stream with a TCP socket underneath (to reset it).
trait OnTcp: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl OnTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl OnTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl OnTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// The host part of an upstream as written (`name:port`, `1.2.3.4:port`,
/// `[::1]:port`): the default SNI and the name verified.
fn host_of(given: &str) -> &str {
    match given.rsplit_once(':') {
        Some((h, _)) => h,
        None => given,
    }
}

impl Proxy {
    /// Serve one client when TLS is on either side.
    pub(super) async fn serve_tls(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        ctx: &ServiceCtx,
        faults: &ConnFaults<'_>,
        began: Instant,
    ) {
        let (served, upstream) = (self.tls.served.as_deref(), self.tls.upstream.as_deref());
        match (served, upstream) {
            (Some(served), None) => {
                let mut client = match served.accept(client).await {
                    Ok(c) => c,
                    Err(reason) => return self.handshake_failed(ctx, peer, began, reason),
                };
                let hello = Negotiated::of(client.get_ref().1);
                let Some((tcp, u)) = self.upstream_or_refuse(ctx, peer, began, &mut client).await
                else {
                    return;
                };
                self.join(client, tcp, u, peer, ctx, faults, began, Some(&hello))
                    .await;
            }
            (None, Some(up)) => {
                let mut client = client;
                let Some((tcp, u)) = self.upstream_or_refuse(ctx, peer, began, &mut client).await
                else {
                    return;
                };
                let Some(tls) = self.originate(up, tcp, u, Vec::new(), ctx).await else {
                    self.log(
                        ctx,
                        peer,
                        Some(u),
                        (0, 0),
                        began,
                        "upstream TLS failed",
                        None,
                    );
                    return close_gently(&mut client, ctx).await;
                };
                self.join(client, tls, u, peer, ctx, faults, began, None)
                    .await;
            }
            (Some(served), Some(up)) => {
                Box::pin(self.reencrypt(served, up, client, peer, ctx, faults, began)).await;
            }
            (None, None) => {}
        }
    }

    /// Both sides: read the ClientHello, connect the upstream offering the
    /// client's ALPN protocols, finish the client's handshake offering
    /// what the upstream chose.
    #[allow(clippy::too_many_arguments)]
    async fn reencrypt(
        &self,
        served: &ServedTls,
        up: &UpstreamTls,
        client: TcpStream,
        peer: SocketAddr,
        ctx: &ServiceCtx,
        faults: &ConnFaults<'_>,
        began: Instant,
    ) {
        let timeout = served.handshake_timeout();
        let lazy =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
        let start = match tokio::time::timeout(timeout, lazy).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = served.record_failure(Reason::of_io(&e));
                return self.handshake_failed(ctx, peer, began, reason);
            }
            Err(_) => {
                let reason = served.record_failure(Reason::Timeout);
                return self.handshake_failed(ctx, peer, began, reason);
            }
        };
        let mut alpn: Vec<Vec<u8>> = start
            .client_hello()
            .alpn()
            .map(|list| list.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let allowed = served.config().alpn_protocols.clone();
        if !allowed.is_empty() {
            alpn.retain(|p| allowed.contains(p));
        }
        let (tcp, u) = match Box::pin(self.connect(ctx)).await {
            Connected::To(s, u) => (s, u),
            Connected::Reset(u) => {
                u.state.connections.fetch_add(1, Relaxed);
                return self.log(
                    ctx,
                    peer,
                    Some(u),
                    (0, 0),
                    began,
                    End::UpstreamReset.as_str(),
                    None,
                );
            }
            Connected::Nowhere => {
                Stats::add(&ctx.stats.errors, 1);
                return self.log(ctx, peer, None, (0, 0), began, "no upstream", None);
            }
        };
        let Some(tls) = self.originate(up, tcp, u, alpn, ctx).await else {
            return self.log(
                ctx,
                peer,
                Some(u),
                (0, 0),
                began,
                "upstream TLS failed",
                None,
            );
        };
        let chosen: Vec<Vec<u8>> = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| vec![p.to_vec()])
            .unwrap_or_default();
        let config = served.config_with_alpn(chosen);
        let client = match tokio::time::timeout(timeout, start.into_stream(config)).await {
            Ok(Ok(c)) => {
                served.record_handshake(c.get_ref().1);
                c
            }
            Ok(Err(e)) => {
                let reason = served.record_failure(Reason::of_io(&e));
                return self.handshake_failed(ctx, peer, began, reason);
            }
            Err(_) => {
                let reason = served.record_failure(Reason::Timeout);
                return self.handshake_failed(ctx, peer, began, reason);
            }
        };
        let hello = Negotiated::of(client.get_ref().1);
        self.join(client, tls, u, peer, ctx, faults, began, Some(&hello))
            .await;
    }

    /// A TCP connection to an upstream; when none is to be had, the client
    /// is closed (reset when the upstream reset, else gently) and the line
    /// logged.
    async fn upstream_or_refuse<'a, C: OnTcp>(
        &'a self,
        ctx: &ServiceCtx,
        peer: SocketAddr,
        began: Instant,
        client: &mut C,
    ) -> Option<(TcpStream, &'a Upstream)> {
        match Box::pin(self.connect(ctx)).await {
            Connected::To(s, u) => Some((s, u)),
            Connected::Reset(u) => {
                u.state.connections.fetch_add(1, Relaxed);
                abort(client.tcp());
                self.log(
                    ctx,
                    peer,
                    Some(u),
                    (0, 0),
                    began,
                    End::UpstreamReset.as_str(),
                    None,
                );
                None
            }
            Connected::Nowhere => {
                Stats::add(&ctx.stats.errors, 1);
                self.log(ctx, peer, None, (0, 0), began, "no upstream", None);
                close_gently(client, ctx).await;
                None
            }
        }
    }

    /// The TLS handshake with upstream `u` on `tcp`, within the connect
    /// timeout; counted either way, and a failure is the upstream's last
    /// error (it is then marked down like a failed connect).
    async fn originate(
        &self,
        up: &UpstreamTls,
        tcp: TcpStream,
        u: &Upstream,
        alpn: Vec<Vec<u8>>,
        ctx: &ServiceCtx,
    ) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
        let c = &self.tls.counters;
        let handshake = up.connect(tcp, host_of(&u.given), alpn);
        let error = match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(s)) => {
                c.upstream_handshakes.fetch_add(1, Relaxed);
                return Some(s);
            }
            Ok(Err(e)) => format!("TLS handshake failed: {e}"),
            Err(_) => format!(
                "TLS handshake timed out after {}",
                humantime::format_duration(self.connect_timeout)
            ),
        };
        c.upstream_failures.fetch_add(1, Relaxed);
        tracing::warn!(listener = %ctx.name, upstream = %u.addr, error = %error, "upstream TLS handshake failed");
        u.mark_down(self.upstream_backoff, error);
        None
    }

    fn handshake_failed(&self, ctx: &ServiceCtx, peer: SocketAddr, began: Instant, r: Reason) {
        tracing::debug!(listener = %ctx.name, %peer, reason = r.label(), "TLS handshake failed");
        self.log(ctx, peer, None, (0, 0), began, "TLS handshake failed", None);
    }

    /// The access-log line of a connection (with the client's TLS version
    /// and verified certificate subject when it spoke TLS).
    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        ctx: &ServiceCtx,
        peer: SocketAddr,
        u: Option<&Upstream>,
        (up, down): (u64, u64),
        began: Instant,
        end: &str,
        client_tls: Option<&Negotiated>,
    ) {
        if !self.access_log {
            return;
        }
        let ms = began.elapsed().as_millis() as u64;
        let upstream = u.map(|u| u.addr.get());
        match client_tls {
            None => {
                crate::telemetry::access_log::proxy(&ctx.name, peer, upstream, up, down, ms, end)
            }
            Some(n) => crate::telemetry::access_log::proxy_tls(
                &ctx.name,
                peer,
                upstream,
                (up, down),
                ms,
                end,
                (&n.version, &n.client_subject),
            ),
        }
    }

    /// Forward between the two (plaintext or TLS) streams, then reset the
    /// other side of a reset and log the line.
    #[allow(clippy::too_many_arguments)]
    async fn join<C: OnTcp, U: OnTcp>(
        &self,
        mut client: C,
        mut upstream: U,
        u: &Upstream,
        peer: SocketAddr,
        ctx: &ServiceCtx,
        faults: &ConnFaults<'_>,
        began: Instant,
        client_tls: Option<&Negotiated>,
    ) {
        u.state.connections.fetch_add(1, Relaxed);
        let up = AtomicU64::new(0);
        let down = AtomicU64::new(0);
        let end = forward_io(
            &mut client,
            &mut upstream,
            self.idle_timeout,
            ctx,
            (&up, &down),
            faults,
        )
        .await;
        match end {
            End::ClientReset => abort(upstream.tcp()),
            End::UpstreamReset => abort(client.tcp()),
            End::FaultReset => {
                abort(client.tcp());
                abort(upstream.tcp());
            }
            _ => {}
        }
        let bytes = (up.load(Relaxed), down.load(Relaxed));
        self.log(ctx, peer, Some(u), bytes, began, end.as_str(), client_tls);
    }
}

/// Close a client no upstream took: a prompt, clean close (close_notify
/// on TLS, then FIN), with what it already sent drained briefly so the
/// close is not turned into a reset, as the plaintext path does.
async fn close_gently<C: OnTcp>(client: &mut C, ctx: &ServiceCtx) {
    let _ = tokio::time::timeout(super::REFUSED_DRAIN_QUIET, client.shutdown()).await;
    let mut drain = Drain::new(super::REFUSED_DRAIN_QUIET, super::REFUSED_DRAIN_TIME);
    let tcp = client.tcp();
    let drained = std::future::poll_fn(|cx| drain.poll_drain(tcp, cx));
    tokio::select! {
        _ = drained => {}
        () = ctx.close_connections.cancelled() => {}
    }
}

/// A writer whose write completes only once what it took is on the wire:
/// tokio-rustls returns from a write with records still queued when the
/// socket is full, and the faulty path ([`toxic::run`]) writes a piece
/// and may then wait (latency) without writing again, so those records
/// would wait with it. A write that was taken but not yet flushed is
/// answered Pending and, when the caller polls again with the same bytes
/// (as both write futures and the faulty path do), Ready once flushed.
struct FlushEach<W> {
    inner: W,
    /// Bytes taken by the last write, not yet flushed.
    accepted: Option<usize>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for FlushEach<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = match self.accepted {
            Some(n) => n,
            None => match Pin::new(&mut self.inner).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            },
        };
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.accepted = None;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.accepted = Some(n);
                Poll::Pending
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A reader whose end without TLS close_notify (most clients close that
/// way) reads as a plain EOF.
struct EofOk<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for EofOk<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// Forward both ways over the plaintext until both directions are done,
/// one side fails, the connection idles out, or netd closes it: the
/// plaintext twin of `forward::forward` (no splice: the bytes are
/// decrypted in user space anyway).
async fn forward_io<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle_timeout: std::time::Duration,
    ctx: &ServiceCtx,
    (up, down): (&AtomicU64, &AtomicU64),
    faults: &ConnFaults<'_>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let activity = Activity::new();
    let c2u = copy_io(
        EofOk(cr),
        uw,
        &activity,
        &ctx.stats.bytes_in,
        up,
        faults,
        Dir::Upstream,
    );
    let u2c = copy_io(
        EofOk(ur),
        cw,
        &activity,
        &ctx.stats.bytes_out,
        down,
        faults,
        Dir::Downstream,
    );
    let c2u = std::pin::pin!(c2u);
    let u2c = std::pin::pin!(u2c);
    until_end(c2u, u2c, &activity, idle_timeout, ctx).await
}

/// Copy one direction's plaintext until EOF (passed on as a half-close:
/// close_notify and FIN on a TLS side) or an error; once a fault acts on
/// the direction, the rest goes through [`toxic::run`].
async fn copy_io<R, W>(
    mut r: R,
    mut w: W,
    activity: &Activity,
    total: &AtomicU64,
    mine: &AtomicU64,
    faults: &ConnFaults<'_>,
    dir: Dir,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut watch = Watch::new(faults.table);
    let mut buf = vec![0u8; TLS_COPY_BUF_START];
    loop {
        if toxic::acts_on(&mut watch, dir) {
            drop(buf);
            let w = FlushEach {
                inner: w,
                accepted: None,
            };
            return Box::pin(toxic::run(r, w, activity, total, mine, faults, dir, watch)).await;
        }
        let n = r.read(&mut buf).await.map_err(|_| Side::Reader)?;
        if n == 0 {
            pass_on_eof(&mut w, activity).await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await.map_err(|_| Side::Writer)?;
        // TLS: the records out now, not at the next write.
        w.flush().await.map_err(|_| Side::Writer)?;
        Stats::add(total, n as u64);
        mine.fetch_add(n as u64, Relaxed);
        activity.touch();
        if n == buf.len() && buf.len() < TLS_COPY_BUF {
            buf.resize(TLS_COPY_BUF, 0);
        }
    }
}

/// The layer beneath an http-proxy's HTTP (see
/// `http_server::Handler::beneath`): the client connection's plaintext
/// passes through the listener's TCP faults (toxics) to `inner`, where
/// HTTP is served, with the proxy's semantics (half-closes passed on, a
/// fault's reset resets the client). Its bytes are the HTTP side's to
/// count, so this layer counts into counters of its own. Ends when both
/// directions are done, a fault ends the connection, or netd closes it;
/// it runs in the connection's task beside HTTP, whose timeouts bound an
/// idle connection (and which gives it a grace period once it is done),
/// so the layer's idle timer only backs them up.
pub(crate) async fn toxic_layer<C, U>(
    mut client: C,
    mut inner: U,
    peer: SocketAddr,
    ctx: ServiceCtx,
) where
    C: crate::services::http_server::conn::Socket,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// Longer than any HTTP timeout of the listener (at most a day).
    const LAYER_IDLE: std::time::Duration = std::time::Duration::from_secs(25 * 3600);
    let faults = ConnFaults::new(&ctx.faults, peer.ip());
    let own = ServiceCtx {
        stats: Arc::new(Stats::default()),
        ..ctx.clone()
    };
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let end = forward_io(
        &mut client,
        &mut inner,
        LAYER_IDLE,
        &own,
        (&up, &down),
        &faults,
    )
    .await;
    if matches!(end, End::FaultReset | End::UpstreamReset) {
        if let Some(tcp) = client.tcp() {
            abort(tcp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_upstream_as_written() {
        assert_eq!(host_of("example.com:443"), "example.com");
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "[::1]");
    }
}
