//! TLS a proxy originates to its upstreams: [`UpstreamTls`], built from a
//! [`proto::TlsClient`]. The upstream is verified against `ca_file`, or
//! the system's roots (rustls-native-certs, read once when the spec is
//! validated); `insecure` skips the certificate check but still checks the
//! handshake's signatures, and is logged at every start. An optional client
//! certificate answers an upstream that asks for one (mTLS).
//!
//! The files are read when the spec is validated (start, update); an update
//! reads them again.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use super::{files, provider};
use crate::proto;
use crate::spec::SpecError;

/// The TLS of one proxy generation towards its upstreams.
#[derive(Debug)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    /// The name sent and verified; None: each upstream's host.
    sni: Option<ServerName<'static>>,
    pub insecure: bool,
}

impl UpstreamTls {
    /// Validate `spec` and read its files (blocking). None when it turns
    /// no TLS on.
    pub fn from_spec(spec: Option<&proto::TlsClient>) -> Result<Option<UpstreamTls>, SpecError> {
        let Some(spec) = spec else { return Ok(None) };
        if !spec.enabled {
            if *spec != proto::TlsClient::default() {
                return Err(SpecError::at(
                    "upstream_tls",
                    "upstream_sni, upstream_ca, upstream_cert, upstream_key and upstream_insecure \
                     need upstream_tls = true",
                ));
            }
            return Ok(None);
        }
        for (v, k) in [
            (&spec.ca_file, "upstream_ca"),
            (&spec.cert_file, "upstream_cert"),
            (&spec.key_file, "upstream_key"),
        ] {
            if !v.is_empty() && !v.starts_with('/') {
                return Err(SpecError::at(
                    k,
                    format!("{k} '{v}' must be an absolute path"),
                ));
            }
        }
        if spec.insecure && !spec.ca_file.is_empty() {
            return Err(SpecError::at(
                "upstream_insecure",
                "upstream_insecure and upstream_ca contradict each other: give one",
            ));
        }
        let sni = match spec.sni.as_str() {
            "" => None,
            s => Some(ServerName::try_from(s.to_string()).map_err(|_| {
                SpecError::at(
                    "upstream_sni",
                    format!("upstream_sni '{s}' is not a DNS name or IP address"),
                )
            })?),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SpecError::new(format!("TLS versions: {e}")))?;
        let builder = if spec.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
        } else {
            builder.with_root_certificates(roots(&spec.ca_file)?)
        };
        let mut config = match (spec.cert_file.as_str(), spec.key_file.as_str()) {
            ("", "") => builder.with_no_client_auth(),
            ("", _) | (_, "") => {
                return Err(SpecError::at(
                    if spec.cert_file.is_empty() {
                        "upstream_cert"
                    } else {
                        "upstream_key"
                    },
                    "upstream_cert and upstream_key go together: give both or neither",
                ));
            }
            (cert, key) => {
                let pem = files::read_public(cert.as_ref()).map_err(|e| {
                    SpecError::at(
                        "upstream_cert",
                        format!("upstream_cert: cannot read {cert}: {e}"),
                    )
                })?;
                let chain = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        SpecError::at("upstream_cert", format!("upstream_cert: not PEM: {e}"))
                    })?;
                let key_pem = files::read_key(key.as_ref()).map_err(|e| {
                    SpecError::at(
                        "upstream_key",
                        format!("upstream_key: cannot read {key}: {e}"),
                    )
                })?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                    SpecError::at(
                        "upstream_key",
                        "upstream_key: no PEM private key in the file",
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    SpecError::at(
                        "upstream_cert",
                        format!("upstream_cert and upstream_key: {e}"),
                    )
                })?
            }
        };
        config.resumption = rustls::client::Resumption::default();
        Ok(Some(UpstreamTls {
            config: Arc::new(config),
            sni,
            insecure: spec.insecure,
        }))
    }

    /// Handshake with the upstream `host` (a name or an IP address, used
    /// for SNI and verification unless `upstream_sni` is set) on `io`,
    /// offering `alpn` (empty: none).
    pub async fn connect<IO>(
        &self,
        io: IO,
        host: &str,
        alpn: Vec<Vec<u8>>,
    ) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match &self.sni {
            Some(n) => n.clone(),
            None => ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            )
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("'{host}' is not a server name"),
                )
            })?,
        };
        let config = if alpn.is_empty() {
            self.config.clone()
        } else {
            let mut c = (*self.config).clone();
            c.alpn_protocols = alpn;
            Arc::new(c)
        };
        tokio_rustls::TlsConnector::from(config)
            .connect(name, io)
            .await
    }
}

/// The CA roots to verify upstreams against: the file, or the system's.
fn roots(ca_file: &str) -> Result<rustls::RootCertStore, SpecError> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            return Err(SpecError::at(
                "upstream_ca",
                "upstream_tls: no system CA certificates were found (install ca-certificates) \
                 and upstream_ca is not set",
            ));
        }
        return Ok(roots);
    }
    let pem = files::read_public(ca_file.as_ref()).map_err(|e| {
        SpecError::at(
            "upstream_ca",
            format!("upstream_ca: cannot read {ca_file}: {e}"),
        )
    })?;
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c =
            c.map_err(|e| SpecError::at("upstream_ca", format!("upstream_ca: not PEM: {e}")))?;
        roots
            .add(c)
            .map_err(|e| SpecError::at("upstream_ca", format!("upstream_ca: {e}")))?;
    }
    if roots.is_empty() {
        return Err(SpecError::at(
            "upstream_ca",
            "upstream_ca: no certificate in the file",
        ));
    }
    Ok(roots)
}

/// `upstream_insecure`: any certificate is accepted; the handshake's
/// signatures are still checked with it (also `bench/tls_load.rs
/// --insecure`).
#[derive(Debug)]
pub struct NoVerify(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
