//! Start-up recovery after a killed migration, and garbage collection of
//! hot generations, metadata layers and retired copies nobody uses (the
//! records of [`super::hot`]).

use super::hot::{
    gen_dir, hot_root, journal_dir, layer_record_path, meta_dir, meta_record_path, owners_path,
    put_layer_placement, retired, retired_dir, retired_records_dir, write_json, LayerPlacement,
    RetiredLayer, OWNERS_SUFFIX,
};
use super::{digest_hex, journal, meta_read, meta_read_all, now_ms, SnapshotKind, Store};
use crate::error::{IoContext, Result};
use crate::tier::TierKind;
use std::collections::HashSet;
use std::fs;
use std::path::Path;

fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("remove", p),
    }
}

/// Retire the pmem copy of a layer whose metadata now says disk: record
/// the mounts that may still use it, then move it under `PMEM/retired/`.
/// The caller holds the store lock.
pub(crate) fn retire_pmem_copy(store: &Store, chain: &str, bytes: u64) -> Result<()> {
    let hex = digest_hex(chain)?;
    let src = store.pmem.layer_dir(hex);
    if !src.exists() {
        return Ok(());
    }
    let name = format!("{hex}.{:08x}", rand::random::<u32>());
    let dest = retired_dir(store).join(&name);
    fs::create_dir_all(retired_dir(store)).ctx("create", retired_dir(store))?;
    let mut users: Vec<String> = store
        .mounts()?
        .into_iter()
        .filter(|m| m.chain_ids.iter().any(|c| c == chain))
        .map(|m| m.container_id)
        .collect();
    // containerd may have mounted any active snapshot (its lowerdirs were
    // resolved at mount time): each keeps the copy until its Remove.
    let snaps = store.snapshots()?;
    users.extend(
        snaps
            .iter()
            .filter(|s| s.kind != SnapshotKind::Committed)
            .map(|s| snapshot_user(&s.key)),
    );
    // Record first: a crash after it leaves a record without directory,
    // which the sweep removes; the layer directory is then retired again.
    write_json(
        &retired_records_dir(store).join(format!("{name}.json")),
        &RetiredLayer {
            chain_id: chain.to_string(),
            path: dest.clone(),
            bytes,
            users,
            retired_ms: now_ms(),
        },
    )?;
    fs::rename(&src, &dest).ctx("retire pmem copy", &src)?;
    // Snapshots of the layer: their short links now name the disk copy.
    if let Some(m) = store.layer(chain)? {
        let target = store.layer_dir(&m)?;
        for s in snaps.iter().filter(|s| s.layer.as_deref() == Some(chain)) {
            let link = store.links_dir().join(&s.id);
            let tmp = store
                .links_dir()
                .join(format!(".{}.{:08x}", s.id, rand::random::<u32>()));
            std::os::unix::fs::symlink(&target, &tmp).ctx("create link", &tmp)?;
            fs::rename(&tmp, &link).ctx("publish link", &link)?;
        }
    }
    Ok(())
}

/// How a retired copy names an active containerd snapshot among its users.
pub(crate) fn snapshot_user(key: &str) -> String {
    format!("snap:{key}")
}

/// After a crash: finish or undo what an interrupted migration left, then
/// collect. Skipped while a migration runs (it holds `migrate.lock`).
pub fn recover(store: &Store) -> Result<()> {
    let Some(_m) = store.try_lock_migrate()? else {
        return Ok(());
    };
    for (path, j) in journal::leftovers(&journal_dir(store)) {
        match &j {
            Some(j) => tracing::warn!(
                image = %j.image,
                generation = j.generation,
                last_step = j.steps.last().map(String::as_str).unwrap_or("none"),
                "recovering from an interrupted migration"
            ),
            None => tracing::warn!(path = %path.display(), "unreadable migration journal"),
        }
    }
    let _l = store.lock_store()?;
    // Staging directories of hot generations and metadata layers.
    let hot = store.pmem.root.join("hot");
    if let Ok(rd) = fs::read_dir(&hot) {
        for e in rd.flatten() {
            let Ok(gens) = fs::read_dir(e.path()) else {
                continue;
            };
            let hex = e.file_name().to_string_lossy().into_owned();
            let rec: Option<LayerPlacement> =
                meta_read(&store.state().join("hot").join(format!("{hex}.json")))?;
            for g in gens.flatten() {
                let name = g.file_name().to_string_lossy().into_owned();
                let published = name
                    .strip_prefix('g')
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| rec.as_ref().is_some_and(|r| r.generations.contains_key(&n)));
                if !published {
                    tracing::info!(path = %g.path().display(), "removing unpublished hot generation");
                    remove_tree(&g.path())?;
                }
            }
        }
    }
    let meta = store.pmem.root.join("meta");
    if let Ok(rd) = fs::read_dir(&meta) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                tracing::info!(path = %e.path().display(), "removing metadata-layer staging");
                remove_tree(&e.path())?;
            }
        }
    }
    // Half-relocated layers.
    for l in store.layers()? {
        let hex = digest_hex(&l.chain_id)?.to_string();
        match l.tier {
            TierKind::Pmem => {
                let d = store.disk.layer_dir(&hex);
                if d.exists() {
                    tracing::info!(path = %d.display(), "undoing an unfinished relocation to disk");
                    remove_tree(&d)?;
                }
            }
            TierKind::Disk => {
                if store.pmem.layer_dir(&hex).exists() {
                    tracing::info!(chain = %l.chain_id, "finishing a relocation to disk");
                    retire_pmem_copy(store, &l.chain_id, l.charged_bytes)?;
                }
            }
        }
    }
    gc_hot_locked(store)?;
    for (path, _) in journal::leftovers(&journal_dir(store)) {
        let _ = fs::remove_file(path);
    }
    Ok(())
}

