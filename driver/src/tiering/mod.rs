//! File-granular hot-file tiering (N-Docker's HBCSA, issue 4).
//!
//! # Layout
//! A tiered image mounts as
//! `lower = [META]`, `data = [HOT(Ln) BASE(Ln) … HOT(L1) BASE(L1)]`:
//! - `PMEM/meta/<manifest>/`: the image's **flattened metadata layer**
//!   ([`crate::flatten`]): the whole directory tree, every regular file a
//!   metacopy stub whose `trusted.overlay.redirect` names its data path.
//!   Path walks never leave pmem. Immutable once built.
//! - `PMEM/hot/<chain>/g<N>/`: generation N of layer L's **hot data
//!   layer**: copies of the layer's hot files at their data paths.
//! - `BASE(L)`: the layer directory as pulled, on its tier. After
//!   migration every base lives on disk, the canonical full copy; a demotion
//!   is then only the removal of a pmem copy.
//!
//! overlayfs resolves a redirect in the data-only layers in order and takes
//! the first match. A file's top-most layer holds it (hot copies are a
//! subset of their base), so with each hot data layer right above its base
//! a hot copy shadows exactly its own base file: the merged view is the
//! same whatever the placement. Where the image's owner map
//! ([`owners_path`]) shows that no hot data layer holds a path a layer
//! above it owns, every hot data layer goes before every base instead, so
//! that resolving a hot file never looks into a base on disk
//! (`nvtier_policy::datalayers`).
//!
//! # Generations
//! `STATE/hot/<chain>.json` names the layer's current generation. A
//! migration builds generation N+1 beside N (unchanged files hardlinked, new
//! ones copied), publishes it with one atomic record write, and leaves N in
//! place while any mount record still lists it: a running container never
//! sees a change, new mounts use N+1. Unreferenced generations are deleted
//! by GC (after every umount and every migration).
//!
//! # Crash safety
//! Every state between two steps is consistent (see [`journal`]); start-up
//! removes staging directories, unpublished generations and half-relocated
//! layers, and finishes retirements.

pub mod copy;
pub mod journal;
mod migrate;
mod recover;

pub use migrate::{migrate, LayerMove, MigrateOptions, MigrateReport};
pub use recover::{gc, gc_locked, recover};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::walk::du;
use crate::fsutil::write_atomic;
use crate::store::{digest_hex, meta_read, ImageRecord, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One hot file copy in a layer's hot data layer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HotEntry {
    /// The path in the merged view (as in the profile).
    pub path: String,
    /// Where the data sits in the layer (the stub's redirect; differs from
    /// `path` for a hardlink alias).
    pub data_path: String,
    pub bytes: u64,
}

/// One generation of a layer's hot data layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotGen {
    pub created_ms: u64,
    pub files: Vec<HotEntry>,
}

/// `STATE/hot/<chain>.json`: a layer's hot-file placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPlacement {
    pub chain_id: String,
    /// Generation new mounts use (0 = no hot files).
    pub current: u64,
    /// Generations whose directory exists (current and retained ones).
    pub generations: BTreeMap<u64, HotGen>,
}

/// `STATE/meta/<manifest>.json`: an image's flattened metadata layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRecord {
    pub manifest_digest: String,
    pub inodes: u64,
    /// Allocated bytes (`du`).
    pub du_bytes: u64,
    /// Charged to the pmem budget: `du_bytes` plus [`INODE_COST`] per inode
    /// (an ext4-DAX inode; a tmpfs inode costs about as much memory).
    pub charged_bytes: u64,
    pub build_ms: u64,
}

/// A pmem layer directory relocated to disk whose old copy is still
/// mounted: `STATE/retired/<name>.json` for `PMEM/retired/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredLayer {
    pub chain_id: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Container ids of the mounts that may use it.
    pub users: Vec<String>,
    pub retired_ms: u64,
}

/// How often an image was started (for the policy's heat ranking).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub starts: u32,
    pub last_start_ms: u64,
}

/// What a tiered mount uses (kept in its mount record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountTiering {
    /// Manifest hex of the metadata layer.
    pub meta: String,
    /// (chainID, generation) of every hot data layer in the mount.
    pub hot: Vec<(String, u64)>,
    /// All hot data layers before all bases (`nvtier_policy::datalayers`);
    /// false: each hot data layer right above its base.
    #[serde(default)]
    pub hot_first: bool,
}

/// Bytes charged per metadata-layer inode.
pub const INODE_COST: u64 = 256;

