//! Listener and fault names.

use crate::spec::SpecError;

/// Longest listener name.
pub const MAX_NAME_LEN: usize = 63;

/// Whether `name` is a valid listener (or fault) name: see
/// [`validate_name`].
pub fn valid_name(name: &str) -> bool {
    validate_name(name).is_ok()
}

/// Names are `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`: safe in file names, URLs,
/// metric labels and terminals, and never `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new("a listener needs a name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(SpecError::new(format!(
            "listener name is longer than {MAX_NAME_LEN} characters"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(SpecError::new(format!(
            "listener name {name:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(SpecError::new(format!(
            "listener name {name:?} must start with a letter or a digit"
        )));
    }
    Ok(())
}
