//! Storing one layer while its blob downloads: extraction into a staging
//! directory on the tier the policy picked ([`extract_streamed`], on a
//! blocking thread), then publishing in chain order ([`publish`]).

use super::feed::FeedWatch;
use crate::error::{Error, Result};
use crate::extract::{extract_layer_at, Expect, ExtractStats, Priority};
use crate::store::{now_ms, LayerMeta, Lock, Reservation, Store};
use crate::tier::TierKind;
use nvtier_policy::{Decision, DiskReason};
use oci_client::manifest::OciDescriptor;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A layer extracted and verified, not yet published. Dropped unpublished,
/// its staging directory is removed and its pmem reservation released.
pub(super) struct Extracted {
    staging: PathBuf,
    stats: ExtractStats,
    pub(super) tier: TierKind,
    pub(super) reason: Option<DiskReason>,
    reservation: Option<Reservation>,
    started: Instant,
    /// When the extraction ended.
    pub(super) done: Instant,
    /// Held until published.
    _lock: Lock,
}

impl Drop for Extracted {
    fn drop(&mut self) {
        if !self.staging.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// What streamed storing of one layer came to.
pub(super) enum Streamed {
    /// Stored meanwhile by a concurrent pull.
    Present(LayerMeta),
    Extracted(Box<Extracted>),
}

/// Take the chain lock, then extract the blob as it downloads onto the tier
/// `decide` picks (called once the lock is held, when storing starts).
/// A pmem layer that outgrows the budget is extracted again on disk.
/// On error nothing is left: no staging directory, no reservation.
pub(super) fn extract_streamed(
    store: &Store,
    watch: &FeedWatch,
    blob: &Path,
    expect: &Expect<'_>,
    chain: &str,
    priority: Priority,
    decide: impl FnOnce() -> Result<Decision>,
) -> Result<Streamed> {
    let lock = store.lock_chain(chain)?;
    if let Some(m) = store.layer(chain)? {
        return Ok(Streamed::Present(m));
    }
    let decision = decide()?;
    let started = Instant::now();
    let mut reason = match decision {
        Decision::Pmem => None,
        Decision::Disk(r) => Some(r),
    };
    let mut tier = decision.tier();
    loop {
        let staging = store
            .new_staging(tier, chain)
            .map_err(|e| store.tier_full_or(tier, e))?;
        let mut reservation = (tier == TierKind::Pmem).then(|| store.reserve());
        let reader = watch.reader(blob.to_path_buf());
        let waited = reader.waited();
        let attempt = Instant::now();
        let res = match reservation.as_mut() {
            Some(r) => extract_layer_at(reader, &staging, expect, &mut |n| r.charge(n), priority),
            None => extract_layer_at(reader, &staging, expect, &mut |_| Ok(()), priority),
        };
        match res {
            Ok(stats) => {
                let done = Instant::now();
                if tier == TierKind::Disk {
                    // One sample of the node's disk storing rate, for the
                    // LASS rule's next predictions (off the critical path).
                    let busy = done.saturating_duration_since(attempt).saturating_sub(
                        std::time::Duration::from_nanos(
                            waited.load(std::sync::atomic::Ordering::Relaxed),
                        ),
                    );
                    let (s2, bytes) = (store.clone(), stats.compressed_bytes);
                    let _ = std::thread::Builder::new()
                        .name("nvtier-rate".into())
                        .spawn(move || {
                            if let Err(e) = s2.record_disk_store_sample(bytes, busy) {
                                tracing::debug!(error = %e, "recording the disk store rate");
                            }
                        });
                }
                // The blob is complete and verified. A disk-tier layer
                // keeps it, durable, until its write-back: make it durable
                // here, beside the other layers' extraction, so publishing
                // (in chain order) has nothing left to flush.
                if tier == TierKind::Disk
                    && store.cfg.disk_layer_sync == crate::config::DiskLayerSync::Background
                {
                    if let Err(e) = std::fs::File::open(blob).and_then(|f| f.sync_data()) {
                        tracing::debug!(blob = %blob.display(), error = %e, "early blob fsync failed; publishing syncs it");
                    }
                }
                return Ok(Streamed::Extracted(Box::new(Extracted {
                    done,
                    staging,
                    stats,
                    tier,
                    reason,
                    reservation,
                    started,
                    _lock: lock,
                })));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                drop(reservation);
                if let (Error::BudgetExhausted(why), TierKind::Pmem) = (&e, tier) {
                    tracing::warn!(layer = %chain, %why, "pmem budget exhausted while storing; storing the layer on disk instead");
                    tier = TierKind::Disk;
                    reason = Some(DiskReason::BudgetExhausted);
                    continue;
                }
                return Err(store.tier_full_or(tier, e));
            }
        }
    }
}

/// Publish an extracted layer (its parent is published; its blob is
/// complete and verified at `blob`). Blocking.
pub(super) fn publish(
    store: &Store,
    mut x: Box<Extracted>,
    blob: &Path,
    desc: &OciDescriptor,
    diff_id: &str,
    chain: &str,
    parent: Option<&str>,
) -> Result<LayerMeta> {
    let tier = x.tier;
    let meta = LayerMeta {
        chain_id: chain.to_string(),
        diff_id: diff_id.to_string(),
        blob_digest: Some(desc.digest.clone()),
        media_type: Some(desc.media_type.clone()),
        parent: parent.map(str::to_string),
        tier,
        compressed_bytes: x.stats.compressed_bytes,
        uncompressed_bytes: x.stats.uncompressed_bytes,
        file_bytes: x.stats.file_bytes,
        charged_bytes: x.stats.charged_bytes,
        file_count: x.stats.entries,
        created_ms: now_ms(),
        store_ms: x.started.elapsed().as_millis() as u64,
    };
    let staging = std::mem::take(&mut x.staging);
    // A disk-tier layer is published before its write-back (its blob is
    // kept until then; see `store::durable`): at 150 IOPS, syncing a base
    // layer of 10 000 files first took 45 s.
    let committed = if tier == TierKind::Disk
        && store.cfg.disk_layer_sync == crate::config::DiskLayerSync::Background
    {
        store.commit_layer_unsynced(&staging, &meta, blob)
    } else {
        store.commit_layer(&staging, &meta, x.reservation.take())
    };
    if let Err(e) = committed {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(store.tier_full_or(tier, e));
    }
    Ok(meta)
}