/// pmem bytes held by tiering.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PmemUse {
    pub meta_bytes: u64,
    pub hot_bytes: u64,
    pub retired_bytes: u64,
}

impl PmemUse {
    pub fn total(&self) -> u64 {
        self.meta_bytes + self.hot_bytes + self.retired_bytes
    }
}

/// Can this kernel mount data-only lower layers (`datadir+`, Linux 6.8)?
/// `Err` says why not.
pub fn kernel_support() -> std::result::Result<(), String> {
    let u = nix::sys::utsname::uname().map_err(|e| format!("uname: {e}"))?;
    let rel = u.release().to_string_lossy().into_owned();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if (major, minor) >= (6, 8) {
        Ok(())
    } else {
        Err(format!(
            "kernel {rel} lacks overlayfs data-only layers (datadir+, Linux 6.8+); \
             nvtier places whole layers (LASS only)"
        ))
    }
}

/// Is file-granular tiering on? `Err` says why not (config or kernel).
pub fn enabled(store: &Store) -> std::result::Result<(), String> {
    if !store.cfg.tiering {
        return Err(format!(
            "tiering = false in {}: whole-layer placement (LASS only)",
            store.cfg.file.display()
        ));
    }
    kernel_support()
}

// ---- paths ----

pub(crate) fn layer_record_path(store: &Store, chain: &str) -> Result<PathBuf> {
    Ok(store
        .state()
        .join("hot")
        .join(format!("{}.json", digest_hex(chain)?)))
}
pub(crate) fn hot_root(store: &Store, chain: &str) -> Result<PathBuf> {
    Ok(store.pmem.root.join("hot").join(digest_hex(chain)?))
}
pub(crate) fn gen_dir(store: &Store, chain: &str, n: u64) -> Result<PathBuf> {
    Ok(hot_root(store, chain)?.join(format!("g{n}")))
}
pub fn meta_dir(store: &Store, manifest: &str) -> Result<PathBuf> {
    Ok(store.pmem.root.join("meta").join(digest_hex(manifest)?))
}
pub(crate) fn meta_record_path(store: &Store, manifest: &str) -> Result<PathBuf> {
    Ok(store
        .state()
        .join("meta")
        .join(format!("{}.json", digest_hex(manifest)?)))
}
/// Suffix of the owner map beside an image's metadata record.
pub(crate) const OWNERS_SUFFIX: &str = ".owners";
/// `STATE/meta/<manifest>.owners`: the data paths of the image's metadata
/// layer not owned by its top layer, with their owner (see
/// [`crate::flatten::MetaStats::owners`]). Written with the metadata layer;
/// no file (an older store) means "unknown".
pub(crate) fn owners_path(store: &Store, manifest: &str) -> Result<PathBuf> {
    Ok(store
        .state()
        .join("meta")
        .join(format!("{}{OWNERS_SUFFIX}", digest_hex(manifest)?)))
}
pub(crate) fn retired_records_dir(store: &Store) -> PathBuf {
    store.state().join("retired")
}
pub(crate) fn retired_dir(store: &Store) -> PathBuf {
    store.pmem.root.join("retired")
}
pub(crate) fn journal_dir(store: &Store) -> PathBuf {
    store.state().join("journal")
}
fn usage_path(store: &Store, manifest: &str) -> Result<PathBuf> {
    Ok(store
        .state()
        .join("usage")
        .join(format!("{}.json", digest_hex(manifest)?)))
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).ctx("create", d)?;
    }
    let json = serde_json::to_vec_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(p, &json)
}

// ---- records ----

pub fn layer_placement(store: &Store, chain: &str) -> Result<Option<LayerPlacement>> {
    meta_read(&layer_record_path(store, chain)?)
}

pub(crate) fn put_layer_placement(store: &Store, p: &LayerPlacement) -> Result<()> {
    write_json(&layer_record_path(store, &p.chain_id)?, p)
}

/// The current hot files of a layer (empty when it has none).
pub fn current_hot(store: &Store, chain: &str) -> Result<Vec<HotEntry>> {
    Ok(layer_placement(store, chain)?
        .and_then(|p| p.generations.get(&p.current).map(|g| g.files.clone()))
        .unwrap_or_default())
}

pub fn meta_record(store: &Store, manifest: &str) -> Result<Option<MetaRecord>> {
    meta_read(&meta_record_path(store, manifest)?)
}

/// The image's owner map, `None` when it has none (built by an nvtier
/// that did not record one).
pub fn meta_owners(store: &Store, manifest: &str) -> Result<Option<HashMap<String, usize>>> {
    meta_read(&owners_path(store, manifest)?)
}

