//! Logging through `tracing`: plain lines on stderr (journald adds its own
//! timestamps and priorities) or JSON lines on request. `RUST_LOG`, when
//! set, overrides the configured level.
//!
//! Access-log lines do not go through the subscriber's formatting: see
//! [`crate::telemetry::access_log`] (only its `netd::access` level is asked here).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(cfg: &LogConfig) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!("netd: ignoring RUST_LOG={v:?}: {e}");
            EnvFilter::new(&cfg.level)
        }),
        _ => EnvFilter::new(&cfg.level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cfg.format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init()
        }
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
