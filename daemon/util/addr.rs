//! Address parsing shared by `netd` and `netctl`.
//!
//! The control plane is reached at `unix:/path/to/sock` or `host:port`; both
//! binaries take their default from [`default_control_addr`] so they always
//! agree (netctl first tries the system socket, [`dial_candidates`]). Listen addresses are `host:port` and are resolved once, when a
//! listener is started.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

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

/// The system-wide control socket: the systemd unit's RuntimeDirectory.
pub const SYSTEM_CONTROL_SOCKET: &str = "/run/netd/netd.sock";

/// The control address netd listens on when neither `--control` nor
/// `NETD_CONTROL` nor the config names one: [`SYSTEM_CONTROL_SOCKET`] for
/// root, otherwise `netd.sock` in the caller's private directory
/// ([`private_dir`]).
pub fn default_control_addr() -> ControlAddr {
    if crate::sys::euid() == 0 {
        return ControlAddr::Unix(PathBuf::from(SYSTEM_CONTROL_SOCKET));
    }
    ControlAddr::Unix(private_dir().join("netd.sock"))
}

/// Where netctl looks when it is not told: the system socket if one exists
/// (whoever runs netctl: members of the socket's group may use it), then
/// the caller's own default.
pub fn dial_candidates() -> Vec<ControlAddr> {
    let mut v = Vec::new();
    let system = Path::new(SYSTEM_CONTROL_SOCKET);
    if std::fs::symlink_metadata(system).is_ok_and(|m| m.file_type().is_socket()) {
        v.push(ControlAddr::Unix(system.to_path_buf()));
    }
    let own = default_control_addr();
    if !v.contains(&own) {
        v.push(own);
    }
    v
}

/// A non-root user's directory for the control socket:
/// `$XDG_RUNTIME_DIR/netd`, else `$TMPDIR/netd-$UID` (`/tmp/netd-$UID`).
/// Like ssh-agent's and tmux's, it must be a real directory owned by the
/// user with no access for anyone else ([`check_private_dir`]), so nobody
/// else can bind the socket first or read what is sent to it.
pub fn private_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("netd");
    }
    let uid = crate::sys::euid();
    std::env::temp_dir().join(format!("netd-{uid}"))
}

/// Create `dir` with mode 0700 if it is missing, then [`check_private_dir`].
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    check_private_dir(dir)
}

/// `dir` must be a directory (not a symlink to one), owned by the caller,
/// and closed to group and others.
pub fn check_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    let uid = crate::sys::euid();
    if !meta.file_type().is_dir() {
        return Err(format!(
            "{} is not a directory (a symlink or a file is in its place); remove it",
            dir.display()
        ));
    }
    if meta.uid() != uid {
        return Err(format!(
            "{} belongs to uid {}, not to you (uid {uid}); someone else may be impersonating netd: remove it",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} has mode {:o}; it must be private (chmod 700 {})",
            dir.display(),
            meta.mode() & 0o777,
            dir.display()
        ));
    }
    Ok(())
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
