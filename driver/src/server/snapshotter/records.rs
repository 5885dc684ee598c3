//! Snapshot records and their directories and links: create, update,
//! usage and remove.

use super::{validate_key, validate_labels, Inner, SResult, SnapError};
use crate::error::{Error, IoContext, Result};
use crate::extract::charged_bytes;
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

impl Inner {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SnapshotRecord>> {
        self.snaps.lock().unwrap_or_else(|p| p.into_inner())
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

    pub(super) fn delete_record(&self, key: &str) -> Result<()> {
        let p = self.store.snapshot_path(key);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove snapshot record", &p),
        }
        fsync_dir(&self.store.snapshots_dir())
    }

    pub(super) fn unique_id(&self, snaps: &BTreeMap<String, SnapshotRecord>) -> String {
        loop {
            let id = new_id();
            if !snaps.values().any(|r| r.id == id) && !self.store.links_dir().join(&id).exists() {
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
        let mut snaps = self.lock();
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
        let mut r = SnapshotRecord {
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
        // Tiered mounts: decided and recorded under the store lock, so that
        // a concurrent migration's GC sees the generations this snapshot
        // uses before it frees any.
        let _store_lock = if kind == SnapshotKind::Active && !parent.is_empty() {
            let l = self.store.lock_store()?;
            match self.tiering_for(&snaps, parent) {
                Ok(t) => r.tiering = t,
                Err(e) => {
                    tracing::warn!(key, error = %e, "tiered mount not possible; mounting whole layers")
                }
            }
            Some(l)
        } else {
            None
        };
        let d = self.snap_dir(&r);
        let mk = || -> Result<()> {
            fs::create_dir_all(d.join("fs")).ctx("create snapshot dir", d.join("fs"))?;
            if kind == SnapshotKind::Active {
                fs::create_dir_all(d.join("work")).ctx("create snapshot dir", d.join("work"))?;
            }
            self.save(&r)
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
        snaps.insert(key.to_string(), r.clone());
        self.mounts_of(&snaps, &r)
    }

    pub(super) fn remove(&self, key: &str) -> SResult<()> {
        let mut snaps = self.lock();
        let r = snaps
            .get(key)
            .cloned()
            .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
        if let Some(child) = snaps.values().find(|c| c.parent == key) {
            return Err(SnapError::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: it has children (e.g. {:?})",
                child.key
            )));
        }
        self.delete_record(key)?;
        snaps.remove(key);
        let _ = fs::remove_file(self.link_path(&r));
        if r.layer.is_some() {
            drop(snaps);
            let g = self.store.gc()?;
            if !g.removed.is_empty() {
                tracing::info!(layers = g.removed.len(), "freed layers no longer used");
            }
        } else {
            // The disk tier's snapshots directory is scanned for orphans
            // only after a failure (and once at start): a scan after every
            // removal reads the HDD while the node is cold-starting others.
            let d = self.snap_dir(&r);
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    if r.tier == crate::tier::TierKind::Disk {
                        self.disk_scan
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    return Err(Error::Io {
                        what: "remove snapshot dir",
                        path: d,
                        source: e,
                    }
                    .into());
                }
            }
            // The last container on a retired pmem copy or an old hot
            // generation may just have gone: free what nobody uses now.
            if r.kind != SnapshotKind::Committed {
                drop(snaps);
                if let Err(e) = self.store.gc() {
                    tracing::warn!(error = %e, "garbage collection after removing a snapshot");
                }
            }
        }
        Ok(())
    }

    pub(super) fn update(&self, info: Info, paths: Option<Vec<String>>) -> SResult<Info> {
        validate_key("name", &info.name)?;
        validate_labels(info.labels.iter())?;
        let mut snaps = self.lock();
        let r = snaps
            .get_mut(&info.name)
            .ok_or_else(|| SnapError::NotFound(info.name.clone()))?;
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
        *r = nr.clone();
        Ok(info_of(&nr))
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
