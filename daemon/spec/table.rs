//! The flat `key = value` form a kind writes its spec in (export, and the
//! config it reads back).

use std::fmt::Write as _;
use std::time::Duration;

/// The `key = value` lines of one table; keys are the config's field names
/// (bare words), values encoded by `toml`. Each kind writes its own keys
/// ([`crate::services::ListenerKind::write_config`]); a value at its zero
/// (0, "", false, unset) is left out, as the parser reads a missing key as
/// zero.
#[derive(Default)]
pub struct Table(String);

impl Table {
    /// The lines written so far.
    pub fn text(&self) -> &str {
        &self.0
    }

    pub fn line(&mut self, key: &str, value: toml::Value) {
        let _ = writeln!(self.0, "{key} = {value}");
    }

    pub fn string(&mut self, key: &str, v: &str) {
        if !v.is_empty() {
            self.line(key, toml::Value::String(v.to_string()));
        }
    }

    pub fn bool(&mut self, key: &str, v: bool) {
        if v {
            self.line(key, toml::Value::Boolean(true));
        }
    }

    /// An optional bool: written when set, either way (unset is the
    /// default, which may be true).
    pub fn opt_bool(&mut self, key: &str, v: Option<bool>) {
        if let Some(v) = v {
            self.line(key, toml::Value::Boolean(v));
        }
    }

    pub fn u64(&mut self, key: &str, v: u64) -> Result<(), String> {
        if v != 0 {
            let n = i64::try_from(v)
                .map_err(|_| format!("{key} is {v}, larger than a TOML integer can be"))?;
            self.line(key, toml::Value::Integer(n));
        }
        Ok(())
    }

    pub fn duration(&mut self, key: &str, v: &Option<prost_types::Duration>) -> Result<(), String> {
        if let Some(d) = v {
            self.line(
                key,
                toml::Value::String(duration_text(d).map_err(|e| format!("{key}: {e}"))?),
            );
        }
        Ok(())
    }
}

/// `d` as a humantime string the parser reads back to exactly `d`
/// (`1h 30m 5ms 20ns`), or why there is none.
pub(crate) fn duration_text(d: &prost_types::Duration) -> Result<String, String> {
    let shown = || format!("{}s {}ns", d.seconds, d.nanos);
    let std = Duration::try_from(*d).map_err(|_| format!("{} is negative", shown()))?;
    // What the parser would make of `std`; must be `d` itself.
    if prost_types::Duration::try_from(std).ok().as_ref() != Some(d) {
        return Err(format!(
            "{} is not normalised (nanos must be 0 to 999999999)",
            shown()
        ));
    }
    let text = humantime::format_duration(std).to_string();
    match humantime::parse_duration(&text) {
        Ok(back) if back == std => Ok(text),
        _ => Err(format!("{} has no exact duration string", shown())),
    }
}