/// Collect unused generations, metadata layers and retired copies.
pub fn gc_hot(store: &Store) -> Result<()> {
    let _l = store.lock_store()?;
    gc_hot_locked(store)
}

/// [`gc_hot`] with the store lock held.
pub fn gc_hot_locked(store: &Store) -> Result<()> {
    let mounts = store.mounts()?;
    let containers: HashSet<&str> = mounts.iter().map(|m| m.container_id.as_str()).collect();
    let snaps = store.snapshots()?;
    let snap_users: HashSet<String> = snaps
        .iter()
        .filter(|s| s.kind != SnapshotKind::Committed)
        .map(|s| snapshot_user(&s.key))
        .collect();
    let mut gens_used: HashSet<(String, u64)> = HashSet::new();
    let mut metas_used: HashSet<String> = HashSet::new();
    let graph = store.graph_tierings()?;
    for t in mounts
        .iter()
        .filter_map(|m| m.tiering.as_ref())
        .chain(snaps.iter().filter_map(|s| s.tiering.as_ref()))
        .chain(graph.iter())
    {
        metas_used.insert(t.meta.clone());
        gens_used.extend(t.hot.iter().cloned());
    }
    // Hot generations.
    let dir = store.state().join("hot");
    if dir.is_dir() {
        let live: HashSet<String> = store.layers()?.into_iter().map(|l| l.chain_id).collect();
        for mut p in meta_read_all::<LayerPlacement>(&dir)? {
            let layer_live = live.contains(&p.chain_id);
            let before = p.generations.len();
            let mut keep = std::collections::BTreeMap::new();
            for (n, g) in std::mem::take(&mut p.generations) {
                let used = gens_used.contains(&(p.chain_id.clone(), n));
                if used || (layer_live && n == p.current) {
                    keep.insert(n, g);
                } else {
                    remove_tree(&gen_dir(store, &p.chain_id, n)?)?;
                }
            }
            p.generations = keep;
            if p.generations.is_empty() && !layer_live {
                let _ = fs::remove_file(layer_record_path(store, &p.chain_id)?);
                remove_tree(&hot_root(store, &p.chain_id)?)?;
            } else if p.generations.len() != before {
                put_layer_placement(store, &p)?;
            }
        }
    }
    // Metadata layers of removed images.
    let live: HashSet<String> = store
        .images()?
        .iter()
        .filter_map(|i| digest_hex(&i.manifest_digest).ok().map(str::to_string))
        .collect();
    let meta = store.pmem.root.join("meta");
    if let Ok(rd) = fs::read_dir(&meta) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || live.contains(&name) || metas_used.contains(&name) {
                continue;
            }
            let manifest = format!("sha256:{name}");
            if let Ok(p) = meta_record_path(store, &manifest) {
                let _ = fs::remove_file(p);
            }
            if let Ok(p) = owners_path(store, &manifest) {
                let _ = fs::remove_file(p);
            }
            if let Ok(d) = meta_dir(store, &manifest) {
                remove_tree(&d)?;
            } else {
                remove_tree(&e.path())?;
            }
        }
    }
    // Records without a metadata layer directory.
    let mrec = store.state().join("meta");
    if let Ok(rd) = fs::read_dir(&mrec) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name
                .strip_suffix(".json")
                .or_else(|| name.strip_suffix(OWNERS_SUFFIX))
            {
                if !meta.join(hex).is_dir() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    // Retired pmem copies whose mounts are gone.
    for (rec_path, r) in retired(store)? {
        let in_use = r
            .users
            .iter()
            .any(|u| containers.contains(u.as_str()) || snap_users.contains(u));
        if !r.path.exists() {
            let _ = fs::remove_file(&rec_path);
        } else if !in_use {
            tracing::info!(chain = %r.chain_id, "freeing retired pmem copy");
            remove_tree(&r.path)?;
            let _ = fs::remove_file(&rec_path);
        }
    }
    Ok(())
}
