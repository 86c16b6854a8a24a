//! Listener labels: how many, and what keys and values may hold.

use std::collections::HashMap;

use crate::services::SpecError;

/// Labels per listener, and the longest key and value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 255;

/// At most [`MAX_LABELS`]; keys like names (plus `/`), up to 63
/// characters; values up to 255 printable characters (no control or
/// bidirectional-override characters, which could rewrite a terminal or
/// the order of what an admin reads).
pub(super) fn validate_labels(labels: &HashMap<String, String>) -> Result<(), SpecError> {
    if labels.len() > MAX_LABELS {
        return Err(SpecError::new(format!(
            "{} labels; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY_LEN
            && k.starts_with(|c: char| c.is_ascii_alphanumeric())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(SpecError::new(format!(
                "label key {k:?}: 1-{MAX_LABEL_KEY_LEN} characters of letters, digits, '-', '_', '.' and '/', starting with a letter or digit"
            )));
        }
        if v.chars().count() > MAX_LABEL_VALUE_LEN {
            return Err(SpecError::new(format!(
                "label '{k}': the value is longer than {MAX_LABEL_VALUE_LEN} characters"
            )));
        }
        if let Some(c) = v.chars().find(|&c| !printable(c)) {
            return Err(SpecError::new(format!(
                "label '{k}': the value contains {c:?}; only printable characters are allowed"
            )));
        }
    }
    Ok(())
}

/// Not a control character, nor a bidirectional override/isolate.
fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
