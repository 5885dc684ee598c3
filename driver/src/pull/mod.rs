//! Registry pull (OCI Distribution v2) with LASS placement.
//!
//! Blobs download in parallel (up to `max_concurrent_downloads`, in layer
//! order) into `STATE/downloads/`. Each layer is stored while its blob
//! downloads: a blocking thread extracts the blob file as it grows (see
//! `feed`) into a staging directory, and verifies the blob digest and the
//! diffID at the end. A layer's directory does not depend on its parent's
//! content, so layers extract in parallel; they are published strictly in
//! chain order. The tier is chosen when a layer's storing starts, by
//! `nvtier_policy::lass::streamed`: pmem when storing it on disk is
//! predicted to end after the image's last byte.

use crate::error::{Error, Result};
use crate::extract::{Expect, Priority};
use crate::store::{chain_ids, digest_hex, now_ms, ImageOrigin, ImageRecord, Store};
use crate::tier::TierKind;
use download::download;
use feed::FeedWatch;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use layer::{extract_streamed, publish, Streamed};
use nvtier_policy::lass::streamed::{
    critical_layer, decide_streamed, ms_for, samples_own_rate, wire_rate, StreamStart,
};
use nvtier_policy::{Decision, DiskReason, Placement};
use oci_client::RegistryOperation;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

pub mod auth;
mod blob;
mod download;
mod feed;
mod layer;
mod profile;
pub use profile::relocate_bases;
pub mod profile_artifact;
mod registry;
mod report;

pub use auth::Credentials;
pub use blob::fetch_blob;
use registry::{access_err, client_for, parse_ref, registry_err};
pub use registry::{normalize, warm_up};
pub use report::{KeptBlob, LassInputs, LayerReport, ProfileUse, PullOptions, PullReport};

