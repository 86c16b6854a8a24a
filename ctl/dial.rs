//! Reaching netd: the dial options from the global flags, the default
//! address candidates, and how a gRPC status becomes one classified line.

use anyhow::{Context as _, anyhow};
use netd::control::client::{DialOptions, TlsFiles, control_client_with};
use netd::proto::{self, control_client::ControlClient};
use netd::util::addr::{ControlAddr, check_private_dir, default_control_addr, dial_candidates};
use tonic::Code;
use tonic::transport::Channel;

use crate::Cli;
use crate::render;

/// A gRPC status as one line: the daemon's message, which already names the
/// problem; a code prefix only where the message alone would be unclear.
/// The listener a Start/Stop/Get reply carries, or an error saying what
/// could not be done.
pub(crate) fn reply_listener<R>(
    what: &str,
    reply: Result<tonic::Response<R>, tonic::Status>,
    listener: impl FnOnce(R) -> Option<proto::Listener>,
) -> anyhow::Result<proto::Listener> {
    let reply = reply.map_err(|s| status_line(what, &s))?.into_inner();
    listener(reply).ok_or_else(|| anyhow!("{what}: netd sent an empty reply"))
}

pub(crate) fn status_line(what: &str, s: &tonic::Status) -> anyhow::Error {
    if let (Code::Unknown | Code::Unavailable | Code::Internal, Some(t)) =
        (s.code(), netd::control::client::transport_failure(s))
    {
        return render::unreachable(anyhow!("{what}: {t}"));
    }
    match s.code() {
        Code::Unavailable if s.message().is_empty() => {
            render::unreachable(anyhow!("{what}: netd is unavailable"))
        }
        Code::Cancelled if s.message().contains("Timeout expired") => {
            render::unreachable(anyhow!("{what}: netd did not answer in time (--timeout)"))
        }
        Code::Unknown | Code::Internal => {
            render::refused(anyhow!("{what}: netd error: {}", s.message()))
        }
        _ => render::refused(anyhow!("{what}: {}", s.message())),
    }
}

/// Where and how to reach netd, from the global flags.
#[derive(Clone)]
pub(crate) struct Dial {
    pub(crate) control: Option<ControlAddr>,
    pub(crate) opts: DialOptions,
}

impl Dial {
    pub(crate) fn from_cli(cli: &Cli) -> anyhow::Result<Dial> {
        let read = |flag: &str,
                    p: &Option<std::path::PathBuf>|
         -> anyhow::Result<Option<Vec<u8>>> {
            p.as_ref()
                .map(|p| {
                    std::fs::read(p).with_context(|| format!("cannot read {flag} {}", p.display()))
                })
                .transpose()
        };
        let tls = match (&cli.cacert, &cli.cert) {
            (None, None) => None,
            _ => Some(TlsFiles {
                ca_pem: read("--cacert", &cli.cacert)?,
                cert_pem: read("--cert", &cli.cert)?,
                key_pem: read("--key", &cli.key)?,
            }),
        };
        Ok(Dial {
            control: cli.control.first().cloned(),
            opts: DialOptions {
                connect_timeout: cli.connect_timeout,
                request_timeout: Some(cli.timeout),
                tls,
            },
        })
    }

    /// A client; `streaming` calls get no per-request deadline. Failing to
    /// reach netd is classed "unreachable" (exit 3).
    pub(crate) async fn client(&self, streaming: bool) -> anyhow::Result<ControlClient<Channel>> {
        self.connect(streaming).await.map_err(render::unreachable)
    }

    async fn connect(&self, streaming: bool) -> anyhow::Result<ControlClient<Channel>> {
        let mut opts = self.opts.clone();
        if streaming {
            opts.request_timeout = None;
        }
        if let Some(a) = &self.control {
            return control_client_with(a, &opts).await;
        }
        let mut first_error = None;
        for addr in dial_candidates() {
            let attempt = async {
                if addr == default_control_addr() {
                    if let Some(dir) = private_dir_of(&addr) {
                        if dir.exists() {
                            check_private_dir(&dir).map_err(|e| anyhow!("{e}"))?;
                        }
                    }
                }
                control_client_with(&addr, &opts).await
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| anyhow!("no control address to try")))
    }
}

pub(crate) fn private_dir_of(addr: &ControlAddr) -> Option<std::path::PathBuf> {
    match addr {
        ControlAddr::Unix(p) if p.parent() == Some(netd::util::addr::private_dir().as_path()) => {
            Some(netd::util::addr::private_dir())
        }
        _ => None,
    }
}
