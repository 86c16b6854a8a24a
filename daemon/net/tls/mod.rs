//! TLS on the data plane, one stack for the whole binary (rustls with the
//! ring provider, as the control plane): what a listener serves
//! ([`server::ServedTls`]: terminate, reload, count), what a proxy
//! originates to its upstreams ([`client::UpstreamTls`]), the files both
//! read ([`files`]) and why a handshake failed ([`Reason`]).
//!
//! Kinds take their options from [`crate::spec::tls`] (the same keys
//! everywhere) and call [`server::ServedTls::from_spec`] in their
//! `from_spec`, [`server::ServedTls::accept`] per connection and
//! [`server::ServedTls::watch`] when they run.

pub mod client;
pub mod files;
pub mod server;

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

pub use client::UpstreamTls;
pub use server::{ServedTls, TlsCounters};

/// The crypto provider of every TLS config netd builds.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Why a handshake failed, as counted in stats and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoSharedCipher = 0,
    UnknownCa = 1,
    BadCertificate = 2,
    ProtocolVersion = 3,
    Timeout = 4,
    Other = 5,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::NoSharedCipher,
        Reason::UnknownCa,
        Reason::BadCertificate,
        Reason::ProtocolVersion,
        Reason::Timeout,
        Reason::Other,
    ];

    /// The label value in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoSharedCipher => "no_shared_cipher",
            Reason::UnknownCa => "unknown_ca",
            Reason::BadCertificate => "bad_certificate",
            Reason::ProtocolVersion => "protocol_version",
            Reason::Timeout => "timeout",
            Reason::Other => "other",
        }
    }

    /// The reason of an error from a tokio-rustls handshake.
    pub fn of_io(e: &std::io::Error) -> Reason {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(r) => Reason::of(r),
            None if e.kind() == std::io::ErrorKind::TimedOut => Reason::Timeout,
            None => Reason::Other,
        }
    }

    pub fn of(e: &rustls::Error) -> Reason {
        use rustls::{
            AlertDescription as A, CertificateError as C, Error as E, PeerIncompatible as P,
        };
        match e {
            E::PeerIncompatible(
                P::SupportedVersionsExtensionRequired
                | P::Tls12NotOffered
                | P::Tls12NotOfferedOrEnabled
                | P::ServerDoesNotSupportTls12Or13
                | P::ServerTlsVersionIsDisabledByOurConfig,
            ) => Reason::ProtocolVersion,
            E::PeerIncompatible(_) => Reason::NoSharedCipher,
            E::InvalidCertificate(C::UnknownIssuer) => Reason::UnknownCa,
            E::InvalidCertificate(_) | E::NoCertificatesPresented => Reason::BadCertificate,
            E::AlertReceived(a) => match a {
                A::UnknownCA => Reason::UnknownCa,
                A::BadCertificate
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::CertificateRequired => Reason::BadCertificate,
                A::ProtocolVersion => Reason::ProtocolVersion,
                A::HandshakeFailure | A::InsufficientSecurity => Reason::NoSharedCipher,
                _ => Reason::Other,
            },
            _ => Reason::Other,
        }
    }
}

/// The served certificates of the running listeners, for
/// [`reload_all`]. Entries of finished generations are dropped as found.
static LIVE: Mutex<Vec<(Arc<str>, Weak<ServedTls>)>> = Mutex::new(Vec::new());

fn register(name: &Arc<str>, tls: &Arc<ServedTls>) {
    let mut live = LIVE.lock();
    live.retain(|(_, w)| w.strong_count() > 0);
    live.push((name.clone(), Arc::downgrade(tls)));
}

/// Read every served certificate again (SIGHUP, `netctl reload`), each off
/// the runtime. Returns how many certificates were re-read and one line
/// per listener whose new files were refused ("name: why"; the old
/// certificate keeps serving there). A listener counts once: its newest
/// generation is re-read (an older one that still has connections keeps
/// the certificate it has until they end).
pub async fn reload_all() -> (usize, Vec<String>) {
    let live: Vec<(Arc<str>, Arc<ServedTls>)> = {
        let mut live = LIVE.lock();
        live.retain(|(_, w)| w.strong_count() > 0);
        let mut newest: Vec<(Arc<str>, Arc<ServedTls>)> = Vec::new();
        // Newest first: registrations are pushed in order.
        for (n, w) in live.iter().rev() {
            if newest.iter().any(|(seen, _)| seen == n) {
                continue;
            }
            if let Some(tls) = w.upgrade() {
                newest.push((n.clone(), tls));
            }
        }
        newest.reverse();
        newest
    };
    let mut changed = 0;
    let mut refused = Vec::new();
    for (name, tls) in live {
        match tls.reload_off_runtime(true).await {
            Ok(_) => changed += 1,
            Err(e) => {
                tracing::warn!(listener = %name, error = %e,
                    "reload: the TLS certificate cannot be used; the old one keeps serving");
                refused.push(format!("{name}: {e}"));
            }
        }
    }
    (changed, refused)
}
