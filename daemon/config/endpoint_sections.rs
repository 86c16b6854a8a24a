//! The sections of netd's own HTTP endpoints in the config: `[metrics]`
//! and `[toxiproxy_api]` (address, bounds, and the Toxiproxy API's rules
//! and token).

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::{ConfigError, RawMetrics, RawToxiproxyApi};

/// `[metrics]` or `[toxiproxy_api]`: an HTTP endpoint netd serves itself,
/// with no authentication (so loopback only unless `allow_remote`), and
/// its bounds. `what` names it in errors.
pub(super) fn http_endpoint(
    section: &str,
    what: &str,
    raw: &RawMetrics,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<
    (
        Option<std::net::SocketAddr>,
        crate::endpoints::metrics::Limits,
    ),
    ConfigError,
> {
    let listen = match &raw.listen {
        None => None,
        Some(l) => {
            let addr = crate::util::addr::parse_listen_addr(l.get_ref())
                .map_err(|e| ConfigError(format!("{}: {section}.listen: {e}", at(l.span()))))?;
            // The endpoint has no authentication: a client elsewhere must
            // be asked for explicitly.
            if !addr.ip().to_canonical().is_loopback() && !raw.allow_remote {
                return Err(ConfigError(format!(
                    "{}: {section}.listen: {addr} is not a loopback address; {what} has no \
                     authentication, so serving it beyond this host needs \
                     `allow_remote = true` in [{section}]",
                    at(l.span())
                )));
            }
            Some(addr)
        }
    };
    use crate::endpoints::metrics::{Limits, MAX_MAX_CONNECTIONS, TIMEOUT_RANGE};
    let timeout = |field: &str, v: &Option<Spanned<String>>, default: Duration| {
        let Some(v) = v else { return Ok(default) };
        let d = humantime::parse_duration(v.get_ref()).map_err(|e| {
            ConfigError(format!(
                "{}: {section}.{field}: '{}' is not a duration like 5s or 1m: {e}",
                at(v.span()),
                v.get_ref()
            ))
        })?;
        if !TIMEOUT_RANGE.contains(&d) {
            return Err(ConfigError(format!(
                "{}: {section}.{field}: {} is out of range ({} to {})",
                at(v.span()),
                v.get_ref(),
                humantime::format_duration(*TIMEOUT_RANGE.start()),
                humantime::format_duration(*TIMEOUT_RANGE.end())
            )));
        }
        Ok(d)
    };
    let defaults = Limits::default();
    let max_connections = match &raw.max_connections {
        None => defaults.max_connections,
        Some(m) => match usize::try_from(*m.get_ref()) {
            Ok(n @ 1..=MAX_MAX_CONNECTIONS) => n,
            _ => {
                return Err(ConfigError(format!(
                    "{}: {section}.max_connections: {} is out of range (1 to {MAX_MAX_CONNECTIONS})",
                    at(m.span()),
                    m.get_ref()
                )));
            }
        },
    };
    let limits = Limits {
        max_connections,
        header_timeout: timeout(
            "header_timeout",
            &raw.header_timeout,
            defaults.header_timeout,
        )?,
        idle_timeout: timeout("idle_timeout", &raw.idle_timeout, defaults.idle_timeout)?,
    };
    Ok((listen, limits))
}

/// `[toxiproxy_api]`'s `allowed_ports`, `max_proxies` and `persist`.
pub(super) fn toxiproxy_api_rules(
    raw: &RawToxiproxyApi,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<crate::endpoints::toxiproxy_api::Rules, ConfigError> {
    use crate::endpoints::toxiproxy_api::{MAX_MAX_PROXIES, Rules};
    let defaults = Rules::default();
    let allowed_ports = match &raw.allowed_ports {
        None => defaults.allowed_ports,
        Some(p) => Rules::parse_ports(p.get_ref()).map_err(|e| {
            ConfigError(format!(
                "{}: toxiproxy_api.allowed_ports: {e}",
                at(p.span())
            ))
        })?,
    };
    let max_proxies = match &raw.max_proxies {
        None => defaults.max_proxies,
        Some(m) => match usize::try_from(*m.get_ref()) {
            Ok(n @ 1..=MAX_MAX_PROXIES) => n,
            _ => {
                return Err(ConfigError(format!(
                    "{}: toxiproxy_api.max_proxies: {} is out of range (1 to {MAX_MAX_PROXIES})",
                    at(m.span()),
                    m.get_ref()
                )));
            }
        },
    };
    Ok(Rules {
        allowed_ports,
        max_proxies,
        persist: raw.persist,
    })
}

/// Read `[toxiproxy_api] token_file`: an absolute path to a regular file
/// (opened non-blocking, so a FIFO cannot hang the load), at most 4 KiB.
pub(super) fn toxiproxy_api_token(
    path: &str,
) -> Result<crate::endpoints::toxiproxy_api::Token, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if !Path::new(path).is_absolute() {
        return Err("must be an absolute path".into());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    crate::endpoints::toxiproxy_api::Token::parse(&text)
}
