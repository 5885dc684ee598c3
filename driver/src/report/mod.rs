//! Reports of the store's state for the CLI: typed structs, each gathered
//! by one function, serialised as `--json` and rendered as text from the
//! same value.
//!
//! - [`status`]: `nvtier status`.
//! - [`images`]: `nvtier images`.
//! - [`layers`]: `nvtier layers`.
//! - [`profiles`]: `nvtier profile list`.
//! - [`pull`]: the text of `nvtier pull` ([`crate::pull::PullReport`]).
//!
//! The JSON keys of [`Status`], [`ImageRow`] and [`LayerRow`] are in
//! alphabetical order, as the fields are declared.

pub mod images;
pub mod layers;
pub mod profiles;
pub mod pull;
pub mod status;

pub use images::ImageRow;
pub use layers::LayerRow;
pub use profiles::ProfileRow;
pub use status::{FsSpace, Status};

/// A byte count for people: `512 B`, `1.5 MiB`.
pub fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The first 12 hex digits of a digest (without `sha256:`).
pub fn short(d: &str) -> &str {
    d.strip_prefix("sha256:")
        .unwrap_or(d)
        .get(..12)
        .unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
        assert_eq!(human(1 << 50), "1024.0 TiB");
    }

    #[test]
    fn short_digests() {
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("sha256:abc"), "sha256:abc");
    }
}
