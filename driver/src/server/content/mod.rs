//! Content-store parity: the blobs of images nvtier pulls for containerd
//! and Docker are written into containerd's content store, so the engine
//! sees a complete image (Docker's image list, `save` and `push` read the
//! blobs there).
//!
//! When the snapshotter attaches a layer of an image for the engine
//! (remote snapshot), it queues a [`Job`] for the image and containerd
//! namespace. One background task runs the jobs, one at a time, each
//! [`SETTLE`] after the last request for it: by then the engine's own pull
//! has finished, so the writes never compete with it. A job, under a lease
//! of its own (expiring after [`LEASE_TTL_S`]):
//! - writes each layer blob containerd lacks, from the file the pull kept
//!   (see `PullOptions::keep_blobs`) or, for a layer nvtier had stored
//!   before, fetched again from the registry; with
//!   `containerd.io/uncompressed=<diffID>` and
//!   `containerd.io/distribution.source.<host>=<repository>`;
//! - writes the config blob if containerd lacks it (it never does after
//!   its own fetch, which precedes every layer);
//! - deletes the lease. The blobs then stay because the image's manifest,
//!   which containerd fetched, references every layer and the config
//!   (`containerd.io/gc.ref.content.l.<i>`, `…config`); when the image is
//!   removed, containerd's GC removes them.
//!
//! Failures are logged with the blob and the cause and never fail a pull.
//! A failed job runs again ([`ATTEMPTS`] times in all, [`RETRY`] apart,
//! growing), keeping its blob files until the last attempt.

use crate::pull::{fetch_blob, normalize, KeptBlob};
use crate::store::{digest_hex, Store};
use client::{Containerd, Written};
use error::ContentError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod client;
pub mod engine_image;
mod error;
mod labels;

pub use labels::namespace_of_key;

/// Quiet time after the last request for a job before it runs.
pub const SETTLE: Duration = Duration::from_millis(1000);
/// Lifetime of a job's lease if nvtier dies before deleting it.
pub const LEASE_TTL_S: u64 = 3600;
/// A job that failed (containerd unreachable, a blob not written) runs
/// again after `RETRY * attempt`, up to [`ATTEMPTS`] times in all.
pub const RETRY: Duration = Duration::from_secs(10);
pub const ATTEMPTS: u32 = 5;

/// Blobs to write for one image in one containerd namespace.
#[derive(Debug)]
pub struct Job {
    pub namespace: String,
    pub image: String,
    /// The engine's manifest digest of `image`: finds nvtier's record of
    /// the same image under another name.
    pub manifest_digest: Option<String>,
    pub kept: Vec<KeptBlob>,
}

#[derive(Default)]
struct Queue {
    /// Waiting jobs in arrival order, each with the time it may start and
    /// the number of attempts made.
    jobs: Vec<(Job, Instant, u32)>,
    worker: bool,
}

/// The queue of content-store jobs and its worker.
#[derive(Clone)]
pub struct ContentFeeder {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    socket: PathBuf,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
}

