//! Optional plaintext health endpoint (`[health] listen`): gRPC
//! `grpc.health.v1` and nothing else, for probes that cannot do what the
//! control plane asks of a caller.
//!
//! Kubernetes' native gRPC probe (kubelet) speaks h2c to the pod's IP
//! without TLS and without a client certificate, while a TCP control plane
//! requires TLS (or loopback and `insecure`). Rather than loosening the
//! control plane, this second server carries the same health service (one
//! reporter: when netd stops serving, both say NOT_SERVING) and no other:
//! no Control, no reflection, so it needs no authentication (health is
//! `Role::None` on the control plane too). What it reveals is whether netd
//! is serving.
//!
//! Admitted like every endpoint of netd's ([`crate::control::admission`]): at most
//! [`MAX_CONNECTIONS`] at once and [`PER_SOURCE`] from one source (more
//! are closed at accept), [`RESERVE`] of them kept for a local prober of
//! root or netd's own user (exempt from the per-source cap), so no
//! client, nor several remote addresses, can take every slot from the
//! prober; an idle connection closed after [`IDLE_TIMEOUT`],
//! [`MAX_STREAMS`] concurrent calls per connection, each call answered
//! within [`CALL_TIMEOUT`]. Only `Check` is served here: a `Watch` stream
//! holds its connection for as long as the client likes, which is what a
//! probe never needs and what starved the probes (a client holding 16
//! Watch streams made every kubelet `Check` fail). `Watch` is served on
//! the control plane, to authenticated callers.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};

use std::sync::Arc;

use crate::control::admission::{Gate, Limits};
use crate::control::auth::{Policy, RoleConfig};
use crate::control::conn::{ConnInfo, CountedBody, Endpoint, incoming_tcp};

/// Probes at once: kubelet keeps one or two; room for a few humans.
pub const MAX_CONNECTIONS: usize = 16;
/// Connections at once from one source (a local user, or an address).
pub const PER_SOURCE: usize = 4;
/// Of [`MAX_CONNECTIONS`], the slots kept for local probers of root or
/// netd's own user (kubelet on the node): remote peers with many
/// addresses share the rest.
pub const RESERVE: usize = 4;
/// A probe connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent calls per connection (a Watch holds one).
pub const MAX_STREAMS: u32 = 4;
/// A Check is answered from memory; this only bounds a stuck peer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `health` (Check only) on `listener` until `stop` is cancelled.
pub async fn serve<H: Health>(
    listener: tokio::net::TcpListener,
    health: HealthServer<H>,
    stop: CancellationToken,
) {
    let limits = Limits {
        per_source: PER_SOURCE,
        reserve: RESERVE,
        ..Limits::for_max(MAX_CONNECTIONS, false)
    };
    let endpoint = Endpoint {
        gate: Gate::new("health", limits),
        // Plain TCP, not `insecure`: every caller has no role, which is
        // all a Check needs.
        policy: Arc::new(Policy::new(RoleConfig::default(), None, false)),
        tls: None,
        idle_timeout: IDLE_TIMEOUT,
        idle_evict: Some(Arc::default()),
    };
    let result = Server::builder()
        .max_concurrent_streams(MAX_STREAMS)
        .http2_max_header_list_size(16 * 1024)
        .timeout(CALL_TIMEOUT)
        .layer(tower::layer::layer_fn(CheckOnly))
        .add_service(health)
        .serve_with_incoming_shutdown(incoming_tcp(listener, endpoint), stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "health endpoint failed; no longer serving grpc.health.v1");
    }
}

const WATCH: &str = "/grpc.health.v1.Health/Watch";

/// Answers `Health/Watch` with UNIMPLEMENTED and passes every other call,
/// counted as open on its connection while it runs (so that a connection
/// in a call is never the idle one closed to make room).
#[derive(Debug, Clone)]
struct CheckOnly<S>(S);

type Resp = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for CheckOnly<S>
where
    S: tower::Service<http::Request<B>, Response = Resp>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Resp, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == WATCH {
            let status = tonic::Status::unimplemented(
                "Health/Watch is not served on the plaintext health endpoint; use Check, or Watch on the control plane",
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let guard = req
            .extensions()
            .get::<ConnInfo>()
            .map(|i| i.state.stream_started());
        let fut = self.0.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(match guard {
                None => resp,
                Some(g) => resp.map(|b| tonic::body::Body::new(CountedBody::new(b, g))),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "x.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn listen_from_config_any_address_but_not_the_metrics_one() {
        let c = parse("[health]\nlisten = \"0.0.0.0:9091\"\n").unwrap();
        assert_eq!(c.health_listen, Some("0.0.0.0:9091".parse().unwrap()));
        assert_eq!(parse("").unwrap().health_listen, None);
        let e = parse(
            "[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n\
             [health]\nlisten = \"0.0.0.0:9464\"\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("x.toml:5: health.listen:") && e.contains("clashes with [metrics]"),
            "{e}"
        );
        let e = parse("[health]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.starts_with("x.toml:2: health.listen:"), "{e}");
        let e = parse("[health]\nlisten = \"127.0.0.1:1\"\nservices = []\n").unwrap_err();
        assert!(e.contains("services"), "{e}");
    }
}
