//! The HTTP connection server the HTTP kinds share (`http`, `http-proxy`):
//! one connection from accept to close. The TLS handshake when the
//! listener serves HTTPS (in the connection task, so it holds a connection
//! slot and has the handshake deadline; plain HTTP sent to the HTTPS port
//! gets a 400 that says so), the choice of HTTP/1.1 or HTTP/2 (ALPN on
//! TLS; the prior-knowledge preface on plaintext), and hyper driving the
//! connection until it ends, goes idle or the listener stops. What each
//! request gets is the kind's [`Handler`].

pub mod conn;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::net::tls::server::subject_of;
use crate::net::tls::{Reason, ServedTls};
use crate::services::ServiceCtx;
use conn::{Activity, Lingering, Socket, StreamExec};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long an idle HTTP/2 connection gets to finish its GOAWAY exchange
/// before it is dropped.
const H2_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A connection's facts a handler may want, beyond the request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The subject of the client's verified certificate (HTTPS with a
    /// client CA), when the access log will show it.
    pub client_cert: Option<Arc<str>>,
    /// The connection is TLS.
    pub tls: bool,
}

/// What a kind does with each request.
pub trait Handler: Clone + Send + Sync + 'static {
    type Body: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;

    fn handle(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// A layer between an accepted connection (after its TLS, if any)
    /// and HTTP, for this client: `Ok` is the stream HTTP is then served
    /// on and the layer (which owns the connection) to run beside it, in
    /// the connection's task; `Err` gives the connection back to be served
    /// as it is (the default). The http-proxy's TCP faults act here.
    fn beneath<S: conn::Socket>(
        &self,
        stream: S,
        _peer: SocketAddr,
        _ctx: &ServiceCtx,
    ) -> Result<(tokio::io::DuplexStream, Layer), S> {
        Err(stream)
    }
}

/// A layer beneath HTTP (see [`Handler::beneath`]): it ends when it has
/// passed both directions' ends on, or its connection failed.
pub type Layer = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Once HTTP is done with a connection, how long its layer may take to
/// pass the close on to the client (as the lingering close).
const LAYER_GRACE: Duration = Duration::from_secs(5);

/// How a listener serves HTTP connections.
#[derive(Debug)]
pub struct Server {
    /// A client must send a request's headers (HTTP/1) or the preface
    /// within this.
    pub header_timeout: Duration,
    /// An HTTP/2 connection with no open stream this long is closed.
    pub idle_timeout: Duration,
    pub max_streams: u32,
    pub max_header_bytes: u32,
    /// HTTPS: the served TLS and its handshake deadline.
    pub tls: Option<Arc<ServedTls>>,
    pub tls_handshake_timeout: Duration,
    /// Look up the client certificate's subject (for the access log).
    pub want_client_cert: bool,
    /// HTTP/1 connections may be upgraded (WebSocket through a proxy).
    pub upgrades: bool,
    /// HTTP/2 connections closed for being idle (the listener's counter).
    pub idle_closed: Arc<AtomicU64>,
}

/// The first byte a client sends, once it arrives; None: closed or failed
/// first.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match stream.peek(&mut b).await {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

impl Server {
    /// On an update: the listener's counters (HTTP/2 idle closes, the
    /// served TLS's) go on in the new generation's server.
    pub fn carry_over(this: &mut Arc<Server>, prev: &Server, idle_closed: &Arc<AtomicU64>) {
        if let Some(server) = Arc::get_mut(this) {
            server.idle_closed = idle_closed.clone();
            if let (Some(new), Some(old)) = (&mut server.tls, &prev.tls) {
                if let Some(new) = Arc::get_mut(new) {
                    new.carry_over(old);
                }
            }
        }
    }

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

