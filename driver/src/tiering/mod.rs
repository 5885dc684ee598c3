//! File-granular hot-file tiering (N-Docker's HBCSA).
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
//! (`crate::store::hot::owners_path`) shows that no hot data layer holds a path a layer
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
//! Every state between two steps is consistent (see
//! [`crate::store::journal`]); start-up
//! removes staging directories, unpublished generations and half-relocated
//! layers, and finishes retirements.

pub mod copy;
mod migrate;

pub use migrate::{last_migration_path, migrate, LayerMove, MigrateOptions, MigrateReport};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::walk::du;
use crate::fsutil::write_atomic;
use crate::store::hot::{
    current_hot, gen_dir, layer_placement, meta_dir, meta_owners, meta_record, meta_record_path,
    owners_path, write_json, HotEntry, MetaRecord, INODE_COST,
};
use crate::store::{digest_hex, ImageRecord, Store};
use serde::Serialize;
use std::path::PathBuf;

/// The records are the store's; these paths stay for the CLI.
pub use crate::store::hot::{pmem_use, MountTiering, PmemUse};

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

/// The image's metadata layer, built on first use. The caller holds the
/// store lock (so a mount never sees a half-published one).
pub fn ensure_meta(store: &Store, img: &ImageRecord) -> Result<PathBuf> {
    if let Some(dir) = meta_present(store, img)? {
        return Ok(dir);
    }
    publish_meta(store, img, stage_meta(store, img)?)
}

/// [`ensure_meta`] for a migration: the caller holds the migrate lock (so
/// start-up recovery leaves the staging directory alone) and not the store
/// lock. The layer is built, charged and synced without the store lock,
/// which is taken only to publish it, so Prepares and mounts do not wait
/// for the build.
pub(crate) fn ensure_meta_for_migration(store: &Store, img: &ImageRecord) -> Result<PathBuf> {
    if let Some(dir) = meta_present(store, img)? {
        return Ok(dir);
    }
    let staged = stage_meta(store, img)?;
    let _s = store.lock_store()?;
    publish_meta(store, img, staged)
}

/// The metadata layer, when it is published (directory and record).
fn meta_present(store: &Store, img: &ImageRecord) -> Result<Option<PathBuf>> {
    let dir = meta_dir(store, &img.manifest_digest)?;
    Ok((dir.is_dir() && meta_record(store, &img.manifest_digest)?.is_some()).then_some(dir))
}

/// A metadata layer built and synced in its staging directory (a dot
/// name, which GC skips), its pmem charged to a reservation.
struct StagedMeta {
    staging: PathBuf,
    owners: Vec<u8>,
    rec: MetaRecord,
    res: crate::store::Reservation,
}

fn stage_meta(store: &Store, img: &ImageRecord) -> Result<StagedMeta> {
    let t0 = std::time::Instant::now();
    let base = store.pmem.root.join("meta");
    std::fs::create_dir_all(&base).ctx("create", &base)?;
    let hex = digest_hex(&img.manifest_digest)?;
    let staging = base.join(format!(
        ".{hex}.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut dirs = Vec::with_capacity(img.chain_ids.len());
    for c in &img.chain_ids {
        let m = store.layer(c)?.ok_or_else(|| {
            Error::Other(format!(
                "layer {c} is missing from the store; re-pull the image"
            ))
        })?;
        dirs.push(store.layer_dir(&m)?);
    }
    std::fs::create_dir(&staging).ctx("create", &staging)?;
    let built = (|| {
        let stats = crate::flatten::build_meta_layer(&dirs, &staging)?;
        let owners = serde_json::to_vec(&stats.owners).map_err(|e| Error::Other(e.to_string()))?;
        let (du_bytes, inodes) = du(&staging);
        let charged = du_bytes + inodes * INODE_COST;
        let mut res = store.reserve();
        res.charge(charged)?;
        crate::fsutil::syncfs(&staging)?;
        let rec = MetaRecord {
            manifest_digest: img.manifest_digest.clone(),
            inodes,
            du_bytes,
            charged_bytes: charged,
            build_ms: t0.elapsed().as_millis() as u64,
        };
        Ok((owners, rec, res))
    })();
    match built {
        Ok((owners, rec, res)) => Ok(StagedMeta {
            staging,
            owners,
            rec,
            res,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Publish a staged metadata layer. The caller holds the store lock: the
/// owner map, the rename and the record happen as one step for mounts and
/// GC. If another builder published the layer meanwhile, this one is
/// dropped.
fn publish_meta(store: &Store, img: &ImageRecord, s: StagedMeta) -> Result<PathBuf> {
    let dir = meta_dir(store, &img.manifest_digest)?;
    let published = (|| {
        if meta_present(store, img)?.is_some() {
            return Ok(false);
        }
        // Built without the store lock: the layers must still be there.
        for c in &img.chain_ids {
            if store.layer(c)?.is_none() {
                return Err(Error::Other(format!(
                    "layer {c} was removed while the metadata layer of {} was built",
                    img.name
                )));
            }
        }
        // The owner map first: a metadata record without one only costs
        // disk reads (interleaved data layers), never a wrong view.
        let op = owners_path(store, &img.manifest_digest)?;
        if let Some(d) = op.parent() {
            std::fs::create_dir_all(d).ctx("create", d)?;
        }
        write_atomic(&op, &s.owners)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).ctx("remove stale metadata layer", &dir)?;
        }
        std::fs::rename(&s.staging, &dir).ctx("publish metadata layer", &dir)?;
        let p = meta_record_path(store, &img.manifest_digest)?;
        s.res.convert_with(|| write_json(&p, &s.rec))?;
        Ok(true)
    })();
    if !matches!(published, Ok(true)) {
        let _ = std::fs::remove_dir_all(&s.staging);
    }
    published.map(|_| dir)
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
    // While the pmem tier is missing, images mount whole layers.
    if enabled(store).is_err() || !store.pmem_available() {
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
    let layers: Vec<nvtier_policy::datalayers::DataLayer<'_>> = gens
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
