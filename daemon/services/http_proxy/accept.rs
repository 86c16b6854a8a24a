//! The http-proxy's accept loops on the per-core workers
//! ([`crate::net::workers`]), as the TCP proxy's: one loop on each worker,
//! on its own socket of the listener's SO_REUSEPORT group (see
//! [`crate::net::accept::spread`]), so a client connection, the requests
//! on it and the pooled upstream connections they use all live on one
//! thread (each worker has its own upstream pools, [`super::forward::Clients`],
//! which share `max_idle_per_upstream` between them):
//! no request crosses threads between the client's connection task and
//! the upstream's. With one core, the main runtime's single loop.
//!
//! bench/http_proxy_bench.sh's keep-alive run (wrk -t2 -c50 through the
//! proxy to nginx, 2 cores), the main runtime's loop before and the
//! workers after, six alternating rounds: 1.63x the requests/s, 0.81x the
//! CPU per request (bench/README.md).

use std::sync::Arc;

use tokio::net::TcpListener;

use super::HttpProxy;
use super::forward::Handler;
use crate::net::accept::{Accepting, accept_loop, spread};
use crate::net::bind::Sockets;
use crate::net::workers;
use crate::services::ServiceCtx;

/// How many upstream pools a listener keeps: one per worker (the
/// workers are one per core; the main runtime alone on one core).
pub(super) fn pools() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A worker's share of `max_idle_per_upstream` (at least one), so the
/// listener's idle connections to an upstream stay within the setting.
pub(super) fn idle_share(max_idle: u32) -> u32 {
    (max_idle / pools() as u32).max(1)
}

impl HttpProxy {
    /// Accept clients until the listener stops.
    pub(super) async fn accept(
        self: &Arc<Self>,
        sockets: Sockets<TcpListener>,
        ctx: &ServiceCtx,
    ) -> anyhow::Result<()> {
        let serve = |proxy: &Arc<Self>, ctx: &ServiceCtx, worker: usize| {
            let handler = Handler {
                proxy: proxy.clone(),
                ctx: ctx.clone(),
                worker,
            };
            let (server, ctx) = (proxy.server.clone(), ctx.clone());
            move |stream, peer| {
                let (server, handler, ctx) = (server.clone(), handler.clone(), ctx.clone());
                async move { server.serve(handler, stream, peer, ctx).await }
            }
        };
        // One loop per socket, each on its worker ([`workers::run_each`]:
        // they end with this future however it ends, so no socket
        // outlives `run`).
        let workers = workers::handles().len();
        let listeners = spread(sockets, workers)?;
        let what = "an http-proxy worker's accept loop";
        workers::run_each(
            listeners,
            &ctx.stop_accepting,
            what,
            |i, std_listener, stop| {
                // The worker's own upstream pools.
                let w = i % workers.max(1);
                let (proxy, ctx) = (self.clone(), ctx.clone());
                async move {
                    // Registered with the reactor of the runtime it runs on.
                    let listener = TcpListener::from_std(std_listener)?;
                    let accepting = Accepting {
                        stop: &stop,
                        ..ctx.accepting()
                    };
                    accept_loop(&listener, accepting, &proxy.limit, serve(&proxy, &ctx, w)).await
                }
            },
        )
        .await
    }
}
