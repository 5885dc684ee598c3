//! Remote-snapshotter pull: nvtier pulls the whole image itself and
//! attaches the committed snapshot of a layer.

use super::{new_id, Busy, Claim, Inner, NvSnapshotter, SResult, SnapError, LABEL_REF};
use crate::error::{Error, IoContext};
use crate::fsutil::write_atomic;
use crate::pull::{pull, PullOptions};
use crate::store::{now_ms, ImageOrigin, SnapshotKind, SnapshotRecord};
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One deduplicated pull: its outcome, shared by every waiting Prepare.
pub(super) type PullCell = Arc<tokio::sync::OnceCell<std::result::Result<(), String>>>;

impl Inner {
    /// Attach an existing nvtier layer (or committed snapshot) for `target`
    /// on top of `parent`. Returns true when containerd can skip the layer.
    pub(super) fn try_attach(
        &self,
        key: &str,
        parent: &str,
        target: &str,
        labels: &BTreeMap<String, String>,
    ) -> SResult<bool> {
        // Read before the table is locked (disk I/O); checked again under
        // the GC lock before the record is written.
        let layer = self.store.layer(target)?;
        let (r, claim) = {
            // Concurrent attaches of one layer on one parent are serialised,
            // so that the second finds the first's committed snapshot.
            let mut snaps = self.lock_idle(|s| {
                s.busy.contains_key(key)
                    || s.busy.contains_key(parent)
                    || s.busy
                        .values()
                        .any(|b| b.parent == parent && b.attach.as_deref() == Some(target))
            });
            if snaps.contains_key(key) {
                return Err(SnapError::AlreadyExists(key.to_string()));
            }
            if snaps.recs.values().any(|r| {
                r.kind == SnapshotKind::Committed
                    && r.parent == parent
                    && r.labels.get(LABEL_REF).map(String::as_str) == Some(target)
            }) {
                return Ok(true);
            }
            let Some(layer) = layer else {
                return Ok(false);
            };
            let parent_layer = if parent.is_empty() {
                None
            } else {
                match snaps.get(parent) {
                    Some(p) if p.kind == SnapshotKind::Committed => p.layer.clone(),
                    Some(_) => {
                        return Err(SnapError::FailedPrecondition(format!(
                            "parent {parent:?} is not a committed snapshot"
                        )))
                    }
                    None => return Err(SnapError::NotFound(parent.to_string())),
                }
            };
            if parent_layer != layer.parent {
                return Ok(false);
            }
            // Name it by the chainID; containerd's own names are
            // `<namespace>/<n>/<name>`, so a bare chainID never collides with
            // them. Another parent (another namespace) gets a suffix.
            let mut name = target.to_string();
            while snaps.contains_key(&name) {
                name = format!("{target}@{}", new_id());
            }
            let now = now_ms();
            let mut l = labels.clone();
            l.retain(|k, _| k == LABEL_REF || !k.starts_with("containerd.io/snapshot/"));
            l.insert(LABEL_REF.into(), target.into());
            let r = SnapshotRecord {
                key: name.clone(),
                id: self.unique_id(&snaps),
                kind: SnapshotKind::Committed,
                parent: parent.to_string(),
                labels: l,
                created_ms: now,
                updated_ms: now,
                tier: layer.tier,
                layer: Some(target.to_string()),
                tiering: None,
            };
            // The committed name is claimed while its record is written
            // without the table's lock (the Prepare's key is not created).
            let busy = Busy {
                parent: parent.to_string(),
                id: r.id.clone(),
                attach: Some(target.to_string()),
            };
            let claim = Claim::new(self, &mut snaps, vec![(name, busy)]);
            (r, claim)
        };
        {
            // The record must exist before GC can run again.
            let _gc = self.store.lock_pull()?;
            if self.store.layer(target)?.is_none() {
                return Ok(false);
            }
            self.save(&r)?;
        }
        let linked = self.ensure_link(&r);
        tracing::info!(key, name = %r.key, layer = target, tier = %r.tier, "layer provided by nvtier; containerd skips it");
        claim.finish(|s| s.recs.insert(r.key.clone(), r));
        linked?;
        Ok(true)
    }
}

impl NvSnapshotter {
    /// Pull `image` once, however many Prepares ask for it concurrently.
    /// `key` is the Prepare's snapshot key (its containerd namespace gets
    /// the content-store writes).
    pub(super) async fn pull_once(
        &self,
        image: &str,
        key: &str,
    ) -> std::result::Result<(), String> {
        let cell = {
            let mut m = self.inner.pulls.lock().await;
            m.entry(image.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
                .clone()
        };
        let store = self.inner.store.clone();
        let this = self.clone();
        let r = cell
            .get_or_init(|| async move {
                let opts = PullOptions {
                    placement: store.cfg.placement,
                    progress: false,
                    auth: crate::pull::Credentials::Node,
                    pin_digest: None,
                    origin: ImageOrigin::Engine,
                    keep_blobs: this.inner.content.is_some(),
                };
                tracing::info!(image, "pulling for containerd (remote snapshot)");
                let r = pull(&store, image, &opts).await;
                crate::server::metrics::metrics().engine_pull(
                    r.is_ok(),
                    r.as_ref().is_ok_and(|rep| rep.profile.as_ref().is_some_and(|p| p.tiered)),
                );
                match r {
                    Ok(mut rep) => {
                        let kept = std::mem::take(&mut rep.kept_blobs);
                        this.feed_content(key, Some(&image.to_string()), None, kept);
                        tracing::info!(image, ldl = ?rep.ldl_index, pmem = rep.pmem_bytes, disk = rep.disk_bytes, ms = rep.stored_done_ms, "pulled");
                        // The last report per image, for `nvtier`/tests:
                        // STATE/pulls/<sha256(image)>.json.
                        let dir = store.state().join("pulls");
                        let path = dir.join(format!(
                            "{}.json",
                            hex::encode(sha2::Sha256::digest(image.as_bytes()))
                        ));
                        let saved = std::fs::create_dir_all(&dir)
                            .ctx("create", &dir)
                            .and_then(|()| {
                                let j = serde_json::to_vec_pretty(&rep)
                                    .map_err(|e| Error::Other(e.to_string()))?;
                                write_atomic(&path, &j)
                            });
                        if let Err(e) = saved {
                            tracing::warn!(error = %e, "saving the pull report");
                        }
                        if let Err(e) = store.clear_fallback(image) {
                            tracing::warn!(error = %e, "removing the fallback record");
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let auth = matches!(e, Error::RegistryAuth { .. });
                        if let Err(re) = store.record_fallback(image, auth, &e.to_string()) {
                            tracing::warn!(error = %re, "saving the fallback record");
                        }
                        Err(e.to_string())
                    }
                }
            })
            .await
            .clone();
        let mut m = self.inner.pulls.lock().await;
        if m.get(image).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(image);
        }
        r
    }

    /// Whether this is the first failed nvtier pull of `image` since the
    /// daemon started (it is logged as a warning once; later ones at debug).
    pub(super) fn first_fallback(&self, image: &str) -> bool {
        match self.inner.fallbacks_logged.lock() {
            Ok(mut s) => s.insert(image.to_string()),
            Err(p) => p.into_inner().insert(image.to_string()),
        }
    }
}
