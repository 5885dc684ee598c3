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

use super::diff::{self, Change};
use crate::error::{Error, IoContext, Result};
use crate::extract::{extract_layer, Expect};
use crate::fsutil::{fsync_dir, write_atomic};
use crate::mount::{is_mounted, mount_overlay, OverlaySpec};
use crate::store::{now_ms, LayerMeta, Store};
use crate::tier::TierKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    /// `Create` / `CreateReadWrite`.
    pub fn create(&self, id: &str, parent: &str, rw: bool) -> Result<()> {
        validate_id(id)?;
        let parent = validate_parent(parent)?;
        let _g = self.guard()?;
        if self.load(id)?.is_some() {
            return Err(other(format!("layer {id} already exists")));
        }
        if let Some(p) = parent {
            if self.load(p)?.is_none() {
                return Err(other(format!("parent layer {p} does not exist")));
            }
        }
        let home = self.layer_home(id);
        // Leftover of a crash between mkdir and the record write.
        if home.exists() && !is_mounted(&self.merged_dir(id)) {
            fs::remove_dir_all(&home).ctx("remove stale layer directory", &home)?;
        }
        let r = (|| {
            for d in [self.diff_dir(id), self.work_dir(id), self.merged_dir(id)] {
                fs::create_dir_all(&d).ctx("create", &d)?;
            }
            self.save(&GraphLayer {
                id: id.to_string(),
                parent: parent.map(str::to_string),
                rw,
                chain_id: None,
                mount_count: 0,
                size: 0,
                created_ms: now_ms(),
                placement: None,
            })
        })();
        if r.is_err() {
            let _ = fs::remove_dir_all(&home);
        }
        r
    }

    /// `Remove`: unmounts if needed, deletes the layer's own files and
    /// record, and lets the store collect its content if nothing else uses it.
    pub fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let rec = {
            let _g = self.guard()?;
            let Some(rec) = self.load(id)? else {
                return Ok(());
            };
            let merged = self.merged_dir(id);
            if is_mounted(&merged) {
                unmount(&merged)?;
            }
            let p = self.record_path(id);
            fs::remove_file(&p).ctx("remove layer record", &p)?;
            fsync_dir(&self.records_dir())?;
            let home = self.layer_home(id);
            if home.exists() {
                fs::remove_dir_all(&home).ctx("remove layer directory", &home)?;
            }
            rec
        };
        if let Ok(mut m) = self.applied_at.lock() {
            m.remove(id);
        }
        if rec.chain_id.is_some() {
            self.store.gc()?;
        }
        Ok(())
    }

    /// `Get`: the root filesystem path of the layer chain (refcounted).
    pub fn get(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        let _g = self.guard()?;
        let mut rec = self.must_load(id)?;
        let own = self.data_dir(&rec)?;
        let parents = self.parent_dirs(&rec)?;
        let path = if parents.is_empty() {
            own
        } else {
            let merged = self.merged_dir(id);
            if !is_mounted(&merged) {
                fs::create_dir_all(&merged).ctx("create", &merged)?;
                let spec = if rec.chain_id.is_none() {
                    fs::create_dir_all(self.work_dir(id)).ctx("create", self.work_dir(id))?;
                    OverlaySpec {
                        lower: parents,
                        upper: Some(own),
                        work: Some(self.work_dir(id)),
                        ..Default::default()
                    }
                } else {
                    let mut lower = vec![own];
                    lower.extend(parents);
                    OverlaySpec {
                        lower,
                        upper: None,
                        work: None,
                        ..Default::default()
                    }
                };
                mount_overlay(&spec, &merged)?;
                rec.mount_count = 0;
            }
            merged
        };
        rec.mount_count += 1;
        if let Err(e) = self.save(&rec) {
            if rec.mount_count == 1 && path == self.merged_dir(id) {
                let _ = unmount(&path);
            }
            return Err(e);
        }
        Ok(path)
    }

    /// `Put`: drop one reference; unmount at zero.
    pub fn put(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _g = self.guard()?;
        let mut rec = self.must_load(id)?;
        rec.mount_count = rec.mount_count.saturating_sub(1);
        if rec.mount_count == 0 {
            let merged = self.merged_dir(id);
            if is_mounted(&merged) {
                unmount(&merged)?;
            }
        }
        self.save(&rec)
    }

    /// `Cleanup` (dockerd shutting down): unmount layers nobody holds.
    pub fn cleanup(&self) -> Result<()> {
        let _g = self.guard()?;
        for rec in self.list()? {
            let merged = self.merged_dir(&rec.id);
            if rec.mount_count == 0 && is_mounted(&merged) {
                unmount(&merged)?;
            }
        }
        Ok(())
    }

    /// The layer's own directory and its parents' (for Diff/Changes);
    /// `parent` must be the layer's recorded parent.
    pub fn diff_source(&self, id: &str, parent: &str) -> Result<(PathBuf, Vec<PathBuf>)> {
        validate_id(id)?;
        let parent = validate_parent(parent)?;
        let rec = self.must_load(id)?;
        if parent != rec.parent.as_deref() {
            return Err(other(format!(
                "layer {id}: diff against {parent:?} is not supported (its parent is {:?})",
                rec.parent
            )));
        }
        Ok((self.data_dir(&rec)?, self.parent_dirs(&rec)?))
    }

    pub fn changes(&self, id: &str, parent: &str) -> Result<Vec<Change>> {
        let (own, lowers) = self.diff_source(id, parent)?;
        diff::changes(&own, &lowers)
    }

    pub fn diff_size(&self, id: &str, parent: &str) -> Result<u64> {
        let (own, lowers) = self.diff_source(id, parent)?;
        let ch = diff::changes(&own, &lowers)?;
        Ok(diff::changes_size(&own, &ch))
    }

    pub fn metadata(&self, id: &str) -> Result<Vec<(String, String)>> {
        let rec = self.must_load(id)?;
        let mut m = vec![(
            "Dir".to_string(),
            self.data_dir(&rec)?.display().to_string(),
        )];
        let tier = match &rec.chain_id {
            Some(c) => {
                m.push(("ChainID".into(), c.clone()));
                self.store
                    .layer(c)?
                    .map(|l| l.tier.to_string())
                    .unwrap_or_default()
            }
            None => TierKind::Disk.to_string(),
        };
        m.push(("Tier".into(), tier));
        if let Some(p) = &rec.placement {
            m.push(("Placement".into(), p.clone()));
        }
        if rec.chain_id.is_none() {
            m.push((
                "UpperDir".into(),
                self.diff_dir(&rec.id).display().to_string(),
            ));
            m.push((
                "WorkDir".into(),
                self.work_dir(&rec.id).display().to_string(),
            ));
        }
        m.push((
            "MergedDir".into(),
            self.merged_dir(&rec.id).display().to_string(),
        ));
        Ok(m)
    }

    pub fn status(&self) -> Result<Vec<[String; 2]>> {
        let recs = self.list()?;
        let applied = recs.iter().filter(|r| r.chain_id.is_some()).count();
        let mounted = recs.iter().filter(|r| r.mount_count > 0).count();
        Ok(vec![
            [
                "Driver".into(),
                "nvtier (legacy graph driver plugin)".into(),
            ],
            [
                "Pmem Dir".into(),
                self.store.pmem.root.display().to_string(),
            ],
            [
                "Disk Dir".into(),
                self.store.disk.root.display().to_string(),
            ],
            ["Layers".into(), recs.len().to_string()],
            ["Applied Layers".into(), applied.to_string()],
            ["Mounted Layers".into(), mounted.to_string()],
            ["Pmem Used".into(), self.store.pmem_used()?.to_string()],
            ["Pmem Budget".into(), self.store.cfg.pmem_budget.to_string()],
        ])
    }

    /// Checks done before an `ApplyDiff` reads its body.
    pub fn apply_precheck(&self, id: &str, parent: &str) -> Result<GraphLayer> {
        validate_id(id)?;
        let parent = validate_parent(parent)?;
        let rec = self.must_load(id)?;
        if rec.chain_id.is_some() {
            return Err(other(format!("layer {id} already has content")));
        }
        if parent != rec.parent.as_deref() {
            return Err(other(format!(
                "layer {id}: ApplyDiff with parent {parent:?}, but its parent is {:?}",
                rec.parent
            )));
        }
        let diff = self.diff_dir(id);
        if fs::read_dir(&diff).ctx("list", &diff)?.next().is_some() {
            return Err(other(format!(
                "layer {id} already has files; ApplyDiff needs an empty layer"
            )));
        }
        Ok(rec)
    }

    /// `ApplyDiff`: extract an uncompressed layer tar read from `body`
    /// (blocking) into a store layer and make it the content of `id`.
    /// Returns the layer's size in bytes.
    pub fn apply_diff(&self, id: &str, parent: &str, body: &mut dyn Read) -> Result<u64> {
        let rec = self.apply_precheck(id, parent)?;
        let _applying = {
            let mut s = self
                .applying
                .lock()
                .map_err(|_| other("graph driver lock poisoned"))?;
            if !s.insert(id.to_string()) {
                return Err(other(format!("layer {id}: ApplyDiff already in progress")));
            }
            Applying(self, id.to_string())
        };
        let parent_rec = match &rec.parent {
            Some(p) => Some(self.must_load(p)?),
            None => None,
        };
        let parent_end = rec
            .parent
            .as_ref()
            .and_then(|p| self.applied_at.lock().ok().and_then(|m| m.get(p).copied()));
        let placement = choose_tier(parent_end, Instant::now());
        // Held shared until our record references the new store layer, so a
        // concurrent `nvtier gc` cannot collect it in between.
        let _pull = self.store.lock_pull()?;
        let t0 = Instant::now();
        let (staging, tier, stats, reservation, why) = self.extract(body, placement)?;
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // chainID: from the parent's, or (parent without store content) a
        // private namespace so it never collides with a real chainID.
        let chain = match parent_rec.as_ref() {
            None => stats.diff_id.clone(),
            Some(p) => {
                let base = match &p.chain_id {
                    Some(c) => c.clone(),
                    None => format!("graph:{}", p.id),
                };
                format!(
                    "sha256:{}",
                    hex::encode(Sha256::digest(
                        format!("{base} {}", stats.diff_id).as_bytes()
                    ))
                )
            }
        };
        let r = (|| -> Result<()> {
            let _cl = self.store.lock_chain(&chain)?;
            if self.store.layer(&chain)?.is_some() {
                tracing::info!(id, %chain, "layer content already in the store; reusing it");
                fs::remove_dir_all(&staging).ctx("remove staging", &staging)?;
                drop(reservation);
                return Ok(());
            }
            let meta = LayerMeta {
                chain_id: chain.clone(),
                diff_id: stats.diff_id.clone(),
                blob_digest: None,
                media_type: Some("application/vnd.docker.image.rootfs.diff.tar".into()),
                parent: parent_rec.as_ref().and_then(|p| p.chain_id.clone()),
                tier,
                compressed_bytes: stats.uncompressed_bytes,
                uncompressed_bytes: stats.uncompressed_bytes,
                file_bytes: stats.file_bytes,
                charged_bytes: stats.charged_bytes,
                file_count: stats.entries,
                created_ms: now_ms(),
                store_ms: t0.elapsed().as_millis() as u64,
            };
            self.store.commit_layer(&staging, &meta, reservation)
        })();
        if let Err(e) = r {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        {
            let _g = self.guard()?;
            let mut rec = self.must_load(id)?;
            rec.chain_id = Some(chain.clone());
            rec.size = stats.file_bytes;
            rec.placement = Some(why.clone());
            self.save(&rec)?;
            let home = self.layer_home(id);
            for d in [self.diff_dir(id), self.work_dir(id)] {
                let _ = fs::remove_dir_all(&d);
            }
            let _ = fsync_dir(&home);
        }
        if let Ok(mut m) = self.applied_at.lock() {
            m.insert(id.to_string(), Instant::now());
        }
        tracing::info!(id, %chain, tier = %tier, reason = %why, bytes = stats.file_bytes,
            ms = t0.elapsed().as_millis() as u64, "applied layer");
        Ok(stats.file_bytes)
    }

    /// Extract onto the chosen tier. On pmem, the stream is also spooled
    /// (unsynced) so that a layer that turns out not to fit the budget can
    /// be re-extracted onto disk without asking Docker to send it again.
    #[allow(clippy::type_complexity)]
    fn extract(
        &self,
        body: &mut dyn Read,
        placement: Placement,
    ) -> Result<(
        PathBuf,
        TierKind,
        Result<crate::extract::ExtractStats>,
        Option<crate::store::Reservation>,
        String,
    )> {
        // Staging key: a random placeholder chain, locked so that another
        // process's start-up cleanup leaves it alone.
        let key = format!("sha256:{}", hex::encode(rand::random::<[u8; 32]>()));
        let _kl = self.store.lock_chain(&key)?;
        if placement == Placement::Gated {
            let staging = self.store.new_staging(TierKind::Disk, &key)?;
            let stats = extract_layer(body, &staging, &Expect::default(), &mut |_| Ok(()));
            return Ok((
                staging,
                TierKind::Disk,
                stats,
                None,
                "gated: its ApplyDiff did not start right after its parent's (storing overlapped the download)".into(),
            ));
        }
        let spool_path = self.spool_dir().join(format!(
            "{}.{:08x}.tar",
            std::process::id(),
            rand::random::<u32>()
        ));
        let spool = fs::File::create(&spool_path).ctx("create spool", &spool_path)?;
        let _rm = RemoveOnDrop(spool_path.clone());
        let mut tee = Tee {
            inner: body,
            copy: spool,
        };
        let staging = self.store.new_staging(TierKind::Pmem, &key)?;
        let mut res = self.store.reserve();
        let stats = extract_layer(&mut tee, &staging, &Expect::default(), &mut |n| {
            res.charge(n)
        });
        match stats {
            Err(Error::BudgetExhausted(msg)) => {
                tracing::info!(%msg, "pmem budget exhausted; storing the layer on disk");
                let _ = fs::remove_dir_all(&staging);
                drop(res);
                // The rest of the stream goes to the spool too.
                io::copy(&mut tee, &mut io::sink())
                    .map_err(|e| Error::Corrupt(format!("reading layer stream: {e}")))?;
                tee.copy.flush().ctx("write spool", &spool_path)?;
                let f = fs::File::open(&spool_path).ctx("open spool", &spool_path)?;
                let staging = self.store.new_staging(TierKind::Disk, &key)?;
                let stats = extract_layer(f, &staging, &Expect::default(), &mut |_| Ok(()));
                Ok((
                    staging,
                    TierKind::Disk,
                    stats,
                    None,
                    "back-to-back, but the pmem budget is exhausted".into(),
                ))
            }
            stats => Ok((
                staging,
                TierKind::Pmem,
                stats,
                Some(res),
                "back-to-back: its ApplyDiff started right after its parent's (storing is on the critical path)".into(),
            )),
        }
    }
}

fn unmount(p: &Path) -> Result<()> {
    match nix::mount::umount2(p, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!(target = %p.display(), "busy; detaching lazily");
            nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).ctx("umount", p)
        }
        Err(nix::errno::Errno::EINVAL) => Ok(()), // not mounted
        Err(e) => Err(e).ctx("umount", p),
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

struct Tee<'a> {
    inner: &'a mut dyn Read,
    copy: fs::File,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