pub fn usage(store: &Store, manifest: &str) -> Result<Usage> {
    Ok(meta_read(&usage_path(store, manifest)?)?.unwrap_or_default())
}

/// Count a start of the image (best effort; the policy's heat ranking).
pub fn note_start(store: &Store, manifest: &str) {
    let r = (|| {
        let p = usage_path(store, manifest)?;
        let mut u: Usage = meta_read(&p)?.unwrap_or_default();
        u.starts = u.starts.saturating_add(1);
        u.last_start_ms = crate::store::now_ms();
        write_json(&p, &u)
    })();
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot record image start");
    }
}

pub(crate) fn retired(store: &Store) -> Result<Vec<(PathBuf, RetiredLayer)>> {
    let dir = retired_records_dir(store);
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        if let Some(r) = meta_read::<RetiredLayer>(&e.path())? {
            out.push((e.path(), r));
        }
    }
    Ok(out)
}

/// pmem bytes held by metadata layers, hot data layers (all generations,
/// hardlinked copies once) and retired layer copies.
pub fn pmem_use(store: &Store) -> Result<PmemUse> {
    let mut u = PmemUse::default();
    let mdir = store.state().join("meta");
    if mdir.is_dir() {
        for m in crate::store::meta_read_all::<MetaRecord>(&mdir)? {
            u.meta_bytes += m.charged_bytes;
        }
    }
    let hot = store.pmem.root.join("hot");
    if hot.is_dir() {
        u.hot_bytes = du(&hot).0;
        // The directories themselves.
        u.hot_bytes = u.hot_bytes.saturating_sub(
            std::fs::symlink_metadata(&hot)
                .map(|m| m.blocks() * 512)
                .unwrap_or(0),
        );
    }
    for (_, r) in retired(store)? {
        u.retired_bytes += r.bytes;
    }
    Ok(u)
}

