//! The TOML configuration: control address, logging, shutdown grace and the
//! listeners started at boot.
//!
//! Every listener entry is turned into the same `ListenerSpec` a
//! StartListener call carries and validated by the same code, so a config
//! and the API can never disagree on what is valid. Errors name the file,
//! the line and the problem. `deploy/netd.toml` is compiled in as the
//! default. Apply files (`netctl apply -f`) are read here too, by
//! [`parse_listeners`]: the same tables under two different rules.

mod endpoint_sections;
pub mod export;
mod listeners;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::services::Settings;
use crate::util::addr::ControlAddr;

/// The default configuration, compiled in from `deploy/netd.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../deploy/netd.toml");
/// Name used in messages for the embedded default.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

/// Default time in-flight connections get on SIGTERM/SIGINT.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A config error: `file:line: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    allow_remote: bool,
    #[serde(default)]
    max_connections: Option<Spanned<u64>>,
    #[serde(default)]
    header_timeout: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
}

/// `[toxiproxy_api]`: the keys of `[metrics]`, and what the proxies made
/// through it may do (crate::endpoints::toxiproxy_api::Rules).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToxiproxyApi {
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    allow_remote: bool,
    #[serde(default)]
    max_connections: Option<Spanned<u64>>,
    #[serde(default)]
    header_timeout: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    allowed_ports: Option<Spanned<String>>,
    #[serde(default)]
    max_proxies: Option<Spanned<u64>>,
    #[serde(default)]
    persist: bool,
    #[serde(default)]
    token_file: Option<Spanned<String>>,
}

impl RawToxiproxyApi {
    /// Its endpoint keys, as `[metrics]` has them.
    fn endpoint(&self) -> RawMetrics {
        RawMetrics {
            listen: self.listen.clone(),
            allow_remote: self.allow_remote,
            max_connections: self.max_connections.clone(),
            header_timeout: self.header_timeout.clone(),
            idle_timeout: self.idle_timeout.clone(),
        }
    }
}

/// `[access_log]`: where access-log lines go (crate::telemetry::access_log).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    buffer_bytes: Option<Spanned<u64>>,
}

/// `[health]`: the plaintext grpc.health.v1 endpoint (crate::endpoints::health).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Either the address as a string (`control = "unix:/run/netd/netd.sock"`)
    /// or a `[control]` table; read by [`parse_control`].
    #[serde(default)]
    control: Option<Spanned<toml::Value>>,
    #[serde(default)]
    max_listeners: Option<Spanned<u32>>,
    #[serde(default, with = "humantime_serde::option")]
    shutdown_grace: Option<Duration>,
    #[serde(default)]
    capture_dir: Option<Spanned<String>>,
    #[serde(default)]
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    metrics: RawMetrics,
    /// `[toxiproxy_api]`: the keys of `[metrics]` and its own.
    #[serde(default)]
    toxiproxy_api: RawToxiproxyApi,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    access_log: RawAccessLog,
    #[serde(default, rename = "listener")]
    listeners: Vec<listeners::RawListener>,
}

pub use crate::spec::BootListener;

/// Where `[[listener]]` tables come from; the rules differ in two places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entries {
    /// netd's config file: every token must be real.
    BootConfig,
    /// A file for `netctl apply` (see [`parse_listeners`]).
    ApplyFile,
}

/// An apply file: its `[[listener]]` tables. Other top-level keys (a
/// whole config file's daemon settings) are ignored, so that `netctl apply
/// --prune -f /etc/netd/netd.toml` makes netd match its config file.
#[derive(Debug, Deserialize)]
struct RawApplyFile {
    #[serde(default, rename = "listener")]
    listeners: Vec<listeners::RawListener>,
}

