//! TLS a listener serves: [`ServedTls`], built from a [`proto::TlsServer`],
//! holds the current rustls config and swaps it when the certificate
//! changes. Each handshake takes the config current at its start, so a
//! reload changes what new handshakes see and leaves open connections
//! alone. A bad new certificate is refused (counted, logged, kept in
//! `last_reload_error`) and the old one keeps serving.
//!
//! Reloads come from three places: an update (a new generation builds a new
//! `ServedTls` from the files, and takes over the counters), SIGHUP /
//! `netctl reload` ([`super::reload_all`]), and the files changing on disk
//! ([`ServedTls::watch`], polled every [`WATCH_INTERVAL`]). A refused
//! change is logged once: the refused files' stamp is remembered, so the
//! next poll tries again only when they change again.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::files::{self, Stamp};
use super::{Reason, provider};
use crate::proto;
use crate::spec::SpecError;

pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HANDSHAKE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);
/// How often the files of a served certificate are checked for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);
/// Overrides [`WATCH_INTERVAL`] (a humantime duration, 10ms to 1h), for
/// tests that rotate files and should not wait 5 s per step; not a
/// setting users are meant to need.
pub const WATCH_INTERVAL_ENV: &str = "NETD_TLS_WATCH_INTERVAL";

/// The interval in effect: [`WATCH_INTERVAL`], or [`WATCH_INTERVAL_ENV`]
/// when it is set to a duration in range (read once; a bad value is
/// logged and ignored).
pub fn watch_interval() -> Duration {
    static I: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *I.get_or_init(|| {
        let Ok(v) = std::env::var(WATCH_INTERVAL_ENV) else {
            return WATCH_INTERVAL;
        };
        match humantime::parse_duration(&v) {
            Ok(d) if (Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&d) => d,
            _ => {
                tracing::warn!(value = %v, "{WATCH_INTERVAL_ENV}: expected a duration from 10ms to 1h; polling every {}s",
                    WATCH_INTERVAL.as_secs());
                WATCH_INTERVAL
            }
        }
    })
}
/// Deadline of one reload's file reads (a hung mount fails that reload).
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// Whether client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Asked for; a client without one is let in, one with a bad one not.
    Request,
    Require,
}

/// Counters of a listener's TLS, shared across its generations.
#[derive(Debug, Default)]
pub struct TlsCounters {
    pub handshakes: AtomicU64,
    /// By [`Reason`] as index.
    pub failed: [AtomicU64; Reason::ALL.len()],
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub last_reload_error: Mutex<String>,
    pub last: Mutex<Negotiated>,
    pub upstream_handshakes: AtomicU64,
    pub upstream_failures: AtomicU64,
    /// notAfter of the served leaf, Unix seconds (0: none).
    pub not_after: AtomicI64,
}

/// What a completed handshake agreed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// "TLSv1.3"
    pub version: String,
    /// "TLS13_AES_128_GCM_SHA256"
    pub cipher: String,
    /// Empty: no ALPN.
    pub alpn: String,
    /// The verified client certificate's subject; empty: none.
    pub client_subject: String,
}

impl Negotiated {
    pub fn of(conn: &rustls::CommonState) -> Negotiated {
        Negotiated {
            version: conn
                .protocol_version()
                .map(version_name)
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            client_subject: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| subject_of(c.as_ref()))
                .unwrap_or_default(),
        }
    }
}

fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

/// A certificate's subject as `CN=..., O=...`; "?" when it does not parse.
pub fn subject_of(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One loaded certificate and the config serving it.
#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    stamp: Stamp,
    subject: String,
    not_after: i64,
}

/// The TLS of one listener generation.
#[derive(Debug)]
pub struct ServedTls {
    source: Source,
    timeout: Duration,
    current: RwLock<Arc<Loaded>>,
    counters: Arc<TlsCounters>,
}

