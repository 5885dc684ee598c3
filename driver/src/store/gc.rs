//! References and garbage collection: a layer is referenced by every image
//! whose chain contains it, every mount that uses it, every containerd
//! snapshot backed by it and every Docker graph-driver layer whose content
//! it is.

use super::{digest_hex, meta, recover, Lock, Store};
use crate::error::{IoContext, Result};
use crate::fsutil::fsync_dir;
use crate::tier::TierKind;
use std::collections::{BTreeMap, HashSet};
use std::fs;

impl Store {
    // ---- references and GC ----

    /// How many images, mounts and containerd snapshots reference each
    /// chainID.
    pub fn refcounts(&self) -> Result<BTreeMap<String, u32>> {
        let mut m = BTreeMap::new();
        for i in self.images()? {
            for c in &i.chain_ids {
                *m.entry(c.clone()).or_insert(0) += 1;
            }
        }
        for mr in self.mounts()? {
            for c in &mr.chain_ids {
                *m.entry(c.clone()).or_insert(0) += 1;
            }
        }
        for c in self.graph_driver_refs()? {
            *m.entry(c).or_insert(0) += 1;
        }
        for s in self.snapshots()? {
            if let Some(c) = s.layer {
                *m.entry(c).or_insert(0) += 1;
            }
        }
        Ok(m)
    }

    /// Store layers that Docker graph-driver layers use as their content
    /// (the `chain_id` of each record in [`Store::graph_layers_dir`]). They
    /// count as references, so `nvtier rm`/`gc` never frees a layer Docker
    /// still has.
    pub fn graph_driver_refs(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct GraphRef {
            #[serde(default)]
            chain_id: Option<String>,
        }
        let dir = self.graph_layers_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let refs: Vec<GraphRef> = meta::read_all(&dir)?;
        Ok(refs.into_iter().filter_map(|r| r.chain_id).collect())
    }

    /// The metadata layers and hot generations the graph driver plugin's
    /// tiered mounts use.
    pub fn graph_tierings(&self) -> Result<Vec<super::hot::MountTiering>> {
        #[derive(serde::Deserialize)]
        struct GraphTiering {
            #[serde(default)]
            tiering: Option<super::hot::MountTiering>,
        }
        let dir = self.graph_layers_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let recs: Vec<GraphTiering> = meta::read_all(&dir)?;
        Ok(recs.into_iter().filter_map(|r| r.tiering).collect())
    }

    /// Collect unreferenced layers. Skips (returns an empty report) when a
    /// pull or a migration is running: its own end runs GC again (a
    /// migration must not see the layers it works on vanish).
    pub fn gc(&self) -> Result<GcReport> {
        let Some(_m) = self.try_lock_migrate()? else {
            tracing::debug!("a migration is running; its end collects the layers");
            return Ok(GcReport::default());
        };
        match self.try_lock_gc()? {
            Some(l) => self.gc_locked(&l),
            None => Ok(GcReport::default()),
        }
    }

    pub(super) fn gc_locked(&self, _gc: &Lock) -> Result<GcReport> {
        let _l = self.lock_store()?;
        let referenced: HashSet<String> = self.refcounts()?.into_keys().collect();
        let mut report = GcReport::default();
        for l in self.layers()? {
            if referenced.contains(&l.chain_id) {
                continue;
            }
            let dir = self.layer_dir(&l)?;
            let mp = self.layer_meta_path(&l.chain_id)?;
            // Metadata first: from here on the layer does not exist, and a
            // crash leaves only an orphan directory that start-up removes.
            fs::remove_file(&mp).ctx("remove layer metadata", &mp)?;
            // A lost layer (see `health`) has no directory left.
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).ctx("remove layer directory", &dir)
                }
                _ => {}
            }
            // A kept blob waiting for the write-back of a layer that is gone.
            self.drop_unsynced(digest_hex(&l.chain_id)?)?;
            report.removed.push(l.chain_id.clone());
            match l.tier {
                TierKind::Pmem => report.pmem_bytes_freed += l.charged_bytes,
                TierKind::Disk => report.disk_bytes_freed += l.charged_bytes,
            }
        }
        fsync_dir(&self.layers_meta_dir())?;
        // Metadata layers, hot generations and retired copies nobody uses
        // (not while the pmem tier is missing: its records stay for its
        // return).
        if self.pmem_available() {
            recover::gc_hot_locked(self)?;
        }
        Ok(report)
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub pmem_bytes_freed: u64,
    pub disk_bytes_freed: u64,
}