/// Parse and validate an apply file (`netctl apply -f`, and what
/// `netctl export` writes): the config file's `[[listener]]` tables, with
/// the same keys and checks; anything else in it is ignored (daemon
/// settings change through the config file and a restart). `source` names
/// it in errors.
///
/// Two rules differ from [`Config::parse`]:
/// - an HTTP listener may say `token = "<redacted>"`
///   ([`crate::services::http::REDACTED`], what netd reports in place of a
///   token and what export writes), which netd reads as "keep the current
///   token"; a boot config refuses it;
/// - `pcap_path` is not checked against a capture_dir: the caller's
///   default is not netd's, so netd checks it when the file is applied.
///
/// It runs the same spec validation as the config, which may block for a
/// moment (an upstream host name is resolved, interfaces are listed).
pub fn parse_listeners(text: &str, source: &str) -> Result<Vec<BootListener>, ConfigError> {
    let raw: RawApplyFile = toml::from_str(text).map_err(|e| toml_error(text, source, e))?;
    if raw.listeners.len() > MAX_LISTENERS_LIMIT as usize {
        return Err(ConfigError(format!(
            "{source}: {} listeners are defined; no netd takes more than {MAX_LISTENERS_LIMIT}",
            raw.listeners.len()
        )));
    }
    listeners::read(
        raw.listeners,
        text,
        source,
        &Settings::default(),
        None,
        Entries::ApplyFile,
    )
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: String,
    pub control: ControlConfig,
    /// Listeners that may exist at once; StartListener beyond it is refused.
    pub max_listeners: usize,
    pub shutdown_grace: Duration,
    /// The only directory pcap files are written to (see
    /// [`default_capture_dir`]); created when a sniffer first needs it.
    pub capture_dir: Option<PathBuf>,
    /// Where runtime changes are persisted (see [`crate::state`]), when
    /// the config (or `--state-dir`) sets it; netd then refuses to start
    /// if it cannot use it. Unset: [`crate::state::default_state_dir`],
    /// used if it can be.
    pub state_dir: Option<PathBuf>,
    /// Whether, with no `state_dir`, the default one is used: true for a
    /// config file, false for the embedded default, so that a demo run
    /// persists nothing unless `--state-dir` is given (see
    /// [`Config::fallback_state_dir`]).
    pub use_default_state_dir: bool,
    pub log: LogConfig,
    /// Where to serve Prometheus `/metrics`; off when unset. Loopback
    /// unless `[metrics] allow_remote = true`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Connection limit and timeouts of the `/metrics` endpoint.
    pub metrics_limits: crate::endpoints::metrics::Limits,
    /// Where to serve the Toxiproxy-compatible API
    /// ([`crate::endpoints::toxiproxy_api`]); off when unset. Loopback unless
    /// `[toxiproxy_api] allow_remote = true`.
    pub toxiproxy_api_listen: Option<std::net::SocketAddr>,
    /// Its connection limit and timeouts (the keys of `[metrics]`).
    pub toxiproxy_api_limits: crate::endpoints::metrics::Limits,
    /// What proxies made through it may do (`allowed_ports`,
    /// `max_proxies`, `persist`).
    pub toxiproxy_api_rules: crate::endpoints::toxiproxy_api::Rules,
    /// `[toxiproxy_api] token_file`'s bearer token (admin), read at load.
    pub toxiproxy_api_token: Option<crate::endpoints::toxiproxy_api::Token>,
    /// Where to serve plaintext grpc.health.v1 only (`[health] listen`);
    /// off when unset. Any address: it tells only whether netd serves.
    pub health_listen: Option<std::net::SocketAddr>,
    /// `[access_log]`: stderr or a file, and the buffer's bound.
    pub access_log: crate::telemetry::access_log::Settings,
    pub listeners: Vec<BootListener>,
}

/// `capture_dir` when the config sets none: `/var/lib/netd/captures` for
/// root, else `$XDG_STATE_HOME/netd/captures` or
/// `$HOME/.local/state/netd/captures`; None if neither variable is set
/// (then pcap export needs `capture_dir` in the config).
pub fn default_capture_dir() -> Option<PathBuf> {
    crate::state::netd_state_home().map(|d| d.join("captures"))
}

impl Config {
    /// What the supervisor builds services with.
    pub fn settings(&self) -> Settings {
        Settings {
            capture_dir: self.capture_dir.clone(),
            ..Settings::default()
        }
    }

    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::sys::safe_file::read_regular_text(path, MAX_CONFIG_BYTES)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The embedded default (`deploy/netd.toml`). It keeps no state unless
    /// a `state_dir` is set on it (`--state-dir`): the changes of a demo
    /// run must not come back in the next one, or in a later real install.
    pub fn embedded() -> Config {
        let mut c = Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
            .expect("the embedded default config is valid (checked by tests)");
        c.use_default_state_dir = false;
        c
    }

