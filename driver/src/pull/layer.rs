//! Storing one downloaded layer on the tier the policy picked.

use crate::error::{Error, Result};
use crate::extract::{extract_file, Expect};
use crate::store::{now_ms, LayerMeta, Store};
use crate::tier::TierKind;
use nvtier_policy::{Decision, DiskReason};
use oci_client::manifest::OciDescriptor;
use std::path::Path;
use std::time::Instant;

/// Store one downloaded layer (blocking; run on a blocking thread).
#[allow(clippy::too_many_arguments)]
pub(super) fn store_layer(
    store: &Store,
    blob: &Path,
    desc: &OciDescriptor,
    diff_id: &str,
    chain: &str,
    parent: Option<&str>,
    decision: Decision,
) -> Result<(LayerMeta, Option<DiskReason>)> {
    let t = Instant::now();
    let expect = Expect {
        blob_digest: Some(&desc.digest),
        diff_id: Some(diff_id),
    };
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
        let res = match reservation.as_mut() {
            Some(r) => extract_file(blob, &staging, &expect, &mut |n| r.charge(n)),
            None => extract_file(blob, &staging, &expect, &mut |_| Ok(())),
        };
        let stats = match res {
            Ok(s) => s,
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
        };
        let meta = LayerMeta {
            chain_id: chain.to_string(),
            diff_id: diff_id.to_string(),
            blob_digest: Some(desc.digest.clone()),
            media_type: Some(desc.media_type.clone()),
            parent: parent.map(str::to_string),
            tier,
            compressed_bytes: stats.compressed_bytes,
            uncompressed_bytes: stats.uncompressed_bytes,
            file_bytes: stats.file_bytes,
            charged_bytes: stats.charged_bytes,
            file_count: stats.entries,
            created_ms: now_ms(),
            store_ms: t.elapsed().as_millis() as u64,
        };
        // A disk-tier layer is published before its write-back (its blob is
        // kept until then; see `store::durable`): at 150 IOPS, syncing a base
        // layer of 10 000 files first took 45 s.
        let committed = if tier == TierKind::Disk
            && store.cfg.disk_layer_sync == crate::config::DiskLayerSync::Background
        {
            store.commit_layer_unsynced(&staging, &meta, blob)
        } else {
            store.commit_layer(&staging, &meta, reservation)
        };
        if let Err(e) = committed {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(store.tier_full_or(tier, e));
        }
        return Ok((meta, reason));
    }
}
