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

pub use form::{FieldError, Key, Unit};
pub use table::Table;

/// Why a spec was rejected; the message names the field and the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// A listener to start at boot.
#[derive(Debug, Clone)]
pub struct BootListener {
    pub name: String,
    pub spec: proto::ListenerSpec,
    pub labels: HashMap<String, String>,
    /// `file:line` of the entry, for errors found when it is started.
    pub origin: String,
}
