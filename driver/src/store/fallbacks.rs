//! Engine pulls that nvtier could not do itself.
//!
//! When nvtier's pull for containerd fails (the registry wants credentials
//! nvtier lacks, the registry is unreachable from nvtier, …), containerd
//! fetches and unpacks the image itself, without LASS. That is not an error
//! for the engine, so it must be visible elsewhere: each image's last
//! fallback is kept in `STATE/fallbacks/<sha256(image)>.json` (shown by
//! `nvtier status`) until nvtier pulls the image itself again.

use super::{now_ms, Store};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::PathBuf;

/// The last pull of `image` that containerd had to do itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    pub image: String,
    /// The registry refused nvtier's credentials, or wanted some.
    pub auth: bool,
    pub reason: String,
    /// When it last happened (ms since the epoch), and how often so far.
    pub at_ms: u64,
    pub count: u64,
}

impl Store {
    fn fallbacks_dir(&self) -> PathBuf {
        self.state().join("fallbacks")
    }

    fn fallback_path(&self, image: &str) -> PathBuf {
        self.fallbacks_dir().join(format!(
            "{}.json",
            hex::encode(sha2::Sha256::digest(image.as_bytes()))
        ))
    }

    /// Record a fallback of `image`; returns the record as saved.
    pub fn record_fallback(&self, image: &str, auth: bool, reason: &str) -> Result<Fallback> {
        let path = self.fallback_path(image);
        let count = self
            .fallback(image)?
            .map(|f| f.count.saturating_add(1))
            .unwrap_or(1);
        let f = Fallback {
            image: image.to_string(),
            auth,
            reason: reason.to_string(),
            at_ms: now_ms(),
            count,
        };
        let dir = self.fallbacks_dir();
        std::fs::create_dir_all(&dir).ctx("create", &dir)?;
        let text = serde_json::to_vec_pretty(&f).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&path, &text)?;
        Ok(f)
    }

    /// `image`'s fallback record, if any.
    pub fn fallback(&self, image: &str) -> Result<Option<Fallback>> {
        let path = self.fallback_path(image);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Other(format!("fallback record {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &path),
        }
    }

    /// Forget `image`'s fallback (nvtier pulled it itself).
    pub fn clear_fallback(&self, image: &str) -> Result<()> {
        let path = self.fallback_path(image);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", &path),
        }
    }

    /// Every fallback on record, newest first. Unreadable records are
    /// skipped with a warning (they only inform `status`).
    pub fn fallbacks(&self) -> Result<Vec<Fallback>> {
        let dir = self.fallbacks_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("read", &dir),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.ctx("read", &dir)?;
            let p = ent.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Fallback>(&b).map_err(|e| e.to_string()))
            {
                Ok(f) => out.push(f),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "unreadable fallback record")
                }
            }
        }
        out.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(a.image.cmp(&b.image)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::temp_store;

    #[test]
    fn record_count_clear() {
        let (_d, s) = temp_store("1M");
        assert!(s.fallbacks().expect("list").is_empty());
        let f = s.record_fallback("r/a:1", true, "401").expect("rec");
        assert_eq!((f.count, f.auth), (1, true));
        let f = s.record_fallback("r/a:1", true, "401 again").expect("rec");
        assert_eq!((f.count, f.reason.as_str()), (2, "401 again"));
        s.record_fallback("r/b:1", false, "unreachable")
            .expect("rec");
        let all = s.fallbacks().expect("list");
        assert_eq!(all.len(), 2);
        assert!(all.iter().any(|f| f.image == "r/b:1" && !f.auth));
        s.clear_fallback("r/a:1").expect("clear");
        s.clear_fallback("r/a:1").expect("clear twice");
        assert_eq!(s.fallback("r/a:1").expect("get"), None);
        assert_eq!(s.fallbacks().expect("list").len(), 1);
    }
}
