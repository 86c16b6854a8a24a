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
//! Bounded like the control plane: at most [`MAX_CONNECTIONS`] at once
//! (more are closed at accept), an idle connection closed after
//! [`IDLE_TIMEOUT`], [`MAX_STREAMS`] concurrent calls per connection, and
//! each call answered within [`CALL_TIMEOUT`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::control_conn::{ConnLimits, incoming_tcp};

/// Probes at once: kubelet keeps one or two; room for a few humans.
pub const MAX_CONNECTIONS: usize = 16;
/// A probe connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent calls per connection (a Watch holds one).
pub const MAX_STREAMS: u32 = 4;
/// A Check is answered from memory; this only bounds a stuck peer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `health` on `listener` until `stop` is cancelled.
pub async fn serve<H: Health>(
    listener: tokio::net::TcpListener,
    health: HealthServer<H>,
    stop: CancellationToken,
) {
    let incoming = incoming_tcp(listener, ConnLimits::new(MAX_CONNECTIONS, IDLE_TIMEOUT));
    let result = Server::builder()
        .max_concurrent_streams(MAX_STREAMS)
        .http2_max_header_list_size(16 * 1024)
        .timeout(CALL_TIMEOUT)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "health endpoint failed; no longer serving grpc.health.v1");
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
