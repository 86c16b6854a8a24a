//! The TLS keys of a kind's flat form, shared by every kind that serves
//! TLS (`tls_cert`, `tls_key`, ...: [`SERVER_KEYS`]) or originates it to
//! an upstream (`upstream_tls`, `upstream_sni`, ...: [`CLIENT_KEYS`]), so
//! that the options are spelled and read the same everywhere. A kind lists
//! the keys in its `KEYS` and calls [`read_server`]/[`write_server`] (or the
//! client pair) from its `read_config`/`write_config`.
//!
//! What the files hold and how they are checked is [`crate::net::tls`].

use super::form::{self, FieldError, Key, Unit};
use super::table::Table;
use crate::proto;

pub const TLS_CERT: Key = Key::new(
    "tls_cert",
    "tls-cert",
    Unit::File,
    "Serve TLS with this PEM certificate chain (with --tls-key); reloaded when it changes.",
);
pub const TLS_KEY: Key = Key::new(
    "tls_key",
    "tls-key",
    Unit::File,
    "The PEM private key of --tls-cert (owned by netd's user or root, mode o-rwx).",
);
pub const TLS_CLIENT_CA: Key = Key::new(
    "tls_client_ca",
    "tls-client-ca",
    Unit::File,
    "Verify client certificates against these PEM CA certificates (mTLS).",
);
pub const TLS_CLIENT_AUTH: Key = Key::new(
    "tls_client_auth",
    "tls-client-auth",
    Unit::Text,
    "With --tls-client-ca: require (default) or request a client certificate.",
);
pub const TLS_ALPN: Key = Key::new(
    "tls_alpn",
    "tls-alpn",
    Unit::Text,
    "ALPN protocols offered, comma-separated, e.g. h2,http/1.1 (default: the kind's).",
);
pub const TLS_HANDSHAKE_TIMEOUT: Key = Key::new(
    "tls_handshake_timeout",
    "tls-handshake-timeout",
    Unit::Duration,
    "A client must finish its TLS handshake within this (default 10s).",
);

/// The keys of [`proto::TlsServer`], in the order they are written.
pub const SERVER_KEYS: [Key; 6] = [
    TLS_CERT,
    TLS_KEY,
    TLS_CLIENT_CA,
    TLS_CLIENT_AUTH,
    TLS_ALPN,
    TLS_HANDSHAKE_TIMEOUT,
];

pub const UPSTREAM_TLS: Key = Key::new(
    "upstream_tls",
    "upstream-tls",
    Unit::Switch,
    "Connect to the upstreams with TLS (verified against --upstream-ca or the system roots).",
);
pub const UPSTREAM_SNI: Key = Key::new(
    "upstream_sni",
    "upstream-sni",
    Unit::Text,
    "Server name sent to and verified on the upstream (default: its host).",
);
pub const UPSTREAM_CA: Key = Key::new(
    "upstream_ca",
    "upstream-ca",
    Unit::File,
    "Verify the upstream against these PEM CA certificates (default: system roots).",
);
pub const UPSTREAM_CERT: Key = Key::new(
    "upstream_cert",
    "upstream-cert",
    Unit::File,
    "Client certificate chain (PEM) shown to the upstream (mTLS; with --upstream-key).",
);
pub const UPSTREAM_KEY: Key = Key::new(
    "upstream_key",
    "upstream-key",
    Unit::File,
    "The PEM private key of --upstream-cert.",
);
pub const UPSTREAM_INSECURE: Key = Key::new(
    "upstream_insecure",
    "upstream-insecure",
    Unit::Switch,
    "DANGER: do not verify the upstream's certificate (lab self-signed upstreams only).",
);

/// The keys of [`proto::TlsClient`] (a proxy's `upstream_tls`).
pub const CLIENT_KEYS: [Key; 6] = [
    UPSTREAM_TLS,
    UPSTREAM_SNI,
    UPSTREAM_CA,
    UPSTREAM_CERT,
    UPSTREAM_KEY,
    UPSTREAM_INSECURE,
];

