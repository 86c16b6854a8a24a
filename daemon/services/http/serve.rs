//! One HTTP connection, from accept to close: the TLS handshake when the
//! listener serves HTTPS (in the connection task, so it holds a connection
//! slot and has the handshake deadline), the choice of HTTP/1.1 or HTTP/2
//! (ALPN on TLS; the prior-knowledge preface on plaintext), and hyper
//! driving the connection until it ends, goes idle or the listener stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::conn::{Activity, Lingering, Socket, StreamExec};
use super::{H2_CLOSE_GRACE, H2_PREFACE, Http};
use crate::net::tls::server::subject_of;
use crate::net::tls::{Reason, ServedTls};
use crate::services::ServiceCtx;

/// The first byte a client sends, once it arrives; None: closed or failed
/// first.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match stream.peek(&mut b).await {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

impl Http {
    /// Is this connection HTTP/2 with prior knowledge? Waits (up to the
    /// header timeout) until the first bytes decide it.
    async fn is_h2(&self, stream: &TcpStream) -> Option<bool> {
        let sniff = async {
            let mut buf = [0u8; 24];
            loop {
                let n = stream.peek(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                if buf[..n] != H2_PREFACE[..n] {
                    return Some(false);
                }
                if n == H2_PREFACE.len() {
                    return Some(true);
                }
                // A partial preface: wait for the rest to arrive.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(self.header_timeout, sniff)
            .await
            .ok()
            .flatten()
    }

    pub(super) async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        ctx: ServiceCtx,
    ) {
        let Some(tls) = self.tls.clone() else {
            let Some(h2) = self.is_h2(&stream).await else {
                tracing::debug!(listener = %ctx.name, %peer, "no request within the header timeout; closing");
                return;
            };
            return self.serve_io(stream, h2, peer, None, ctx).await;
        };
        // Boxed: the TLS state (rustls' connection, the TLS variant of the
        // HTTP connection) would otherwise size every plaintext
        // connection's future too.
        Box::pin(self.serve_tls(tls, stream, peer, ctx)).await;
    }

    /// One HTTPS connection: the first byte, the handshake, then HTTP.
    async fn serve_tls(
        self: Arc<Self>,
        tls: Arc<ServedTls>,
        stream: TcpStream,
        peer: SocketAddr,
        ctx: ServiceCtx,
    ) {
        // A plaintext request to the HTTPS port gets a 400 that says so
        // (as nginx and Go do) instead of TLS alert bytes; it is counted as
        // a failed handshake. A client that sends nothing gets the handshake
        // deadline here, and a full one again once it starts.
        let first = tokio::select! {
            r = tokio::time::timeout(self.tls_handshake_timeout, first_byte(&stream)) => r,
            _ = ctx.close_connections.cancelled() => return,
        };
        match first {
            Err(_) => {
                tls.record_failure(Reason::Timeout);
                tracing::debug!(listener = %ctx.name, %peer, "no TLS handshake within the deadline");
                return;
            }
            Ok(Some(b)) if b.is_ascii_alphabetic() => {
                tls.record_failure(Reason::Other);
                tracing::debug!(listener = %ctx.name, %peer, "plaintext HTTP on the HTTPS port; answered 400");
                self.refuse_plaintext(stream).await;
                return;
            }
            // A handshake record, or nothing (the handshake counts that).
            Ok(_) => {}
        }
        // HTTPS: HTTP/2 when the client chose h2 by ALPN; HTTP/1.1 when it
        // chose http/1.1 or nothing.
        let handshake = tokio::select! {
            r = tls.accept(stream) => r,
            _ = ctx.close_connections.cancelled() => return,
        };
        match handshake {
            Ok(stream) => {
                let conn = stream.get_ref().1;
                let h2 = conn.alpn_protocol() == Some(b"h2");
                // For the access log: who the verified client is.
                let client_cert = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .filter(|_| self.access_log && crate::telemetry::access_log::enabled())
                    .map(|c| Arc::from(subject_of(c.as_ref())));
                self.serve_io(stream, h2, peer, client_cert, ctx).await;
            }
            Err(reason) => {
                tracing::debug!(listener = %ctx.name, %peer, reason = reason.label(), "TLS handshake failed");
            }
        }
    }

    /// Answer a plaintext HTTP request on the HTTPS port with a 400 and
    /// close gently (the request is left unread: see [`Lingering`]).
    async fn refuse_plaintext(&self, stream: TcpStream) {
        use tokio::io::AsyncWriteExt as _;
        let body = "{\"status\":\"error\",\"message\":\"plain HTTP sent to an HTTPS listener; use https://\"}";
        let reply = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut conn = Lingering::new(stream);
        let _ = tokio::time::timeout(self.header_timeout, async {
            conn.write_all(reply.as_bytes()).await?;
            conn.shutdown().await
        })
        .await;
    }

    /// Serve HTTP on an established connection (plain TCP or TLS);
    /// `client_cert` is the subject of a verified client certificate.
    async fn serve_io<S: Socket>(
        self: Arc<Self>,
        stream: S,
        h2: bool,
        peer: SocketAddr,
        client_cert: Option<Arc<str>>,
        ctx: ServiceCtx,
    ) {
        let http = self.clone();
        let name = ctx.name.clone();
        let stats = ctx.stats.clone();
        let activity = Arc::new(Activity::new());
        let streams = activity.clone();
        let service = hyper::service::service_fn(move |req| {
            let http = http.clone();
            let name = name.clone();
            let stats = stats.clone();
            let client_cert = client_cert.clone();
            let open = streams.open();
            async move {
                let _open = open;
                let resp = http
                    .handle(req, peer, client_cert.as_deref(), &name, &stats)
                    .await;
                Ok::<_, Infallible>(resp)
            }
        });
        let io = TokioIo::new(Lingering::new(stream));
        macro_rules! drive {
            ($conn:expr, $idle:expr) => {{
                let conn = $conn;
                tokio::pin!(conn);
                let idle = $idle;
                tokio::pin!(idle);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = idle.as_mut() => {
                        self.counters.idle_closed.fetch_add(1, Relaxed);
                        tracing::debug!(listener = %ctx.name, %peer, "HTTP/2 connection idle; closing");
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = tokio::time::timeout(H2_CLOSE_GRACE, conn.as_mut()) => r.unwrap_or(Ok(())),
                            _ = ctx.close_connections.cancelled() => Ok(()),
                        }
                    }
                    _ = ctx.stop_accepting.cancelled() => {
                        // Finish the request in flight, then close.
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = conn.as_mut() => r,
                            _ = ctx.close_connections.cancelled() => Ok(()),
                        }
                    }
                    _ = ctx.close_connections.cancelled() => Ok(()),
                };
                if let Err(e) = result {
                    tracing::debug!(listener = %ctx.name, %peer, error = %e, "HTTP connection error");
                }
            }};
        }
        if h2 {
            let exec = StreamExec {
                stats: ctx.stats.clone(),
                name: ctx.name.clone(),
                tracker: ctx.tracker.clone(),
            };
            let mut b = hyper::server::conn::http2::Builder::new(exec);
            b.timer(TokioTimer::new())
                .max_concurrent_streams(self.max_streams)
                .max_header_list_size(self.max_header_bytes);
            drive!(
                b.serve_connection(io, service),
                activity.idle(self.idle_timeout, self.header_timeout)
            );
        } else {
            let mut b = hyper::server::conn::http1::Builder::new();
            // Headers up to max_header_bytes are read and then checked by
            // the handler (431); hyper answers 431 itself when they do not
            // fit in its buffer, which is only a little larger.
            b.timer(TokioTimer::new())
                .header_read_timeout(self.header_timeout)
                .keep_alive(true)
                .max_buf_size((self.max_header_bytes as usize + 4096).max(8192));
            drive!(
                b.serve_connection(io, service),
                std::future::pending::<()>()
            );
        }
    }
}
