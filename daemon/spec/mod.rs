//! What a listener spec is made of, below every kind: the error a spec is
//! refused with ([`SpecError`]), names ([`names`]), the flat `key = value`
//! form kinds export to ([`table`]), a listener as declared
//! ([`BootListener`]) and the difference between two specs ([`diff`]).

use std::collections::HashMap;

use crate::proto;

pub mod diff;
pub mod form;
pub mod names;
pub mod table;
pub mod tls;

pub use form::{FieldError, Key, Unit};
pub use table::Table;

/// Why a spec was rejected: the message a user reads (it names the field
/// and the problem), and the key of the kind's flat form it is about, when
/// it is about one (so a config error points at that key's line).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub message: String,
    pub field: Option<String>,
}

impl SpecError {
    /// A refusal about the spec as a whole (or a part with no key).
    pub fn new(message: impl Into<String>) -> Self {
        SpecError {
            message: message.into(),
            field: None,
        }
    }

    /// A refusal about the key `field` (the message still names it).
    pub fn at(field: &str, message: impl Into<String>) -> Self {
        SpecError {
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    /// The same refusal, about the key `field` (for a check shared by
    /// kinds that spell the key differently: `upstream`, `upstreams`).
    #[must_use]
    pub fn about(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }
}

/// A listener to start at boot.
#[derive(Debug, Clone)]
pub struct BootListener {
    pub name: String,
    pub spec: proto::ListenerSpec,
    pub labels: HashMap<String, String>,
    /// `file:line` of the entry, for errors found when it is started.
    pub origin: String,
}
