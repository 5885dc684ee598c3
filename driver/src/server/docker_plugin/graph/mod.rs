//! The storage model behind the graph driver plugin.
//!
//! Docker names layers by engine-chosen IDs (random 64-hex cache IDs, and
//! `<id>-init` for a container's init layer), each with an optional parent.
//!
//! - Records: `STATE/graph/layers/<id>.json` ([`GraphLayer`]), written
//!   atomically. A layer exists exactly when its record exists.
//! - Layers made by `Create`/`CreateReadWrite` keep their files on the disk
//!   tier in `DISK/graph/<id>/diff` (overlay upper dir; `work` next to it).
//! - `ApplyDiff` extracts the tar into an nvtier **store layer** (keyed by
//!   the OCI chainID computed from the parent's chainID and the tar's
//!   diffID), on the tier chosen by the rule in [`choose_tier`]; the record
//!   then holds `chain_id` and the empty `diff` dir is removed. Store layers
//!   are shared with `nvtier pull` (same content, same chainID, stored once)
//!   and charged to the same pmem budget; the records count as references
//!   (`Store::graph_driver_refs`), so `nvtier rm`/`gc` never free them.
//! - `Get` mounts an overlay of the chain at `DISK/graph/<id>/merged`
//!   (refcounted in the record, so a plugin restart keeps the count); a
//!   layer without parents is returned as its own directory, unmounted.

use super::diff::{self};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::mount::is_mounted;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod apply;
mod changes;
mod info;
mod mounts;
mod tiered;

/// Longest accepted layer ID (Docker's are 64 or 69 characters).
pub const MAX_ID_LEN: usize = 128;

/// An `ApplyDiff` that starts within this time after its parent's
/// `ApplyDiff` ended was waiting for its parent: it is on the critical path
/// (see [`choose_tier`]).
pub const BACK_TO_BACK: Duration = Duration::from_millis(250);

/// Validate a Docker layer ID: 1–128 characters of `[A-Za-z0-9_-]`,
/// starting with a letter or digit. So no `/`, `..`, absolute paths, NUL
/// or empty names ever reach a path.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        let shown: String = id.chars().take(80).collect();
        Err(Error::Other(format!(
            "invalid layer id {shown:?}: use 1-{MAX_ID_LEN} characters of [A-Za-z0-9_-], starting with a letter or digit"
        )))
    }
}

/// An optional parent ID (`""` means none).
pub fn validate_parent(p: &str) -> Result<Option<&str>> {
    if p.is_empty() {
        Ok(None)
    } else {
        validate_id(p).map(|_| Some(p))
    }
}

/// One Docker layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphLayer {
    pub id: String,
    pub parent: Option<String>,
    /// Made by `CreateReadWrite` (a container or init layer).
    pub rw: bool,
    /// Set once `ApplyDiff` stored the content as an nvtier store layer.
    pub chain_id: Option<String>,
    /// Outstanding `Get`s.
    pub mount_count: u32,
    /// Bytes reported by `ApplyDiff`.
    pub size: u64,
    pub created_ms: u64,
    /// Why the tier was chosen (for `GetMetadata` and logs).
    #[serde(default)]
    pub placement: Option<String>,
    /// A read-write layer mounted tiered: the metadata layer and hot
    /// generations its mount uses (GC keeps them until it is unmounted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiering: Option<crate::store::hot::MountTiering>,
}

/// Where an applied layer goes, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Started right after its parent finished: storing is on the critical path.
    BackToBack,
    /// Started when its parent had been stored a while ago (or has no applied parent).
    Gated,
}

/// The tier rule for `ApplyDiff` (an approximation of LASS from what the
/// plugin can observe).
///
/// Docker downloads up to 3 layers in parallel but applies them strictly in
/// chain order, one `ApplyDiff` after the other. The plugin does not see
/// downloads, but it sees *when* each `ApplyDiff` starts relative to the end
/// of its parent's: a layer whose `ApplyDiff` starts within
/// [`BACK_TO_BACK`] of its parent's end had already been downloaded and was
/// waiting for its parent's storing, i.e. its storing is on the critical
/// path: it goes to pmem (budget permitting). A layer whose `ApplyDiff`
/// starts later was gated by the network (storing overlapped the
/// download): it goes to disk. The first layer of a chain, and layers whose
/// parent was not applied by this plugin process (e.g. after a restart),
/// go to disk.
pub fn choose_tier(parent_end: Option<Instant>, now: Instant) -> Placement {
    match parent_end {
        Some(t) if now.saturating_duration_since(t) <= BACK_TO_BACK => Placement::BackToBack,
        _ => Placement::Gated,
    }
}

