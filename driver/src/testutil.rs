//! Helpers for the unit tests.

/// Fail the calling test unless it runs as root. Tests that create device
/// nodes, whiteouts, `trusted.*` xattrs or files of other owners need root;
/// the suite runs as root in CI, and such a test must never pass without
/// having run.
#[track_caller]
pub(crate) fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({why}): run the unit tests as root, e.g. `sudo -E cargo test --workspace --lib`"
    );
}

/// The keys of a JSON object, in order (panics unless `v` is an object).
#[track_caller]
pub(crate) fn object_keys(v: &serde_json::Value) -> Vec<&str> {
    v.as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect()
}
