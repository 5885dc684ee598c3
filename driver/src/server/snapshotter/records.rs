//! Snapshot records and their directories and links: create, update,
//! usage and remove.

use super::{validate_key, validate_labels, Inner, SResult, SnapError};
use crate::error::{Error, IoContext, Result};
use crate::extract::charged_bytes;
use crate::fsutil::atomic::Staged;
use crate::fsutil::{fsync_dir, write_atomic};
use crate::store::{now_ms, SnapshotKind, SnapshotRecord};
use crate::tier::TierKind;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind, Usage};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub(super) fn info_of(r: &SnapshotRecord) -> Info {
    Info {
        kind: match r.kind {
            SnapshotKind::View => Kind::View,
            SnapshotKind::Active => Kind::Active,
            SnapshotKind::Committed => Kind::Committed,
        },
        name: r.key.clone(),
        parent: r.parent.clone(),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at: time_of(r.created_ms),
        updated_at: time_of(r.updated_ms),
    }
}

pub(super) fn new_id() -> String {
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..10)
        .map(|_| A[rand::random::<usize>() % A.len()] as char)
        .collect()
}

/// (entries, regular-file bytes, bytes charged at 4 KiB per file).
pub(super) fn tree_charge(dir: &Path) -> std::io::Result<(u64, u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let (mut n, mut bytes, mut charged) = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            n += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                bytes += m.len();
                charged += charged_bytes(m.len());
            }
        }
    }
    Ok((n, bytes, charged))
}

/// The in-memory snapshot table: the records on disk, plus the keys whose
/// records a call is writing right now.
#[derive(Default)]
pub(crate) struct Snaps {
    pub(super) recs: BTreeMap<String, SnapshotRecord>,
    /// Keys claimed by a call that writes their records outside the lock:
    /// a Prepare/View creating its key, a Commit (its key and the new
    /// name), a Remove, an Update, a remote-snapshot attach (its key and
    /// the committed name). While claimed, a key counts as taken
    /// (AlreadyExists), its id as used (no reuse, and Cleanup keeps its
    /// directory and link), and a key being created counts as a child of its
    /// parent (Remove of the parent waits for it). Writers of a claimed key
    /// wait until it is released, so calls on one key stay serialised as
    /// before; calls on different keys run their disk work concurrently.
    pub(super) busy: BTreeMap<String, Busy>,
}

/// A claimed key: the parent and directory id of the record being written.
pub(crate) struct Busy {
    pub(super) parent: String,
    pub(super) id: String,
    /// For a remote-snapshot attach: the chainID being attached.
    pub(super) attach: Option<String>,
}

impl Snaps {
    pub(super) fn get(&self, key: &str) -> Option<&SnapshotRecord> {
        self.recs.get(key)
    }
    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.recs.contains_key(key) || self.busy.contains_key(key)
    }
    /// A record or a claimed key (being created) has `key` as its parent.
    pub(super) fn has_child(&self, key: &str) -> Option<&str> {
        self.recs
            .values()
            .find(|c| c.parent == key)
            .map(|c| c.key.as_str())
            .or_else(|| {
                self.busy
                    .iter()
                    .find(|(_, b)| b.parent == key)
                    .map(|(k, _)| k.as_str())
            })
    }
    pub(super) fn ids(&self) -> impl Iterator<Item = &str> {
        self.recs
            .values()
            .map(|r| r.id.as_str())
            .chain(self.busy.values().map(|b| b.id.as_str()))
    }
    /// The records of `parent` and its ancestors (what mounts need), cloned
    /// so that mounts are built without the lock. Stops at a missing
    /// record or after 4097 (a cycle; `lowers` reports it).
    pub(super) fn chain(&self, parent: &str) -> BTreeMap<String, SnapshotRecord> {
        let mut m = BTreeMap::new();
        let mut p = parent;
        while let Some(r) = self.recs.get(p) {
            if m.insert(p.to_string(), r.clone()).is_some() || m.len() > 4097 {
                break;
            }
            p = &r.parent;
        }
        m
    }
}

