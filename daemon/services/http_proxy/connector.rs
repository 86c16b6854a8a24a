//! How the http-proxy's pooled clients reach an upstream: a TCP connect
//! (within `connect_timeout`, with TCP_NODELAY) to the address in the
//! request's URI (the upstream's current address, [`super::forward`]),
//! then, with `upstream_tls`, the TLS handshake (SNI `upstream_sni` or the
//! upstream's host as written). Handshakes and failures are counted in
//! the listener's TLS counters; the error names the cause, and the
//! request path puts it in the upstream's `last_error` and marks it down.
//!
//! ALPN: the HTTP/1 client offers `http/1.1`; the HTTP/2 client offers
//! `h2` and `http/1.1` and speaks what the upstream picks (an upstream
//! without h2 still serves HTTP/2 clients, over HTTP/1.1).
//!
//! Without `upstream_tls` a connect is a TCP connect and nothing else.
//! The pool's connection tasks stop with the listener's
//! `close_connections` ([`PoolExec`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::forward::Body;
use crate::net::tls::{TlsCounters, UpstreamTls};
use crate::services::proxy::Upstream;

/// Why a connection to an upstream could not be made: the text is the
/// upstream's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect failed: {0}")]
    Tcp(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// What a pooled client is built from.
pub struct Settings {
    pub connect_timeout: Duration,
    pub max_idle: u32,
    pub idle_timeout: Duration,
    pub tls: Option<Arc<UpstreamTls>>,
    pub counters: Arc<TlsCounters>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Stops the pool's connection tasks.
    pub close: CancellationToken,
}

/// A pooled client to the upstreams: HTTP/1.1, or (`h2`) HTTP/2 only on
/// plaintext and HTTP/2 or HTTP/1.1 by ALPN over TLS.
pub fn client(s: Settings, h2: bool) -> Client<Connector, Body> {
    let tls = s.tls.is_some();
    let alpn: &[&[u8]] = if h2 {
        &[b"h2", b"http/1.1"]
    } else {
        &[b"http/1.1"]
    };
    let connector = Connector(Arc::new(Inner {
        connect_timeout: s.connect_timeout,
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        tls: s.tls,
        counters: s.counters,
        upstreams: s.upstreams,
    }));
    let mut b = Client::builder(PoolExec { close: s.close });
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(s.idle_timeout)
        .pool_max_idle_per_host(s.max_idle as usize)
        .http2_only(h2 && !tls);
    b.build(connector)
}

/// Runs the pool's connection tasks until they end or the listener closes
/// its connections.
#[derive(Clone)]
pub struct PoolExec {
    close: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for PoolExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let close = self.close.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                () = close.cancelled() => {}
            }
        });
    }
}

struct Inner {
    connect_timeout: Duration,
    alpn: Vec<Vec<u8>>,
    tls: Option<Arc<UpstreamTls>>,
    counters: Arc<TlsCounters>,
    upstreams: Vec<Arc<Upstream>>,
}

/// The connector (a tower service from the URI to a connection).
#[derive(Clone)]
pub struct Connector(Arc<Inner>);

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.connect(&uri).await.map(TokioIo::new) })
    }
}

impl Inner {
    async fn connect(&self, uri: &Uri) -> Result<Conn, ConnectError> {
        let addr: SocketAddr = uri
            .authority()
            .and_then(|a| a.as_str().parse().ok())
            .ok_or_else(|| ConnectError::Tcp(format!("'{uri}' has no address")))?;
        let limit = self.connect_timeout;
        let tcp = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Tcp(e.to_string())),
            Err(_) => {
                return Err(ConnectError::Tcp(format!(
                    "timed out after {}",
                    humantime::format_duration(limit)
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(tcp));
        };
        let host = self.host_of(addr);
        let handshake = tls.connect(tcp, &host, self.alpn.clone());
        let error = match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(s)) => {
                self.counters.upstream_handshakes.fetch_add(1, Relaxed);
                return Ok(Conn::Tls(Box::new(s)));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {}", humantime::format_duration(limit)),
        };
        self.counters.upstream_failures.fetch_add(1, Relaxed);
        Err(ConnectError::Tls(error))
    }

    /// The host name to verify for the upstream now at `addr`: its host as
    /// written (a name or an IP literal).
    fn host_of(&self, addr: SocketAddr) -> String {
        self.upstreams
            .iter()
            .find(|u| u.addr.get() == addr)
            .map_or_else(
                || addr.ip().to_string(),
                |u| match u.given.rsplit_once(':') {
                    Some((h, _)) => h.to_string(),
                    None => u.given.to_string(),
                },
            )
    }
}

/// A connection to an upstream: TCP, or TLS over TCP.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain(_) => Connected::new(),
            Conn::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            Conn::Tls(_) => Connected::new(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