pub struct Graph {
    pub store: Store,
    /// Serialises record updates and mounts.
    lock: Mutex<()>,
    /// When each layer's `ApplyDiff` ended (this process only).
    applied_at: Mutex<HashMap<String, Instant>>,
    /// Layers with an `ApplyDiff` in progress.
    applying: Mutex<std::collections::HashSet<String>>,
}

/// Marks a layer as being applied; unmarks on drop.
struct Applying<'a>(&'a Graph, String);

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.applying.lock() {
            s.remove(&self.1);
        }
    }
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

impl Graph {
    pub fn new(store: Store) -> Result<Graph> {
        let g = Graph {
            store,
            lock: Mutex::new(()),
            applied_at: Mutex::new(HashMap::new()),
            applying: Mutex::new(Default::default()),
        };
        for d in [g.records_dir(), g.disk_root(), g.spool_dir()] {
            fs::create_dir_all(&d).ctx("create", &d)?;
        }
        g.cleanup_leftovers()?;
        Ok(g)
    }

    /// Remove what a killed plugin left: spool files of dead processes and
    /// layer directories without a record (a crash inside `Create` or
    /// `Remove`). Mounts are never touched: Docker may still use them.
    fn cleanup_leftovers(&self) -> Result<()> {
        let spool = self.spool_dir();
        for e in fs::read_dir(&spool).ctx("list", &spool)? {
            let e = e.ctx("list", &spool)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = name
                .split('.')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if !crate::store::pid_alive(pid) {
                let _ = fs::remove_file(e.path());
            }
        }
        let _g = self.guard()?;
        let root = self.disk_root();
        for e in fs::read_dir(&root).ctx("list", &root)? {
            let e = e.ctx("list", &root)?;
            let id = e.file_name().to_string_lossy().into_owned();
            if validate_id(&id).is_err() || self.record_path(&id).exists() {
                continue;
            }
            if is_mounted(&self.merged_dir(&id)) {
                continue;
            }
            tracing::info!(path = %e.path().display(), "removing layer directory without a record");
            fs::remove_dir_all(e.path()).ctx("remove orphaned layer directory", e.path())?;
        }
        Ok(())
    }

    fn records_dir(&self) -> PathBuf {
        self.store.graph_layers_dir()
    }
    fn spool_dir(&self) -> PathBuf {
        self.store.state().join("graph").join("spool")
    }
    fn disk_root(&self) -> PathBuf {
        self.store.disk.root.join("graph")
    }
    fn record_path(&self, id: &str) -> PathBuf {
        self.records_dir().join(format!("{id}.json"))
    }
    /// `DISK/graph/<id>`.
    pub fn layer_home(&self, id: &str) -> PathBuf {
        self.disk_root().join(id)
    }
    fn diff_dir(&self, id: &str) -> PathBuf {
        self.layer_home(id).join("diff")
    }
    fn work_dir(&self, id: &str) -> PathBuf {
        self.layer_home(id).join("work")
    }
    fn merged_dir(&self, id: &str) -> PathBuf {
        self.layer_home(id).join("merged")
    }

    fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.lock
            .lock()
            .map_err(|_| other("graph driver lock poisoned"))
    }

    pub fn load(&self, id: &str) -> Result<Option<GraphLayer>> {
        validate_id(id)?;
        crate::store::meta_read(&self.record_path(id))
    }

    fn must_load(&self, id: &str) -> Result<GraphLayer> {
        self.load(id)?
            .ok_or_else(|| other(format!("layer {id} does not exist")))
    }

    fn save(&self, rec: &GraphLayer) -> Result<()> {
        let json = serde_json::to_vec_pretty(rec).map_err(other)?;
        write_atomic(&self.record_path(&rec.id), &json)
    }

    pub fn list(&self) -> Result<Vec<GraphLayer>> {
        crate::store::meta_read_all(&self.records_dir())
    }

    pub fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.load(id)?.is_some())
    }

    /// The directory holding a layer's own files.
    pub fn data_dir(&self, rec: &GraphLayer) -> Result<PathBuf> {
        match &rec.chain_id {
            Some(c) => {
                let m = self.store.layer(c)?.ok_or_else(|| {
                    other(format!(
                        "layer {}: its content {c} is missing from the nvtier store",
                        rec.id
                    ))
                })?;
                self.store.check_layer(&m)?;
                self.store.layer_dir(&m)
            }
            None => Ok(self.diff_dir(&rec.id)),
        }
    }

    /// The data directories of the parents of `rec`, nearest first.
    fn parent_dirs(&self, rec: &GraphLayer) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut next = rec.parent.clone();
        while let Some(p) = next {
            if out.len() > 1000 {
                return Err(other(format!("layer {}: parent chain too long", rec.id)));
            }
            let pr = self
                .load(&p)?
                .ok_or_else(|| other(format!("layer {}: parent {p} does not exist", rec.id)))?;
            out.push(self.data_dir(&pr)?);
            next = pr.parent;
        }
        Ok(out)
    }
}
