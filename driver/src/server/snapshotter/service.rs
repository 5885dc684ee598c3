//! The gRPC service: `NvSnapshotter` and its `Snapshotter` implementation.

use super::{
    filter_matches, info_of, unpack_chain, validate_key, validate_labels, Inner, NvSnapshotter,
    SResult, SnapError, Snaps, LABEL_CRI_IMAGE_REF, LABEL_CRI_MANIFEST_DIGEST, LABEL_REF,
};
use crate::error::{Error, IoContext, Result};
use crate::pull::KeptBlob;
use crate::server::content::{namespace_of_key, remove_kept_blobs, ContentFeeder, Job};
use crate::store::{SnapshotKind, SnapshotRecord, Store};
use crate::tier::TierKind;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Snapshotter, Usage};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// The target of the per-call latency events: `NVTIER_LOG=info,nvtier::latency=debug`
/// turns them on (see docs/engines.md).
pub const LATENCY_TARGET: &str = "nvtier::latency";

/// One `debug` event per snapshotter call: the method, its wall time in
/// microseconds and whether it succeeded. Off by default, and then costs
/// one cached filter check per call.
fn timed<T>(method: &'static str, start: Instant, r: SResult<T>) -> SResult<T> {
    tracing::debug!(
        target: LATENCY_TARGET,
        method,
        us = start.elapsed().as_micros() as u64,
        ok = r.is_ok(),
        "snapshotter call"
    );
    r
}

impl NvSnapshotter {
    /// Load the snapshot records and re-create their links.
    pub fn open(store: Store) -> Result<NvSnapshotter> {
        let pmem_ok = store.pmem_available();
        for t in [&store.pmem, &store.disk] {
            if t.kind == crate::tier::TierKind::Pmem && !pmem_ok {
                continue;
            }
            let d = t.root.join("snapshots");
            fs::create_dir_all(&d).ctx("create", &d)?;
        }
        let mut snaps = Snaps::default();
        for r in store.snapshots()? {
            snaps.recs.insert(r.key.clone(), r);
        }
        let ingest_dir = store
            .cfg
            .containerd_root
            .join("io.containerd.content.v1.content/ingest");
        let content = if store.cfg.content_store_blobs {
            Some(ContentFeeder::new(store.clone()))
        } else {
            remove_kept_blobs(&store);
            None
        };
        let inner = Arc::new(Inner {
            content,
            store,
            snaps: Mutex::new(snaps),
            idle: Condvar::new(),
            pulls: tokio::sync::Mutex::new(HashMap::new()),
            fallbacks_logged: std::sync::Mutex::new(Default::default()),
            ingest_dir,
            disk_scan: std::sync::atomic::AtomicBool::new(true),
        });
        let recs: Vec<SnapshotRecord> = inner.lock().recs.values().cloned().collect();
        for r in &recs {
            if r.kind == SnapshotKind::Committed {
                if let Err(e) = inner.ensure_link(r) {
                    tracing::warn!(key = %r.key, error = %e, "snapshot link");
                }
            }
        }
        // Orphans of a crash are removed now, while the node starts, so
        // that no later Cleanup has to read the disk tier.
        if let Err(e) = inner.cleanup() {
            tracing::warn!(error = %e, "removing orphaned snapshot directories at start");
        }
        inner.sweep_engine_images();
        tracing::info!(snapshots = recs.len(), "snapshotter state loaded");
        Ok(NvSnapshotter { inner })
    }

    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> SResult<T> + Send + 'static,
    ) -> SResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| SnapError::Store(Error::Other(format!("snapshotter task: {e}"))))?
    }

    pub(super) async fn prepare_or_view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
        kind: SnapshotKind,
    ) -> SResult<Vec<Mount>> {
        validate_key("key", &key)?;
        if !parent.is_empty() {
            validate_key("parent", &parent)?;
        }
        validate_labels(labels.iter())?;
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        let target = unpack_chain(&key, &labels);
        // A container's writable layer goes to `upper_tier`; an unpack's
        // tier is decided below.
        let mut tier = if target.is_none() {
            self.inner.store.upper_tier()
        } else {
            TierKind::Disk
        };
        if let (Some(target), SnapshotKind::Active) = (target, kind) {
            let labelled = labels.contains_key(LABEL_REF);
            let (k, p, t, l) = (key.clone(), parent.clone(), target.clone(), labels.clone());
            let image = labels.get(LABEL_CRI_IMAGE_REF).filter(|_| labelled);
            let manifest = labels.get(LABEL_CRI_MANIFEST_DIGEST);
            // Only a labelled Prepare may be answered with AlreadyExists:
            // that is containerd's remote-snapshot protocol.
            if labelled && self.blocking(move |i| i.try_attach(&k, &p, &t, &l)).await? {
                self.feed_content(&key, image, manifest, Vec::new());
                return Err(SnapError::AlreadyExists(key));
            }
            if let Some(image) = image {
                match self.pull_once(image, &key).await {
                    Ok(()) => {
                        let (k, p, t, l) =
                            (key.clone(), parent.clone(), target.clone(), labels.clone());
                        if self.blocking(move |i| i.try_attach(&k, &p, &t, &l)).await? {
                            self.feed_content(&key, Some(image), manifest, Vec::new());
                            return Err(SnapError::AlreadyExists(key));
                        }
                        tracing::warn!(image = %image, layer = %target, "pulled image does not provide this layer; containerd unpacks it");
                    }
                    Err(e) if self.first_fallback(image) => {
                        tracing::warn!(image = %image, error = %e, "nvtier could not pull the image; containerd fetches and unpacks it itself, without LASS (shown in `nvtier status` until nvtier pulls it)");
                    }
                    Err(e) => {
                        tracing::debug!(image = %image, error = %e, "nvtier pull failed again; containerd unpacks the layer");
                    }
                }
            }
            tier = self.blocking(|i| Ok(i.unpack_tier()?)).await?;
        }
        self.blocking(move |i| i.create(&key, &parent, labels, kind, tier))
            .await
    }

    /// Queue the content-store writes of `image` (with manifest digest
    /// `manifest`, when the engine gave it) in the namespace of the
    /// snapshot `key` (when `content_store_blobs` is on); `kept` are blob
    /// files the pull kept (removed here when nothing will write them).
    pub(super) fn feed_content(
        &self,
        key: &str,
        image: Option<&String>,
        manifest: Option<&String>,
        kept: Vec<KeptBlob>,
    ) {
        let ns = namespace_of_key(key);
        match (&self.inner.content, image, ns) {
            (Some(c), Some(image), Some(ns)) => c.submit(Job {
                namespace: ns.to_string(),
                image: image.clone(),
                manifest_digest: manifest.cloned(),
                kept,
            }),
            _ => {
                for k in kept {
                    let _ = fs::remove_file(&k.path);
                }
            }
        }
    }

    /// The grpc service.
    pub fn service(
        &self,
    ) -> containerd_snapshots::api::snapshots::v1::snapshots_server::SnapshotsServer<
        impl containerd_snapshots::api::snapshots::v1::snapshots_server::Snapshots,
    > {
        containerd_snapshots::server(Arc::new(self.clone()))
    }
}

