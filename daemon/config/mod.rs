//! The TOML configuration: control address, logging, shutdown grace and the
//! listeners started at boot.
//!
//! Every listener entry is turned into the same `ListenerSpec` a
//! StartListener call carries and validated by the same code, so a config
//! and the API can never disagree on what is valid. Errors name the file,
//! the line and the problem. `deploy/netd.toml` is compiled in as the
//! default. Apply files (`netctl apply -f`) are read here too, by
//! [`parse_listeners`]: the same tables under two different rules.

pub mod export;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::proto::{self, listener_spec::Kind};
use crate::services::{KindInfo, Service, Settings, Transport};
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

/// A `kind = "..."` value: one of the registered kinds' slugs.
#[derive(Debug, Clone, Copy)]
struct KindName(KindInfo);

impl<'de> Deserialize<'de> for KindName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::services::kind_by_slug(&s)
            .map(KindName)
            .ok_or_else(|| serde::de::Error::unknown_variant(&s, crate::services::SLUGS))
    }
}

/// A listener option: name, and where it is set (if it is). Which kinds
/// take it is each kind's [`crate::services::ListenerKind::CONFIG_KEYS`].
type OptionalField<'a> = (&'a str, Option<std::ops::Range<usize>>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    kind: Spanned<KindName>,
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    interface: Option<Spanned<String>>,
    #[serde(default)]
    filter: Option<Spanned<String>>,
    #[serde(default)]
    pcap_path: Option<Spanned<String>>,
    #[serde(default)]
    pcap_max_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pcap_max_files: Option<Spanned<u32>>,
    #[serde(default)]
    max_flows: Option<Spanned<u32>>,
    #[serde(default)]
    port_scan_ports: Option<Spanned<u32>>,
    #[serde(default)]
    port_scan_window: Option<Spanned<String>>,
    #[serde(default)]
    syn_rate: Option<Spanned<u32>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    max_connections: Option<Spanned<u32>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    upstreams: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    upstream: Option<Spanned<String>>,
    #[serde(default)]
    max_clients: Option<Spanned<u32>>,
    #[serde(default)]
    max_clients_per_source: Option<Spanned<u32>>,
    /// Fault tables (`[[listener.faults]]`), see [`crate::fault::attrs`].
    #[serde(default)]
    faults: Option<Spanned<Vec<toml::Table>>>,
    #[serde(default)]
    preconnect: Option<Spanned<u32>>,
    #[serde(default)]
    connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    upstream_backoff: Option<Spanned<String>>,
    #[serde(default)]
    resolve_interval: Option<Spanned<String>>,
    #[serde(default)]
    max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    header_read_timeout: Option<Spanned<String>>,
    #[serde(default)]
    request_timeout: Option<Spanned<String>>,
    #[serde(default)]
    token_file: Option<Spanned<String>>,
    /// A literal HTTP token; in an apply file also the placeholder
    /// [`crate::services::http::REDACTED`] (see [`parse_listeners`]).
    #[serde(default)]
    token: Option<Spanned<String>>,
    #[serde(default)]
    rate_limit: Option<Spanned<String>>,
    #[serde(default)]
    body_budget_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    max_streams: Option<Spanned<u32>>,
    #[serde(default)]
    max_header_bytes: Option<Spanned<u32>>,
    rate_limit_ipv6_prefix: Option<Spanned<u32>>,
    #[serde(default)]
    allow_privileged_sources: Option<Spanned<bool>>,
    #[serde(default)]
    max_sources: Option<Spanned<u32>>,
    #[serde(default)]
    access_log: Option<Spanned<bool>>,
    #[serde(default)]
    labels: HashMap<String, String>,
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
    listeners: Vec<RawListener>,
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
    listeners: Vec<RawListener>,
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
    Config::listeners(
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
    if crate::sys::euid() == 0 {
        return Some(PathBuf::from("/var/lib/netd/captures"));
    }
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let state =
        absolute("XDG_STATE_HOME").or_else(|| absolute("HOME").map(|h| h.join(".local/state")))?;
    Some(state.join("netd/captures"))
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
            http_endpoint("metrics", "/metrics", &raw.metrics, &at)?;
        let (toxiproxy_api_listen, toxiproxy_api_limits) = http_endpoint(
            "toxiproxy_api",
            "the Toxiproxy API",
            &raw.toxiproxy_api.endpoint(),
            &at,
        )?;
        let toxiproxy_api_rules = toxiproxy_api_rules(&raw.toxiproxy_api, &at)?;
        let toxiproxy_api_token = match &raw.toxiproxy_api.token_file {
            None => None,
            Some(f) => Some(toxiproxy_api_token(f.get_ref()).map_err(|e| {
                ConfigError(format!(
                    "{}: toxiproxy_api.token_file: {}: {e}",
                    at(f.span()),
                    f.get_ref()
                ))
            })?),
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
        let listeners = Config::listeners(
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

    /// Turn `[[listener]]` tables into validated listeners; `text` and
    /// `source` are for `file:line` in errors, `metrics_listen` is the
    /// `/metrics` address no TCP listener may clash with.
    fn listeners(
        raw: Vec<RawListener>,
        text: &str,
        source: &str,
        settings: &Settings,
        metrics_listen: Option<std::net::SocketAddr>,
        entries: Entries,
    ) -> Result<Vec<BootListener>, ConfigError> {
        // Everything per listener is O(1) or O(its own size), so a file of
        // 100,000 listeners is read in linear time: line numbers come from
        // an index of line starts, names and ports from hash maps.
        let lines = LineIndex::new(text);
        let at = |span: std::ops::Range<usize>| format!("{source}:{}", lines.line(span.start));
        let mut listeners: Vec<BootListener> = Vec::with_capacity(raw.len());
        let mut names: std::collections::HashSet<String> =
            std::collections::HashSet::with_capacity(raw.len());
        // Listeners with a fixed port, to refuse two that would bind the
        // same one.
        let mut bound_addrs = BoundAddrs::default();
        for l in raw {
            let origin = at(l.name.span());
            let name = l.name.get_ref().clone();
            if !names.insert(name.clone()) {
                return Err(ConfigError(format!(
                    "{origin}: a listener named '{name}' is defined twice"
                )));
            }
            let prefix = l
                .prefix
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_default();
            let kind_name = l.kind.get_ref().0;
            let spans = |o: Option<std::ops::Range<usize>>| o;
            let optional: [OptionalField; 35] = [
                ("listen", spans(l.listen.as_ref().map(|v| v.span()))),
                ("interface", spans(l.interface.as_ref().map(|v| v.span()))),
                ("filter", spans(l.filter.as_ref().map(|v| v.span()))),
                ("pcap_path", spans(l.pcap_path.as_ref().map(|v| v.span()))),
                (
                    "pcap_max_bytes",
                    spans(l.pcap_max_bytes.as_ref().map(|v| v.span())),
                ),
                (
                    "pcap_max_files",
                    spans(l.pcap_max_files.as_ref().map(|v| v.span())),
                ),
                ("max_flows", spans(l.max_flows.as_ref().map(|v| v.span()))),
                (
                    "port_scan_ports",
                    spans(l.port_scan_ports.as_ref().map(|v| v.span())),
                ),
                (
                    "port_scan_window",
                    spans(l.port_scan_window.as_ref().map(|v| v.span())),
                ),
                ("syn_rate", spans(l.syn_rate.as_ref().map(|v| v.span()))),
                ("prefix", spans(l.prefix.as_ref().map(|v| v.span()))),
                (
                    "max_connections",
                    spans(l.max_connections.as_ref().map(|v| v.span())),
                ),
                (
                    "max_body_bytes",
                    spans(l.max_body_bytes.as_ref().map(|v| v.span())),
                ),
                (
                    "header_read_timeout",
                    spans(l.header_read_timeout.as_ref().map(|v| v.span())),
                ),
                (
                    "request_timeout",
                    spans(l.request_timeout.as_ref().map(|v| v.span())),
                ),
                ("token_file", spans(l.token_file.as_ref().map(|v| v.span()))),
                ("token", spans(l.token.as_ref().map(|v| v.span()))),
                ("rate_limit", spans(l.rate_limit.as_ref().map(|v| v.span()))),
                (
                    "rate_limit_ipv6_prefix",
                    spans(l.rate_limit_ipv6_prefix.as_ref().map(|v| v.span())),
                ),
                (
                    "allow_privileged_sources",
                    spans(l.allow_privileged_sources.as_ref().map(|v| v.span())),
                ),
                (
                    "max_sources",
                    spans(l.max_sources.as_ref().map(|v| v.span())),
                ),
                (
                    "idle_timeout",
                    spans(l.idle_timeout.as_ref().map(|v| v.span())),
                ),
                (
                    "body_budget_bytes",
                    spans(l.body_budget_bytes.as_ref().map(|v| v.span())),
                ),
                (
                    "max_streams",
                    spans(l.max_streams.as_ref().map(|v| v.span())),
                ),
                (
                    "max_header_bytes",
                    spans(l.max_header_bytes.as_ref().map(|v| v.span())),
                ),
                ("upstreams", spans(l.upstreams.as_ref().map(|v| v.span()))),
                ("upstream", spans(l.upstream.as_ref().map(|v| v.span()))),
                (
                    "max_clients",
                    spans(l.max_clients.as_ref().map(|v| v.span())),
                ),
                (
                    "max_clients_per_source",
                    spans(l.max_clients_per_source.as_ref().map(|v| v.span())),
                ),
                ("faults", spans(l.faults.as_ref().map(|v| v.span()))),
                ("preconnect", spans(l.preconnect.as_ref().map(|v| v.span()))),
                (
                    "connect_timeout",
                    spans(l.connect_timeout.as_ref().map(|v| v.span())),
                ),
                (
                    "upstream_backoff",
                    spans(l.upstream_backoff.as_ref().map(|v| v.span())),
                ),
                (
                    "resolve_interval",
                    spans(l.resolve_interval.as_ref().map(|v| v.span())),
                ),
                ("access_log", spans(l.access_log.as_ref().map(|v| v.span()))),
            ];
            for (field, span) in &optional {
                if let Some(span) = span {
                    if !kind_name.config_keys.contains(field) {
                        return Err(ConfigError(format!(
                            "{}: {field} does not apply to a {} listener",
                            at(span.clone()),
                            kind_name.slug
                        )));
                    }
                }
            }
            let duration = |field: &str,
                            v: &Option<Spanned<String>>|
             -> Result<Option<prost_types::Duration>, ConfigError> {
                let Some(v) = v else { return Ok(None) };
                let d = humantime::parse_duration(v.get_ref()).map_err(|e| {
                    ConfigError(format!(
                        "{}: {field}: '{}' is not a duration like 30s or 5m: {e}",
                        at(v.span()),
                        v.get_ref()
                    ))
                })?;
                prost_types::Duration::try_from(d)
                    .map(Some)
                    .map_err(|_| ConfigError(format!("{}: {field} is too large", at(v.span()))))
            };
            if kind_name.config_keys.contains(&"listen") && l.listen.is_none() {
                return Err(ConfigError(format!(
                    "{origin}: listener '{name}': listen is required (host:port)"
                )));
            }
            if kind_name.config_keys.contains(&"interface") && l.interface.is_none() {
                return Err(ConfigError(format!(
                    "{origin}: listener '{name}': interface is required, e.g. \"lo\""
                )));
            }
            let listen = l
                .listen
                .as_ref()
                .map(|v| v.get_ref().clone())
                .unwrap_or_default();
            let u32_of = |v: &Option<Spanned<u32>>| v.as_ref().map(|x| *x.get_ref()).unwrap_or(0);
            let max_connections = l
                .max_connections
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or(0);
            let idle_timeout = duration("idle_timeout", &l.idle_timeout)?;
            let access_log = l.access_log.as_ref().map(|v| *v.get_ref());
            let faults = match &l.faults {
                None => Vec::new(),
                Some(f) => f
                    .get_ref()
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        crate::fault::attrs::from_table(t).map_err(|e| {
                            ConfigError(format!(
                                "{}: listener '{name}': fault {}: {e}",
                                at(f.span()),
                                i + 1
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            // Exhaustive over the kinds: a new one must say how its spec is
            // built from its keys.
            let kind = match kind_name.kind {
                proto::ListenerKind::Unspecified => {
                    return Err(ConfigError(format!("{origin}: listener '{name}': no kind")));
                }
                proto::ListenerKind::TcpEcho => Kind::TcpEcho(proto::TcpEchoSpec {
                    listen,
                    prefix,
                    max_connections,
                    idle_timeout,
                    access_log,
                }),
                proto::ListenerKind::UdpEcho => Kind::UdpEcho(proto::UdpEchoSpec {
                    listen,
                    prefix,
                    allow_privileged_sources: l
                        .allow_privileged_sources
                        .as_ref()
                        .is_some_and(|v| *v.get_ref()),
                    rate_limit: l
                        .rate_limit
                        .as_ref()
                        .map(|r| r.get_ref().clone())
                        .unwrap_or_default(),
                    max_sources: u32_of(&l.max_sources),
                    access_log,
                }),
                proto::ListenerKind::Proxy => Kind::Proxy(proto::ProxySpec {
                    listen,
                    upstreams: l
                        .upstreams
                        .as_ref()
                        .map(|u| u.get_ref().clone())
                        .unwrap_or_default(),
                    preconnect: l.preconnect.as_ref().map(|p| *p.get_ref()).unwrap_or(0),
                    connect_timeout: duration("connect_timeout", &l.connect_timeout)?,
                    idle_timeout,
                    max_connections,
                    upstream_backoff: duration("upstream_backoff", &l.upstream_backoff)?,
                    resolve_interval: duration("resolve_interval", &l.resolve_interval)?,
                    access_log,
                    faults,
                }),
                proto::ListenerKind::UdpProxy => Kind::UdpProxy(proto::UdpProxySpec {
                    listen,
                    upstream: l
                        .upstream
                        .as_ref()
                        .map(|u| u.get_ref().clone())
                        .unwrap_or_default(),
                    max_clients: u32_of(&l.max_clients),
                    idle_timeout,
                    faults,
                    allow_privileged_sources: l
                        .allow_privileged_sources
                        .as_ref()
                        .is_some_and(|v| *v.get_ref()),
                    rate_limit: l
                        .rate_limit
                        .as_ref()
                        .map(|r| r.get_ref().clone())
                        .unwrap_or_default(),
                    max_sources: u32_of(&l.max_sources),
                    max_clients_per_source: u32_of(&l.max_clients_per_source),
                }),
                proto::ListenerKind::Sniffer => Kind::Sniffer(proto::SnifferSpec {
                    interface: l
                        .interface
                        .as_ref()
                        .map(|v| v.get_ref().clone())
                        .unwrap_or_default(),
                    filter: l
                        .filter
                        .as_ref()
                        .map(|v| v.get_ref().clone())
                        .unwrap_or_default(),
                    pcap_path: l
                        .pcap_path
                        .as_ref()
                        .map(|v| v.get_ref().clone())
                        .unwrap_or_default(),
                    pcap_max_bytes: l.pcap_max_bytes.as_ref().map(|v| *v.get_ref()).unwrap_or(0),
                    pcap_max_files: u32_of(&l.pcap_max_files),
                    max_flows: u32_of(&l.max_flows),
                    port_scan_ports: u32_of(&l.port_scan_ports),
                    port_scan_window: duration("port_scan_window", &l.port_scan_window)?,
                    syn_rate: u32_of(&l.syn_rate),
                }),
                proto::ListenerKind::Http => {
                    use crate::services::http::REDACTED;
                    let token = match (&l.token, &l.token_file) {
                        (None, None) => String::new(),
                        (Some(t), Some(_)) => {
                            return Err(ConfigError(format!(
                                "{}: listener '{name}': token and token_file are both set; \
                                 give one of them",
                                at(t.span())
                            )));
                        }
                        (Some(t), None) => {
                            if t.get_ref() == REDACTED && entries == Entries::BootConfig {
                                return Err(ConfigError(format!(
                                    "{}: listener '{name}': token = \"{REDACTED}\" is a \
                                     placeholder written by netctl export; set the real token \
                                     or token_file",
                                    at(t.span())
                                )));
                            }
                            t.get_ref().clone()
                        }
                        (None, Some(f)) => {
                            let t = crate::sys::safe_file::read_regular_text(
                                Path::new(f.get_ref()),
                                MAX_SECRET_FILE_BYTES,
                            )
                            .map_err(|e| {
                                ConfigError(format!(
                                    "{}: token_file: cannot read {}: {e}",
                                    at(f.span()),
                                    f.get_ref()
                                ))
                            })?
                            .trim()
                            .to_string();
                            // The placeholder means "keep the token" only
                            // when written as `token` in an apply file.
                            if t == REDACTED {
                                return Err(ConfigError(format!(
                                    "{}: listener '{name}': token_file {} holds the \
                                     placeholder \"{REDACTED}\" written by netctl export, \
                                     not a token",
                                    at(f.span()),
                                    f.get_ref()
                                )));
                            }
                            t
                        }
                    };
                    Kind::Http(proto::HttpSpec {
                        listen,
                        max_body_bytes: l
                            .max_body_bytes
                            .as_ref()
                            .map(|m| *m.get_ref())
                            .unwrap_or(0),
                        header_read_timeout: duration(
                            "header_read_timeout",
                            &l.header_read_timeout,
                        )?,
                        request_timeout: duration("request_timeout", &l.request_timeout)?,
                        max_connections,
                        token,
                        rate_limit: l
                            .rate_limit
                            .as_ref()
                            .map(|r| r.get_ref().clone())
                            .unwrap_or_default(),
                        body_budget_bytes: l
                            .body_budget_bytes
                            .as_ref()
                            .map(|m| *m.get_ref())
                            .unwrap_or(0),
                        max_streams: u32_of(&l.max_streams),
                        max_header_bytes: u32_of(&l.max_header_bytes),
                        idle_timeout,
                        rate_limit_ipv6_prefix: u32_of(&l.rate_limit_ipv6_prefix),
                        access_log,
                    })
                }
            };
            let spec = proto::ListenerSpec { kind: Some(kind) };
            // An apply file is read by netctl, whose capture_dir is not
            // netd's: where a pcap file may go is checked by netd.
            let checked = match entries {
                Entries::ApplyFile => {
                    std::borrow::Cow::Owned(Service::clear_netd_paths(spec.clone()))
                }
                Entries::BootConfig => std::borrow::Cow::Borrowed(&spec),
            };
            if let Err(e) = Service::from_spec(&checked, settings) {
                // Point at the listen line for address problems.
                let line = if let (true, Some(v)) = (e.0.starts_with("listen"), &l.listen) {
                    at(v.span())
                } else if let (true, Some(v)) = (e.0.contains("interface"), &l.interface) {
                    at(v.span())
                } else if let (true, Some(v)) = (e.0.starts_with("filter"), &l.filter) {
                    at(v.span())
                } else if let (true, Some(u)) = (e.0.starts_with("upstream"), &l.upstreams) {
                    at(u.span())
                } else if let (true, Some(v)) = (e.0.starts_with("pcap_path"), &l.pcap_path) {
                    at(v.span())
                } else if let Some(span) = optional.iter().find_map(|(f, span)| {
                    e.0.strip_prefix(f)
                        .is_some_and(|rest| rest.starts_with([' ', ':']))
                        .then(|| span.clone())
                        .flatten()
                }) {
                    at(span)
                } else {
                    origin.clone()
                };
                return Err(ConfigError(format!("{line}: listener '{name}': {e}")));
            }
            if let Some((addr, transport)) = Service::spec_listen_addr(&spec) {
                let udp = transport == Transport::Udp;
                let line = l.listen.as_ref().map_or(origin.clone(), |v| at(v.span()));
                if let Some(other) = bound_addrs.clash(addr, udp) {
                    return Err(ConfigError(format!(
                        "{line}: listener '{name}': {} {addr} clashes with listener '{other}' \
                         (both would bind the same {} port)",
                        if udp { "UDP" } else { "TCP" },
                        if udp { "UDP" } else { "TCP" },
                    )));
                }
                if let Some(m) = metrics_listen.filter(|m| !udp && addrs_clash(*m, addr)) {
                    return Err(ConfigError(format!(
                        "{line}: listener '{name}': TCP {addr} clashes with [metrics] listen {m}"
                    )));
                }
                bound_addrs.insert(&name, addr, udp);
            }
            listeners.push(BootListener {
                name,
                spec,
                labels: l.labels,
                origin,
            });
        }
        Ok(listeners)
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

/// `[metrics]` or `[toxiproxy_api]`: an HTTP endpoint netd serves itself,
/// with no authentication (so loopback only unless `allow_remote`), and
/// its bounds. `what` names it in errors.
fn http_endpoint(
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
fn toxiproxy_api_rules(
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
fn toxiproxy_api_token(path: &str) -> Result<crate::endpoints::toxiproxy_api::Token, String> {
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
pub const MAX_SECRET_FILE_BYTES: u64 = 4 << 20;

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
/// Line numbers of byte offsets in a text, by binary search over its line
/// starts (O(log n) each, where counting newlines would be O(n)).
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The 1-based line of byte `pos` (as [`line_of`]).
    fn line(&self, pos: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < pos) + 1
    }
}

/// The fixed ports listeners of a file bind, to find a clash
/// ([`addrs_clash`]) in O(1): per (port, UDP, IPv4), the listener on the
/// unspecified address, the first one on a specific address, and those by
/// address.
#[derive(Default)]
struct BoundAddrs {
    by_port: HashMap<(u16, bool, bool), PortUsers>,
}

#[derive(Default)]
struct PortUsers {
    unspecified: Option<String>,
    first_specific: Option<String>,
    by_ip: HashMap<std::net::IpAddr, String>,
}

impl BoundAddrs {
    /// The listener `addr` clashes with, if any.
    fn clash(&self, addr: std::net::SocketAddr, udp: bool) -> Option<&str> {
        if addr.port() == 0 {
            return None;
        }
        let users = self.by_port.get(&(addr.port(), udp, addr.is_ipv4()))?;
        if let Some(u) = &users.unspecified {
            return Some(u);
        }
        if addr.ip().is_unspecified() {
            users.first_specific.as_deref()
        } else {
            users.by_ip.get(&addr.ip()).map(String::as_str)
        }
    }

    fn insert(&mut self, name: &str, addr: std::net::SocketAddr, udp: bool) {
        if addr.port() == 0 {
            return;
        }
        let users = self
            .by_port
            .entry((addr.port(), udp, addr.is_ipv4()))
            .or_default();
        if addr.ip().is_unspecified() {
            users.unspecified.get_or_insert_with(|| name.to_string());
        } else {
            users.first_specific.get_or_insert_with(|| name.to_string());
            users
                .by_ip
                .entry(addr.ip())
                .or_insert_with(|| name.to_string());
        }
    }
}

fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clashing ports, duplicate names and the line numbers in errors, as
    /// found by the hash maps and the line index (linear in listeners).
    #[test]
    fn clashes_and_duplicates_are_found_with_their_lines() {
        let listener = |name: &str, kind: &str, listen: &str| {
            format!("[[listener]]\nname = \"{name}\"\nkind = \"{kind}\"\nlisten = \"{listen}\"\n")
        };
        let check = |entries: &[(&str, &str, &str)]| {
            let text: String = entries.iter().map(|(n, k, l)| listener(n, k, l)).collect();
            Config::parse(&text, "x.toml")
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for (a, b) in [
            ("127.0.0.1:7001", "127.0.0.1:7001"),
            ("0.0.0.0:7001", "127.0.0.1:7001"),
            ("127.0.0.1:7001", "0.0.0.0:7001"),
            ("[::]:7001", "[::1]:7001"),
        ] {
            let e = check(&[("a", "tcp-echo", a), ("b", "tcp-echo", b)]).unwrap_err();
            assert!(
                e.starts_with("x.toml:8: listener 'b': TCP")
                    && e.contains("clashes with listener 'a'"),
                "{a} {b}: {e}"
            );
        }
        for (a, b, kind_b) in [
            ("127.0.0.1:7001", "127.0.0.2:7001", "tcp-echo"),
            ("127.0.0.1:7001", "127.0.0.1:7001", "udp-echo"),
            ("0.0.0.0:7001", "[::]:7001", "tcp-echo"),
            ("127.0.0.1:0", "127.0.0.1:0", "tcp-echo"),
            ("127.0.0.1:7001", "127.0.0.1:7002", "tcp-echo"),
        ] {
            check(&[("a", "tcp-echo", a), ("b", kind_b, b)])
                .unwrap_or_else(|e| panic!("{a} {b}: {e}"));
        }
        // The wildcard clashes with the first of several specific ones.
        let e = check(&[
            ("a", "udp-echo", "127.0.0.1:7001"),
            ("b", "udp-echo", "127.0.0.2:7001"),
            ("c", "udp-echo", "0.0.0.0:7001"),
        ])
        .unwrap_err();
        assert!(
            e.starts_with("x.toml:12: listener 'c': UDP") && e.contains("listener 'a'"),
            "{e}"
        );
        let e = check(&[
            ("a", "tcp-echo", "127.0.0.1:0"),
            ("b", "tcp-echo", "127.0.0.1:0"),
            ("a", "tcp-echo", "127.0.0.1:0"),
        ])
        .unwrap_err();
        assert_eq!(e, "x.toml:10: a listener named 'a' is defined twice");
    }

    /// Every key a kind declares ([`crate::services::ListenerKind::CONFIG_KEYS`])
    /// is one this parser reads: given a value of the wrong type, the
    /// error is about the type, never an unknown field. And every key the
    /// parser reads is declared by some kind.
    #[test]
    fn kinds_declare_only_keys_the_parser_reads_and_all_of_them() {
        for k in crate::services::KINDS {
            for key in k.config_keys {
                let text = format!(
                    "[[listener]]\nname = \"x\"\nkind = \"{}\"\n{key} = {{ wrong = 1 }}\n",
                    k.slug
                );
                let e = Config::parse(&text, "k.toml").unwrap_err().to_string();
                assert!(
                    e.contains("invalid type") && !e.contains("unknown field"),
                    "{} declares {key}: {e}",
                    k.slug
                );
            }
        }
        let declared: std::collections::BTreeSet<&str> = crate::services::KINDS
            .iter()
            .flat_map(|k| k.config_keys.iter().copied())
            .collect();
        let text = "[[listener]]\nname = \"x\"\nkind = \"tcp-echo\"\nnot_a_key = 1\n";
        let e = Config::parse(text, "k.toml").unwrap_err().to_string();
        let expected = e
            .split("expected one of")
            .nth(1)
            .unwrap_or_else(|| panic!("serde lists the keys: {e}"));
        for key in expected.split(',').map(|k| k.trim().trim_matches('`')) {
            if !["name", "kind", "labels", ""].contains(&key) {
                assert!(declared.contains(key), "no kind declares {key}");
            }
        }
    }

    #[test]
    fn embedded_default_is_the_demo() {
        let c = Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME).unwrap();
        let names: Vec<_> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["echo", "udp-echo"]);
        match &c.listeners[0].spec.kind {
            Some(Kind::TcpEcho(s)) => {
                assert_eq!(s.listen, "127.0.0.1:8080");
                assert_eq!(s.prefix, "Echo: ");
            }
            other => panic!("unexpected {other:?}"),
        }
        match &c.listeners[1].spec.kind {
            Some(Kind::UdpEcho(s)) => {
                assert_eq!(s.listen, "127.0.0.1:9090");
                assert_eq!(s.prefix, "ACK: ");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn log_levels_are_levels_or_filters() {
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,netd=debug",
            "netd::access=info",
        ] {
            assert!(check_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "", "info,loud", "netd=verbose"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clashing_addresses() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(addrs_clash(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(addrs_clash(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(addrs_clash(a("127.0.0.2:80"), a("0.0.0.0:80")));
        assert!(addrs_clash(a("[::]:80"), a("[::1]:80")));
        assert!(!addrs_clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!addrs_clash(a("[::]:80"), a("0.0.0.0:80")));
        assert!(!addrs_clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!addrs_clash(a("127.0.0.1:80"), a("127.0.0.1:81")));
    }

    #[test]
    fn absurd_durations_and_sizes_name_their_bounds() {
        let http = |opt: &str| {
            format!(
                "[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n{opt}\n"
            )
        };
        for (opt, needle) in [
            (
                "idle_timeout = \"99999999999y\"",
                "; it must be 1ms to 1day",
            ),
            (
                "header_read_timeout = \"2h\"",
                "header_read_timeout is 2h; it must be 1ms to 1h",
            ),
            (
                "max_streams = 5000",
                "max_streams is 5000; it must be 1 to 1000",
            ),
            (
                "max_header_bytes = 10",
                "max_header_bytes is 10; it must be 1024 to 1048576",
            ),
            (
                "max_body_bytes = 4096\nbody_budget_bytes = 1024",
                "at least max_body_bytes",
            ),
        ] {
            let e = Config::parse(&http(opt), "x.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{opt}: {e}");
        }
        let e = Config::parse("shutdown_grace = \"99999999999y\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shutdown_grace"), "{e}");
    }

    #[test]
    fn toml_syntax_errors_are_one_line_with_line_and_column() {
        let e = Config::parse("[[listener]]\nname = \"a\"\nkind = \"tcp-echo\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:3:"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse_listeners("[[listener]]\nname = 5\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.toml:2:"), "{e}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let text =
            "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:99999\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:4: listener 'a': listen:"), "{e}");

        let text = "[[listener]]\nname = \"a\"\nkind = \"tcp-echoo\"\nlisten = \"127.0.0.1:1\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:3:") && e.contains("tcp-echo"), "{e}");

        let text = "shutdown_grace = \"5s\"\nbogus = 1\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:2:") && e.contains("bogus"), "{e}");

        let text = "capture_dir = \"/c\"\n[[listener]]\nname = \"s\"\nkind = \"sniffer\"\ninterface = \"lo\"\npcap_path = \"../x.pcap\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml:6: listener 's': pcap_path '../x.pcap'")
                && e.contains("capture_dir /c"),
            "{e}"
        );

        let text = "capture_dir = \"captures\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:1: capture_dir"), "{e}");

        let text = "[[listener]]\nname = \"a\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:1\"\n[[listener]]\nname = \"a\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:2\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml:6:") && e.contains("defined twice"),
            "{e}"
        );
    }

    #[test]
    fn http_token_literal_or_file_and_the_export_placeholder() {
        let http = |opt: &str| {
            format!(
                "[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n{opt}\n"
            )
        };
        let token_of = |c: &[BootListener]| match &c[0].spec.kind {
            Some(Kind::Http(h)) => h.token.clone(),
            other => panic!("{other:?}"),
        };
        let c = Config::parse(&http("token = \"s3cret\""), "x.toml").unwrap();
        assert_eq!(token_of(&c.listeners), "s3cret");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let from_file = format!(
            "token_file = {}",
            toml::Value::String(file.display().to_string())
        );
        let c = Config::parse(&http(&from_file), "x.toml").unwrap();
        assert_eq!(token_of(&c.listeners), "from-file");

        let e = Config::parse(&http(&format!("token = \"t\"\n{from_file}")), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.toml:5: listener 'h': token and token_file are both set"),
            "{e}"
        );
        let e = Config::parse(&http("token = \"has space\""), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.toml:5: listener 'h': token must be"),
            "{e}"
        );
        assert!(!e.contains("has space"), "the token is not echoed: {e}");
        let e = Config::parse(
            "[[listener]]\nname = \"t\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\ntoken = \"x\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("x.toml:5: token does not apply to a tcp-echo"),
            "{e}"
        );

        // The placeholder export writes: refused in a boot config, kept
        // as is in an apply file (netd reads it as "keep the token").
        let placeholder = http("token = \"<redacted>\"");
        let e = Config::parse(&placeholder, "x.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.toml:5: listener 'h': token = \"<redacted>\" is a placeholder written by netctl \
             export; set the real token or token_file"
        );
        let l = parse_listeners(&placeholder, "apply.toml").unwrap();
        assert_eq!(token_of(&l), crate::services::http::REDACTED);
        // Only as `token`: a token file holding it is a mistake either way.
        std::fs::write(&file, "<redacted>\n").unwrap();
        for e in [
            Config::parse(&http(&from_file), "x.toml").unwrap_err(),
            parse_listeners(&http(&from_file), "x.toml").unwrap_err(),
        ] {
            assert!(e.to_string().contains("holds the placeholder"), "{e}");
        }
    }

    #[test]
    fn apply_files_take_listeners_ignore_the_rest_and_leave_pcap_paths_to_netd() {
        let sniffer = "[[listener]]\nname = \"s\"\nkind = \"sniffer\"\ninterface = \"lo\"\n\
                       pcap_path = \"/elsewhere/x.pcap\"\n";
        let l = parse_listeners(sniffer, "apply.toml").unwrap();
        match &l[0].spec.kind {
            Some(Kind::Sniffer(s)) => assert_eq!(s.pcap_path, "/elsewhere/x.pcap"),
            other => panic!("{other:?}"),
        }
        assert_eq!(l[0].origin, "apply.toml:2");
        let boot = format!("capture_dir = \"/c\"\n{sniffer}");
        let e = Config::parse(&boot, "x.toml").unwrap_err().to_string();
        assert!(e.contains("capture_dir /c"), "{e}");

        // A whole config file applies: its daemon settings are ignored.
        let l = parse_listeners(&boot, "apply.toml").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].origin, "apply.toml:3");
        // Everything else is checked as in a config.
        let e = parse_listeners(
            "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:99999\"\n",
            "apply.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("apply.toml:4: listener 'a': listen:"), "{e}");
        assert!(parse_listeners("", "apply.toml").unwrap().is_empty());
    }

    #[test]
    fn udp_echo_safety_and_http_ipv6_prefix_options() {
        let text = "[[listener]]\nname = \"u\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:1\"\nrate_limit = \"off\"\nallow_privileged_sources = true\nmax_sources = 10\n[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:2\"\nrate_limit = \"5/s\"\nrate_limit_ipv6_prefix = 56\n";
        let c = Config::parse(text, "x.toml").unwrap();
        match &c.listeners[0].spec.kind {
            Some(Kind::UdpEcho(u)) => {
                assert_eq!(u.rate_limit, "off");
                assert!(u.allow_privileged_sources);
                assert_eq!(u.max_sources, 10);
            }
            other => panic!("{other:?}"),
        }
        match &c.listeners[1].spec.kind {
            Some(Kind::Http(h)) => assert_eq!(h.rate_limit_ipv6_prefix, 56),
            other => panic!("{other:?}"),
        }

        let text = "[[listener]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:2\"\nrate_limit_ipv6_prefix = 129\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("rate_limit_ipv6_prefix"), "{e}");
        let text = "[[listener]]\nname = \"u\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:1\"\nrate_limit = \"lots\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("rate_limit") && e.contains("off"), "{e}");
    }
}

/// Property tests (`fuzz_*`): arbitrary text, and generated configs with
/// `[[listener]]` tables of random keys and values (absurd numbers and
/// durations, unicode), never panic the parser: it returns a config or an
/// error that starts with the source's name (and, where it gives one, a
/// line that exists).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const SOURCE: &str = "fuzz.toml";

    /// Listener keys besides `name` and `kind` (all but `token_file`,
    /// which reads a file), a few misspelt.
    const LISTENER_KEYS: &[&str] = &[
        "listen",
        "interface",
        "filter",
        "pcap_path",
        "pcap_max_bytes",
        "pcap_max_files",
        "max_flows",
        "port_scan_ports",
        "port_scan_window",
        "syn_rate",
        "prefix",
        "max_connections",
        "idle_timeout",
        "upstreams",
        "preconnect",
        "connect_timeout",
        "upstream_backoff",
        "resolve_interval",
        "max_body_bytes",
        "header_read_timeout",
        "request_timeout",
        "rate_limit",
        "token",
        "body_budget_bytes",
        "max_streams",
        "max_header_bytes",
        "allow_privileged_sources",
        "max_sources",
        "access_log",
        "labels",
        "labels.team",
        "nmae",
        "Kind",
        "ünïcode",
    ];

    /// Top-level keys and tables (no `[control.tls]`, which reads files).
    const TOP_KEYS: &[&str] = &[
        "shutdown_grace",
        "max_listeners",
        "capture_dir",
        "control",
        "log.level",
        "log.format",
        "metrics.listen",
        "metrics.allow_remote",
        "metrics.max_connections",
        "metrics.header_timeout",
        "metrics.idle_timeout",
        "toxiproxy_api.listen",
        "toxiproxy_api.allow_remote",
        "toxiproxy_api.max_connections",
        "toxiproxy_api.header_timeout",
        "toxiproxy_api.idle_timeout",
        "toxiproxy_api.allowed_ports",
        "toxiproxy_api.max_proxies",
        "toxiproxy_api.persist",
        "toxiproxy_api.token_file",
        "health.listen",
        "access_log.path",
        "access_log.buffer_bytes",
        "control.listen",
        "control.insecure",
        "control.max_connections",
        "control.max_streams",
        "control.idle_timeout",
        "control.max_request_bytes",
        "control.roles.admin",
    ];

    fn quoted(s: &str) -> String {
        toml::Value::String(s.to_string()).to_string()
    }

    /// A string value: durations (absurd ones too), addresses, kinds,
    /// rates, filters, or any unicode.
    fn string() -> impl Strategy<Value = String> {
        let unit = proptest::sample::select(
            &[
                "", "ns", "us", "ms", "s", "m", "h", "d", "w", "y", "x", "s s", "秒",
            ][..],
        );
        prop_oneof![
            (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
            (0u64..100_000, unit).prop_map(|(n, u)| format!("{n}{u}")),
            proptest::sample::select(
                &[
                    "tcp-echo",
                    "udp-echo",
                    "proxy",
                    "http",
                    "sniffer",
                    "127.0.0.1:0",
                    "[::1]:0",
                    "0.0.0.0:99999",
                    "localhost:80",
                    "unix:/tmp/x.sock",
                    "lo",
                    "tcp and port 80",
                    "icmp and port 1",
                    "100/s",
                    "0/s",
                    "1/d",
                    "-1s",
                    "1.5s",
                    "",
                    "info",
                    "json",
                    "warn,netd=debug",
                    "debug[",
                    "self",
                ][..]
            )
            .prop_map(String::from),
            any::<String>(),
        ]
    }

    /// A TOML value as it would be written after `key = `.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => string().prop_map(|s| quoted(&s)),
            2 => prop_oneof![
                any::<i64>(),
                Just(i64::MAX),
                Just(i64::MIN),
                Just(u32::MAX as i64 + 1),
                Just(-1i64),
                0i64..70_000,
            ]
            .prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
            1 => any::<bool>().prop_map(|b| b.to_string()),
            1 => proptest::collection::vec(string(), 0..4).prop_map(|v| {
                let items: Vec<String> = v.iter().map(|s| quoted(s)).collect();
                format!("[{}]", items.join(", "))
            }),
            1 => (string(), string()).prop_map(|(k, v)| format!("{{ {} = {} }}", quoted(&k), quoted(&v))),
        ]
    }

    /// A value of the type `key` takes (mostly in range, sometimes absurd),
    /// or, one time in four, any value.
    fn value_for(key: &'static str) -> BoxedStrategy<String> {
        let typed: BoxedStrategy<String> = if key.ends_with("timeout")
            || key.ends_with("window")
            || key.ends_with("backoff")
            || key.ends_with("interval")
            || key.ends_with("grace")
        {
            let unit = proptest::sample::select(&["ms", "s", "m", "h", "d", "ns", "y"][..]);
            prop_oneof![
                (0u64..100, unit.clone()).prop_map(|(n, u)| quoted(&format!("{n}{u}"))),
                (any::<u64>(), unit).prop_map(|(n, u)| quoted(&format!("{n}{u}"))),
            ]
            .boxed()
        } else if key.starts_with("max_")
            || key.contains(".max_")
            || key.ends_with("_bytes")
            || key.ends_with("_files")
            || key.ends_with("_ports")
            || matches!(key, "syn_rate" | "preconnect")
        {
            prop_oneof![0i64..5000, Just(u32::MAX as i64), any::<i64>()]
                .prop_map(|n| n.to_string())
                .boxed()
        } else if key.starts_with("allow") || key.ends_with("insecure") || key == "access_log" {
            any::<bool>().prop_map(|b| b.to_string()).boxed()
        } else if key == "upstreams" || key.ends_with("admin") {
            proptest::collection::vec(string(), 0..3)
                .prop_map(|v| {
                    let items: Vec<String> = v.iter().map(|s| quoted(s)).collect();
                    format!("[{}]", items.join(", "))
                })
                .boxed()
        } else if key.ends_with("listen") {
            proptest::sample::select(
                &[
                    "127.0.0.1:0",
                    "[::1]:0",
                    "0.0.0.0:99999",
                    "127.0.0.1:80",
                    "unix:/tmp/n.sock",
                    "x",
                ][..],
            )
            .prop_map(quoted)
            .boxed()
        } else {
            string().prop_map(|s| quoted(&s)).boxed()
        };
        prop_oneof![3 => typed, 1 => value()].boxed()
    }

    /// Distinct keys from `keys`, each with a value.
    fn entries(
        keys: &'static [&'static str],
        n: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Vec<(&'static str, String)>> {
        proptest::sample::subsequence(keys, n).prop_flat_map(|ks| {
            ks.into_iter()
                .map(|k| value_for(k).prop_map(move |v| (k, v)))
                .collect::<Vec<_>>()
        })
    }

    fn listener() -> impl Strategy<Value = String> {
        (
            proptest::option::weighted(0.9, proptest::sample::select(&["a", "b", "échø", ""][..])),
            proptest::option::weighted(
                0.9,
                proptest::sample::select(
                    &["tcp-echo", "udp-echo", "proxy", "http", "sniffer", "ftp"][..],
                ),
            ),
            entries(LISTENER_KEYS, 0..6),
        )
            .prop_map(|(name, kind, rest)| {
                let mut t = String::from("[[listener]]\n");
                if let Some(n) = name {
                    t += &format!("name = {}\n", quoted(n));
                }
                if let Some(k) = kind {
                    t += &format!("kind = {}\n", quoted(k));
                }
                for (k, v) in rest {
                    t += &format!("{k} = {v}\n");
                }
                t
            })
    }

    /// A whole config: top-level keys, then listener tables.
    fn config_text() -> impl Strategy<Value = String> {
        (
            entries(TOP_KEYS, 0..4),
            proptest::collection::vec(listener(), 0..4),
        )
            .prop_map(|(top, listeners)| {
                let mut t = String::new();
                for (k, v) in top {
                    t += &format!("{k} = {v}\n");
                }
                for l in listeners {
                    t += &l;
                }
                t
            })
    }

    /// Both readers of `[[listener]]` tables: the config and apply files.
    fn check(text: &str) -> Result<(), TestCaseError> {
        check_one(Config::parse(text, SOURCE).err(), text)?;
        check_one(parse_listeners(text, SOURCE).err(), text)
    }

    fn check_one(e: Option<ConfigError>, text: &str) -> Result<(), TestCaseError> {
        let Some(e) = e else {
            return Ok(());
        };
        let msg = e.to_string();
        let Some(rest) = msg.strip_prefix(&format!("{SOURCE}:")) else {
            return Err(TestCaseError::fail(format!("no source prefix: {msg}")));
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() {
            let line: usize = digits.parse().unwrap_or(usize::MAX);
            let lines = text.lines().count().max(1);
            prop_assert!(
                (1..=lines + 1).contains(&line),
                "line {} of {}: {}",
                line,
                lines,
                msg
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::util::fuzz_support::config(1024))]

        #[test]
        fn fuzz_config_arbitrary_text(text in any::<String>()) {
            check(&text)?;
        }

        #[test]
        fn fuzz_config_generated_tables(text in config_text()) {
            check(&text)?;
        }

        /// One listener table alone reaches the validation after
        /// deserialising more often than a whole config does.
        #[test]
        fn fuzz_config_one_listener(text in listener()) {
            check(&text)?;
        }

        #[test]
        fn fuzz_config_generated_then_mutated(
            text in config_text(),
            at in any::<prop::sample::Index>(),
            insert in proptest::sample::select(&["\n", "[", "]", "\"", "=", "\u{0}", "\u{feff}", "[[listener]]\n", "#"][..]),
        ) {
            let mut t = text;
            let mut i = at.index(t.len() + 1);
            while !t.is_char_boundary(i) {
                i -= 1;
            }
            t.insert_str(i, insert);
            check(&t)?;
        }
    }
}