    /// The state directory when `state_dir` is unset:
    /// [`crate::state::default_state_dir`], unless this is the embedded
    /// default (then none).
    pub fn fallback_state_dir(&self) -> Option<PathBuf> {
        if self.use_default_state_dir {
            crate::state::default_state_dir()
        } else {
            None
        }
    }

    /// Parse and validate `text`; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, source, e))?;
        let at = |span: std::ops::Range<usize>| format!("{source}:{}", line_of(text, span.start));

        let control = match &raw.control {
            None => ControlConfig::default(),
            Some(c) => parse_control(c.get_ref().clone())
                .map_err(|e| ConfigError(format!("{}: control: {e}", at(c.span()))))?,
        };
        let max_listeners = match &raw.max_listeners {
            None => DEFAULT_MAX_LISTENERS,
            Some(m) if (1..=MAX_LISTENERS_LIMIT).contains(m.get_ref()) => *m.get_ref() as usize,
            Some(m) => {
                return Err(ConfigError(format!(
                    "{}: max_listeners must be 1 to {MAX_LISTENERS_LIMIT}",
                    at(m.span())
                )));
            }
        };
        let (metrics_listen, metrics_limits) =
            endpoint_sections::http_endpoint("metrics", "/metrics", &raw.metrics, &at)?;
        let (toxiproxy_api_listen, toxiproxy_api_limits) = endpoint_sections::http_endpoint(
            "toxiproxy_api",
            "the Toxiproxy API",
            &raw.toxiproxy_api.endpoint(),
            &at,
        )?;
        let toxiproxy_api_rules = endpoint_sections::toxiproxy_api_rules(&raw.toxiproxy_api, &at)?;
        let toxiproxy_api_token = match &raw.toxiproxy_api.token_file {
            None => None,
            Some(f) => Some(
                endpoint_sections::toxiproxy_api_token(f.get_ref()).map_err(|e| {
                    ConfigError(format!(
                        "{}: toxiproxy_api.token_file: {}: {e}",
                        at(f.span()),
                        f.get_ref()
                    ))
                })?,
            ),
        };
        if let (Some(t), Some(l)) = (toxiproxy_api_listen, &raw.toxiproxy_api.listen) {
            if metrics_listen.is_some_and(|m| addrs_clash(m, t)) {
                return Err(ConfigError(format!(
                    "{}: toxiproxy_api.listen: {t} clashes with [metrics] listen",
                    at(l.span())
                )));
            }
        }
        let shutdown_grace = raw.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        if shutdown_grace > MAX_SHUTDOWN_GRACE {
            return Err(ConfigError(format!(
                "{source}: shutdown_grace {} is out of range (0s to {})",
                humantime::format_duration(shutdown_grace),
                humantime::format_duration(MAX_SHUTDOWN_GRACE)
            )));
        }
        let capture_dir = match &raw.capture_dir {
            None => default_capture_dir(),
            Some(d) => {
                let p = PathBuf::from(d.get_ref());
                if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(ConfigError(format!(
                        "{}: capture_dir '{}' must be an absolute path without '..'",
                        at(d.span()),
                        d.get_ref()
                    )));
                }
                Some(p)
            }
        };
        let state_dir = match &raw.state_dir {
            None => None,
            Some(d) => {
                let p = PathBuf::from(d.get_ref());
                if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(ConfigError(format!(
                        "{}: state_dir '{}' must be an absolute path without '..'",
                        at(d.span()),
                        d.get_ref()
                    )));
                }
                Some(p)
            }
        };
        let health_listen = match &raw.health.listen {
            None => None,
            Some(l) => {
                let addr = crate::util::addr::parse_listen_addr(l.get_ref())
                    .map_err(|e| ConfigError(format!("{}: health.listen: {e}", at(l.span()))))?;
                if metrics_listen.is_some_and(|m| addrs_clash(m, addr)) {
                    return Err(ConfigError(format!(
                        "{}: health.listen: {addr} clashes with [metrics] listen",
                        at(l.span())
                    )));
                }
                if toxiproxy_api_listen.is_some_and(|t| addrs_clash(t, addr)) {
                    return Err(ConfigError(format!(
                        "{}: health.listen: {addr} clashes with [toxiproxy_api] listen",
                        at(l.span())
                    )));
                }
                Some(addr)
            }
        };
        let access_log = parse_access_log(&raw.access_log, &at)?;
        let settings = Settings {
            capture_dir: capture_dir.clone(),
            ..Settings::default()
        };
        if let Err(e) = check_log_level(&raw.log.level) {
            return Err(ConfigError(format!("{source}: log.level: {e}")));
        }
        let listeners = listeners::read(
            raw.listeners,
            text,
            source,
            &settings,
            metrics_listen,
            Entries::BootConfig,
        )?;
        if listeners.len() > max_listeners {
            return Err(ConfigError(format!(
                "{source}: {} listeners are defined; max_listeners is {max_listeners}",
                listeners.len()
            )));
        }
        Ok(Config {
            source: source.to_string(),
            control,
            max_listeners,
            shutdown_grace,
            capture_dir,
            state_dir,
            use_default_state_dir: true,
            log: raw.log,
            metrics_listen,
            metrics_limits,
            toxiproxy_api_listen,
            toxiproxy_api_limits,
            toxiproxy_api_rules,
            toxiproxy_api_token,
            health_listen,
            access_log,
            listeners,
        })
    }
}