impl ServedTls {
    /// Validate `spec` and load its files (blocking: call where a kind's
    /// `from_spec` runs). None when `spec` turns no TLS on. `default_alpn`
    /// is offered when the spec names no ALPN protocols.
    pub fn from_spec(
        spec: Option<&proto::TlsServer>,
        default_alpn: &[&str],
    ) -> Result<Option<ServedTls>, SpecError> {
        let Some(spec) = spec else { return Ok(None) };
        if spec == &proto::TlsServer::default() {
            return Ok(None);
        }
        let need = |v: &str, key: &str, other: &str| {
            if v.is_empty() {
                Err(SpecError::at(
                    key,
                    format!("{key} is missing: TLS needs both {other} and {key}"),
                ))
            } else {
                Ok(PathBuf::from(v))
            }
        };
        let cert = need(&spec.cert_file, "tls_cert", "tls_key")?;
        let key = need(&spec.key_file, "tls_key", "tls_cert")?;
        for (v, k) in [
            (&spec.cert_file, "tls_cert"),
            (&spec.key_file, "tls_key"),
            (&spec.client_ca_file, "tls_client_ca"),
        ] {
            if !v.is_empty() && !v.starts_with('/') {
                return Err(SpecError::at(
                    k,
                    format!(
                        "{k} '{v}' must be an absolute path (netd's working directory is not yours)"
                    ),
                ));
            }
        }
        let client_ca =
            (!spec.client_ca_file.is_empty()).then(|| PathBuf::from(&spec.client_ca_file));
        let client_auth = match (spec.client_auth.as_str(), &client_ca) {
            ("", None) => ClientAuth::None,
            ("" | "require", Some(_)) => ClientAuth::Require,
            ("request", Some(_)) => ClientAuth::Request,
            ("require" | "request", None) => {
                return Err(SpecError::at(
                    "tls_client_auth",
                    "tls_client_auth needs tls_client_ca (the CA client certificates are verified against)",
                ));
            }
            (other, _) => {
                return Err(SpecError::at(
                    "tls_client_auth",
                    format!("tls_client_auth '{other}': expected require or request"),
                ));
            }
        };
        let alpn: Vec<Vec<u8>> = if spec.alpn.is_empty() {
            default_alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
        } else {
            spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
        };
        if spec.alpn.len() > 16
            || alpn
                .iter()
                .any(|p| p.is_empty() || p.len() > 255 || !p.is_ascii())
        {
            return Err(SpecError::at(
                "tls_alpn",
                "tls_alpn: at most 16 protocol names of 1-255 ASCII characters, e.g. h2,http/1.1",
            ));
        }
        let timeout = match &spec.handshake_timeout {
            None => DEFAULT_HANDSHAKE_TIMEOUT,
            Some(d) => {
                let d = Duration::try_from(*d)
                    .ok()
                    .filter(|d| HANDSHAKE_TIMEOUT_RANGE.contains(d));
                d.ok_or_else(|| {
                    SpecError::at(
                        "tls_handshake_timeout",
                        "tls_handshake_timeout must be between 1ms and 1h",
                    )
                })?
            }
        };
        let source = Source {
            cert,
            key,
            client_ca,
            client_auth,
            alpn,
        };
        let loaded = source.load().map_err(SpecError::new)?;
        let counters = Arc::<TlsCounters>::default();
        counters.not_after.store(loaded.not_after, Relaxed);
        Ok(Some(ServedTls {
            source,
            timeout,
            current: RwLock::new(Arc::new(loaded)),
            counters,
        }))
    }

    /// The spec as in effect (defaults filled in).
    pub fn effective(spec: &proto::TlsServer) -> proto::TlsServer {
        let mut s = spec.clone();
        if s.handshake_timeout.is_none() {
            s.handshake_timeout = prost_types::Duration::try_from(DEFAULT_HANDSHAKE_TIMEOUT).ok();
        }
        if !s.client_ca_file.is_empty() && s.client_auth.is_empty() {
            s.client_auth = "require".into();
        }
        s
    }

    /// Share the counters of the generation this one replaces. An update
    /// that serves other files (or the same files changed) counts as a
    /// reload; the last refusal is cleared then, as a reload clears it.
    pub fn carry_over(&mut self, prev: &ServedTls) {
        let not_after = self.counters.not_after.load(Relaxed);
        self.counters = prev.counters.clone();
        self.counters.not_after.store(not_after, Relaxed);
        let same_files = self.source.paths() == prev.source.paths()
            && self.current.read().stamp == prev.current.read().stamp;
        if !same_files {
            self.counters.reloads.fetch_add(1, Relaxed);
            self.counters.last_reload_error.lock().clear();
        }
    }

