//! Records of hot-file tiering and where they live (the tiering engine builds
//! them):
//! - `STATE/hot/<chain>.json` ([`LayerPlacement`]): a layer's hot
//!   generations; their copies in `PMEM/hot/<chain>/g<N>/`.
//! - `STATE/meta/<manifest>.json` ([`MetaRecord`]) and `.owners`: an
//!   image's flattened metadata layer `PMEM/meta/<manifest>/`.
//! - `STATE/retired/<name>.json` ([`RetiredLayer`]): pmem layer copies
//!   relocated to disk but still mounted, in `PMEM/retired/<name>/`.
//! - `STATE/usage/<manifest>.json` ([`Usage`]): image starts.
//! - `STATE/journal/`: migration journals (see [`super::journal`]).

use super::{digest_hex, meta_read, meta_read_all, now_ms, Store};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::walk::du_many;
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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

/// Whether the metadata layer and hot generations `t` names still exist.
/// Called with the store lock held: what exists then cannot be freed (GC
/// runs under that lock) before the record naming it is saved.
pub fn tiering_present(store: &Store, t: &MountTiering) -> Result<bool> {
    let manifest = format!("sha256:{}", t.meta);
    if !meta_dir(store, &manifest)?.is_dir() || !meta_record_path(store, &manifest)?.is_file() {
        return Ok(false);
    }
    for (c, g) in &t.hot {
        if !gen_dir(store, c, *g)?.is_dir() {
            return Ok(false);
        }
    }
    Ok(true)
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

// ---- paths ----

pub fn layer_record_path(store: &Store, chain: &str) -> Result<PathBuf> {
    Ok(store
        .state()
        .join("hot")
        .join(format!("{}.json", digest_hex(chain)?)))
}
pub fn hot_root(store: &Store, chain: &str) -> Result<PathBuf> {
    Ok(store.pmem.root.join("hot").join(digest_hex(chain)?))
}
pub fn gen_dir(store: &Store, chain: &str, n: u64) -> Result<PathBuf> {
    Ok(hot_root(store, chain)?.join(format!("g{n}")))
}
pub fn meta_dir(store: &Store, manifest: &str) -> Result<PathBuf> {
    Ok(store.pmem.root.join("meta").join(digest_hex(manifest)?))
}
pub fn meta_record_path(store: &Store, manifest: &str) -> Result<PathBuf> {
    Ok(store
        .state()
        .join("meta")
        .join(format!("{}.json", digest_hex(manifest)?)))
}
/// Suffix of the owner map beside an image's metadata record.
pub const OWNERS_SUFFIX: &str = ".owners";
/// `STATE/meta/<manifest>.owners`: the data paths of the image's metadata
/// layer not owned by its top layer, with their owner (see
/// `flatten::MetaStats::owners`). Written with the metadata layer;
/// no file (an older store) means "unknown".
pub fn owners_path(store: &Store, manifest: &str) -> Result<PathBuf> {
    Ok(store
        .state()
        .join("meta")
        .join(format!("{}{OWNERS_SUFFIX}", digest_hex(manifest)?)))
}
pub fn retired_records_dir(store: &Store) -> PathBuf {
    store.state().join("retired")
}
pub fn retired_dir(store: &Store) -> PathBuf {
    store.pmem.root.join("retired")
}
pub fn journal_dir(store: &Store) -> PathBuf {
    store.state().join("journal")
}
pub fn usage_path(store: &Store, manifest: &str) -> Result<PathBuf> {
    Ok(store
        .state()
        .join("usage")
        .join(format!("{}.json", digest_hex(manifest)?)))
}

pub fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
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

pub fn put_layer_placement(store: &Store, p: &LayerPlacement) -> Result<()> {
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
/// The read-modify-write is serialised by its own lock.
pub fn note_start(store: &Store, manifest: &str) {
    let r = (|| {
        let _l = store.lock_usage()?;
        let p = usage_path(store, manifest)?;
        let mut u: Usage = meta_read(&p)?.unwrap_or_default();
        u.starts = u.starts.saturating_add(1);
        u.last_start_ms = now_ms();
        write_json(&p, &u)
    })();
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot record image start");
    }
}

pub fn retired(store: &Store) -> Result<Vec<(PathBuf, RetiredLayer)>> {
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
        for m in meta_read_all::<MetaRecord>(&mdir)? {
            u.meta_bytes += m.charged_bytes;
        }
    }
    // Published generations only: a generation being copied (a staging
    // directory, or published but not yet recorded) is charged to its
    // migration's reservation until its record is written.
    let recs = store.state().join("hot");
    if recs.is_dir() {
        let mut gens = Vec::new();
        for p in meta_read_all::<LayerPlacement>(&recs)? {
            for n in p.generations.keys() {
                gens.push(gen_dir(store, &p.chain_id, *n)?);
            }
        }
        u.hot_bytes = du_many(&gens).0;
    }
    for (_, r) in retired(store)? {
        u.retired_bytes += r.bytes;
    }
    Ok(u)
}
