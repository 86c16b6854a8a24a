//! Dialling the control plane over a Unix socket or TCP, shared by `netctl`
//! and the integration tests.

use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::addr::ControlAddr;
use crate::proto::control_client::ControlClient;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Open a channel to netd at `addr`.
pub async fn connect(addr: &ControlAddr) -> anyhow::Result<Channel> {
    let channel = match addr {
        ControlAddr::Tcp(hostport) => {
            Endpoint::from_shared(format!("http://{hostport}"))
                .with_context(|| format!("invalid control address '{hostport}'"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .connect()
                .await
        }
        ControlAddr::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector
            // decides where to go.
            Endpoint::from_static("http://netd.local")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        }
    };
    channel.map_err(|e| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !msg.contains(&text) {
                msg = format!("{msg}: {text}");
            }
            source = s.source();
        }
        anyhow::anyhow!("cannot connect to netd at {addr}: {msg} (is netd running? see --control / NETD_CONTROL)")
    })
}

/// A `netd.v1.Control` client for `addr`.
pub async fn control_client(addr: &ControlAddr) -> anyhow::Result<ControlClient<Channel>> {
    Ok(ControlClient::new(connect(addr).await?))
}