    /// Serve one accepted connection until it ends.
    pub async fn serve<H: Handler>(
        self: Arc<Self>,
        handler: H,
        stream: TcpStream,
        peer: SocketAddr,
        ctx: ServiceCtx,
    ) {
        let Some(tls) = self.tls.clone() else {
            let Some(h2) = self.is_h2(&stream).await else {
                tracing::debug!(listener = %ctx.name, %peer, "no request within the header timeout; closing");
                return;
            };
            let peer = Peer {
                addr: peer,
                client_cert: None,
                tls: false,
            };
            return self.serve_io(handler, stream, h2, peer, ctx).await;
        };
        // Boxed: the TLS state (rustls' connection, the TLS variant of the
        // HTTP connection) would otherwise size every plaintext
        // connection's future too.
        Box::pin(self.serve_tls(handler, tls, stream, peer, ctx)).await;
    }

    /// One HTTPS connection: the first byte, the handshake, then HTTP.
    async fn serve_tls<H: Handler>(
        self: Arc<Self>,
        handler: H,
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
                let client_cert = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .filter(|_| self.want_client_cert && crate::telemetry::access_log::enabled())
                    .map(|c| Arc::from(subject_of(c.as_ref())));
                let peer = Peer {
                    addr: peer,
                    client_cert,
                    tls: true,
                };
                self.serve_io(handler, stream, h2, peer, ctx).await;
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

    /// Serve HTTP on an established connection (plain TCP or TLS), or on
    /// the handler's layer beneath HTTP when it takes the connection
    /// (boxed: only those connections carry its state).
    async fn serve_io<S: Socket, H: Handler>(
        self: Arc<Self>,
        handler: H,
        stream: S,
        h2: bool,
        peer: Peer,
        ctx: ServiceCtx,
    ) {
        match handler.beneath(stream, peer.addr, &ctx) {
            Err(stream) => self.serve_http(handler, stream, h2, peer, ctx).await,
            Ok((inner, layer)) => {
                Box::pin(self.serve_layered(handler, inner, layer, h2, peer, ctx)).await
            }
        }
    }

    /// HTTP on a layer's inner stream, and the layer, in this task (so
    /// the connection holds its slot until both end): when the layer ends
    /// first (its connection closed or failed), HTTP sees the inner
    /// stream's end; when HTTP ends first, the layer has [`LAYER_GRACE`]
    /// to pass the close on.
    async fn serve_layered<H: Handler>(
        self: Arc<Self>,
        handler: H,
        inner: tokio::io::DuplexStream,
        mut layer: Layer,
        h2: bool,
        peer: Peer,
        ctx: ServiceCtx,
    ) {
        let http = self.serve_http(handler, inner, h2, peer, ctx);
        tokio::pin!(http);
        tokio::select! {
            () = &mut http => {
                let _ = tokio::time::timeout(LAYER_GRACE, layer).await;
            }
            () = &mut layer => http.await,
        }
    }

    /// Serve HTTP on a stream until it ends, goes idle or the listener
    /// stops.
    async fn serve_http<S: Socket, H: Handler>(
        self: Arc<Self>,
        handler: H,
        stream: S,
        h2: bool,
        peer: Peer,
        ctx: ServiceCtx,
    ) {
        let activity = Arc::new(Activity::new());
        let streams = activity.clone();
        let addr = peer.addr;
        let peer = Arc::new(peer);
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            let peer = peer.clone();
            let open = streams.open();
            async move {
                let _open = open;
                Ok::<_, Infallible>(handler.handle(req, &peer).await)
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
                        self.idle_closed.fetch_add(1, Relaxed);
                        tracing::debug!(listener = %ctx.name, peer = %addr, "HTTP/2 connection idle; closing");
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
                    tracing::debug!(listener = %ctx.name, peer = %addr, error = %e, "HTTP connection error");
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
            if self.upgrades {
                drive!(
                    b.serve_connection(io, service).with_upgrades(),
                    std::future::pending::<()>()
                );
            } else {
                drive!(
                    b.serve_connection(io, service),
                    std::future::pending::<()>()
                );
            }
        }
    }
}