/// The image's metadata layer, built on first use. The caller holds the
/// store lock (so a mount never sees a half-published one).
pub fn ensure_meta(store: &Store, img: &ImageRecord) -> Result<PathBuf> {
    let dir = meta_dir(store, &img.manifest_digest)?;
    if dir.is_dir() && meta_record(store, &img.manifest_digest)?.is_some() {
        return Ok(dir);
    }
    let t0 = std::time::Instant::now();
    let base = store.pmem.root.join("meta");
    std::fs::create_dir_all(&base).ctx("create", &base)?;
    let hex = digest_hex(&img.manifest_digest)?;
    let staging = base.join(format!(
        ".{hex}.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&staging).ctx("create", &staging)?;
    let mut dirs = Vec::with_capacity(img.chain_ids.len());
    for c in &img.chain_ids {
        let m = store.layer(c)?.ok_or_else(|| {
            Error::Other(format!(
                "layer {c} is missing from the store; re-pull the image"
            ))
        })?;
        dirs.push(store.layer_dir(&m)?);
    }
    let built = (|| {
        let stats = crate::flatten::build_meta_layer(&dirs, &staging)?;
        // The owner map first: a metadata record without one only costs
        // disk reads (interleaved data layers), never a wrong view.
        let op = owners_path(store, &img.manifest_digest)?;
        if let Some(d) = op.parent() {
            std::fs::create_dir_all(d).ctx("create", d)?;
        }
        write_atomic(
            &op,
            &serde_json::to_vec(&stats.owners).map_err(|e| Error::Other(e.to_string()))?,
        )?;
        let (du_bytes, inodes) = du(&staging);
        let charged = du_bytes + inodes * INODE_COST;
        let mut res = store.reserve();
        res.charge(charged)?;
        crate::fsutil::syncfs(&staging)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).ctx("remove stale metadata layer", &dir)?;
        }
        std::fs::rename(&staging, &dir).ctx("publish metadata layer", &dir)?;
        let rec = MetaRecord {
            manifest_digest: img.manifest_digest.clone(),
            inodes,
            du_bytes,
            charged_bytes: charged,
            build_ms: t0.elapsed().as_millis() as u64,
        };
        let p = meta_record_path(store, &img.manifest_digest)?;
        res.convert_with(|| write_json(&p, &rec))
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(dir)
}

/// The overlay layers of a tiered mount of `img`: the metadata layer as the
/// only lower layer, then each layer's current hot data layer above its
/// base, top-most first. `None` when tiering is off or the image has no
/// metadata layer and `build` is false.
pub fn mount_layers(
    store: &Store,
    img: &ImageRecord,
    base_top_first: &[PathBuf],
    build: bool,
) -> Result<Option<(PathBuf, Vec<PathBuf>, MountTiering)>> {
    if enabled(store).is_err() {
        return Ok(None);
    }
    let have = meta_record(store, &img.manifest_digest)?.is_some()
        && meta_dir(store, &img.manifest_digest)?.is_dir();
    if !have && !build {
        return Ok(None);
    }
    if img.chain_ids.len() != base_top_first.len() {
        return Err(Error::Other(format!(
            "image {} has {} layers but {} layer directories were given",
            img.name,
            img.chain_ids.len(),
            base_top_first.len()
        )));
    }
    let meta = ensure_meta(store, img)?;
    let n = img.chain_ids.len();
    // Bottom first, as the policy counts layers.
    let chains = &img.chain_ids[..n];
    let mut gens: Vec<Option<(u64, PathBuf, Vec<HotEntry>)>> = Vec::with_capacity(n);
    for c in chains {
        let mut g = None;
        if let Some(mut p) = layer_placement(store, c)? {
            if let Some(files) = p.generations.remove(&p.current).map(|g| g.files) {
                let dir = gen_dir(store, c, p.current)?;
                if p.current > 0 && !files.is_empty() && dir.is_dir() {
                    g = Some((p.current, dir, files));
                }
            }
        }
        gens.push(g);
    }
    let layers: Vec<nvtier_policy::datalayers::DataLayer> = gens
        .iter()
        .map(|g| nvtier_policy::datalayers::DataLayer {
            has_hot: g.is_some(),
            hot_paths: g.as_ref().map_or_else(Vec::new, |(_, _, f)| {
                f.iter().map(|h| h.data_path.as_str()).collect()
            }),
        })
        .collect();
    let owners = meta_owners(store, &img.manifest_digest)?;
    let hot_first = match nvtier_policy::datalayers::hot_first_ok(&layers, owners.as_ref()) {
        Ok(()) => true,
        Err(why) => {
            tracing::info!(
                image = %img.name, ?why,
                "hot data layers interleaved with the bases: a hot file of a lower layer is \
                 shadowed above, so this mount may read the disk tier (see `nvtier status`)"
            );
            false
        }
    };
    let mut data = Vec::new();
    for d in nvtier_policy::datalayers::order(&layers, hot_first) {
        match d {
            nvtier_policy::datalayers::Data::Hot(i) => {
                if let Some((_, dir, _)) = &gens[i] {
                    data.push(dir.clone());
                }
            }
            // base_top_first[0] is the top layer, chains[n - 1].
            nvtier_policy::datalayers::Data::Base(i) => {
                data.push(base_top_first[n - 1 - i].clone())
            }
        }
    }
    let hot = chains
        .iter()
        .zip(&gens)
        .rev()
        .filter_map(|(c, g)| g.as_ref().map(|(n, _, _)| (c.clone(), *n)))
        .collect();
    Ok(Some((
        meta,
        data,
        MountTiering {
            meta: digest_hex(&img.manifest_digest)?.to_string(),
            hot,
            hot_first,
        },
    )))
}

/// Per-layer tier usage at file granularity.
#[derive(Debug, Clone, Serialize)]
pub struct LayerUsage {
    pub chain_id: String,
    /// Tier of the layer's base (full copy).
    pub base_tier: crate::tier::TierKind,
    pub pmem_bytes: u64,
    pub disk_bytes: u64,
    pub pmem_files: u64,
    pub hot_files: u64,
    pub hot_bytes: u64,
    pub hot_generation: u64,
}

pub fn layer_usage(store: &Store, m: &crate::store::LayerMeta) -> Result<LayerUsage> {
    let hot = current_hot(store, &m.chain_id)?;
    let gen = layer_placement(store, &m.chain_id)?.map_or(0, |p| p.current);
    let hot_bytes: u64 = hot.iter().map(|h| h.bytes).sum();
    // Bases are charged as the store charges them (data rounded to 4 KiB);
    // hot copies by their file sizes.
    let (pmem_bytes, disk_bytes, pmem_files) = match m.tier {
        crate::tier::TierKind::Pmem => (m.charged_bytes + hot_bytes, 0, m.file_count),
        crate::tier::TierKind::Disk => (hot_bytes, m.charged_bytes, hot.len() as u64),
    };
    Ok(LayerUsage {
        chain_id: m.chain_id.clone(),
        base_tier: m.tier,
        pmem_bytes,
        disk_bytes,
        pmem_files,
        hot_files: hot.len() as u64,
        hot_bytes,
        hot_generation: gen,
    })
}
