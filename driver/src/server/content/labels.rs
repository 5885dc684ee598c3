//! The containerd labels nvtier puts on what it writes into the content
//! store, and the namespace of a snapshot key.

use std::collections::HashMap;

/// A layer blob's diffID (containerd's unpacker and `docker save` read it).
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Prefix of `containerd.io/distribution.source.<registry host>=<repository>`:
/// where a blob can be fetched again, and mounted from on a push.
pub const LABEL_DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";
/// When containerd's GC may drop a lease that was never deleted.
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

/// The containerd namespace of a snapshot key: containerd's metadata store
/// names snapshots `<namespace>/<n>/<key>`.
pub fn namespace_of_key(key: &str) -> Option<&str> {
    let (ns, rest) = key.split_once('/')?;
    let (n, _) = rest.split_once('/')?;
    (!ns.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(ns)
}

/// Labels of a layer blob.
pub fn layer_labels(diff_id: &str, host: &str, repository: &str) -> HashMap<String, String> {
    let mut l = blob_labels(host, repository);
    l.insert(LABEL_UNCOMPRESSED.into(), diff_id.into());
    l
}

/// Labels of any blob of an image from `host`/`repository`.
pub fn blob_labels(host: &str, repository: &str) -> HashMap<String, String> {
    HashMap::from([(
        format!("{LABEL_DISTRIBUTION_SOURCE}{host}"),
        repository.to_string(),
    )])
}

/// Labels of nvtier's write lease: it expires `ttl_s` after `now_s` (Unix
/// seconds), so a lease left by a crash never holds blobs for long.
pub fn lease_labels(now_s: u64, ttl_s: u64) -> HashMap<String, String> {
    HashMap::from([(LABEL_GC_EXPIRE.into(), rfc3339_utc(now_s + ttl_s))])
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds (UTC).
pub fn rfc3339_utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_of_keys() {
        assert_eq!(
            namespace_of_key("moby/12/extract-1 sha256:ab"),
            Some("moby")
        );
        assert_eq!(namespace_of_key("k8s.io/3/x/y"), Some("k8s.io"));
        assert_eq!(namespace_of_key("sha256:ab"), None);
        assert_eq!(namespace_of_key("a/b/c"), None);
        assert_eq!(namespace_of_key("/1/c"), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn layer_blob_labels() {
        let l = layer_labels("sha256:d", "10.0.0.2:5000", "team/app");
        assert_eq!(l[LABEL_UNCOMPRESSED], "sha256:d");
        assert_eq!(
            l["containerd.io/distribution.source.10.0.0.2:5000"],
            "team/app"
        );
        assert!(lease_labels(0, 3600)[LABEL_GC_EXPIRE].starts_with("1970-01-01T01:00:00Z"));
    }
}
