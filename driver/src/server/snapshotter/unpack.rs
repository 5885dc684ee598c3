//! Unpacked image layers: the tier a layer is unpacked to (LASS on the
//! engine's unpack path), and its publication as a store layer at Commit.

use super::{tree_charge, Busy, Claim, Inner, SResult, SnapError, LABEL_REF};
use crate::error::{Error, IoContext, Result};
use crate::store::{digest_hex, now_ms, LayerMeta, SnapshotKind, SnapshotRecord};
use crate::tier::TierKind;
use nvtier_policy::unpack::{decide_unpack, UnpackMoment, INGEST_FRESH_MS};
use std::collections::BTreeMap;
use std::fs;
use std::time::SystemTime;

/// The chainID an unpack snapshot is for: the `containerd.io/snapshot.ref`
/// label (set by containerd's pull-time unpacker), or containerd's unpack key
/// format `[<ns>/<n>/]extract-<unique> <chainID>` (used by `ctr`'s separate
/// unpack, which sets no label). `None` for any other snapshot.
pub fn unpack_chain(key: &str, labels: &BTreeMap<String, String>) -> Option<String> {
    if let Some(t) = labels.get(LABEL_REF).filter(|t| digest_hex(t).is_ok()) {
        return Some(t.clone());
    }
    let mut parts = key.splitn(3, '/');
    let (a, b, c) = (parts.next(), parts.next(), parts.next());
    let last = match (a, b, c) {
        (Some(_), Some(n), Some(rest)) if n.bytes().all(|x| x.is_ascii_digit()) => rest,
        _ => key,
    };
    let (head, chain) = last.rsplit_once(' ')?;
    (head.starts_with("extract-") && digest_hex(chain).is_ok()).then(|| chain.to_string())
}

impl Inner {
    pub(super) fn ingest_ages(&self) -> Option<Vec<u64>> {
        let rd = fs::read_dir(&self.ingest_dir).ok()?;
        let now = SystemTime::now();
        Some(
            rd.flatten()
                .filter_map(|e| {
                    let m = fs::metadata(e.path().join("data"))
                        .or_else(|_| e.metadata())
                        .ok()?;
                    let t = m.modified().ok()?;
                    Some(now.duration_since(t).unwrap_or_default().as_millis() as u64)
                })
                .collect(),
        )
    }

    /// The LASS-approximation tier of an unpack starting now.
    pub(super) fn unpack_tier(&self) -> Result<TierKind> {
        let ages = self.ingest_ages();
        if ages.is_none() {
            tracing::warn!(dir = %self.ingest_dir.display(), "cannot read containerd's ingest directory (key `containerd_root`); unpacked layers go to disk");
        }
        let free = self
            .store
            .cfg
            .pmem_budget
            .saturating_sub(self.store.pmem_used()?);
        let d = decide_unpack(
            self.store.cfg.placement,
            &UnpackMoment {
                ingest_ages_ms: ages.clone(),
                pmem_free: free,
            },
            INGEST_FRESH_MS,
        );
        tracing::info!(tier = %d.tier(), ingests = ?ages, "unpack begins");
        Ok(d.tier())
    }

