//! Dialling the control plane over a Unix socket or TCP (optionally TLS
//! with a client certificate), shared by `netctl` and the integration tests.
//!
//! Before anything is sent on a Unix socket, the peer's credentials
//! (SO_PEERCRED) are checked: the process serving it must be root, the
//! system account `netd`, or the caller. A socket another user bound first
//! (say in a shared /tmp) is refused, so it never sees a request or a token.

use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::proto::control_client::ControlClient;
use crate::util::addr::ControlAddr;

/// Default time to establish the connection (and the TLS handshake).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time a unary call may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply netctl accepts (a ListListeners of many listeners).
const MAX_REPLY_BYTES: usize = 64 << 20;

/// PEM material for TLS to a TCP control address.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA that signed netd's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for mTLS.
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
}

/// How to dial.
#[derive(Debug, Clone)]
pub struct DialOptions {
    pub connect_timeout: Duration,
    /// Per-call deadline; `None` for long-lived watch streams.
    pub request_timeout: Option<Duration>,
    /// TLS for a TCP address; `None` dials plain HTTP/2 (a netd started
    /// with --control-insecure).
    pub tls: Option<TlsFiles>,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            tls: None,
        }
    }
}

/// Open a channel to netd at `addr` with the default options.
pub async fn connect(addr: &ControlAddr) -> anyhow::Result<Channel> {
    connect_with(addr, &DialOptions::default()).await
}

/// Open a channel to netd at `addr`.
pub async fn connect_with(addr: &ControlAddr, opts: &DialOptions) -> anyhow::Result<Channel> {
    let channel = match addr {
        ControlAddr::Tcp(hostport) => {
            let scheme = if opts.tls.is_some() { "https" } else { "http" };
            let mut ep = Endpoint::from_shared(format!("{scheme}://{hostport}"))
                .with_context(|| format!("invalid control address '{hostport}'"))?
                .connect_timeout(opts.connect_timeout);
            if let Some(t) = opts.request_timeout {
                ep = ep.timeout(t);
            }
            if let Some(tls) = &opts.tls {
                let mut cfg = ClientTlsConfig::new();
                // An IPv6 literal is the URI's host in brackets, which is
                // not a name TLS can check: give it the address.
                if let Some((ip, _)) = hostport
                    .strip_prefix('[')
                    .and_then(|rest| rest.split_once(']'))
                {
                    cfg = cfg.domain_name(ip);
                }
                match &tls.ca_pem {
                    Some(ca) => cfg = cfg.ca_certificate(Certificate::from_pem(ca)),
                    None => anyhow::bail!(
                        "TLS to {hostport} needs the CA that signed netd's certificate: --cacert (NETD_CACERT)"
                    ),
                }
                match (&tls.cert_pem, &tls.key_pem) {
                    (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(c, k)),
                    (None, None) => {}
                    _ => anyhow::bail!("--cert and --key go together"),
                }
                ep = ep
                    .tls_config(cfg)
                    .map_err(|e| anyhow::anyhow!("TLS settings: {}", chain(&e)))?;
            }
            ep.connect().await
        }
        ControlAddr::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector
            // decides where to go.
            let mut ep =
                Endpoint::from_static("http://localhost").connect_timeout(opts.connect_timeout);
            if let Some(t) = opts.request_timeout {
                ep = ep.timeout(t);
            }
            ep.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&path).await?;
                    check_peer(&stream, &path)?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
        }
    };
    channel.map_err(|e| {
        let msg = chain(&e);
        let hint = hint_for(&msg, matches!(addr, ControlAddr::Tcp(_)));
        anyhow::anyhow!("cannot connect to netd at {addr}: {msg}{hint}")
    })
}

/// A `netd.v1.Control` client for `addr` with the default options.
pub async fn control_client(addr: &ControlAddr) -> anyhow::Result<ControlClient<Channel>> {
    control_client_with(addr, &DialOptions::default()).await
}

/// A `netd.v1.Control` client for `addr`.
pub async fn control_client_with(
    addr: &ControlAddr,
    opts: &DialOptions,
) -> anyhow::Result<ControlClient<Channel>> {
    Ok(ControlClient::new(connect_with(addr, opts).await?)
        .max_decoding_message_size(MAX_REPLY_BYTES))
}

/// Pages a client follows at most: far more than `max_listeners` allows
/// (a cap of 100,000 listeners at 500 a page), so only a daemon handing out
/// tokens that never end hits it.
const MAX_PAGES: usize = 1000;

/// Every listener, sorted by name: ListListeners followed page by page
/// (default page size) until `next_page_token` is empty.
pub async fn list_all(
    client: &mut ControlClient<Channel>,
) -> Result<Vec<crate::proto::Listener>, tonic::Status> {
    let mut all = Vec::new();
    let mut token = String::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .list_listeners(crate::proto::ListListenersRequest {
                page_size: 0,
                page_token: token,
            })
            .await?
            .into_inner();
        all.extend(page.listeners);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
    Err(endless())
}

