//! Pre-connected upstream TCP connections, pooled with bb8.
//!
//! The proxy keeps `preconnect` established connections warm per upstream
//! to cut connect latency (a full round trip, more over a long path). A warm
//! connection is handed to exactly one client and never returned: the pool
//! entry is an `Option<TcpStream>` that the proxy empties with
//! [`PooledConnection::take`]-style extraction, and an empty entry counts as
//! broken, so bb8 drops it and opens a replacement in the background.
//!
//! Validity: on checkout and when an entry comes back, a non-blocking
//! `MSG_PEEK` tells whether the upstream has closed the connection (EOF or
//! error); such connections are discarded and counted as stale, never handed
//! to a client. A warm connection to an address the upstream's name no
//! longer resolves to ([`super::resolve`]) is discarded the same way, not
//! counted as stale, and replaced by one to the new address. Data already waiting (an upstream that greets first) still
//! counts as alive and is forwarded to the client, which is why pre-connect
//! is the wrong tool for protocols where each client expects its own
//! greeting to arrive after it connects.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ProxyCounters;
use super::resolve::UpstreamAddr;

pub type TcpPool = bb8::Pool<TcpManager>;

/// A pool entry; `None` once a client has taken the connection.
pub type Slot = Option<TcpStream>;

/// Extraction of the connection from a pooled entry.
pub trait TakeConnection {
    fn take(&mut self) -> Option<TcpStream>;
}

impl TakeConnection for bb8::PooledConnection<'_, TcpManager> {
    fn take(&mut self) -> Option<TcpStream> {
        std::mem::take(&mut **self)
    }
}

/// bb8 manager for plain TCP connections to one upstream.
#[derive(Debug)]
pub struct TcpManager {
    addr: Arc<UpstreamAddr>,
    connect_timeout: Duration,
    counters: Arc<ProxyCounters>,
}

/// Whether the peer has not closed the connection, without consuming data.
fn alive(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(stream)
        .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

impl TcpManager {
    /// Whether a warm connection goes to an address the upstream's name no
    /// longer resolves to.
    fn moved(&self, s: &TcpStream) -> bool {
        self.addr.name().is_some() && s.peer_addr().is_ok_and(|p| p != self.addr.get())
    }
}

impl bb8::ManageConnection for TcpManager {
    type Connection = Slot;
    type Error = io::Error;

    async fn connect(&self) -> Result<Slot, io::Error> {
        let stream =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr.get()))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "pre-connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Some(stream))
    }

    async fn is_valid(&self, conn: &mut Slot) -> Result<(), io::Error> {
        match conn {
            Some(s) if self.moved(s) => Err(io::Error::other(
                "the upstream's name resolves elsewhere now",
            )),
            Some(s) if alive(s) => Ok(()),
            Some(_) => {
                self.counters.pool_stale.fetch_add(1, Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed by the upstream",
                ))
            }
            None => Err(io::Error::other("connection already taken")),
        }
    }

    fn has_broken(&self, conn: &mut Slot) -> bool {
        match conn {
            None => true,
            Some(s) if !alive(s) => {
                self.counters.pool_stale.fetch_add(1, Relaxed);
                true
            }
            Some(_) => false,
        }
    }
}

/// Errors from background pre-connects go to the log at debug level; the
/// proxy's own connects report upstream trouble.
#[derive(Debug, Clone)]
struct LogSink(Arc<UpstreamAddr>);

impl bb8::ErrorSink<io::Error> for LogSink {
    fn sink(&self, e: io::Error) {
        tracing::debug!(upstream = %self.0, error = %e, "pre-connect failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<io::Error>> {
        Box::new(self.clone())
    }
}

/// A pool that keeps `size` connections to `addr` established. Must be
/// called within a tokio runtime; fills in the background.
pub fn build(
    addr: Arc<UpstreamAddr>,
    size: u32,
    connect_timeout: Duration,
    counters: Arc<ProxyCounters>,
) -> TcpPool {
    bb8::Pool::builder()
        .max_size(size)
        .min_idle(Some(size))
        .test_on_check_out(true)
        .connection_timeout(connect_timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .error_sink(Box::new(LogSink(addr.clone())))
        .build_unchecked(TcpManager {
            addr,
            connect_timeout,
            counters,
        })
}