fn ms(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Bytes of a layer that arrive before its tier is chosen (or
/// [`WARMUP`], whichever comes first) when the node has not learned the
/// registry's rate: the network rate is measured on them.
const WARMUP_BYTES: u64 = 4 << 20;
const WARMUP: Duration = Duration::from_millis(300);

/// The pull's download progress, for the streamed LASS prediction.
struct Wire {
    /// Compressed bytes of the layers to download.
    total: u64,
    received: Arc<AtomicU64>,
    first_start: OnceLock<Instant>,
    /// The registry's rate this node learned, bytes per ms.
    learned: Option<u64>,
}

impl Wire {
    /// Predicted ms until the image's last byte (`u64::MAX`: no rate yet).
    fn left_ms(&self) -> u64 {
        let got = self.received.load(Ordering::Relaxed);
        let since = self
            .first_start
            .get()
            .map(|s| s.elapsed().as_millis() as u64)
            .unwrap_or(0);
        let rate = wire_rate(got, since, self.learned);
        ms_for(self.total.saturating_sub(got), rate)
    }
}

/// When and how a layer's storing started (for its report).
struct StoreStart {
    ms: f64,
    pmem_reason: Option<String>,
    all_downloaded: bool,
    lass: Option<LassInputs>,
}

/// What the tier decision of one layer needs (taken on its extraction
/// thread, when its storing starts).
struct DecideCtx {
    store: Store,
    placement: Placement,
    size: u64,
    promoted: bool,
    class: Option<nvtier_policy::classify::LayerClass>,
    profiled: Arc<AtomicBool>,
    tiering_on: bool,
    done: Arc<Mutex<usize>>,
    needed: usize,
    wire: Arc<Wire>,
    t0: Instant,
    out: Arc<Mutex<Option<StoreStart>>>,
}

impl DecideCtx {
    /// Wait for the layer's first bytes (the rate is measured on them),
    /// then pick its tier.
    fn decide(self, watch: &FeedWatch) -> Result<Decision> {
        // The download's start (it queues for a permit), then a little of it
        // if the network rate is still unknown.
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        let (_, ended) = watch.wait_for(1, far);
        if !ended && samples_own_rate(self.placement, self.wire.learned) {
            watch.wait_for(self.size.min(WARMUP_BYTES), Instant::now() + WARMUP);
        }
        let (start_ms, all_downloaded) = {
            let g = self.done.lock().unwrap_or_else(|p| p.into_inner());
            (ms(self.t0), *g == self.needed)
        };
        let free = self
            .store
            .pmem_budget()
            .saturating_sub(self.store.pmem_used()?);
        let s = StreamStart {
            all_downloaded,
            wire_left_ms: self.wire.left_ms(),
            disk_store_ms: ms_for(self.size, (self.store.disk_store_rate() / 1000).max(1)),
            expected_bytes: self.size,
            pmem_free: free,
        };
        let mut decision = decide_streamed(self.placement, s);
        let mut pmem_reason = None;
        // With a profile, the hot files go to pmem anyway: no static
        // promotion on top of LASS. (Known once the lookup has answered;
        // until then a layer may still get its static promotion.)
        let profiled_now = self.tiering_on && self.profiled.load(Ordering::SeqCst);
        if !profiled_now
            && decision == Decision::Disk(DiskReason::EndsBeforeLastByte)
            && self.promoted
        {
            decision = decide_streamed(Placement::Pmem, s);
            if decision == Decision::Pmem {
                pmem_reason = self.class.map(|c| format!("static: {c}"));
            }
        }
        if decision == Decision::Disk(DiskReason::BudgetExhausted) {
            tracing::warn!(
                size = self.size,
                free,
                "pmem budget cannot hold this layer; storing on disk"
            );
        }
        tracing::debug!(?s, ?decision, "streamed storing starts");
        *self.out.lock().unwrap_or_else(|p| p.into_inner()) = Some(StoreStart {
            ms: start_ms,
            pmem_reason,
            all_downloaded,
            lass: Some(LassInputs {
                all_downloaded,
                wire_left_ms: s.wire_left_ms,
                disk_store_ms: s.disk_store_ms,
            }),
        });
        Ok(decision)
    }
}

/// Pull `reference` into the store. On failure, layers this pull stored are
/// collected again (nothing references them), so a failed pull leaves the
/// store as it was.
pub async fn pull(store: &Store, reference: &str, opts: &PullOptions) -> Result<PullReport> {
    let t0 = Instant::now();
    let mut r = pull_inner(store, reference, opts).await;
    if let Ok(rep) = &mut r {
        profile::tier_now(store, rep, t0).await;
        // The image is nvtier's now: an engine's earlier fallback is over.
        if let Err(e) = store.clear_fallback(&rep.image) {
            tracing::warn!(error = %e, "removing the fallback record");
        }
    }
    if r.is_err() {
        match store.gc() {
            Ok(g) if !g.removed.is_empty() => {
                tracing::info!(
                    layers = g.removed.len(),
                    "removed layers of the failed pull"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cleaning up after the failed pull"),
        }
    }
    r
}

async fn pull_inner(store: &Store, reference: &str, opts: &PullOptions) -> Result<PullReport> {
    let t0 = Instant::now();
    let reference = parse_ref(reference)?;
    let name = reference.whole();
    let reference = match &opts.pin_digest {
        Some(d) => {
            digest_hex(d)?;
            oci_client::Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                d.clone(),
            )
        }
        None => reference,
    };
    let creds = auth::resolve(&store.cfg, &opts.auth, reference.resolve_registry())?;
    let client = Arc::new(client_for(store, &reference, &creds.auth)?);
    if let Some(src) = &creds.source {
        tracing::debug!(image = %name, source = %src, "registry credentials");
    }
    client
        .auth(&reference, &creds.auth, RegistryOperation::Pull)
        .await
        .map_err(|e| access_err("authenticating", &reference, &creds, e))?;
    let (manifest, manifest_digest, config_text, _list) = client
        .pull_manifest_and_config_and_list_digest(&reference, &creds.auth)
        .await
        .map_err(|e| access_err("fetching the manifest", &reference, &creds, e))?;
    let config: serde_json::Value = serde_json::from_str(&config_text)
        .map_err(|e| Error::Registry(format!("image config of {name} is not JSON: {e}")))?;
    let diff_ids: Vec<String> = crate::store::config_diff_ids(&config)
        .ok_or_else(|| Error::Registry(format!("image config of {name} has no rootfs.diff_ids")))?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::Registry(format!(
            "{name}: manifest has {} layers but config lists {} diffIDs",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    for d in diff_ids
        .iter()
        .chain(manifest.layers.iter().map(|l| &l.digest))
    {
        digest_hex(d)?;
    }
    let chains = chain_ids(&diff_ids);
    let n = chains.len();

    // The image's hot profile, from the registry: with it, the image is
    // tiered at pull time. LASS still places the bases (what is stored
    // after the last byte goes to pmem, which keeps the deploy fast); the
    // hot data and metadata layers are built before the pull returns, and
    // pmem bases move to disk after the deploy (see `profile`).
    // The lookup runs beside the downloads: a pull without a profile does
    // not wait for it.
    let found_early = Arc::new(AtomicBool::new(false));
    let lookup: Option<tokio::task::JoinHandle<Option<profile_artifact::Found>>> =
        (store.cfg.profiles_from_registry && opts.placement == Placement::Lass).then(|| {
            let flag = found_early.clone();
            let (s2, c2, r2, d2, ids, a2) = (
                store.clone(),
                client.clone(),
                reference.clone(),
                manifest_digest.clone(),
                diff_ids.clone(),
                creds.auth.clone(),
            );
            tokio::spawn(async move {
                let f = profile_artifact::lookup(&s2, &c2, &r2, &d2, &ids, &a2).await;
                flag.store(f.is_some(), std::sync::atomic::Ordering::SeqCst);
                f
            })
        });
    let tiering_on = store.pmem_available() && crate::tiering::enabled(store).is_ok();

    // Pulls hold the GC lock shared, so nothing they store is collected
    // before the image record exists.
    let s2 = store.clone();
    let _pull_lock = tokio::task::spawn_blocking(move || s2.lock_pull())
        .await
        .map_err(|e| Error::Other(e.to_string()))??;

    // Layers a tier lost are stored again (an explicit pull repairs).
    let lost =
        crate::store::health::forget_lost_layers(store, &chains.iter().cloned().collect(), true)?;
    if !lost.is_empty() {
        tracing::warn!(image = %name, layers = lost.len(), "restoring lost layers");
    }
    let present: Vec<bool> = chains
        .iter()
        .map(|c| store.layer(c).map(|m| m.is_some()))
        .collect::<Result<_>>()?;
    let needed = present.iter().filter(|p| !**p).count();
    tracing::info!(image = %name, layers = n, to_download = needed, placement = %opts.placement, "pulling");

    // Static classification: engine and application layers go to
    // pmem on top of LASS's choice, top-most first, while the free budget
    // (estimated from blob sizes) holds them.
    let classes: Vec<Option<nvtier_policy::classify::LayerClass>> = {
        let history: Vec<(Option<String>, bool)> = config
            .get("history")
            .and_then(|h| h.as_array())
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e.get("created_by")
                                .and_then(|c| c.as_str())
                                .map(str::to_string),
                            e.get("empty_layer")
                                .and_then(|b| b.as_bool())
                                .unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        nvtier_policy::classify::align_history(&history, n)
            .iter()
            .enumerate()
            .map(|(i, c)| nvtier_policy::classify::classify_by_command(i, c.as_deref()))
            .collect()
    };
    let promoted: Vec<usize> = if store.cfg.static_placement && opts.placement == Placement::Lass {
        let cl: Vec<_> = classes
            .iter()
            .map(|c| c.unwrap_or(nvtier_policy::classify::LayerClass::BaseDistro))
            .collect();
        let sizes: Vec<u64> = manifest
            .layers
            .iter()
            .map(|l| l.size.max(0) as u64)
            .collect();
        let free = store.pmem_budget().saturating_sub(store.pmem_used()?);
        nvtier_policy::classify::initial_promotions(&cl, &vec![false; n], &sizes, free)
    } else {
        Vec::new()
    };

    let mp = opts.progress.then(MultiProgress::new);
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let sem = Arc::new(Semaphore::new(store.cfg.max_concurrent_downloads));
    let done = Arc::new(Mutex::new(0usize));
    // What the streamed LASS rule predicts from: the image's bytes still to
    // come and the network rate seen since the first download started.
    let wire = Arc::new(Wire {
        total: manifest
            .layers
            .iter()
            .zip(&present)
            .filter(|(_, p)| !**p)
            .map(|(l, _)| l.size.max(0) as u64)
            .sum(),
        received: Arc::new(AtomicU64::new(0)),
        first_start: OnceLock::new(),
        learned: store
            .learned_link_rate(reference.resolve_registry())
            .map(|r| (r.bytes_per_s / 1000).max(1)),
    });
    // The largest layer's storing is the pull's critical path; the others
    // yield the CPU to it.
    let critical = critical_layer(
        &manifest
            .layers
            .iter()
            .map(|l| l.size.max(0) as u64)
            .collect::<Vec<_>>(),
        &present,
    );
    let mut receivers = Vec::with_capacity(n);
    let mut extractions: Vec<Option<tokio::task::JoinHandle<Result<Streamed>>>> =
        Vec::with_capacity(n);
    let mut watches: Vec<FeedWatch> = Vec::new();
    let mut starts: Vec<Arc<Mutex<Option<StoreStart>>>> = Vec::with_capacity(n);
    let mut bars = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let mut prev_turn: Option<oneshot::Receiver<()>> = None;
    for (i, desc) in manifest.layers.iter().enumerate() {
        let bar = mp.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(desc.size.max(0) as u64));
            b.set_style(style.clone());
            b.set_prefix(desc.digest.get(7..19).unwrap_or("").to_string());
            if present[i] {
                b.finish_with_message("already present");
            } else {
                b.set_message("waiting");
            }
            b
        });
        bars.push(bar.clone());
        let start_info = Arc::new(Mutex::new(None));
        starts.push(start_info.clone());
        if present[i] {
            receivers.push(None);
            extractions.push(None);
            continue;
        }
        let (tx, rx) = oneshot::channel();
        receivers.push(Some(rx));
        let path = store.downloads_dir().join(format!(
            "{}.{}.partial",
            digest_hex(&desc.digest)?,
            std::process::id()
        ));
        let (feed, watch) = feed::feed();
        watches.push(watch.clone());
        // Storing starts with the download (on a blocking thread): the
        // layer is extracted from the blob file as it grows.
        let ctx = DecideCtx {
            store: store.clone(),
            placement: opts.placement,
            size: desc.size.max(0) as u64,
            promoted: promoted.contains(&i),
            class: classes[i],
            profiled: found_early.clone(),
            tiering_on,
            done: done.clone(),
            needed,
            wire: wire.clone(),
            t0,
            out: start_info,
        };
        let priority = if critical == Some(i) {
            Priority::Normal
        } else {
            Priority::Background
        };
        let (s2, p2, w2, diff, c2) = (
            store.clone(),
            path.clone(),
            watch.clone(),
            diff_ids[i].clone(),
            chains[i].clone(),
        );
        extractions.push(Some(tokio::task::spawn_blocking(move || {
            // The download hashes the blob as it arrives, and the reader
            // sees its end only once that digest matched (`Feed::finish`):
            // the extraction hashes the uncompressed stream only.
            let expect = Expect {
                blob_digest: None,
                diff_id: Some(&diff),
            };
            extract_streamed(&s2, &w2, &p2, &expect, &c2, priority, || ctx.decide(&w2))
        })));
        let (client, reference, desc, sem, done, wire) = (
            client.clone(),
            reference.clone(),
            desc.clone(),
            sem.clone(),
            done.clone(),
            wire.clone(),
        );
        // Downloads start in layer order: each task queues for a permit only
        // after the previous one got its own.
        let (turn_tx, turn_rx) = oneshot::channel::<()>();
        let my_turn = prev_turn.replace(turn_rx);
        tasks.spawn(async move {
            if let Some(t) = my_turn {
                let _ = t.await;
            }
            let _permit = sem.acquire_owned().await;
            let _ = turn_tx.send(());
            wire.first_start.get_or_init(Instant::now);
            if let Some(b) = &bar {
                b.set_message("downloading");
            }
            let tap = download::Tap {
                feed,
                received: wire.received.clone(),
            };
            let r = download(
                client,
                reference,
                desc,
                path,
                t0,
                bar.clone(),
                done,
                Some(tap),
            )
            .await;
            if r.is_ok() {
                if let Some(b) = &bar {
                    b.set_message("downloaded");
                }
            }
            let _ = tx.send(r);
        });
    }

    let mut reports: Vec<LayerReport> = Vec::with_capacity(n);
    let mut cleanup: Vec<PathBuf> = Vec::new();
    let mut kept: Vec<KeptBlob> = Vec::new();
    let result: Result<()> = async {
        for i in 0..n {
            let desc = &manifest.layers[i];
            let chain = chains[i].clone();
            let mut rep = LayerReport {
                index: i,
                digest: desc.digest.clone(),
                diff_id: diff_ids[i].clone(),
                chain_id: chain.clone(),
                size: desc.size.max(0) as u64,
                download_start_ms: None,
                download_end_ms: None,
                store_start_ms: None,
                extracted_ms: None,
                store_end_ms: None,
                lass: None,
                tier: TierKind::Disk,
                reused: true,
                stored_bytes: 0,
                disk_reason: None,
                class: classes[i],
                pmem_reason: None,
            };
            let (Some(rx), Some(handle)) = (receivers[i].take(), extractions[i].take()) else {
                let m = store.layer(&chain)?.ok_or_else(|| {
                    Error::Other(format!("layer {chain} vanished during the pull"))
                })?;
                rep.tier = m.tier;
                rep.stored_bytes = m.charged_bytes;
                reports.push(rep);
                continue;
            };
            let streamed = handle
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
            // A download that failed is the cause of what the extraction
            // saw; its own error says more.
            let streamed = match streamed {
                Ok(s) => s,
                Err(e) => {
                    if let Ok(Err(dl_err)) = tokio::time::timeout(
                        std::time::Duration::from_millis(500),
                        async { rx.await.unwrap_or_else(|_| Err(Error::Other("download task ended without a result".into()))) },
                    )
                    .await
                    {
                        return Err(dl_err);
                    }
                    return Err(e);
                }
            };
            let dl = rx
                .await
                .map_err(|_| Error::Other("download task ended without a result".into()))??;
            cleanup.push(dl.path.clone());
            rep.download_start_ms = Some(dl.start_ms);
            rep.download_end_ms = Some(dl.end_ms);
            let x = match streamed {
                Streamed::Present(m) => {
                    // Stored meanwhile by a concurrent pull.
                    rep.tier = m.tier;
                    rep.stored_bytes = m.charged_bytes;
                    reports.push(rep);
                    let _ = std::fs::remove_file(&dl.path);
                    continue;
                }
                Streamed::Extracted(x) => x,
            };
            let extracted_ms =
                (x.done.saturating_duration_since(t0).as_secs_f64() * 1e6).round() / 1e3;
            let start = starts[i]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or(StoreStart {
                    ms: dl.start_ms,
                    pmem_reason: None,
                    all_downloaded: false,
                    lass: None,
                });
            if opts.keep_blobs {
                // A hard link, before publishing (a disk-tier layer's blob
                // is moved away by its write-back bookkeeping). Never fails
                // the pull.
                match keep_blob(store, &dl.path, &desc.digest) {
                    Ok(path) => kept.push(KeptBlob {
                        digest: desc.digest.clone(),
                        media_type: desc.media_type.clone(),
                        path,
                    }),
                    Err(e) => {
                        tracing::warn!(blob = %desc.digest, error = %e, "cannot keep the blob for containerd's content store")
                    }
                }
            }
            if let Some(b) = &bars[i] {
                b.set_message(format!("publishing on {}", x.tier));
            }
            let reason = x.reason;
            let (s2, path, d2, diff, c2) = (
                store.clone(),
                dl.path.clone(),
                desc.clone(),
                diff_ids[i].clone(),
                chain.clone(),
            );
            let parent = (i > 0).then(|| chains[i - 1].clone());
            let meta = tokio::task::spawn_blocking(move || {
                publish(&s2, x, &path, &d2, &diff, &c2, parent.as_deref())
            })
            .await
            .map_err(|e| Error::Other(e.to_string()))??;
            let _ = std::fs::remove_file(&dl.path);
            rep.store_start_ms = Some(start.ms);
            rep.lass = start.lass;
            rep.extracted_ms = Some(extracted_ms);
            rep.store_end_ms = Some(ms(t0));
            rep.tier = meta.tier;
            rep.reused = false;
            rep.stored_bytes = meta.charged_bytes;
            rep.disk_reason = reason;
            if meta.tier == TierKind::Pmem {
                rep.pmem_reason = start.pmem_reason;
            }
            tracing::info!(layer = i, chain = %chain, tier = %meta.tier, bytes = meta.charged_bytes, all_downloaded = start.all_downloaded, "stored");
            if let Some(b) = &bars[i] {
                b.finish_with_message(format!("stored on {}", meta.tier));
            }
            reports.push(rep);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // Stop the readers, then the downloads; wait for every extraction
        // to end (each removes its staging directory and reservation).
        for w in &watches {
            w.cancel();
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        for h in extractions.into_iter().flatten() {
            let _ = h.await;
        }
        for p in cleanup.into_iter().chain(kept.into_iter().map(|k| k.path)) {
            let _ = std::fs::remove_file(p);
        }
        // Partial downloads of aborted tasks.
        for d in &manifest.layers {
            if let Ok(h) = digest_hex(&d.digest) {
                let _ = std::fs::remove_file(
                    store
                        .downloads_dir()
                        .join(format!("{h}.{}.partial", std::process::id())),
                );
            }
        }
        return Err(e);
    }
    while tasks.join_next().await.is_some() {}
    let stored_done_ms = ms(t0);
    // One sample of the registry's rate, for the next pulls' first layers.
    if let Some(first) = wire.first_start.get() {
        let last_byte = reports
            .iter()
            .filter_map(|r| r.download_end_ms)
            .fold(0.0, f64::max);
        let took = Duration::from_secs_f64(
            (last_byte / 1e3 - first.duration_since(t0).as_secs_f64()).max(0.0),
        );
        let bytes = wire.received.load(Ordering::Relaxed);
        if let Err(e) = store.record_link_sample(reference.resolve_registry(), bytes, took) {
            tracing::debug!(error = %e, "recording the link rate");
        }
    }

    // A record that `nvtier pull` made stays the CLI's: engine activity
    // never removes it.
    let origin = match store.image(&name)? {
        Some(old) if old.origin == ImageOrigin::Cli => ImageOrigin::Cli,
        _ => opts.origin,
    };
    let rec = ImageRecord {
        origin,
        name: name.clone(),
        manifest_digest: manifest_digest.clone(),
        config_digest: manifest.config.digest.clone(),
        config,
        chain_ids: chains.clone(),
        diff_ids: diff_ids.clone(),
        blob_digests: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        created_ms: now_ms(),
    };
    store.put_image(&rec)?;
    // A profile that cannot be adopted never fails the pull.
    let registry_profile = match lookup {
        Some(h) => h.await.unwrap_or_else(|e| {
            tracing::warn!(image = %name, error = %e, "the profile lookup task failed");
            None
        }),
        None => None,
    };
    if registry_profile.is_some() && !tiering_on {
        tracing::info!(image = %name, "a registry profile was found, but tiering is off or pmem is missing: it is kept for later");
    }
    let profile = registry_profile.and_then(|found| {
        profile::adopt(store, &rec, found, tiering_on)
            .inspect_err(
                |e| tracing::warn!(image = %name, error = %e, "cannot use the registry profile"),
            )
            .ok()
    });

    let timeline: Vec<Option<nvtier_policy::lass::LayerTimes>> = reports
        .iter()
        .map(|r| match (r.download_end_ms, r.store_start_ms) {
            (Some(d), Some(s)) => Some(nvtier_policy::lass::LayerTimes {
                download_end_ms: (d * 1e3).round() as u64,
                store_start_ms: (s * 1e3).round() as u64,
            }),
            _ => None,
        })
        .collect();
    let download_done_ms = reports
        .iter()
        .filter_map(|r| r.download_end_ms)
        .fold(0.0, f64::max);
    let (mut pmem_bytes, mut disk_bytes) = (0, 0);
    for r in &reports {
        match r.tier {
            TierKind::Pmem => pmem_bytes += r.stored_bytes,
            TierKind::Disk => disk_bytes += r.stored_bytes,
        }
    }
    Ok(PullReport {
        image: name,
        manifest_digest,
        config_digest: manifest.config.digest.clone(),
        placement: opts.placement,
        ldl_index: nvtier_policy::ldl_index(&timeline),
        layers: reports,
        download_done_ms,
        stored_done_ms,
        pmem_bytes,
        disk_bytes,
        credentials: creds.source,
        profile,
        kept_blobs: kept,
    })
}

/// Hard-link a downloaded blob into the store's kept-blobs directory.
fn keep_blob(store: &Store, blob: &std::path::Path, digest: &str) -> Result<PathBuf> {
    use crate::error::IoContext;
    let dir = store.kept_blobs_dir();
    std::fs::create_dir_all(&dir).ctx("create", &dir)?;
    let path = dir.join(format!(
        "{}.{:016x}",
        digest_hex(digest)?,
        rand::random::<u64>()
    ));
    std::fs::hard_link(blob, &path).ctx("keep blob as", &path)?;
    Ok(path)
}
