//! The flat `key = value` form of a kind's spec, read side: the keys a kind
//! declares ([`Key`], one table per kind), the typed readers a kind's
//! `read_config` is written with (strings, counts, sizes, durations,
//! booleans, lists), and the error naming the field that is wrong
//! ([`FieldError`]). The config file's `[[listener]]` tables, apply files
//! and `netctl start`/`update` all go through this form (the write side is
//! [`super::Table`]).

use std::time::Duration;

use super::SpecError;

/// Largest token file (or TLS certificate/key/CA file) read.
pub const MAX_SECRET_FILE_BYTES: u64 = 4 << 20;

/// What a key's value is, for netctl's flag parsing and its `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Any text (`--prefix STR`).
    Text,
    /// A `host:port` address.
    Addr,
    /// A list of `host:port` addresses (the flag is repeated).
    Addrs,
    /// A list of texts (the flag is repeated).
    Texts,
    /// A non-negative count (u32).
    Count,
    /// A size in bytes (u64).
    Bytes,
    /// A size in bytes that fits a u32.
    Bytes32,
    /// A prefix length in bits (u32).
    Bits,
    /// A humantime duration (`5s`, `2m`).
    Duration,
    /// A rate (`100/s`), or `off` where the kind says so.
    Rate,
    /// A filter expression.
    Expr,
    /// An interface name.
    Interface,
    /// A file path as netd reads it (a pcap name in `capture_dir`; a
    /// token file netctl itself reads).
    Path,
    /// A file on netd's host named by the caller (TLS material): netctl
    /// makes a relative one absolute where it was typed.
    File,
    /// A boolean given as `true`/`false`.
    Bool,
    /// A boolean flag: alone it means true (`--allow-privileged-sources`);
    /// update also takes `=false`.
    Switch,
    /// Fault tables (`[[listener.faults]]`): no flag, `netctl fault` sets
    /// them.
    Faults,
}

impl Unit {
    /// The value name netctl shows (`--max-connections N`).
    pub fn value_name(self) -> &'static str {
        match self {
            Unit::Text | Unit::Texts => "TEXT",
            Unit::Addr | Unit::Addrs => "ADDR",
            Unit::Count => "N",
            Unit::Bytes | Unit::Bytes32 => "BYTES",
            Unit::Bits => "BITS",
            Unit::Duration => "DUR",
            Unit::Rate => "RATE",
            Unit::Expr => "EXPR",
            Unit::Interface => "IF",
            Unit::Path => "PATH",
            Unit::File => "FILE",
            Unit::Bool | Unit::Switch => "BOOL",
            Unit::Faults => "FAULTS",
        }
    }
}

/// One key of a kind's flat form.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The config key (`max_connections`).
    pub key: &'static str,
    /// netctl's long flag for it, without `--` (`max-connections`); None
    /// for keys set by other commands (faults) or read from elsewhere.
    pub flag: Option<&'static str>,
    /// netctl's short flag, if any (`-l` for `--listen`).
    pub short: Option<char>,
    /// Another name the flag is accepted under (`connect-timeout`).
    pub alias: Option<&'static str>,
    pub unit: Unit,
    /// One line for `--help` (the kind's start command; update shows it
    /// after the kinds that take it).
    pub help: &'static str,
    /// Whether `netctl update` can change it.
    pub update: bool,
    /// A listener of the kind must set it; the text says what it takes
    /// ("host:port"). Checked by the config reader.
    pub required: Option<&'static str>,
    /// `netctl start` needs the flag (a required key, or one the kind's
    /// validation would refuse empty).
    pub start_required: bool,
    /// Another key this one stands in for: setting one drops the other
    /// (`token` and `token_file`).
    pub replaces: Option<&'static str>,
}

impl Key {
    /// A key with a flag of the same name (`_` as `-` is the caller's
    /// spelling; given here in full), updatable, optional.
    pub const fn new(key: &'static str, flag: &'static str, unit: Unit, help: &'static str) -> Key {
        Key {
            key,
            flag: Some(flag),
            short: None,
            alias: None,
            unit,
            help,
            update: true,
            required: None,
            start_required: false,
            replaces: None,
        }
    }

    pub const fn short(mut self, c: char) -> Key {
        self.short = Some(c);
        self
    }

    pub const fn alias(mut self, a: &'static str) -> Key {
        self.alias = Some(a);
        self
    }

    pub const fn required(mut self, what: &'static str) -> Key {
        self.required = Some(what);
        self.start_required = true;
        self
    }

    /// `netctl start` needs the flag (the config leaves the check to the
    /// kind's validation).
    pub const fn start_required(mut self) -> Key {
        self.start_required = true;
        self
    }

    pub const fn replaces(mut self, other: &'static str) -> Key {
        self.replaces = Some(other);
        self
    }

    /// A key with no netctl flag of its own.
    pub const fn no_flag(mut self) -> Key {
        self.flag = None;
        self
    }
}

/// How a [`FieldError`] is shown with its place in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The value has the wrong type (`invalid type: string "x", expected
    /// u32`): shown at `file:line:column`, like TOML's own errors.
    Type,
    /// The value does not parse (`idle_timeout: 'x' is not a duration`):
    /// shown at `file:line`.
    Value,
    /// The listener as a whole is wrong at this field: shown at
    /// `file:line: listener 'NAME': ...`.
    Listener,
}

