//! Validation of keys and labels from containerd.

use super::{SResult, SnapError};

/// Longest key/name accepted (containerd's own keys are < 200 bytes).
pub const MAX_KEY_BYTES: usize = 4096;

/// containerd's limit for one label (key + value).
pub const MAX_LABEL_BYTES: usize = 4096;

pub const MAX_LABELS: usize = 256;

/// Validate a snapshot key or name: 1..=4096 bytes, no NUL or control
/// characters. Keys are never used as paths, so `/` and `..` are fine.
pub fn validate_key(what: &str, k: &str) -> SResult<()> {
    if k.is_empty() {
        return Err(SnapError::InvalidArgument(format!("{what} is empty")));
    }
    if k.len() > MAX_KEY_BYTES {
        return Err(SnapError::InvalidArgument(format!(
            "{what} is {} bytes, the limit is {MAX_KEY_BYTES}",
            k.len()
        )));
    }
    if k.chars().any(char::is_control) {
        return Err(SnapError::InvalidArgument(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

pub fn validate_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> SResult<()> {
    let mut n = 0;
    for (k, v) in labels {
        n += 1;
        if n > MAX_LABELS {
            return Err(SnapError::InvalidArgument(format!(
                "more than {MAX_LABELS} labels"
            )));
        }
        if k.is_empty() || k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(SnapError::InvalidArgument(format!(
                "label {:?}: key must be non-empty and key+value at most {MAX_LABEL_BYTES} bytes",
                k.chars().take(64).collect::<String>()
            )));
        }
        if k.chars().any(char::is_control) {
            return Err(SnapError::InvalidArgument(
                "label key contains control characters".into(),
            ));
        }
    }
    Ok(())
}
