//! The migration engine: from the node's hot profiles and the pmem budget
//! (the plan comes from `nvtier_policy::placement`), build new generations
//! of the layers' hot data layers and relocate pmem layer bases to disk.

use super::copy::{copy_data, copy_tree, Limiter};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::walk::regular_file_beneath;
use crate::fsutil::xattr;
use crate::store::hot::{
    current_hot, gen_dir, hot_root, journal_dir, layer_placement, meta_dir, meta_record,
    put_layer_placement, HotEntry, HotGen, LayerPlacement, INODE_COST,
};
use crate::store::journal::{fault, new_journal, JournalFile};
use crate::store::{digest_hex, now_ms, ImageRecord, Store};
use crate::tier::{DaxState, TierKind};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `nvtier migrate` does.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// Only the layers of this image (the plan is still computed over all
    /// images, so the budget is shared fairly).
    pub image: Option<String>,
    /// Compute and report the plan; change nothing.
    pub dry_run: bool,
    /// Bytes/s; `None` = the config's `migrate_rate`.
    pub rate: Option<u64>,
    /// Keep layer bases where they are (default: relocate pmem bases to
    /// disk, so pmem holds only metadata and hot copies).
    pub keep_bases: bool,
    /// With `keep_bases`: leave the hot copies of layers whose base is on
    /// pmem as they are (their files are read from pmem anyway; the
    /// migration that relocates the base makes them). A profiled pull
    /// builds only what its deploy needs.
    pub skip_pmem_bases: bool,
    /// Fail at once (instead of waiting) when another migration runs: a
    /// pull's deploy must not wait behind a background migration.
    pub no_wait: bool,
}

/// The change to one layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerMove {
    pub chain_id: String,
    pub generation_from: u64,
    pub generation_to: u64,
    /// Merged-view paths whose data is copied to pmem.
    pub promote: Vec<String>,
    /// Merged-view paths whose pmem copy is dropped.
    pub demote: Vec<String>,
    pub keep: usize,
    /// Hot bytes of the layer after the move.
    pub hot_bytes: u64,
    /// The layer's base moves from pmem to disk.
    pub relocate_base: bool,
    /// Why the move was not (fully) applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// What a migration did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub dry_run: bool,
    pub images: Vec<String>,
    /// Images the plan leaves untiered, with why.
    pub untiered: Vec<(String, String)>,
    pub layers: Vec<LayerMove>,
    pub meta_built: Vec<String>,
    pub copied_bytes: u64,
    pub relocated_bytes: u64,
    pub pmem_budget_bytes: u64,
    pub pmem_used_before: u64,
    pub pmem_used_after: u64,
    pub elapsed_ms: f64,
}

/// One image's input to the planner.
struct ImageInput {
    img: ImageRecord,
    files: Vec<nvtier_policy::placement::HotFile>,
    meta_bytes: u64,
}

/// Layers whose base must stay where it is: Docker graph-driver layers
/// resolve their directories themselves. (containerd snapshots go through
/// short links, which a relocation re-points.)
fn pinned(store: &Store) -> Result<HashSet<String>> {
    Ok(store.graph_driver_refs()?.into_iter().collect())
}

/// The metadata bytes an image will need (its record, or an estimate from
/// the layers' file counts before it is built).
fn meta_estimate(store: &Store, img: &ImageRecord) -> Result<u64> {
    if let Some(m) = meta_record(store, &img.manifest_digest)? {
        return Ok(m.charged_bytes);
    }
    let mut files = 0;
    for c in &img.chain_ids {
        if let Some(l) = store.layer(c)? {
            files += l.file_count;
        }
    }
    Ok(files * (INODE_COST + 64))
}

/// Where a merged-view path's data sits: the stub's redirect, or the path.
/// `None` when the merged view has no regular file there (a stale profile).
/// Profile paths come from outside: they are resolved without following
/// symlinks (an image's `/lib -> /usr/lib` must not lead to the host).
fn data_path(meta: &Path, path: &str) -> Result<Option<String>> {
    let Some((stub, _)) = regular_file_beneath(meta, path) else {
        return Ok(None);
    };
    Ok(
        match xattr::get(&stub, "trusted.overlay.redirect").map_err(Error::Xattr)? {
            Some(v) => String::from_utf8(v).ok(),
            None => Some(path.to_string()),
        },
    )
}