/// The served TLS of a flat form; None when no `tls_*` key is set.
pub fn read_server(t: &toml::Table) -> Result<Option<proto::TlsServer>, FieldError> {
    if !SERVER_KEYS.iter().any(|k| t.contains_key(k.key)) {
        return Ok(None);
    }
    Ok(Some(proto::TlsServer {
        cert_file: form::text(t, TLS_CERT.key)?,
        key_file: form::text(t, TLS_KEY.key)?,
        client_ca_file: form::text(t, TLS_CLIENT_CA.key)?,
        client_auth: form::text(t, TLS_CLIENT_AUTH.key)?,
        alpn: split_alpn(&form::text(t, TLS_ALPN.key)?),
        handshake_timeout: form::duration(t, TLS_HANDSHAKE_TIMEOUT.key)?,
    }))
}

/// The inverse of [`read_server`].
pub fn write_server(tls: &Option<proto::TlsServer>, t: &mut Table) -> Result<(), String> {
    let Some(proto::TlsServer {
        cert_file,
        key_file,
        client_ca_file,
        client_auth,
        alpn,
        handshake_timeout,
    }) = tls
    else {
        return Ok(());
    };
    t.string(TLS_CERT.key, cert_file);
    t.string(TLS_KEY.key, key_file);
    t.string(TLS_CLIENT_CA.key, client_ca_file);
    t.string(TLS_CLIENT_AUTH.key, client_auth);
    t.string(TLS_ALPN.key, &alpn.join(","));
    t.duration(TLS_HANDSHAKE_TIMEOUT.key, handshake_timeout)
}

/// The originated TLS of a flat form; None when no `upstream_*` TLS key is
/// set.
pub fn read_client(t: &toml::Table) -> Result<Option<proto::TlsClient>, FieldError> {
    if !CLIENT_KEYS.iter().any(|k| t.contains_key(k.key)) {
        return Ok(None);
    }
    Ok(Some(proto::TlsClient {
        enabled: form::bool(t, UPSTREAM_TLS.key)?,
        sni: form::text(t, UPSTREAM_SNI.key)?,
        ca_file: form::text(t, UPSTREAM_CA.key)?,
        cert_file: form::text(t, UPSTREAM_CERT.key)?,
        key_file: form::text(t, UPSTREAM_KEY.key)?,
        insecure: form::bool(t, UPSTREAM_INSECURE.key)?,
    }))
}

/// The inverse of [`read_client`].
pub fn write_client(tls: &Option<proto::TlsClient>, t: &mut Table) {
    let Some(proto::TlsClient {
        enabled,
        sni,
        ca_file,
        cert_file,
        key_file,
        insecure,
    }) = tls
    else {
        return;
    };
    t.bool(UPSTREAM_TLS.key, *enabled);
    t.string(UPSTREAM_SNI.key, sni);
    t.string(UPSTREAM_CA.key, ca_file);
    t.string(UPSTREAM_CERT.key, cert_file);
    t.string(UPSTREAM_KEY.key, key_file);
    t.bool(UPSTREAM_INSECURE.key, *insecure);
}

/// `h2, http/1.1` as a list; empty items dropped.
pub fn split_alpn(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_round_trip_through_the_flat_form() {
        let tls = Some(proto::TlsServer {
            cert_file: "/etc/netd/tls/cert.pem".into(),
            key_file: "/etc/netd/tls/key.pem".into(),
            client_ca_file: "/etc/netd/tls/ca.pem".into(),
            client_auth: "request".into(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            handshake_timeout: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
        });
        let mut t = Table::default();
        write_server(&tls, &mut t).unwrap();
        let back: toml::Table = toml::from_str(t.text()).unwrap();
        assert_eq!(read_server(&back).unwrap(), tls);
        assert_eq!(read_server(&toml::Table::new()).unwrap(), None);
    }

    #[test]
    fn client_keys_round_trip_through_the_flat_form() {
        let tls = Some(proto::TlsClient {
            enabled: true,
            sni: "api.internal".into(),
            ca_file: "/etc/ca.pem".into(),
            cert_file: "/etc/c.pem".into(),
            key_file: "/etc/k.pem".into(),
            insecure: true,
        });
        let mut t = Table::default();
        write_client(&tls, &mut t);
        let back: toml::Table = toml::from_str(t.text()).unwrap();
        assert_eq!(read_client(&back).unwrap(), tls);
    }
}