/// Keys claimed in [`Snaps::busy`]; released (unchanged records) on drop,
/// or with the table's update by [`Claim::finish`].
pub(crate) struct Claim<'a> {
    inner: &'a Inner,
    keys: Vec<String>,
}

impl<'a> Claim<'a> {
    /// Claim `claims` (key, busy entry) in `s`, the locked table.
    pub(super) fn new(inner: &'a Inner, s: &mut Snaps, claims: Vec<(String, Busy)>) -> Claim<'a> {
        let keys = claims.iter().map(|(k, _)| k.clone()).collect();
        s.busy.extend(claims);
        Claim { inner, keys }
    }
    /// Apply `f` to the table and release the keys, in one step.
    pub(super) fn finish<T>(mut self, f: impl FnOnce(&mut Snaps) -> T) -> T {
        let inner = self.inner;
        let mut s = inner.lock();
        let out = f(&mut s);
        self.release(&mut s);
        drop(s);
        inner.idle.notify_all();
        out
    }
    fn release(&mut self, s: &mut Snaps) {
        for k in self.keys.drain(..) {
            s.busy.remove(&k);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let inner = self.inner;
        let mut s = inner.lock();
        self.release(&mut s);
        drop(s);
        inner.idle.notify_all();
    }
}

impl Inner {
    /// The table, for in-memory work only (see [`Inner`]).
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Snaps> {
        self.snaps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table, once `busy` (a test on the claimed keys) is false.
    pub(super) fn lock_idle(
        &self,
        busy: impl Fn(&Snaps) -> bool,
    ) -> std::sync::MutexGuard<'_, Snaps> {
        self.idle
            .wait_while(self.lock(), |s| busy(s))
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn snap_dir(&self, r: &SnapshotRecord) -> PathBuf {
        self.store.tier(r.tier).root.join("snapshots").join(&r.id)
    }

    /// The directory holding a snapshot's own files.
    pub(super) fn content_dir(&self, r: &SnapshotRecord) -> Result<PathBuf> {
        match &r.layer {
            Some(c) => {
                let m = self.store.layer(c)?.ok_or_else(|| {
                    Error::Other(format!(
                        "snapshot {:?}: layer {c} is missing from the store",
                        r.key
                    ))
                })?;
                self.store.layer_dir(&m)
            }
            None => Ok(self.snap_dir(r).join("fs")),
        }
    }

    pub(super) fn link_path(&self, r: &SnapshotRecord) -> PathBuf {
        self.store.links_dir().join(&r.id)
    }

    /// Point `STATE/l/<id>` at the committed snapshot's directory.
    /// `Err(Damaged)` when a snapshot's content was lost from its tier
    /// (or is on the missing pmem tier): mounting it would fail with a raw
    /// overlay error.
    pub(super) fn check_content(&self, r: &SnapshotRecord) -> Result<()> {
        if let Some(c) = &r.layer {
            if let Some(m) = self.store.layer(c)? {
                return self.store.check_layer(&m);
            }
        }
        let dir = self.content_dir(r)?;
        if dir.is_dir() && (r.tier != TierKind::Pmem || self.store.pmem_available()) {
            return Ok(());
        }
        let image = r
            .labels
            .get(super::LABEL_CRI_IMAGE_REF)
            .cloned()
            .unwrap_or_else(|| format!("of snapshot {:?}", r.key));
        Err(Error::Damaged {
            image,
            what: format!(
                "snapshot {:?} was lost from the {} tier ({}); remove the image in the engine \
                 (`ctr image rm`, `docker rmi`) and pull it again",
                r.key,
                r.tier,
                dir.display()
            ),
        })
    }

    pub(super) fn ensure_link(&self, r: &SnapshotRecord) -> Result<PathBuf> {
        self.check_content(r)?;
        let link = self.link_path(r);
        let target = self.content_dir(r)?;
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            return Ok(link);
        }
        let tmp = self
            .store
            .links_dir()
            .join(format!(".{}.{}", r.id, rand::random::<u32>()));
        std::os::unix::fs::symlink(&target, &tmp).ctx("create link", &tmp)?;
        fs::rename(&tmp, &link).ctx("publish link", &link)?;
        Ok(link)
    }

    pub(super) fn save(&self, r: &SnapshotRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(r).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&self.store.snapshot_path(&r.key), &json)
    }

    /// [`Inner::save`] up to the rename (see [`Staged`]).
    pub(super) fn stage(&self, r: &SnapshotRecord) -> Result<Staged> {
        let json = serde_json::to_vec_pretty(r).map_err(|e| Error::Other(e.to_string()))?;
        Staged::write(&self.store.snapshot_path(&r.key), &json)
    }

    pub(super) fn delete_record(&self, key: &str) -> Result<()> {
        let p = self.store.snapshot_path(key);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove snapshot record", &p),
        }
        fsync_dir(&self.store.snapshots_dir())
    }

