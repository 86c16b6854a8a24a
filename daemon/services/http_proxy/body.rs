//! The bodies the http-proxy passes on, counted: a request body's data
//! into the listener's `bytes_in`, a response body's into `bytes_out`
//! (one relaxed add per frame). A response body also carries the
//! request's access-log line, written when the body ends (or is dropped:
//! the client went away), with the bytes really sent. (An upstream that
//! fails in the middle of a response body is counted where its body is
//! taken, [`super::forward`], so that a fault's reset is not.)

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::forward::{Body, BoxError};
use crate::telemetry::stats::Stats;

/// The access-log line of one request, written once its response body
/// ends.
pub struct LogLine {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub client_cert: Option<Arc<str>>,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub began: Instant,
    /// The route it was counted under, and the upstream that answered
    /// (None: netd answered).
    pub route: Arc<str>,
    pub upstream: Option<SocketAddr>,
}

/// A body whose data is counted as it passes.
pub struct Counted<B = Body> {
    inner: B,
    stats: Arc<Stats>,
    /// Response bodies: `bytes_out`; request bodies: `bytes_in`.
    response: bool,
    bytes: u64,
    /// Written at the end (response bodies with the access log on).
    log: Option<LogLine>,
}

impl<B> Counted<B> {
    /// A request body going upstream (`bytes_in`).
    pub fn request(inner: B, stats: Arc<Stats>) -> Counted<B> {
        Counted {
            inner,
            stats,
            response: false,
            bytes: 0,
            log: None,
        }
    }

    /// A response body going to the client (`bytes_out`), with its
    /// access-log line.
    pub fn response(inner: B, stats: Arc<Stats>, log: Option<LogLine>) -> Counted<B> {
        Counted {
            inner,
            stats,
            response: true,
            bytes: 0,
            log,
        }
    }

    fn counter(&self) -> &AtomicU64 {
        if self.response {
            &self.stats.bytes_out
        } else {
            &self.stats.bytes_in
        }
    }
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)));
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.bytes += n;
                    Stats::add(this.counter(), n);
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Counted<B> {
    /// Write the access-log line (once).
    fn finish(&mut self) {
        let Some(line) = self.log.take() else {
            return;
        };
        crate::telemetry::access_log::http_proxy(&crate::telemetry::access_log::HttpProxyRequest {
            listener: &line.listener,
            client: line.client,
            client_cert: line.client_cert.as_deref(),
            method: line.method.as_str(),
            path: &line.path,
            status: line.status,
            bytes: self.bytes,
            duration_us: line.began.elapsed().as_micros() as u64,
            route: &line.route,
            upstream: line.upstream,
        });
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish();
    }
}