/// A GetStats of every listener (or of the one named): its pages merged
/// into one sample, timed at the first page.
pub async fn stats_all(
    client: &mut ControlClient<Channel>,
    name: &str,
) -> Result<crate::proto::StatsSample, tonic::Status> {
    let mut all: Option<crate::proto::StatsSample> = None;
    let mut token = String::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .get_stats(crate::proto::GetStatsRequest {
                name: name.to_string(),
                page_size: 0,
                page_token: token,
            })
            .await?
            .into_inner();
        token = page.next_page_token.clone();
        match &mut all {
            None => all = Some(page),
            Some(a) => a.listeners.extend(page.listeners),
        }
        if token.is_empty() {
            let mut a = all.unwrap_or_default();
            a.next_page_token.clear();
            return Ok(a);
        }
    }
    Err(endless())
}

fn endless() -> tonic::Status {
    tonic::Status::internal(format!(
        "netd answered more than {MAX_PAGES} pages; giving up"
    ))
}

/// The peer of a Unix control socket must be root, the `netd` system
/// account, or ourselves.
fn check_peer(stream: &tokio::net::UnixStream, path: &std::path::Path) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let me = crate::sys::euid();
    let uid = cred.uid();
    if uid == 0 || uid == me || crate::control::auth::netd_system_uid() == Some(uid) {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "refusing to talk to {}: it is served by uid {uid}, not by root, the netd user or you (uid {me}); another user may have bound it to impersonate netd",
            path.display()
        ),
    ))
}

/// The error and its sources, deduplicated, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        source = s.source();
    }
    msg
}

/// Explain `msg` with a hint where one helps.
pub fn with_hint(msg: &str, tcp: bool) -> String {
    format!("{msg}{}", hint_for(msg, tcp))
}

/// A transport-level failure of a call (the TLS peer refused our
/// certificate after the handshake, the connection broke): the status and
/// its sources on one line, with a hint where one helps. `None` when the
/// status carries no transport error.
pub fn transport_failure(s: &tonic::Status) -> Option<String> {
    let source = std::error::Error::source(s)?;
    let msg = chain(source);
    Some(format!("{msg}{}", hint_for(&msg, true)))
}

/// Why TLS to netd fails, found by a fresh handshake outside the HTTP/2
/// stack. With TLS 1.3 a server that rejects the client certificate says
/// so in an alert after the client's handshake has finished, so the call
/// only sees a broken connection; this handshake reads that alert. `None`
/// if the handshake and a first read succeed (the failure lies elsewhere).
pub async fn diagnose_tls(hostport: &str, tls: &TlsFiles, timeout: Duration) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let attempt = async {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(tls.ca_pem.as_deref()?) {
            roots.add(c.ok()?).ok()?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots);
        let mut config = match (&tls.cert_pem, &tls.key_pem) {
            (Some(c), Some(k)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c)
                    .collect::<Result<_, _>>()
                    .ok()?;
                let key = PrivateKeyDer::from_pem_slice(k).ok()?;
                builder.with_client_auth_cert(chain, key).ok()?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let host = match hostport.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => hostport,
        };
        let name = ServerName::try_from(host.to_string()).ok()?;
        let tcp = tokio::net::TcpStream::connect(hostport).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let mut s = match connector.connect(name, tcp).await {
            Ok(s) => s,
            Err(e) => return Some(chain(&e)),
        };
        // The HTTP/2 client preface and an empty SETTINGS frame; netd
        // answers with SETTINGS, or the TLS layer with its alert.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        if let Err(e) = s.write_all(&hello).await {
            return Some(chain(&e));
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf).await {
            Ok(_) => None,
            Err(e) => Some(chain(&e)),
        }
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

fn hint_for(msg: &str, tcp: bool) -> &'static str {
    let m = msg.to_ascii_lowercase();
    if m.contains("refusing to talk") {
        ""
    } else if m.contains("unknownissuer") || m.contains("unknown issuer") {
        " (netd's certificate is not signed by the CA given with --cacert)"
    } else if m.contains("certificaterequired")
        || m.contains("certificate required")
        || m.contains("handshakefailure")
    {
        " (netd requires a client certificate: --cert and --key)"
    } else if m.contains("expired") {
        " (a certificate has expired)"
    } else if m.contains("badcertificate")
        || m.contains("bad certificate")
        || m.contains("unknownca")
        || m.contains("unknown ca")
    {
        " (netd did not accept the client certificate: is it signed by netd's client_ca?)"
    } else if m.contains("notvalidforname") || m.contains("not valid for name") {
        " (netd's certificate does not name the host in --control)"
    } else if m.contains("permission denied") {
        " (the socket is mode 0660: run as root or as a member of its group, e.g. netd)"
    } else if tcp
        && (m.contains("corrupt") || m.contains("invalidcontenttype") || m.contains("tls"))
    {
        " (TLS mismatch: a TLS netd needs --cacert, a --control-insecure one does not)"
    } else {
        " (is netd running? see --control / NETD_CONTROL)"
    }
}