#[tonic::async_trait]
impl Snapshotter for NvSnapshotter {
    type Error = SnapError;

    async fn stat(&self, key: String) -> SResult<Info> {
        let t = Instant::now();
        // On the async worker: the table's lock is only ever held for
        // in-memory work (see `Inner`).
        let r = validate_key("key", &key).and_then(|()| {
            self.inner
                .lock()
                .get(&key)
                .map(info_of)
                .ok_or(SnapError::NotFound(key))
        });
        timed("stat", t, r)
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> SResult<Info> {
        let t = Instant::now();
        let r = self.blocking(move |i| i.update(info, fieldpaths)).await;
        timed("update", t, r)
    }

    async fn usage(&self, key: String) -> SResult<Usage> {
        let t = Instant::now();
        let r = match validate_key("key", &key) {
            Ok(()) => self.blocking(move |i| i.usage(&key)).await,
            Err(e) => Err(e),
        };
        timed("usage", t, r)
    }

    async fn mounts(&self, key: String) -> SResult<Vec<Mount>> {
        let t = Instant::now();
        let r = match validate_key("key", &key) {
            Ok(()) => {
                self.blocking(move |i| {
                    // The record and its parent chain are copied out, and the
                    // mounts built without the table's lock: Mounts of an
                    // existing snapshot never waits behind a writer.
                    let (r, chain) = {
                        let snaps = i.lock();
                        let r = snaps
                            .get(&key)
                            .cloned()
                            .ok_or_else(|| SnapError::NotFound(key.clone()))?;
                        let chain = snaps.chain(&r.parent);
                        (r, chain)
                    };
                    i.mounts_of(&chain, &r)
                })
                .await
            }
            Err(e) => Err(e),
        };
        timed("mounts", t, r)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> SResult<Vec<Mount>> {
        let t = Instant::now();
        let r = self
            .prepare_or_view(key, parent, labels, SnapshotKind::Active)
            .await;
        timed("prepare", t, r)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> SResult<Vec<Mount>> {
        let t = Instant::now();
        let r = self
            .prepare_or_view(key, parent, labels, SnapshotKind::View)
            .await;
        timed("view", t, r)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> SResult<()> {
        let t = Instant::now();
        let valid = validate_key("name", &name)
            .and_then(|()| validate_key("key", &key))
            .and_then(|()| validate_labels(labels.iter()));
        let r = match valid {
            Ok(()) => {
                let labels = labels.into_iter().collect();
                self.blocking(move |i| i.commit(&name, &key, labels)).await
            }
            Err(e) => Err(e),
        };
        timed("commit", t, r)
    }

    async fn remove(&self, key: String) -> SResult<()> {
        let t = Instant::now();
        let r = match validate_key("key", &key) {
            Ok(()) => self.blocking(move |i| i.remove(&key)).await,
            Err(e) => Err(e),
        };
        timed("remove", t, r)
    }

    async fn clear(&self) -> SResult<()> {
        let t = Instant::now();
        let r = self.blocking(|i| Ok(i.cleanup()?)).await;
        timed("cleanup", t, r)
    }

    type InfoStream = futures_util::stream::Iter<std::vec::IntoIter<SResult<Info>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> SResult<Self::InfoStream> {
        let t = Instant::now();
        let infos: Vec<SResult<Info>> = self
            .inner
            .lock()
            .recs
            .values()
            .map(info_of)
            .filter(|i| filter_matches(&filters, i))
            .map(Ok)
            .collect();
        timed("walk", t, Ok(futures_util::stream::iter(infos)))
    }
}