fn inputs(store: &Store) -> Result<Vec<ImageInput>> {
    let mut v = Vec::new();
    for img in store.images()? {
        let prof = crate::store::profiles::load_profile(store, &img.name)?;
        let files = prof
            .map(|p| {
                p.files
                    .iter()
                    .filter(|f| img.chain_ids.contains(&f.layer_chain_id))
                    .map(|f| nvtier_policy::placement::HotFile {
                        key: nvtier_policy::placement::FileKey {
                            layer: f.layer_chain_id.clone(),
                            path: f.path.clone(),
                        },
                        bytes: round4k(f.bytes.unwrap_or(0)),
                        first_access_ms: f.first_access_ms,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let meta_bytes = meta_estimate(store, &img)?;
        v.push(ImageInput {
            img,
            files,
            meta_bytes,
        });
    }
    Ok(v)
}

fn round4k(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}

/// Plan and (unless dry-run) apply a migration. Image removals while it
/// runs leave their layers to it: it collects them at its end.
pub fn migrate(store: &Store, opts: &MigrateOptions) -> Result<MigrateReport> {
    let r = migrate_locked(store, opts);
    if !opts.dry_run {
        if let Err(e) = store.gc() {
            tracing::warn!(error = %e, "collecting layers after the migration");
        }
    }
    r
}

fn migrate_locked(store: &Store, opts: &MigrateOptions) -> Result<MigrateReport> {
    super::enabled(store).map_err(Error::Other)?;
    if !store.pmem_available() {
        return Err(Error::Other(format!(
            "the pmem tier at {} is missing: nothing is migrated until it is back (see `nvtier status`)",
            store.pmem.root.display()
        )));
    }
    let t0 = Instant::now();
    let _m = if opts.no_wait {
        store.try_lock_migrate()?.ok_or_else(|| {
            Error::Other("another migration is running; the next one includes this image".into())
        })?
    } else {
        store.lock_migrate()?
    };
    let used_before = store.pmem_used()?;
    let all = inputs(store)?;
    let scope: Vec<&ImageInput> = match &opts.image {
        Some(name) => {
            let i = all
                .iter()
                .find(|i| &i.img.name == name)
                .ok_or_else(|| Error::ImageNotFound(name.clone()))?;
            vec![i]
        }
        None => all.iter().filter(|i| !i.files.is_empty()).collect(),
    };
    let pinned = pinned(store)?;

    // Budget for tiering: everything but what stays on pmem regardless
    // (pinned or out-of-scope pmem bases, retired copies still mounted,
    // reservations of running pulls).
    let scope_chains: BTreeSet<&String> = scope.iter().flat_map(|i| &i.img.chain_ids).collect();
    let mut fixed = store.pmem_used()?.saturating_sub(store.pmem_committed()?);
    for l in store.layers()? {
        if l.tier == TierKind::Pmem
            && (opts.keep_bases
                || pinned.contains(&l.chain_id)
                || !scope_chains.contains(&l.chain_id))
        {
            fixed += l.charged_bytes;
        }
    }
    fixed += super::pmem_use(store)?.retired_bytes;
    let budget = store.pmem_budget().saturating_sub(fixed);

    let now = now_ms();
    let demand: Vec<nvtier_policy::placement::ImageProfile> = all
        .iter()
        .map(|i| {
            let u = crate::store::hot::usage(store, &i.img.manifest_digest).unwrap_or_default();
            nvtier_policy::placement::ImageProfile {
                image: i.img.name.clone(),
                meta_bytes: i.meta_bytes,
                starts: u.starts,
                last_start_ms: u.last_start_ms,
                hot: i.files.clone(),
            }
        })
        .collect();
    let plan = nvtier_policy::placement::plan(
        &demand,
        budget,
        now,
        &nvtier_policy::placement::PlanParams::default(),
    );

    // Target hot set per layer (data path → entry), over the images whose
    // layers are in scope.
    let mut targets: BTreeMap<String, BTreeMap<String, HotEntry>> = BTreeMap::new();
    let mut untiered = Vec::new();
    let mut meta_built = Vec::new();
    for i in &all {
        let Some(p) = plan.image(&i.img.name) else {
            continue;
        };
        let in_scope = scope.iter().any(|s| s.img.name == i.img.name);
        if !p.tiered {
            if in_scope {
                untiered.push((
                    i.img.name.clone(),
                    "metadata layer does not fit the pmem budget".into(),
                ));
                if !opts.dry_run {
                    drop_meta(store, &i.img)?;
                }
            }
            continue;
        }
        if !in_scope && !i.img.chain_ids.iter().any(|c| scope_chains.contains(c)) {
            continue;
        }
        let meta = if opts.dry_run || !in_scope {
            meta_dir(store, &i.img.manifest_digest)?
        } else {
            if meta_record(store, &i.img.manifest_digest)?.is_none() {
                meta_built.push(i.img.name.clone());
            }
            let built = super::ensure_meta_for_migration(store, &i.img);
            match built {
                Ok(m) => m,
                Err(e) => {
                    untiered.push((i.img.name.clone(), e.to_string()));
                    continue;
                }
            }
        };
        for f in &p.hot {
            if !scope_chains.contains(&f.key.layer) {
                continue;
            }
            // Before the metadata layer exists (dry run), the path is its
            // own data path.
            let dp = if meta.is_dir() {
                data_path(&meta, &f.key.path)?
            } else {
                Some(f.key.path.clone())
            };
            let Some(dp) = dp else { continue };
            let Some(l) = store.layer(&f.key.layer)? else {
                continue;
            };
            // Stale profile (the layer does not hold it), or a path through
            // a symlink: skipped.
            let Some((_, md)) = regular_file_beneath(&store.layer_dir(&l)?, &dp) else {
                continue;
            };
            targets.entry(f.key.layer.clone()).or_default().insert(
                dp.clone(),
                HotEntry {
                    path: f.key.path.clone(),
                    data_path: dp,
                    bytes: md.len(),
                },
            );
        }
    }

    let mut moves = Vec::new();
    for c in &scope_chains {
        let Some(l) = store.layer(c)? else { continue };
        let cur = current_hot(store, c)?;
        let cur_set: BTreeSet<&String> = cur.iter().map(|h| &h.data_path).collect();
        let tgt = if opts.keep_bases && opts.skip_pmem_bases && l.tier == TierKind::Pmem {
            cur.iter()
                .map(|h| (h.data_path.clone(), h.clone()))
                .collect()
        } else {
            targets.get(*c).cloned().unwrap_or_default()
        };
        let promote: Vec<String> = tgt
            .values()
            .filter(|h| !cur_set.contains(&h.data_path))
            .map(|h| h.path.clone())
            .collect();
        let demote: Vec<String> = cur
            .iter()
            .filter(|h| !tgt.contains_key(&h.data_path))
            .map(|h| h.path.clone())
            .collect();
        let relocate = !opts.keep_bases && l.tier == TierKind::Pmem && !pinned.contains(*c);
        if promote.is_empty() && demote.is_empty() && !relocate {
            continue;
        }
        let from = layer_placement(store, c)?.map_or(0, |p| p.current);
        moves.push(LayerMove {
            chain_id: (*c).clone(),
            generation_from: from,
            generation_to: if promote.is_empty() && demote.is_empty() {
                from
            } else {
                from + 1
            },
            keep: tgt.len() - promote.len(),
            hot_bytes: tgt.values().map(|h| h.bytes).sum(),
            promote,
            demote,
            relocate_base: relocate,
            skipped: None,
        });
    }

    let mut report = MigrateReport {
        dry_run: opts.dry_run,
        images: scope.iter().map(|i| i.img.name.clone()).collect(),
        untiered,
        layers: moves,
        meta_built,
        copied_bytes: 0,
        relocated_bytes: 0,
        pmem_budget_bytes: store.cfg.pmem_budget,
        pmem_used_before: used_before,
        pmem_used_after: used_before,
        elapsed_ms: 0.0,
    };
    if opts.dry_run {
        report.elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
        return Ok(report);
    }

    let label = opts.image.clone().unwrap_or_else(|| "*".into());
    let mut journal = JournalFile::begin(
        &journal_dir(store),
        &format!("{:016x}", rand::random::<u64>()),
        new_journal(&label, "", 0),
    )?;
    let mut lim = Limiter::new(opts.rate.unwrap_or(store.cfg.migrate_rate));
    let mmap = matches!(crate::tier::detect_dax(&store.pmem.root), DaxState::Dax);
    for mv in &mut report.layers {
        if mv.generation_to != mv.generation_from {
            let tgt = targets.get(&mv.chain_id).cloned().unwrap_or_default();
            match build_generation(
                store,
                &mv.chain_id,
                mv.generation_to,
                &tgt,
                &mut lim,
                mmap,
                &mut journal,
            ) {
                Ok(n) => report.copied_bytes += n,
                Err(Error::BudgetExhausted(why)) => {
                    tracing::warn!(chain = %mv.chain_id, %why, "hot generation skipped: pmem budget");
                    mv.skipped = Some(format!("pmem budget: {why}"));
                    mv.generation_to = mv.generation_from;
                }
                Err(e) => return Err(e),
            }
        }
    }
    for mv in &mut report.layers {
        if mv.relocate_base {
            report.relocated_bytes += relocate_base(store, &mv.chain_id, &mut lim, &mut journal)?;
        }
    }
    crate::store::gc_hot(store)?;
    journal.step("retired")?;
    journal.finish()?;
    report.pmem_used_after = store.pmem_used()?;
    report.elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
    if opts.image.is_none() {
        // Every profile written before now is placed.
        let stamp = last_migration_path(store);
        if let Err(e) = crate::fsutil::write_atomic(&stamp, b"") {
            tracing::warn!(error = %e, path = %stamp.display(), "writing the migration stamp");
        }
    }
    Ok(report)
}

/// `STATE/last-migration`: its time is when the last migration of every
/// image ended (`nvtier status` lists profiles newer than it as pending).
pub fn last_migration_path(store: &Store) -> std::path::PathBuf {
    store.state().join("last-migration")
}

/// Build and publish generation `n` of a layer's hot data layer holding
/// exactly `target`. Files of the current generation are hardlinked (no
/// new pmem); new ones are copied from the base under a budget
/// reservation. Returns the bytes copied.
fn build_generation(
    store: &Store,
    chain: &str,
    n: u64,
    target: &BTreeMap<String, HotEntry>,
    lim: &mut Limiter,
    mmap: bool,
    journal: &mut JournalFile,
) -> Result<u64> {
    let l = store
        .layer(chain)?
        .ok_or_else(|| Error::Other(format!("layer {chain} vanished during migration")))?;
    let base = store.layer_dir(&l)?;
    let cur = layer_placement(store, chain)?;
    let cur_dir: Option<PathBuf> = match &cur {
        Some(p) if p.current > 0 => Some(gen_dir(store, chain, p.current)?),
        _ => None,
    };
    let cur_files: HashSet<String> = current_hot(store, chain)?
        .into_iter()
        .map(|h| h.data_path)
        .collect();
    let root = hot_root(store, chain)?;
    fs::create_dir_all(&root).ctx("create", &root)?;
    let staging = root.join(format!(
        ".g{n}.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir(&staging).ctx("create", &staging)?;
    let built = (|| {
        let mut res = store.reserve();
        let mut copied = 0;
        for h in target.values() {
            let rel = h.data_path.trim_start_matches('/');
            let dst = staging.join(rel);
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).ctx("create", p)?;
            }
            if let (Some(cd), true) = (&cur_dir, cur_files.contains(&h.data_path)) {
                let old = cd.join(rel);
                if fs::hard_link(&old, &dst).is_ok() {
                    continue;
                }
            }
            res.charge(round4k(h.bytes))?;
            copied += copy_data(&base.join(rel), &dst, lim, mmap)?;
        }
        crate::fsutil::syncfs(&staging)?;
        fault("after_copy");
        journal.step(&format!("copied:{chain}"))?;
        let dest = gen_dir(store, chain, n)?;
        if dest.exists() {
            fs::remove_dir_all(&dest).ctx("remove stale generation", &dest)?;
        }
        let _s = store.lock_store()?;
        // The image may have been removed while this copied (GC runs under
        // the store lock): then there is nothing to publish.
        if store.layer(chain)?.is_none() {
            return Err(Error::Other(format!(
                "layer {chain} was removed during migration"
            )));
        }
        fs::rename(&staging, &dest).ctx("publish hot generation", &dest)?;
        crate::fsutil::fsync_dir(&root)?;
        fault("mid_publish");
        let mut rec = cur.clone().unwrap_or(LayerPlacement {
            chain_id: chain.to_string(),
            current: 0,
            generations: BTreeMap::new(),
        });
        rec.generations.insert(
            n,
            HotGen {
                created_ms: now_ms(),
                files: target.values().cloned().collect(),
            },
        );
        rec.current = n;
        res.convert_with(|| put_layer_placement(store, &rec))?;
        Ok(copied)
    })();
    if built.is_err() {
        let _ = fs::remove_dir_all(&staging);
        // The layer's hot directory, if this made it and nothing else is
        // in it (its layer may be gone, and GC only removes recorded ones).
        let _ = fs::remove_dir(&root);
    }
    let copied = built?;
    journal.step(&format!("committed:{chain}"))?;
    Ok(copied)
}

/// Move a layer's base from pmem to disk: copy, switch the layer metadata
/// (the commit point), retire the pmem copy until its last mount goes.
fn relocate_base(
    store: &Store,
    chain: &str,
    lim: &mut Limiter,
    journal: &mut JournalFile,
) -> Result<u64> {
    let _c = store.lock_chain(chain)?;
    let Some(mut m) = store.layer(chain)? else {
        return Ok(0);
    };
    if m.tier != TierKind::Pmem {
        return Ok(0);
    }
    let src = store.layer_dir(&m)?;
    let staging = store.new_staging(TierKind::Disk, chain)?;
    let copied = (|| {
        let n = copy_tree(&src, &staging, lim)?;
        crate::fsutil::syncfs(&staging)?;
        Ok(n)
    })();
    let copied = match copied {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    fault("layer_copied");
    journal.step(&format!("layer_copied:{chain}"))?;
    // The disk copy goes into place without the store lock: until the
    // metadata switch below nothing reads it (mounts and GC follow the
    // metadata, which still says pmem; we hold the chain lock), and a crash
    // before the switch leaves a disk directory that start-up recovery
    // removes ("undoing an unfinished relocation").
    let dest = store.disk.layer_dir(digest_hex(chain)?);
    if dest.exists() {
        fs::remove_dir_all(&dest).ctx("remove stale layer directory", &dest)?;
    }
    fs::rename(&staging, &dest).ctx("publish relocated layer", &dest)?;
    crate::fsutil::fsync_dir(&store.disk.layers_dir())?;
    {
        // The switch (the commit point) and the retirement of the pmem copy
        // are one step for mounts and GC.
        let _s = store.lock_store()?;
        let bytes = m.charged_bytes;
        m.tier = TierKind::Disk;
        store.put_layer_meta(&m)?;
        fault("layer_switched");
        crate::store::retire_pmem_copy(store, chain, bytes)?;
    }
    journal.step(&format!("layer_switched:{chain}"))?;
    Ok(copied)
}

/// The plan leaves the image untiered: free its metadata layer unless a
/// mount uses it (then GC frees it after the last umount).
fn drop_meta(store: &Store, img: &ImageRecord) -> Result<()> {
    let _s = store.lock_store()?;
    let hex = digest_hex(&img.manifest_digest)?;
    let used = store
        .mounts()?
        .iter()
        .any(|m| m.tiering.as_ref().is_some_and(|t| t.meta == hex))
        || store
            .snapshots()?
            .iter()
            .any(|s| s.tiering.as_ref().is_some_and(|t| t.meta == hex));
    if used {
        return Ok(());
    }
    for rec in [
        super::meta_record_path(store, &img.manifest_digest)?,
        super::owners_path(store, &img.manifest_digest)?,
    ] {
        match fs::remove_file(&rec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove metadata record", &rec),
        }
    }
    let d = meta_dir(store, &img.manifest_digest)?;
    match fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("remove metadata layer", &d),
    }
}