impl ContentFeeder {
    /// A feeder writing through containerd at `store.cfg.containerd_socket`.
    /// Blobs kept by an earlier run are removed.
    pub fn new(store: Store) -> ContentFeeder {
        remove_kept_blobs(&store);
        ContentFeeder {
            inner: Arc::new(Inner {
                socket: store.cfg.containerd_socket.clone(),
                store,
                queue: Mutex::new(Queue::default()),
                wake: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Queue `job` (merged into a waiting job of the same image and
    /// namespace). Needs a tokio runtime: the worker starts on first use.
    pub fn submit(&self, job: Job) {
        self.queue(job, Instant::now() + SETTLE, 0);
    }

    fn queue(&self, job: Job, start: Instant, attempts: u32) {
        let spawn = {
            let mut q = self.inner.lock();
            match q
                .jobs
                .iter_mut()
                .find(|(j, _, _)| j.namespace == job.namespace && j.image == job.image)
            {
                Some((j, at, n)) => {
                    j.kept.extend(job.kept);
                    if j.manifest_digest.is_none() {
                        j.manifest_digest = job.manifest_digest;
                    }
                    *at = (*at).max(start);
                    *n = (*n).max(attempts);
                }
                None => q.jobs.push((job, start, attempts)),
            }
            !std::mem::replace(&mut q.worker, true)
        };
        if spawn {
            let f = self.clone();
            tokio::spawn(async move { f.work().await });
        }
        self.inner.wake.notify_one();
    }

    async fn work(self) {
        loop {
            let next = {
                let mut q = self.inner.lock();
                let now = Instant::now();
                match q.jobs.iter().position(|(_, at, _)| *at <= now) {
                    Some(i) => {
                        let (job, _, n) = q.jobs.remove(i);
                        Ok((job, n))
                    }
                    None => Err(q.jobs.iter().map(|(_, at, _)| *at).min()),
                }
            };
            match next {
                Ok((job, n)) => self.run(job, n + 1).await,
                Err(Some(at)) => {
                    let _ = tokio::time::timeout_at(at.into(), self.inner.wake.notified()).await;
                }
                Err(None) => self.inner.wake.notified().await,
            }
        }
    }

    /// Run `job`, its `attempt`-th time; queue it again when it failed
    /// and may be retried.
    async fn run(&self, job: Job, attempt: u32) {
        let t = Instant::now();
        let retry = match self.inner.write_image(&job).await {
            Ok(n) => {
                tracing::info!(
                    image = %job.image,
                    namespace = %job.namespace,
                    written = n.written,
                    present = n.present,
                    failed = n.failed,
                    ms = t.elapsed().as_millis() as u64,
                    "content store: image blobs handed to containerd"
                );
                n.failed > 0
            }
            Err(e) => {
                tracing::warn!(
                    image = %job.image,
                    namespace = %job.namespace,
                    attempt,
                    error = %e,
                    "content store: cannot write the image's blobs into containerd"
                );
                !matches!(e, ContentError::NoRecord(_) | ContentError::Source(_))
            }
        };
        if retry && attempt < ATTEMPTS {
            self.queue(job, Instant::now() + RETRY * attempt, attempt);
            return;
        }
        if retry {
            tracing::warn!(image = %job.image, namespace = %job.namespace, attempts = attempt, "content store: giving up; the engine does not list the image until it is pulled again");
        }
        let kept: Vec<PathBuf> = job.kept.iter().map(|k| k.path.clone()).collect();
        for p in kept {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    written: usize,
    present: usize,
    failed: usize,
}

/// One blob to make present: its digest, labels and a media type for a
/// registry fetch.
struct Blob<'a> {
    digest: &'a str,
    media_type: &'a str,
    labels: HashMap<String, String>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn write_image(&self, job: &Job) -> Result<Counts, ContentError> {
        let name = normalize(&job.image)?;
        // nvtier's record of the image: by name, or (an image whose layers
        // nvtier had under another name) by the engine's manifest digest.
        let rec = match self.store.image(&name)? {
            Some(r) => r,
            None => self
                .store
                .images()?
                .into_iter()
                .find(|r| Some(&r.manifest_digest) == job.manifest_digest.as_ref())
                .ok_or(ContentError::NoRecord(name.clone()))?,
        };
        // The blobs come from, and are labelled with, the repository the
        // engine pulled from.
        let reference =
            crate::reference::parse(&name).map_err(|e| crate::error::Error::BadReference {
                reference: name.clone(),
                msg: e.to_string(),
            })?;
        let (host, repo) = (reference.registry(), reference.repository());
        let mut blobs: Vec<Blob<'_>> = Vec::new();
        for (i, d) in rec.blob_digests.iter().enumerate() {
            let media_type = job
                .kept
                .iter()
                .find(|k| &k.digest == d)
                .map(|k| k.media_type.as_str())
                .unwrap_or("application/vnd.oci.image.layer.v1.tar+gzip");
            let diff_id = rec.diff_ids.get(i).map(String::as_str).unwrap_or("");
            blobs.push(Blob {
                digest: d,
                media_type,
                labels: labels::layer_labels(diff_id, host, repo),
            });
        }
        blobs.push(Blob {
            digest: &rec.config_digest,
            media_type: "application/vnd.oci.image.config.v1+json",
            labels: labels::blob_labels(host, repo),
        });

        let ctd = Containerd::connect(&self.socket, &job.namespace).await?;
        let mut counts = Counts::default();
        // Most jobs find every blob present (a repeated request): no lease.
        let mut missing = Vec::new();
        for b in blobs {
            if ctd.has(b.digest).await? {
                counts.present += 1;
            } else {
                missing.push(b);
            }
        }
        if missing.is_empty() {
            return Ok(counts);
        }
        let lease = format!("nvtier-content-{:016x}", rand::random::<u64>());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ctd.create_lease(&lease, labels::lease_labels(now, LEASE_TTL_S))
            .await?;
        for b in missing {
            let t = Instant::now();
            match self.write_blob(&ctd, &lease, job, &name, &b).await {
                Ok(Written::Committed) => {
                    counts.written += 1;
                    tracing::debug!(
                        blob = b.digest,
                        ms = t.elapsed().as_millis() as u64,
                        "content store: blob written"
                    );
                }
                Ok(Written::AlreadyExists) => counts.present += 1,
                Err(e) => {
                    counts.failed += 1;
                    tracing::warn!(image = %name, blob = b.digest, error = %e, "content store: blob not written");
                }
            }
        }
        if let Err(e) = ctd.delete_lease(&lease).await {
            tracing::warn!(lease, error = %e, "content store: lease not deleted (it expires)");
        }
        Ok(counts)
    }

    async fn write_blob(
        &self,
        ctd: &Containerd,
        lease: &str,
        job: &Job,
        image: &str,
        b: &Blob<'_>,
    ) -> Result<Written, ContentError> {
        let reference = format!("nvtier-{}", b.digest);
        if let Some(k) = job
            .kept
            .iter()
            .find(|k| k.digest == b.digest && k.path.exists())
        {
            return ctd
                .write_file(lease, &reference, &k.path, b.digest, b.labels.clone())
                .await;
        }
        // Not kept by this pull (stored before): fetch it again.
        let tmp = self.fetch_path(b.digest)?;
        let r = async {
            fetch_blob(
                &self.store,
                image,
                b.digest,
                b.media_type,
                &crate::pull::Credentials::Node,
                &tmp,
            )
            .await?;
            ctd.write_file(lease, &reference, &tmp, b.digest, b.labels.clone())
                .await
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        r
    }

    fn fetch_path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        let dir = self.store.kept_blobs_dir();
        std::fs::create_dir_all(&dir).map_err(|source| ContentError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Path::new(&dir).join(format!(
            "{}.fetch.{:016x}",
            digest_hex(digest)?,
            rand::random::<u64>()
        )))
    }
}

/// Remove blob files a pull kept (at start-up, and when content-store
/// writes are off).
pub fn remove_kept_blobs(store: &Store) {
    let dir = store.kept_blobs_dir();
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing kept blobs of an earlier run");
        }
    }
}