    pub fn counters(&self) -> &Arc<TlsCounters> {
        &self.counters
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.timeout
    }

    /// The config new handshakes use now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().config.clone()
    }

    /// The current config offering `alpn` instead of the listener's (a
    /// proxy passing through what its upstream agreed on).
    pub fn config_with_alpn(&self, alpn: Vec<Vec<u8>>) -> Arc<ServerConfig> {
        let mut c = (*self.config()).clone();
        c.alpn_protocols = alpn;
        Arc::new(c)
    }

    /// Handshake with a client on `io` within the handshake timeout;
    /// counted either way.
    pub async fn accept<IO>(&self, io: IO) -> Result<TlsStream<IO>, Reason>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        let result = tokio::time::timeout(self.timeout, acceptor.accept(io)).await;
        match result {
            Ok(Ok(s)) => {
                self.record_handshake(s.get_ref().1);
                Ok(s)
            }
            Ok(Err(e)) => Err(self.record_failure(Reason::of_io(&e))),
            Err(_) => Err(self.record_failure(Reason::Timeout)),
        }
    }

    /// Count a completed handshake and keep what it agreed on.
    pub fn record_handshake(&self, conn: &rustls::CommonState) {
        self.counters.handshakes.fetch_add(1, Relaxed);
        let n = Negotiated::of(conn);
        let mut last = self.counters.last.lock();
        if *last != n {
            *last = n;
        }
    }

    /// Count a failed handshake.
    pub fn record_failure(&self, reason: Reason) -> Reason {
        self.counters.failed[reason as usize].fetch_add(1, Relaxed);
        reason
    }

    pub fn stats(&self) -> proto::TlsStats {
        let c = &self.counters;
        let f = |r: Reason| c.failed[r as usize].load(Relaxed);
        let cur = self.current.read().clone();
        let last = c.last.lock().clone();
        proto::TlsStats {
            handshakes: c.handshakes.load(Relaxed),
            failed_no_shared_cipher: f(Reason::NoSharedCipher),
            failed_unknown_ca: f(Reason::UnknownCa),
            failed_bad_certificate: f(Reason::BadCertificate),
            failed_protocol_version: f(Reason::ProtocolVersion),
            failed_timeout: f(Reason::Timeout),
            failed_other: f(Reason::Other),
            certificate_subject: cur.subject.clone(),
            certificate_not_after: cur.not_after,
            reloads: c.reloads.load(Relaxed),
            reload_failures: c.reload_failures.load(Relaxed),
            last_reload_error: c.last_reload_error.lock().clone(),
            last_version: last.version,
            last_cipher: last.cipher,
            last_alpn: last.alpn,
            last_client_subject: last.client_subject,
            upstream_handshakes: c.upstream_handshakes.load(Relaxed),
            upstream_failures: c.upstream_failures.load(Relaxed),
        }
    }

    /// Read the files again if they changed since the last load (or always,
    /// with `force`) and swap the config; blocking. Ok(true): a new
    /// certificate serves; Ok(false): nothing changed; Err: refused, the
    /// old one serves on.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        if !force && Stamp::of(&self.source.paths()) == self.current.read().stamp {
            return Ok(false);
        }
        match self.source.load() {
            Ok(loaded) => {
                self.counters.not_after.store(loaded.not_after, Relaxed);
                *self.current.write() = Arc::new(loaded);
                self.counters.reloads.fetch_add(1, Relaxed);
                self.counters.last_reload_error.lock().clear();
                Ok(true)
            }
            Err(e) => {
                // Do not retry the same bad files every poll: remember them.
                let stamp = Stamp::of(&self.source.paths());
                let mut cur = self.current.write();
                if cur.stamp != stamp {
                    *cur = Arc::new(Loaded {
                        config: cur.config.clone(),
                        stamp,
                        subject: cur.subject.clone(),
                        not_after: cur.not_after,
                    });
                }
                drop(cur);
                self.counters.reload_failures.fetch_add(1, Relaxed);
                *self.counters.last_reload_error.lock() = e.clone();
                Err(e)
            }
        }
    }

    /// [`ServedTls::reload`] on the blocking pool, bounded.
    pub async fn reload_off_runtime(self: &Arc<Self>, force: bool) -> Result<bool, String> {
        let me = self.clone();
        crate::sys::safe_file::off_runtime(
            "reloading a TLS certificate",
            READ_DEADLINE,
            move || Ok(me.reload(force)),
        )
        .await
        .map_err(|e| e.to_string())?
    }

    /// Register for [`super::reload_all`] and poll the files for a change
    /// until `stop`; `name` is the listener's, for logs. A change on disk
    /// that is refused is logged and, given `events`, published as the
    /// listener's RELOAD_FAILED (once per change).
    pub fn watch(
        self: &Arc<Self>,
        name: Arc<str>,
        stop: tokio_util::sync::CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
        events: Option<(crate::telemetry::events::EventBus, proto::ListenerKind)>,
    ) {
        super::register(&name, self);
        let me = Arc::downgrade(self);
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(watch_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(tls) = me.upgrade() else { return };
                match tls.reload_off_runtime(false).await {
                    Ok(true) => tracing::info!(listener = %name, subject = %tls.current.read().subject,
                        "TLS certificate changed on disk; new handshakes use the new one"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e,
                            "TLS certificate changed on disk but cannot be used; the old one keeps serving");
                        if let Some((bus, kind)) = &events {
                            bus.publish(
                                proto::EventKind::ReloadFailed,
                                &name,
                                *kind,
                                format!("TLS certificate changed on disk but refused, the old one keeps serving: {e}"),
                            );
                        }
                    }
                }
            }
        });
    }
}

