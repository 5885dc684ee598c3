//! Disk-tier layers that are published before they are written back.
//!
//! Writing a freshly extracted layer back to a hard disk costs at least one
//! I/O per file: a 130 MB base layer of 10 000 files takes about 45 s at the
//! 150 IOPS of the testbed's HDD. Docker and containerd publish layers with
//! their files still dirty and leave the write-back to the kernel, and a
//! power cut before it leaves them short. nvtier does the same for the disk
//! tier (`disk_layer_sync = "background"`), without that risk: it keeps the
//! layer's verified blob, fsync'd, until the layer is known to be on disk.
//!
//! - `STATE/unsynced/<chain hex>.blob`: the blob the layer was extracted
//!   from (renamed from the download, so no copy), durable before the layer
//!   is published.
//! - `STATE/unsynced/<chain hex>.json`: an [`Unsynced`] record, written after
//!   the blob and before the layer is published.
//!
//! [`Store::sync_layers`] flushes each tier holding such layers once
//! (`syncfs`) and then drops their blobs and records (`nvtier serve` does it
//! every few seconds, `nvtier pull` before it exits, `nvtier sync` on
//! demand). A record left from an earlier boot means the machine went down
//! before the write-back was known to be complete: when the store opens,
//! such a layer is extracted again from its kept blob and swapped in, before
//! anything can mount it. A record from this boot needs nothing: the data
//! is in the page cache or already on disk, and the kernel writes it back.

use super::{digest_hex, now_ms, Store};
use crate::error::{Error, IoContext, Result};
use crate::extract::{extract_file, Expect};
use crate::fsutil::{fsync_dir, syncfs, write_atomic};
use crate::store::LayerMeta;
use crate::tier::TierKind;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// A published disk-tier layer not yet known to be written back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsynced {
    pub chain_id: String,
    /// `/proc/sys/kernel/random/boot_id` when the layer was published.
    pub boot_id: String,
    /// Bytes of the kept blob.
    pub blob_bytes: u64,
    /// Unix milliseconds.
    pub since_ms: u64,
    /// Tells a record apart from a later one for the same layer (the layer
    /// collected and stored again meanwhile).
    pub nonce: u32,
}

/// What [`Store::sync_layers`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Layers now known to be on disk (their blobs and records dropped).
    pub synced: usize,
    /// Bytes of kept blobs dropped.
    pub blob_bytes_freed: u64,
    /// Records dropped because their layer is gone (collected, or a pull
    /// that failed before publishing it).
    pub orphans: usize,
    /// Records left for the next round (their layer is being stored).
    pub pending: usize,
    /// Time spent in `syncfs`, milliseconds.
    pub sync_ms: u64,
}

/// This boot's id.
pub fn boot_id() -> Result<String> {
    let p = Path::new("/proc/sys/kernel/random/boot_id");
    Ok(fs::read_to_string(p).ctx("read", p)?.trim().to_string())
}

impl Store {
    /// `STATE/unsynced`.
    pub fn unsynced_dir(&self) -> PathBuf {
        self.state().join("unsynced")
    }

    fn unsynced_paths(&self, hex: &str) -> (PathBuf, PathBuf) {
        let d = self.unsynced_dir();
        (d.join(format!("{hex}.json")), d.join(format!("{hex}.blob")))
    }

