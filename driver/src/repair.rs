//! Repair after a tier lost its content.
//!
//! 1. Each tier's identity is checked; a replaced tier is adopted.
//! 2. Records of lost hot copies and metadata layers are dropped: mounts use
//!    the whole layers, and a migration rebuilds them from the layer bases.
//! 3. Each damaged image is pulled again, pinned to the manifest digest it
//!    was pulled with: its lost layers are fetched from the registry and
//!    stored by the pull's placement rule; the layers it still has stay.
//!
//! `nvtier repair [IMAGE]` runs it on demand, `nvtier serve` in the
//! background, and `nvtier pull IMAGE` restores that image's lost layers.

use crate::error::Result;
use crate::pull::Credentials;
use crate::pull::{pull, PullOptions};
use crate::store::health::{forget_lost_tiering, scan, Forgotten, Health};
use crate::store::identity::{check_and_adopt, TierState};
use crate::store::Store;
use crate::tier::TierKind;
use serde::Serialize;
use std::collections::BTreeMap;

/// What to repair.
#[derive(Debug, Clone)]
pub struct RepairOptions {
    /// Only this image (`None`: every damaged image).
    pub image: Option<String>,
    /// Also images whose layers are on the missing pmem tier: stored again
    /// on the disk tier. Off in the daemon (the tier may come back).
    pub include_missing: bool,
    /// Rebuild hot copies and metadata layers (a migration) afterwards.
    pub rebuild_hot: bool,
    pub auth: Credentials,
}

/// The outcome for one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRepair {
    pub image: String,
    /// Why it was damaged.
    pub reasons: Vec<String>,
    /// Layers fetched and stored again.
    pub restored_layers: usize,
    pub restored_bytes: u64,
    /// Set when the repair failed (the image stays damaged).
    pub error: Option<String>,
}

/// What a repair found and did (`nvtier repair --json`).
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    pub pmem: TierState,
    pub disk: TierState,
    pub forgotten: Forgotten,
    pub images: Vec<ImageRepair>,
    /// Hot copies rebuilt by the migration afterwards (bytes copied).
    pub rebuilt_hot_bytes: Option<u64>,
    /// Still damaged afterwards, with the reasons.
    pub damaged_after: BTreeMap<String, Vec<String>>,
    /// containerd snapshots whose content is gone: the engine must remove
    /// and pull their image again.
    pub lost_snapshots: Vec<String>,
}

impl RepairReport {
    /// Nothing left damaged.
    pub fn is_complete(&self) -> bool {
        self.damaged_after.is_empty() && self.images.iter().all(|i| i.error.is_none())
    }
}

/// Check the tiers and repair what they lost (see the module docs).
pub async fn repair(store: &Store, opts: &RepairOptions) -> Result<RepairReport> {
    let s2 = store.clone();
    let (pmem, disk, forgotten, before) = tokio::task::spawn_blocking(move || {
        let disk = check_and_adopt(s2.state(), TierKind::Disk, &s2.disk.root)?;
        let pmem = check_and_adopt(s2.state(), TierKind::Pmem, &s2.pmem.root)?;
        if !pmem.is_missing() {
            // A replaced tier lacks the layout the store creates at open.
            for d in [s2.pmem.layers_dir(), s2.pmem.staging_dir()] {
                std::fs::create_dir_all(&d)
                    .map_err(|e| crate::Error::Other(format!("create {}: {e}", d.display())))?;
            }
        }
        let forgotten = forget_lost_tiering(&s2)?;
        let before = scan(&s2)?;
        Ok::<_, crate::Error>((pmem, disk, forgotten, before))
    })
    .await
    .map_err(|e| crate::Error::Other(e.to_string()))??;

    let pmem_missing = pmem.is_missing();
    let mut images = Vec::new();
    for (name, reasons) in &before.damaged {
        if opts.image.as_ref().is_some_and(|i| i != name) {
            continue;
        }
        let only_missing = pmem_missing
            && reasons
                .iter()
                .all(|r| r.contains("on the missing pmem tier"));
        if only_missing && !opts.include_missing {
            continue;
        }
        let Some(rec) = store.image(name)? else {
            continue;
        };
        let popts = PullOptions {
            placement: store.cfg.placement,
            progress: false,
            auth: opts.auth.clone(),
            pin_digest: Some(rec.manifest_digest.clone()),
            origin: rec.origin,
            keep_blobs: false,
        };
        tracing::warn!(image = %name, ?reasons, "repairing a damaged image");
        let mut out = ImageRepair {
            image: name.clone(),
            reasons: reasons.clone(),
            restored_layers: 0,
            restored_bytes: 0,
            error: None,
        };
        match pull(store, name, &popts).await {
            Ok(rep) => {
                for l in rep.layers.iter().filter(|l| !l.reused) {
                    out.restored_layers += 1;
                    out.restored_bytes += l.stored_bytes;
                }
                tracing::info!(image = %name, layers = out.restored_layers, "image repaired");
            }
            Err(e) => {
                tracing::error!(image = %name, error = %e, "repair failed; the image stays damaged");
                out.error = Some(e.to_string());
            }
        }
        images.push(out);
    }

    let mut rebuilt_hot_bytes = None;
    let changed = forgotten != Forgotten::default() || images.iter().any(|i| i.restored_layers > 0);
    if opts.rebuild_hot && changed && !pmem_missing && crate::tiering::enabled(store).is_ok() {
        let s2 = store.clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::tiering::migrate(&s2, &crate::tiering::MigrateOptions::default())
        })
        .await
        .map_err(|e| crate::Error::Other(e.to_string()))?;
        match r {
            Ok(rep) => rebuilt_hot_bytes = Some(rep.copied_bytes),
            Err(e) => {
                tracing::warn!(error = %e, "rebuilding hot copies failed; the next migration retries")
            }
        }
    }
    let s2 = store.clone();
    let after: Health = tokio::task::spawn_blocking(move || scan(&s2))
        .await
        .map_err(|e| crate::Error::Other(e.to_string()))??;
    let mut damaged_after = after.damaged.clone();
    if let Some(i) = &opts.image {
        damaged_after.retain(|n, _| n == i);
    }
    let mut lost_snapshots = after.pmem.lost.snapshots.clone();
    lost_snapshots.extend(after.disk.lost.snapshots.iter().cloned());
    Ok(RepairReport {
        pmem,
        disk,
        forgotten,
        images,
        rebuilt_hot_bytes,
        damaged_after,
        lost_snapshots,
    })
}
