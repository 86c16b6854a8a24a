//! Address parsing shared by `netd` and `netctl`.
//!
//! The control plane is reached at `unix:/path/to/sock` or `host:port`; both
//! binaries take their default from [`default_control_addr`] so they always
//! agree. Listen addresses are `host:port` and are resolved once, when a
//! listener is started.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Environment variable that overrides the default control address.
pub const CONTROL_ENV: &str = "NETD_CONTROL";

/// Where the control plane listens (daemon) or is dialled (netctl).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// A TCP `host:port`, kept as written so names resolve at use.
    Tcp(String),
}

impl fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ControlAddr::Tcp(a) => f.write_str(a),
        }
    }
}

impl std::str::FromStr for ControlAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddrError::new(
                    s,
                    "a unix: address needs a path, e.g. unix:/run/netd/netd.sock",
                ));
            }
            return Ok(ControlAddr::Unix(PathBuf::from(path)));
        }
        split_host_port(s)?;
        Ok(ControlAddr::Tcp(s.to_string()))
    }
}

/// The control address used when neither `--control` nor `NETD_CONTROL` is
/// given: `/run/netd/netd.sock` for root (the systemd unit's
/// RuntimeDirectory), otherwise `$XDG_RUNTIME_DIR/netd.sock`, falling back to
/// `/tmp/netd-$UID.sock`.
pub fn default_control_addr() -> ControlAddr {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return ControlAddr::Unix(PathBuf::from("/run/netd/netd.sock"));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return ControlAddr::Unix(PathBuf::from(dir).join("netd.sock"));
    }
    ControlAddr::Unix(PathBuf::from(format!("/tmp/netd-{uid}.sock")))
}

/// A malformed address, with the input and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid address '{input}': {reason}")]
pub struct AddrError {
    pub input: String,
    pub reason: String,
}

impl AddrError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        AddrError {
            input: input.to_string(),
            reason: reason.into(),
        }
    }
}

fn split_host_port(s: &str) -> Result<(&str, u16), AddrError> {
    const HINT: &str = "expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080";
    let (host, port) = s.rsplit_once(':').ok_or_else(|| AddrError::new(s, HINT))?;
    if host.is_empty() {
        return Err(AddrError::new(s, format!("missing host; {HINT}")));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| AddrError::new(s, format!("'{port}' is not a port number (0-65535)")))?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(AddrError::new(
            s,
            "an IPv6 host must be in brackets, e.g. [::1]:8080",
        ));
    }
    Ok((host, port))
}

/// Resolve a `host:port` listen address to one socket address. IP literals
/// are taken as they are; names (e.g. `localhost`) go through the resolver
/// and the first answer wins.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, AddrError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(AddrError::new(
            s,
            "empty; expected host:port, e.g. 127.0.0.1:8080",
        ));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    split_host_port(s)?;
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| AddrError::new(s, format!("cannot resolve host: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| AddrError::new(s, "the host name resolved to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_addr_forms() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ControlAddr>().unwrap(),
            ControlAddr::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "127.0.0.1:50051".parse::<ControlAddr>().unwrap(),
            ControlAddr::Tcp("127.0.0.1:50051".into())
        );
        assert!("unix:".parse::<ControlAddr>().is_err());
        assert!("nonsense".parse::<ControlAddr>().is_err());
        assert!("host:notaport".parse::<ControlAddr>().is_err());
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!(parse_listen_addr("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_listen_addr("[::1]:9000").unwrap().is_ipv6());
        let e = parse_listen_addr("127.0.0.1:99999").unwrap_err();
        assert!(e.to_string().contains("not a port number"), "{e}");
        let e = parse_listen_addr("8080").unwrap_err();
        assert!(e.to_string().contains("expected host:port"), "{e}");
        assert!(parse_listen_addr("::1:80").is_err());
        assert!(parse_listen_addr("").is_err());
    }
}