/// A field of a flat form that is wrong, and why; the message names the
/// field where a person needs it to.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
    pub class: Class,
}

impl FieldError {
    pub fn new(field: &str, class: Class, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_string(),
            message: message.into(),
            class,
        }
    }

    /// `field` has the wrong type: `expected` as serde says it ("u32",
    /// "a string").
    pub fn wrong_type(field: &str, got: &toml::Value, expected: &str) -> FieldError {
        FieldError::new(
            field,
            Class::Type,
            format!("invalid type: {}, expected {expected}", unexpected(got)),
        )
    }
}

impl From<FieldError> for SpecError {
    fn from(e: FieldError) -> SpecError {
        SpecError {
            field: Some(e.field),
            message: e.message,
        }
    }
}

/// A value as serde's "invalid type" names it.
fn unexpected(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer `{i}`"),
        toml::Value::Float(f) => format!("floating point `{f}`"),
        toml::Value::Boolean(b) => format!("boolean `{b}`"),
        toml::Value::Datetime(d) => format!("datetime `{d}`"),
        toml::Value::Array(_) => "sequence".into(),
        toml::Value::Table(_) => "map".into(),
    }
}

/// `key`'s string, "" when unset.
pub fn text(t: &toml::Table, key: &str) -> Result<String, FieldError> {
    Ok(opt_text(t, key)?.unwrap_or_default())
}

/// `key`'s string, if set.
pub fn opt_text(t: &toml::Table, key: &str) -> Result<Option<String>, FieldError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(FieldError::wrong_type(key, v, "a string")),
    }
}

/// `key`'s list of strings, empty when unset.
pub fn strings(t: &toml::Table, key: &str) -> Result<Vec<String>, FieldError> {
    match t.get(key) {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(FieldError::wrong_type(key, other, "a string")),
            })
            .collect(),
        Some(v) => Err(FieldError::wrong_type(key, v, "a sequence")),
    }
}

/// `key`'s integer as a u64, 0 when unset.
pub fn u64(t: &toml::Table, key: &str) -> Result<u64, FieldError> {
    integer(t, key, "u64")
}

/// `key`'s integer as a u32, 0 when unset.
pub fn u32(t: &toml::Table, key: &str) -> Result<u32, FieldError> {
    integer(t, key, "u32")
}

fn integer<N: TryFrom<i64> + Default>(
    t: &toml::Table,
    key: &str,
    ty: &str,
) -> Result<N, FieldError> {
    match t.get(key) {
        None => Ok(N::default()),
        Some(toml::Value::Integer(i)) => N::try_from(*i).map_err(|_| {
            FieldError::new(
                key,
                Class::Type,
                format!("invalid value: integer `{i}`, expected {ty}"),
            )
        }),
        Some(v) => Err(FieldError::wrong_type(key, v, ty)),
    }
}

/// `key`'s boolean, false when unset.
pub fn bool(t: &toml::Table, key: &str) -> Result<bool, FieldError> {
    Ok(opt_bool(t, key)?.unwrap_or(false))
}

/// `key`'s boolean, if set.
pub fn opt_bool(t: &toml::Table, key: &str) -> Result<Option<bool>, FieldError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
        Some(v) => Err(FieldError::wrong_type(key, v, "a boolean")),
    }
}

/// `key`'s humantime duration (`30s`, `5m`), if set.
pub fn duration(t: &toml::Table, key: &str) -> Result<Option<prost_types::Duration>, FieldError> {
    let Some(s) = opt_text(t, key)? else {
        return Ok(None);
    };
    let d: Duration = humantime::parse_duration(&s).map_err(|e| {
        FieldError::new(
            key,
            Class::Value,
            format!("{key}: '{s}' is not a duration like 30s or 5m: {e}"),
        )
    })?;
    prost_types::Duration::try_from(d)
        .map(Some)
        .map_err(|_| FieldError::new(key, Class::Value, format!("{key} is too large")))
}

/// The fault tables under `faults` (see [`crate::fault::attrs`] for one
/// table), as the raw tables; each kind compiles them.
pub fn tables(t: &toml::Table, key: &str) -> Result<Vec<toml::Table>, FieldError> {
    match t.get(key) {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::Table(t) => Ok(t.clone()),
                other => Err(FieldError::wrong_type(key, other, "a map")),
            })
            .collect(),
        Some(v) => Err(FieldError::wrong_type(key, v, "a sequence")),
    }
}

/// How a kind reads its form: the two places apply files and the boot
/// config differ.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Secrets may be the placeholder export writes (`<redacted>`),
    /// meaning "keep the current one" (apply
    /// files, `netctl update`); a boot config refuses it.
    pub placeholders: bool,
}

/// `listen`, as every kind that binds an address has it.
pub const LISTEN: Key = Key::new(
    "listen",
    "listen",
    Unit::Addr,
    "Address to bind, host:port; port 0 picks a free one.",
)
.short('l')
.required("listen is required (host:port)");

/// `access_log`, as the kinds that may write access-log lines have it.
pub const ACCESS_LOG: Key = Key::new(
    "access_log",
    "access-log",
    Unit::Bool,
    "Write a line to netd's access log per request (http) or per closed connection (proxy): \
     true or false (default true). The echo kinds write none either way.",
);

/// The `faults` tables of the kinds that take faults (set by `netctl
/// fault`, not by a flag of start or update).
pub const FAULTS: Key = Key::new("faults", "", Unit::Faults, "Fault tables.").no_flag();
