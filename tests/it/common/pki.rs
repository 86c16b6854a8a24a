//! A small PKI for the tests (rcgen): a CA, server and client
//! certificates, written as PEM files into a directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A small PKI for the tests: a CA, netd's server certificate and client
/// certificates, written as PEM files into a directory.
pub struct Pki {
    dir: PathBuf,
    pub ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// The CA certificate's PEM file (`{name}-ca.pem`).
    pub fn ca_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-ca.pem"))
    }

    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// Issue a certificate: `cn` as common name, `sans` as DNS/IP names;
    /// `expired` puts its validity in the past. Returns (cert, key) paths.
    pub fn issue(&self, file: &str, cn: &str, sans: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        self.write(file, &cert.pem(), &key.serialize_pem())
    }

    /// A certificate that signs itself, claiming the name `cn`.
    pub fn self_signed(&self, file: &str, cn: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        self.write(file, &cert.pem(), &key.serialize_pem())
    }

    pub fn write(&self, file: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let c = self.dir.join(format!("{file}.pem"));
        let k = self.dir.join(format!("{file}-key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        // Keys closed to others, as netd requires of a data-plane key.
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }
}

/// A rustls client trusting the CA certificate at `ca`, offering `alpn`,
/// with an optional client certificate (cert, key paths).
pub fn tls_connector(
    ca: &Path,
    alpn: &[&str],
    client: Option<&(PathBuf, PathBuf)>,
) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}