    /// Publish an extracted disk-tier layer before its files are written
    /// back, keeping `blob` (the verified download it came from; moved, not
    /// copied) until [`Store::sync_layers`] has run. The caller holds the
    /// chain lock.
    pub fn commit_layer_unsynced(
        &self,
        staging: &Path,
        meta: &LayerMeta,
        blob: &Path,
    ) -> Result<()> {
        if meta.tier != TierKind::Disk {
            return Err(Error::Other(format!(
                "layer {}: only disk-tier layers are published before write-back",
                meta.chain_id
            )));
        }
        let hex = digest_hex(&meta.chain_id)?;
        let dir = self.unsynced_dir();
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        let (rec_path, kept) = self.unsynced_paths(hex);
        // 1. The blob, durable where the store's records are.
        fs::File::open(blob)
            .and_then(|f| f.sync_all())
            .ctx("fsync blob", blob)?;
        let tier = self.tier(meta.tier);
        let dest = tier.layer_dir(hex);
        let meta_path = self.layer_meta_path(&meta.chain_id)?;
        let meta_json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Other(e.to_string()))?;
        fs::rename(blob, &kept).ctx("keep blob as", &kept)?;
        let r = (|| {
            let blob_bytes = fs::metadata(&kept).ctx("stat", &kept)?.len();
            // 2. The record (write_atomic fsyncs the directory: the rename too).
            let rec = Unsynced {
                chain_id: meta.chain_id.clone(),
                boot_id: boot_id()?,
                blob_bytes,
                since_ms: now_ms(),
                nonce: rand::random(),
            };
            let json = serde_json::to_vec_pretty(&rec).map_err(|e| Error::Other(e.to_string()))?;
            write_atomic(&rec_path, &json)?;
            // 3. The layer, as `commit_layer` but without the syncfs.
            if dest.exists() {
                fs::remove_dir_all(&dest).ctx("remove stale layer directory", &dest)?;
            }
            fs::rename(staging, &dest).ctx("publish layer", &dest)?;
            fsync_dir(&tier.layers_dir())?;
            write_atomic(&meta_path, &meta_json)
        })();
        if r.is_err() {
            // Nothing of a layer that was not published may stay: not its
            // files, nor its kept blob and record.
            self.unpublish(&meta_path, &dest);
            let _ = self.drop_unsynced(hex);
            let _ = fsync_dir(&dir);
        }
        r
    }

    /// Records of layers not yet known to be written back, by chain hex.
    pub fn unsynced(&self) -> Result<Vec<(String, Unsynced)>> {
        let dir = self.unsynced_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("list", &dir),
        };
        let mut v = Vec::new();
        for e in rd {
            let e = e.ctx("list", &dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".json") else {
                continue;
            };
            if hex.len() != 64 || name.starts_with('.') {
                continue;
            }
            if let Some(u) = super::meta::read_json::<Unsynced>(&e.path())? {
                v.push((hex.to_string(), u));
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    /// Drop a record and its blob (blob first: a record without a blob is
    /// recognised as dropped half-way).
    pub(super) fn drop_unsynced(&self, hex: &str) -> Result<u64> {
        let (rec, blob) = self.unsynced_paths(hex);
        let n = fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&blob) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove kept blob", &blob),
        }
        match fs::remove_file(&rec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove record", &rec),
        }
        Ok(n)
    }

    /// Make every published layer that is not yet known to be on disk
    /// durable (one `syncfs` per tier holding some), then drop their kept
    /// blobs.
    pub fn sync_layers(&self) -> Result<SyncReport> {
        let mut rep = SyncReport::default();
        let listed = self.unsynced()?;
        if listed.is_empty() {
            return Ok(rep);
        }
        let mut ready = Vec::new();
        let mut tiers: Vec<TierKind> = Vec::new();
        for (hex, u) in listed {
            match self.layer(&u.chain_id)? {
                // Published: its files were complete before the record was
                // written, so a syncfs that starts now covers them.
                Some(m) => {
                    if !tiers.contains(&m.tier) {
                        tiers.push(m.tier);
                    }
                    ready.push((hex, u));
                }
                None => match self.try_lock_chain_hex(&hex)? {
                    Some(_l) if self.layer(&u.chain_id)?.is_none() => {
                        self.drop_unsynced(&hex)?;
                        rep.orphans += 1;
                    }
                    // Being stored right now (or stored just now).
                    _ => rep.pending += 1,
                },
            }
        }
        let t = std::time::Instant::now();
        for k in &tiers {
            syncfs(&self.tier(*k).root)?;
        }
        rep.sync_ms = t.elapsed().as_millis() as u64;
        for (hex, u) in ready {
            // Under the chain lock, so no newer record for the same layer
            // can appear between the check and the removal.
            let Some(_l) = self.try_lock_chain_hex(&hex)? else {
                rep.pending += 1;
                continue;
            };
            let (rec, _) = self.unsynced_paths(&hex);
            if super::meta::read_json::<Unsynced>(&rec)?.as_ref() != Some(&u) {
                rep.pending += 1;
                continue;
            }
            rep.blob_bytes_freed += self.drop_unsynced(&hex)?;
            rep.synced += 1;
        }
        fsync_dir(&self.unsynced_dir())?;
        if rep.synced > 0 || rep.orphans > 0 {
            tracing::info!(
                synced = rep.synced,
                orphans = rep.orphans,
                pending = rep.pending,
                blob_bytes_freed = rep.blob_bytes_freed,
                sync_ms = rep.sync_ms,
                "disk-tier layers written back"
            );
        }
        Ok(rep)
    }

    /// At open: re-extract layers whose write-back an earlier boot may not
    /// have finished. Failures are logged with the fix and leave the layer
    /// and its blob as they are; they never stop the store from opening.
    pub(super) fn recover_unsynced(&self) -> Result<()> {
        let listed = self.unsynced()?;
        if listed.is_empty() {
            return Ok(());
        }
        let now = boot_id()?;
        for (hex, u) in listed {
            if u.boot_id == now {
                continue;
            }
            let Some(_l) = self.try_lock_chain_hex(&hex)? else {
                continue;
            };
            if let Err(e) = self.reextract(&hex, &u) {
                tracing::error!(
                    layer = %u.chain_id, error = %e,
                    "a disk-tier layer stored before the last shutdown may be incomplete and could \
                     not be restored from its kept blob; remove the images that use it \
                     (`nvtier rm`) and pull them again"
                );
            }
        }
        Ok(())
    }

    fn reextract(&self, hex: &str, u: &Unsynced) -> Result<()> {
        let Some(meta) = self.layer(&u.chain_id)? else {
            self.drop_unsynced(hex)?;
            return Ok(());
        };
        let (_, blob) = self.unsynced_paths(hex);
        tracing::warn!(
            layer = %u.chain_id, blob = %blob.display(),
            "the machine went down before this disk-tier layer was known to be written back; \
             extracting it again from its kept blob"
        );
        let staging = self.new_staging(meta.tier, &meta.chain_id)?;
        let expect = Expect {
            blob_digest: meta.blob_digest.as_deref(),
            diff_id: Some(&meta.diff_id),
        };
        let r =
            extract_file(&blob, &staging, &expect, &mut |_| Ok(())).and_then(|_| syncfs(&staging));
        if let Err(e) = r {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        let tier = self.tier(meta.tier);
        let dest = self.layer_dir(&meta)?;
        let old = tier
            .staging_dir()
            .join(format!("{hex}.{:08x}", rand::random::<u32>()));
        if dest.exists() {
            fs::rename(&dest, &old).ctx("move aside", &dest)?;
        }
        fs::rename(&staging, &dest).ctx("publish layer", &dest)?;
        fsync_dir(&tier.layers_dir())?;
        if old.exists() {
            fs::remove_dir_all(&old).ctx("remove replaced layer directory", &old)?;
        }
        self.drop_unsynced(hex)?;
        fsync_dir(&self.unsynced_dir())?;
        tracing::info!(layer = %u.chain_id, "disk-tier layer restored from its kept blob");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_a_uuid() {
        let b = boot_id().expect("boot id");
        assert_eq!(b.len(), 36, "{b}");
        assert_eq!(b.matches('-').count(), 4, "{b}");
    }
}