/// `[access_log]`: `path` absolute without `..` and naming a file;
/// `buffer_bytes` within [`crate::telemetry::access_log::BUFFER_BYTES_RANGE`].
fn parse_access_log(
    raw: &RawAccessLog,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<crate::telemetry::access_log::Settings, ConfigError> {
    use crate::telemetry::access_log::{BUFFER_BYTES_RANGE, DEFAULT_BUFFER_BYTES, Settings};
    let path = match &raw.path {
        None => None,
        Some(p) => {
            let path = PathBuf::from(p.get_ref());
            let name_ok = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| crate::sys::safe_file::check_file_name(n).is_ok());
            if !path.is_absolute()
                || path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                || !name_ok
                || p.get_ref().ends_with('/')
            {
                return Err(ConfigError(format!(
                    "{}: access_log.path '{}' must be an absolute file path without '..', \
                     e.g. /var/log/netd/access.log",
                    at(p.span()),
                    p.get_ref()
                )));
            }
            Some(path)
        }
    };
    let buffer_bytes = match &raw.buffer_bytes {
        None => DEFAULT_BUFFER_BYTES,
        Some(b) => match usize::try_from(*b.get_ref()) {
            Ok(n) if BUFFER_BYTES_RANGE.contains(&n) => n,
            _ => {
                return Err(ConfigError(format!(
                    "{}: access_log.buffer_bytes: {} is out of range ({} to {})",
                    at(b.span()),
                    b.get_ref(),
                    BUFFER_BYTES_RANGE.start(),
                    BUFFER_BYTES_RANGE.end()
                )));
            }
        },
    };
    Ok(Settings { path, buffer_bytes })
}

/// A TOML syntax or type error as one line, `file:line:column: what`,
/// like every other config error (toml's own text spans several lines
/// with a source excerpt).
fn toml_error(text: &str, source: &str, e: toml::de::Error) -> ConfigError {
    let what = e.message().trim_end().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            let line_start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let column = text[line_start..span.start.min(text.len())].chars().count() + 1;
            ConfigError(format!("{source}:{line}:{column}: {what}"))
        }
        None => ConfigError(format!("{source}: {what}")),
    }
}

/// Longest `shutdown_grace` the config accepts.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);

pub use crate::net::bind::addrs_clash;

/// Check `[log] level` the way netd will use it: a comma-separated list of
/// directives for tracing's EnvFilter, where a bare directive must be a
/// level. (EnvFilter itself reads a bare word such as `verbose` as a target
/// name and would silently log nothing but that target.)
pub fn check_log_level(level: &str) -> Result<(), String> {
    const LEVELS: &str = "error, warn, info, debug, trace or off";
    if level.trim().is_empty() {
        return Err(format!(
            "empty; expected {LEVELS}, or a filter such as netd=debug"
        ));
    }
    for directive in level.split(',') {
        let d = directive.trim();
        let bare = !d.contains(['=', '[', ':']);
        if bare
            && d.parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
        {
            return Err(format!(
                "'{d}' is not a level ({LEVELS}); a filter names its target, e.g. \
                 netd={}",
                "debug"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("'{level}' is not a level ({LEVELS}) or filter: {e}"))
}

pub use crate::supervisor::DEFAULT_MAX_LISTENERS;
const MAX_LISTENERS_LIMIT: u32 = 100_000;
/// Largest config file read (100,000 listeners fit easily).
pub const MAX_CONFIG_BYTES: u64 = 256 << 20;
/// Largest token file or TLS certificate/key/CA file read.
pub use crate::spec::form::MAX_SECRET_FILE_BYTES;

/// The `[control]` table: where the control plane listens, how it is
/// secured, who may do what, and the bounds on what one client may hold.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The control address; `--control` / `NETD_CONTROL` override it.
    pub listen: Option<ControlAddr>,
    /// Allow a TCP control address without TLS (loopback only, warned).
    pub insecure: bool,
    pub tls: Option<TlsConfig>,
    pub roles: crate::control::auth::RoleConfig,
    /// Control connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Concurrent streams (calls) per connection.
    pub max_streams: u32,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: None,
            insecure: false,
            tls: None,
            roles: crate::control::auth::RoleConfig::default(),
            max_connections: 128,
            max_streams: 100,
            idle_timeout: Duration::from_secs(120),
            max_request_bytes: 1024 * 1024,
        }
    }
}