    pub(super) fn unique_id(&self, snaps: &Snaps) -> String {
        loop {
            let id = new_id();
            if !snaps.ids().any(|i| i == id) && !self.store.links_dir().join(&id).exists() {
                return id;
            }
        }
    }

    pub(super) fn create(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: SnapshotKind,
        tier: TierKind,
    ) -> SResult<Vec<Mount>> {
        let (mut r, chain, claim) = {
            let mut snaps =
                self.lock_idle(|s| s.busy.contains_key(key) || s.busy.contains_key(parent));
            if snaps.contains_key(key) {
                return Err(SnapError::AlreadyExists(key.to_string()));
            }
            if !parent.is_empty() {
                let p = snaps
                    .get(parent)
                    .ok_or_else(|| SnapError::NotFound(parent.to_string()))?;
                if p.kind != SnapshotKind::Committed {
                    return Err(SnapError::FailedPrecondition(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
            }
            let now = now_ms();
            let r = SnapshotRecord {
                key: key.to_string(),
                id: self.unique_id(&snaps),
                kind,
                parent: parent.to_string(),
                labels,
                created_ms: now,
                updated_ms: now,
                tier,
                layer: None,
                tiering: None,
            };
            // The parent chain cannot change while the key is claimed: its
            // records are committed (immutable but for labels) and cannot be
            // removed while they have a child.
            let chain = snaps.chain(parent);
            let busy = Busy {
                parent: parent.to_string(),
                id: r.id.clone(),
                attach: None,
            };
            let claim = Claim::new(self, &mut snaps, vec![(key.to_string(), busy)]);
            (r, chain, claim)
        };
        let d = self.snap_dir(&r);
        let mut started = None;
        let mut mk = || -> Result<()> {
            // The directories need no lock: the claim keeps Cleanup away from
            // them, and a crash leaves an orphan that start-up removes.
            fs::create_dir_all(d.join("fs")).ctx("create snapshot dir", d.join("fs"))?;
            if kind == SnapshotKind::Active {
                fs::create_dir_all(d.join("work")).ctx("create snapshot dir", d.join("work"))?;
            }
            if kind != SnapshotKind::Active || parent.is_empty() {
                return self.save(&r);
            }
            // The tiered mount is planned without the store lock (it reads
            // the image's records), and the record written and synced; then,
            // under the store lock, what the plan names is checked to still
            // exist and the record is renamed into place. So, as if it had
            // all run under the lock, the record is visible before the lock
            // is released (and durable before Prepare returns):
            // - tiered mounts: a concurrent migration's GC
            //   (`gc_hot_locked`) sees the generations and metadata layer
            //   this snapshot uses before it frees any;
            // - a pmem layer's retirement (`retire_pmem_copy`) either lists
            //   this snapshot among the users of the retired copy, or has
            //   re-pointed the parents' links to the disk copy before the
            //   mounts below are built.
            let tiering = |started: &mut Option<String>| match self
                .tiering_for(&chain, parent, started)
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(key, error = %e, "tiered mount not possible; mounting whole layers");
                    None
                }
            };
            r.tiering = tiering(&mut started);
            let staged = self.stage(&r)?;
            {
                let _store = self.store.lock_store()?;
                let present = match &r.tiering {
                    Some(t) => self.tiering_present(t)?,
                    None => true,
                };
                if present {
                    staged.publish()?;
                } else {
                    // A migration replaced and freed what was planned: plan
                    // again, under the lock.
                    drop(staged);
                    r.tiering = tiering(&mut None);
                    self.stage(&r)?.publish()?;
                }
            }
            fsync_dir(&self.store.snapshots_dir())
        };
        if let Err(e) = mk() {
            if fs::remove_dir_all(&d).is_err() && r.tier == crate::tier::TierKind::Disk {
                self.disk_scan
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            return Err(e.into());
        }
        // The record is on disk: keep memory in step even if building the
        // mounts fails (containerd can ask again with Mounts, or Remove).
        claim.finish(|s| s.recs.insert(key.to_string(), r.clone()));
        if let Some(manifest) = started {
            // The start count only feeds the migration planner's heat
            // ranking: it is written off the Prepare's path.
            let store = self.store.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(move || crate::store::hot::note_start(&store, &manifest));
                }
                Err(_) => crate::store::hot::note_start(&store, &manifest),
            }
        }
        self.mounts_of(&chain, &r)
    }