/// Where a served certificate comes from and how it is offered: what a
/// reload reads again.
#[derive(Debug)]
struct Source {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
}

impl Source {
    fn paths(&self) -> Vec<&std::path::Path> {
        let mut p = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.client_ca {
            p.push(ca);
        }
        p
    }

    /// Read the files and build a config (blocking).
    fn load(&self) -> Result<Loaded, String> {
        let stamp = Stamp::of(&self.paths());
        let cert_pem = files::read_public(&self.cert)
            .map_err(|e| format!("tls_cert: cannot read {}: {e}", self.cert.display()))?;
        let key_pem = files::read_key(&self.key)
            .map_err(|e| format!("tls_key: cannot read {}: {e}", self.key.display()))?;
        let ca_pem = match &self.client_ca {
            None => None,
            Some(p) => Some(
                files::read_public(p)
                    .map_err(|e| format!("tls_client_ca: cannot read {}: {e}", p.display()))?,
            ),
        };
        let (config, subject, not_after) = build_config(
            &cert_pem,
            &key_pem,
            ca_pem.as_deref(),
            self.client_auth,
            &self.alpn,
        )?;
        Ok(Loaded {
            config: Arc::new(config),
            stamp,
            subject,
            not_after,
        })
    }
}

/// A server config from PEM material, with the leaf's subject and notAfter.
pub fn build_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
    client_auth: ClientAuth,
    alpn: &[Vec<u8>],
) -> Result<(ServerConfig, String, i64), String> {
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (client_ca_pem, client_auth) {
        (None, _) | (_, ClientAuth::None) => builder.with_no_client_auth(),
        (Some(ca), auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| format!("tls_client_ca: not a PEM certificate: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls_client_ca: unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_client_ca: no certificate in the file".into());
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
            if auth == ClientAuth::Request {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("tls_client_ca: {e}"))?)
        }
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_cert: not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("tls_cert: no certificate in the file".into());
    };
    let (subject, not_after) = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, c)) => (c.subject().to_string(), c.validity().not_after.timestamp()),
        Err(e) => {
            return Err(format!(
                "tls_cert: the first certificate does not parse: {e}"
            ));
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if not_after < now {
        return Err(format!(
            "tls_cert: the certificate ({subject}) expired at {}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64)
            )
        ));
    }
    // The key's text is never put in an error: only that it is unusable.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        "tls_key: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".to_string()
    })?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_cert and tls_key do not make a usable pair: {e}"))?;
    config.alpn_protocols = alpn.to_vec();
    Ok((config, subject, not_after))
}
