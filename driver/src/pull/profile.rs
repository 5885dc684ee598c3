//! A pull with the image's hot profile from the registry: the profile is
//! adopted (merged with any local one) when the image record is written,
//! and the hot data and metadata layers are built before the pull returns,
//! so the image mounts tiered from its first container on.
//!
//! LASS still places the layer bases: the layers stored after the last
//! byte go to pmem, which keeps the deploy as fast as a LASS pull (writing
//! them to the HDD tier instead was measured 7 % slower at 100 Mbit/s and
//! 32 % at 1 Gbit/s). Those bases move to disk after the deploy:
//! [`relocate_bases`] (`nvtier pull` before it exits) or the daemon's
//! background migration.

use super::profile_artifact::Found;
use super::{ProfileUse, PullReport};
use crate::error::Result;
use crate::store::profiles::{load_profile, save_profile, union};
use crate::store::{ImageRecord, Store};
use crate::tiering::{migrate, MigrateOptions};

/// Merge `found` into `rec`'s profile and save it. `tiered`: the pull put
/// the bases on disk and [`tier_now`] builds the hot layers.
pub(super) fn adopt(
    store: &Store,
    rec: &ImageRecord,
    found: Found,
    tiered: bool,
) -> Result<ProfileUse> {
    let incoming = found.profile.for_image(rec)?;
    let merged = union(load_profile(store, &rec.name)?, incoming);
    save_profile(store, &merged)?;
    tracing::info!(image = %rec.name, artifact = %found.artifact_digest, files = merged.files.len(), bytes = merged.total_bytes(), "hot profile from the registry");
    Ok(ProfileUse {
        artifact_digest: found.artifact_digest,
        repository: found.repository,
        files: merged.files.len(),
        bytes: merged.total_bytes(),
        tiered,
        tiered_done_ms: None,
        hot_bytes: 0,
        meta_built: false,
        error: None,
    })
}

/// Build the hot data layers and the metadata layer of a profiled pull's
/// image now, at full speed (its layers are still in the page cache). A
/// failure is reported, never fatal: the image mounts whole until the
/// daemon's next migration.
pub(super) async fn tier_now(store: &Store, rep: &mut PullReport, t0: std::time::Instant) {
    let Some(p) = rep.profile.as_mut().filter(|p| p.tiered) else {
        return;
    };
    let opts = MigrateOptions {
        image: Some(rep.image.clone()),
        dry_run: false,
        rate: Some(0),
        keep_bases: true,
        skip_pmem_bases: true,
        no_wait: true,
    };
    let s2 = store.clone();
    let r = tokio::task::spawn_blocking(move || migrate(&s2, &opts)).await;
    match r {
        Ok(Ok(m)) => {
            p.hot_bytes = m
                .layers
                .iter()
                .filter(|l| rep.layers.iter().any(|x| x.chain_id == l.chain_id))
                .map(|l| l.hot_bytes)
                .sum();
            p.meta_built = m.meta_built.iter().any(|i| i == &rep.image)
                || crate::store::hot::meta_record(store, &rep.manifest_digest)
                    .ok()
                    .flatten()
                    .is_some();
            if let Some((_, why)) = m.untiered.iter().find(|(i, _)| i == &rep.image) {
                p.error = Some(why.clone());
            }
        }
        Ok(Err(e)) => p.error = Some(e.to_string()),
        Err(e) => p.error = Some(format!("migration task: {e}")),
    }
    p.tiered_done_ms = Some((t0.elapsed().as_secs_f64() * 1e6).round() / 1e3);
    match &p.error {
        None => {
            tracing::info!(image = %rep.image, hot = p.hot_bytes, ms = p.tiered_done_ms, "hot files on pmem at pull time")
        }
        Some(e) => {
            tracing::warn!(image = %rep.image, error = %e, "could not tier the image at pull time; the daemon's migration retries")
        }
    }
}

/// After a profiled pull's deploy: move the image's pmem layer bases to
/// disk (at `migrate_rate`), so pmem keeps only its metadata and hot data.
/// Returns the bytes moved.
pub fn relocate_bases(store: &Store, image: &str) -> Result<u64> {
    let r = migrate(
        store,
        &MigrateOptions {
            image: Some(image.to_string()),
            dry_run: false,
            rate: None,
            keep_bases: false,
            skip_pmem_bases: false,
            no_wait: false,
        },
    )?;
    Ok(r.relocated_bytes)
}