    pub(super) fn remove(&self, key: &str) -> SResult<()> {
        let (r, claim) = {
            // A key being created on top of `key` is a child: wait for it.
            let mut snaps = self.lock_idle(|s| {
                s.busy.contains_key(key) || s.busy.values().any(|b| b.parent == key)
            });
            let r = snaps
                .get(key)
                .cloned()
                .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
            if let Some(child) = snaps.has_child(key) {
                return Err(SnapError::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: it has children (e.g. {child:?})"
                )));
            }
            let busy = Busy {
                parent: r.parent.clone(),
                id: r.id.clone(),
                attach: None,
            };
            let claim = Claim::new(self, &mut snaps, vec![(key.to_string(), busy)]);
            (r, claim)
        };
        self.delete_record(key)?;
        let _ = fs::remove_file(self.link_path(&r));
        // The directory goes while the key is still claimed, so that a
        // concurrent Cleanup does not take it for an orphan half-way.
        // The disk tier's snapshots directory is scanned for orphans only
        // after a failure (and once at start): a scan after every removal
        // reads the HDD while the node is cold-starting others.
        let d = self.snap_dir(&r);
        let removed = match r.layer {
            Some(_) => Ok(()),
            None => match fs::remove_dir_all(&d) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => {
                    if r.tier == crate::tier::TierKind::Disk {
                        self.disk_scan
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(Error::Io {
                        what: "remove snapshot dir",
                        path: d,
                        source: e,
                    })
                }
            },
        };
        claim.finish(|s| s.recs.remove(key));
        removed?;
        if let Some(layer) = r.layer.as_deref() {
            if r.kind == SnapshotKind::Committed {
                self.release_engine_images(layer);
            }
            let g = self.store.gc()?;
            if !g.removed.is_empty() {
                tracing::info!(layers = g.removed.len(), "freed layers no longer used");
            }
        } else if r.kind != SnapshotKind::Committed {
            // The last container on a retired pmem copy or an old hot
            // generation may just have gone: free what nobody uses now.
            if let Err(e) = self.store.gc() {
                tracing::warn!(error = %e, "garbage collection after removing a snapshot");
            }
        }
        Ok(())
    }

    /// containerd removed a committed snapshot of `layer`. When no snapshot
    /// is backed by it any more (nor is being attached to it), the engine
    /// no longer has any image whose top layer it is: the records of the
    /// images nvtier pulled for an engine with that top layer go, and the
    /// caller's GC frees what nothing else references. A running
    /// container's snapshot keeps its parents (containerd does not remove
    /// a snapshot with children), and with them the image.
    fn release_engine_images(&self, layer: &str) {
        {
            let s = self.lock();
            if s.recs.values().any(|r| r.layer.as_deref() == Some(layer))
                || s.busy.values().any(|b| b.attach.as_deref() == Some(layer))
            {
                return;
            }
        }
        match self.store.remove_engine_images_on(layer) {
            Ok(names) => {
                for image in names {
                    tracing::info!(%image, layer, "the engine removed the image; its nvtier record goes too");
                }
            }
            Err(e) => {
                tracing::warn!(layer, error = %e, "removing the records of images the engine removed")
            }
        }
    }

    /// At start-up: the records of engine images whose top layer backs no
    /// snapshot. The engine removed them while `nvtier serve` was down, or
    /// `serve` died between removing the last top snapshot and the image
    /// record, or between a pull and its attach (the engine's retry pulls
    /// again). They go, and GC frees what nothing else references.
    pub(super) fn sweep_engine_images(&self) {
        let images = match self.store.images() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "listing images for the start-up sweep");
                return;
            }
        };
        // Records of images the graph driver plugin's layers hold.
        let graph_refs = match self.store.graph_driver_refs() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "listing graph driver layers for the start-up sweep");
                return;
            }
        };
        let mut removed = 0;
        for i in images {
            if i.origin != crate::store::ImageOrigin::Engine {
                continue;
            }
            let Some(top) = i.chain_ids.last() else {
                continue;
            };
            let backed = self
                .lock()
                .recs
                .values()
                .any(|r| r.layer.as_deref() == Some(top.as_str()))
                || graph_refs.contains(top);
            if backed {
                continue;
            }
            match self.store.remove_engine_images_on(top) {
                Ok(names) => {
                    for image in names {
                        removed += 1;
                        tracing::info!(%image, "no containerd snapshot uses this engine image any more; its nvtier record goes");
                    }
                }
                Err(e) => {
                    tracing::warn!(image = %i.name, error = %e, "start-up sweep of engine images")
                }
            }
        }
        if removed > 0 {
            match self.store.gc() {
                Ok(g) => tracing::info!(
                    images = removed,
                    layers = g.removed.len(),
                    "start-up sweep freed engine images"
                ),
                Err(e) => tracing::warn!(error = %e, "garbage collection after the start-up sweep"),
            }
        }
    }

    pub(super) fn update(&self, info: Info, paths: Option<Vec<String>>) -> SResult<Info> {
        validate_key("name", &info.name)?;
        validate_labels(info.labels.iter())?;
        let (r, claim) = {
            let mut snaps = self.lock_idle(|s| s.busy.contains_key(&info.name));
            let r = snaps
                .get(&info.name)
                .cloned()
                .ok_or_else(|| SnapError::NotFound(info.name.clone()))?;
            let busy = Busy {
                parent: r.parent.clone(),
                id: r.id.clone(),
                attach: None,
            };
            let claim = Claim::new(self, &mut snaps, vec![(info.name.clone(), busy)]);
            (r, claim)
        };
        let mut labels = r.labels.clone();
        let paths = paths.unwrap_or_default();
        if paths.is_empty() {
            labels = info.labels.into_iter().collect();
        } else {
            for p in &paths {
                if p == "labels" {
                    labels = info.labels.clone().into_iter().collect();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match info.labels.get(k) {
                        Some(v) => {
                            labels.insert(k.to_string(), v.clone());
                        }
                        None => {
                            labels.remove(k);
                        }
                    }
                } else {
                    return Err(SnapError::InvalidArgument(format!(
                        "cannot update field {p:?} of a snapshot (only labels)"
                    )));
                }
            }
        }
        validate_labels(labels.iter())?;
        let mut nr = r.clone();
        nr.labels = labels;
        nr.updated_ms = now_ms();
        self.save(&nr)?;
        let out = info_of(&nr);
        claim.finish(|s| s.recs.insert(nr.key.clone(), nr));
        Ok(out)
    }

    pub(super) fn usage(&self, key: &str) -> SResult<Usage> {
        let r = self
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
        if let Some(c) = &r.layer {
            if let Some(m) = self.store.layer(c)? {
                return Ok(Usage {
                    inodes: m.file_count as i64,
                    size: m.charged_bytes as i64,
                });
            }
        }
        let dir = self.content_dir(&r)?;
        let (n, _, charged) = tree_charge(&dir).ctx("measure", &dir)?;
        Ok(Usage {
            inodes: n as i64,
            size: charged as i64,
        })
    }
}