    pub(super) fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> SResult<()> {
        let (r, chain, parent_layer, mut c, claim) = {
            let mut snaps =
                self.lock_idle(|s| s.busy.contains_key(key) || s.busy.contains_key(name));
            let r = snaps
                .get(key)
                .cloned()
                .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
            if r.kind != SnapshotKind::Active {
                return Err(SnapError::FailedPrecondition(format!(
                    "snapshot {key:?} is not active; only active snapshots can be committed"
                )));
            }
            if snaps.contains_key(name) {
                return Err(SnapError::AlreadyExists(name.to_string()));
            }
            let chain = labels
                .get(LABEL_REF)
                .filter(|c| digest_hex(c).is_ok())
                .cloned()
                .or_else(|| unpack_chain(key, &r.labels));
            let parent_layer = match snaps.get(&r.parent) {
                Some(p) => p.layer.clone().map(Some),
                None => Some(None),
            };
            let now = now_ms();
            let mut c = SnapshotRecord {
                key: name.to_string(),
                kind: SnapshotKind::Committed,
                labels,
                updated_ms: now,
                created_ms: now,
                // Committed snapshots mount whole layers.
                tiering: None,
                ..r.clone()
            };
            if chain.is_some() && parent_layer.is_some() {
                // A fresh id: if we crash between the two record writes
                // below, the stale active record shares nothing (link,
                // directory) with the committed one.
                c.id = self.unique_id(&snaps);
            }
            // Both keys are claimed while the layer is published and the
            // records are written, without the table's lock.
            let claims = vec![
                (
                    key.to_string(),
                    Busy {
                        parent: r.parent.clone(),
                        id: r.id.clone(),
                        attach: None,
                    },
                ),
                (
                    name.to_string(),
                    Busy {
                        parent: r.parent.clone(),
                        id: c.id.clone(),
                        attach: None,
                    },
                ),
            ];
            let claim = Claim::new(self, &mut snaps, claims);
            (r, chain, parent_layer, c, claim)
        };
        let d = self.snap_dir(&r);
        match (chain, parent_layer) {
            (Some(chain), Some(parent_layer)) => {
                let _gc = self.store.lock_pull()?;
                let _cl = self.store.lock_chain(&chain)?;
                match self.store.layer(&chain)? {
                    Some(m) => {
                        tracing::info!(layer = %chain, "layer already in the store; dropping the unpacked copy");
                        c.tier = m.tier;
                    }
                    None => {
                        let m = self.publish_layer(&r, &chain, parent_layer)?;
                        c.tier = m.tier;
                    }
                }
                c.layer = Some(chain);
                // Referenced from here on (we still hold the GC lock).
                self.save(&c)?;
                self.delete_record(key)?;
                let _ = fs::remove_dir_all(&d);
            }
            _ => {
                self.save(&c)?;
                self.delete_record(key)?;
                let _ = fs::remove_dir_all(d.join("work"));
            }
        }
        let linked = self.ensure_link(&c);
        claim.finish(|s| {
            s.recs.remove(key);
            s.recs.insert(name.to_string(), c);
        });
        linked?;
        Ok(())
    }

    /// Move an active snapshot's upper dir into the store as layer `chain`.
    /// The caller holds the chain lock and the shared GC lock.
    pub(super) fn publish_layer(
        &self,
        r: &SnapshotRecord,
        chain: &str,
        parent: Option<String>,
    ) -> Result<LayerMeta> {
        let d = self.snap_dir(r);
        let upper = d.join("fs");
        let (files, file_bytes, charged) = tree_charge(&upper).ctx("measure", &upper)?;
        let mut meta = LayerMeta {
            chain_id: chain.to_string(),
            // containerd does not tell the snapshotter the diffID; for a
            // base layer it equals the chainID.
            diff_id: if parent.is_none() {
                chain.to_string()
            } else {
                String::new()
            },
            blob_digest: None,
            media_type: None,
            parent,
            tier: r.tier,
            compressed_bytes: 0,
            uncompressed_bytes: 0,
            file_bytes,
            charged_bytes: charged,
            file_count: files,
            created_ms: now_ms(),
            store_ms: now_ms().saturating_sub(r.created_ms),
        };
        if r.tier == TierKind::Pmem {
            let mut res = self.store.reserve();
            match res.charge(charged) {
                Ok(()) => {
                    self.store.commit_layer(&upper, &meta, Some(res))?;
                    return Ok(meta);
                }
                Err(Error::BudgetExhausted(why)) => {
                    drop(res);
                    tracing::warn!(layer = %chain, %why, "pmem budget cannot hold the unpacked layer; moving it to disk");
                    let staging = self.store.new_staging(TierKind::Disk, chain)?;
                    let out = std::process::Command::new("cp")
                        .arg("-a")
                        .arg(format!("{}/.", upper.display()))
                        .arg(&staging)
                        .output()
                        .ctx("run cp", &staging)?;
                    if !out.status.success() {
                        let _ = fs::remove_dir_all(&staging);
                        return Err(Error::Other(format!(
                            "copying layer {chain} to disk: {}",
                            String::from_utf8_lossy(&out.stderr)
                        )));
                    }
                    meta.tier = TierKind::Disk;
                    self.store.commit_layer(&staging, &meta, None)?;
                    return Ok(meta);
                }
                Err(e) => return Err(e),
            }
        }
        self.store.commit_layer(&upper, &meta, None)?;
        Ok(meta)
    }
}