/// `[control.tls]`: PEM files, read when the config is loaded so a missing
/// or unreadable file is reported at start.
#[derive(Clone)]
pub struct TlsConfig {
    pub cert_path: String,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// With a CA, clients must present a certificate it signed (mTLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_path", &self.cert_path)
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControlTable {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    roles: RawRoles,
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    max_streams: Option<u32>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    max_request_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    #[serde(default)]
    client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoles {
    #[serde(default)]
    admin: Option<Vec<String>>,
    #[serde(default)]
    viewer: Option<Vec<String>>,
}

/// `control = "ADDR"` or a `[control]` table.
fn parse_control(v: toml::Value) -> Result<ControlConfig, String> {
    let table: RawControlTable = match v {
        toml::Value::String(s) => RawControlTable {
            listen: Some(s),
            insecure: false,
            tls: None,
            roles: RawRoles::default(),
            max_connections: None,
            max_streams: None,
            idle_timeout: None,
            max_request_bytes: None,
        },
        toml::Value::Table(t) => {
            RawControlTable::deserialize(t).map_err(|e| e.message().to_string())?
        }
        other => {
            return Err(format!(
                "expected an address or a [control] table, found a {}",
                other.type_str()
            ));
        }
    };
    let mut c = ControlConfig::default();
    if let Some(l) = table.listen {
        c.listen = Some(l.parse::<ControlAddr>().map_err(|e| e.to_string())?);
    }
    c.insecure = table.insecure;
    let read = |what: &str, path: &str| {
        crate::sys::safe_file::read_regular(Path::new(path), MAX_SECRET_FILE_BYTES)
            .map_err(|e| format!("tls.{what}: cannot read {path}: {e}"))
    };
    if let Some(t) = table.tls {
        c.tls = Some(TlsConfig {
            cert_pem: read("cert", &t.cert)?,
            cert_path: t.cert,
            key_pem: read("key", &t.key)?,
            client_ca_pem: match &t.client_ca {
                Some(p) => Some(read("client_ca", p)?),
                None => None,
            },
        });
    }
    c.roles = crate::control::auth::RoleConfig::parse(table.roles.admin, table.roles.viewer)?;
    let bounded = |what: &str, v: Option<u64>, lo: u64, hi: u64, default: u64| match v {
        None => Ok(default),
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        Some(n) => Err(format!("{what} is {n}; it must be {lo} to {hi}")),
    };
    c.max_connections = bounded(
        "max_connections",
        table.max_connections.map(u64::from),
        1,
        65_536,
        c.max_connections as u64,
    )? as usize;
    c.max_streams = bounded(
        "max_streams",
        table.max_streams.map(u64::from),
        1,
        10_000,
        u64::from(c.max_streams),
    )? as u32;
    c.max_request_bytes = bounded(
        "max_request_bytes",
        table.max_request_bytes,
        4096,
        64 << 20,
        c.max_request_bytes as u64,
    )? as usize;
    if let Some(d) = table.idle_timeout {
        let d = humantime::parse_duration(&d)
            .map_err(|e| format!("idle_timeout: '{d}' is not a duration like 30s or 5m: {e}"))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&d) {
            return Err("idle_timeout must be 1s to 24h".into());
        }
        c.idle_timeout = d;
    }
    Ok(c)
}

/// 1-based line number of byte offset `pos` in `text`.
fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;

/// Property tests of both readers (`fuzz_*`).
#[cfg(test)]
mod fuzz;
