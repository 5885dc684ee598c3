//! `nvtier status`: tiers, DAX state, budget, counts and the tracer.

use super::human;
use crate::config::{Config, DiskLayerSync};
use crate::error::Result;
use crate::store::identity::TierState;
use crate::store::Store;
use crate::tier::{detect_dax, DaxState, TierKind};
use nvtier_policy::Placement;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A tier's identity check and what it lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierRow {
    pub tier: TierKind,
    #[serde(flatten)]
    pub state: TierState,
    pub lost_layers: usize,
    pub lost_hot_generations: usize,
    pub lost_meta_layers: usize,
    pub lost_snapshots: usize,
}

impl TierRow {
    fn of(t: &crate::store::health::TierHealth) -> TierRow {
        TierRow {
            tier: t.tier,
            state: t.state.clone(),
            lost_layers: t.lost.layers.len(),
            lost_hot_generations: t.lost.hot.len(),
            lost_meta_layers: t.lost.meta.len(),
            lost_snapshots: t.lost.snapshots.len(),
        }
    }
    fn is_ok(&self) -> bool {
        matches!(self.state, TierState::Ok | TierState::New)
            && self.lost_layers
                + self.lost_hot_generations
                + self.lost_meta_layers
                + self.lost_snapshots
                == 0
    }
}

/// Free and total bytes of a tier's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FsSpace {
    pub free: u64,
    pub total: u64,
}

impl FsSpace {
    fn of((free, total): (u64, u64)) -> FsSpace {
        FsSpace { free, total }
    }
}

/// Images whose profile is newer than the end of the last migration of
/// every image (the daemon's), when tiering is on.
fn migrations_pending(store: &Store) -> Result<Vec<String>> {
    if crate::tiering::enabled(store).is_err() {
        return Ok(Vec::new());
    }
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let last = mtime(&crate::tiering::last_migration_path(store));
    let mut out = Vec::new();
    for i in store.images()? {
        let Some(prof) = crate::store::profiles::profile_file(store, &i.name) else {
            continue;
        };
        if last < mtime(&prof) {
            out.push(i.name);
        }
    }
    Ok(out)
}

/// The state of the store (`nvtier status [--json]`).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The configuration file.
    pub config: PathBuf,
    /// Images that cannot be mounted until repaired, with the reasons.
    pub damaged_images: BTreeMap<String, Vec<String>>,
    pub dax: DaxState,
    pub disk_dir: PathBuf,
    pub disk_fs: Option<FsSpace>,
    pub disk_layer_sync: DiskLayerSync,
    pub disk_layers: usize,
    /// Bytes charged to the disk tier by disk-tier layers.
    pub disk_used_bytes: u64,
    /// Engine pulls that nvtier could not do (containerd unpacked those
    /// images itself, without LASS), newest first.
    pub engine_fallbacks: Vec<crate::store::fallbacks::Fallback>,
    pub images: usize,
    /// Tiered mounts whose hot data layers are interleaved with the bases:
    /// those may read the disk tier for a lower layer's hot file.
    pub interleaved_mounts: usize,
    pub layers: usize,
    pub max_concurrent_downloads: usize,
    /// Images whose profile changed after the last migration of every
    /// image ended: the daemon's next migration places them.
    pub migrations_pending: Vec<String>,
    pub mounts: usize,
    pub placement: Placement,
    pub pmem_budget_bytes: u64,
    pub pmem_dir: PathBuf,
    pub pmem_fs: Option<FsSpace>,
    pub pmem_hot_bytes: u64,
    pub pmem_layer_bytes: u64,
    pub pmem_layers: usize,
    pub pmem_meta_bytes: u64,
    pub pmem_retired_bytes: u64,
    pub pmem_used_bytes: u64,
    /// Container cold starts `nvtier serve` is recording now.
    pub recordings: Vec<crate::record::RecordingState>,
    pub snapshots: usize,
    pub snapshotter_socket: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Tiered mounts: nvtier's own and containerd's active snapshots.
    pub tiered_mounts: usize,
    /// `file-granular` or `whole-layer`.
    pub tiering: String,
    /// Why tiering is whole-layer (`None` when it is file-granular).
    pub tiering_reason: Option<String>,
    /// Each tier's identity check (`ok`, `new`, `replaced`, `missing`) and
    /// what it lost; pmem first.
    pub tiers: Vec<TierRow>,
    /// The tracer a trace started now would use.
    pub tracer: String,
    pub tracer_reason: String,
    pub unsynced_blob_bytes: u64,
    pub unsynced_layers: usize,
    /// Where the blobs of layers awaiting write-back are kept.
    #[serde(skip)]
    pub unsynced_dir: PathBuf,
}

impl Status {
    /// Read the store's state, probe DAX and the tracer.
    pub fn gather(cfg: &Config, store: &Store) -> Result<Status> {
        let dax = detect_dax(&cfg.pmem_dir);
        let tier_use = crate::tiering::pmem_use(store)?;
        let tiering = crate::tiering::enabled(store);
        let layers = store.layers()?;
        let pmem_used_bytes = store.pmem_used()?;
        let mounts = store.mounts()?;
        let snapshots = store.snapshots()?;
        let tierings: Vec<&crate::tiering::MountTiering> = mounts
            .iter()
            .filter_map(|m| m.tiering.as_ref())
            .chain(snapshots.iter().filter_map(|s| s.tiering.as_ref()))
            .collect();
        let interleaved_mounts = tierings
            .iter()
            .filter(|t| !t.hot_first && !t.hot.is_empty())
            .count();
        let unsynced = store.unsynced()?;
        let on = |tier: TierKind| layers.iter().filter(move |l| l.tier == tier);
        let tracer = crate::trace::probe_tracer();
        let health = crate::store::health::scan(store)?;
        Ok(Status {
            config: cfg.file.clone(),
            damaged_images: health.damaged.clone(),
            dax,
            disk_dir: cfg.disk_dir.clone(),
            disk_fs: store.disk.fs_space().map(FsSpace::of),
            disk_layer_sync: cfg.disk_layer_sync,
            disk_layers: on(TierKind::Disk).count(),
            disk_used_bytes: on(TierKind::Disk).map(|l| l.charged_bytes).sum(),
            engine_fallbacks: store.fallbacks()?,
            images: store.images()?.len(),
            interleaved_mounts,
            layers: layers.len(),
            max_concurrent_downloads: cfg.max_concurrent_downloads,
            migrations_pending: migrations_pending(store)?,
            mounts: mounts.len(),
            placement: cfg.placement,
            pmem_budget_bytes: cfg.pmem_budget,
            pmem_dir: cfg.pmem_dir.clone(),
            pmem_fs: store.pmem.fs_space().map(FsSpace::of),
            pmem_hot_bytes: tier_use.hot_bytes,
            pmem_layer_bytes: store.pmem_layer_bytes()?,
            pmem_layers: on(TierKind::Pmem).count(),
            pmem_meta_bytes: tier_use.meta_bytes,
            pmem_retired_bytes: tier_use.retired_bytes,
            pmem_used_bytes,
            recordings: crate::record::Recorder::in_progress(store),
            snapshots: snapshots.len(),
            snapshotter_socket: cfg.snapshotter_socket.clone(),
            state_dir: cfg.state_dir.clone(),
            tiered_mounts: tierings.len(),
            tiering: match tiering {
                Ok(()) => "file-granular",
                Err(_) => "whole-layer",
            }
            .to_string(),
            tiering_reason: tiering.err(),
            tiers: vec![TierRow::of(&health.pmem), TierRow::of(&health.disk)],
            tracer: tracer.tracer,
            tracer_reason: tracer.reason,
            unsynced_blob_bytes: unsynced.iter().map(|(_, u)| u.blob_bytes).sum(),
            unsynced_layers: unsynced.len(),
            unsynced_dir: store.unsynced_dir(),
        })
    }
}

/// The text of `nvtier status`, one line each ending in a newline.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config     {}", self.config.display())?;
        writeln!(
            f,
            "pmem tier  {} (DAX: {})",
            self.pmem_dir.display(),
            self.dax
        )?;
        writeln!(f, "disk tier  {}", self.disk_dir.display())?;
        for t in self.tiers.iter().filter(|t| !t.is_ok()) {
            writeln!(
                f,
                "  {} tier {}; lost: {} layer(s), {} hot generation(s), {} metadata layer(s), {} snapshot(s)",
                t.tier,
                t.state,
                t.lost_layers,
                t.lost_hot_generations,
                t.lost_meta_layers,
                t.lost_snapshots
            )?;
        }
        for (name, why) in &self.damaged_images {
            writeln!(
                f,
                "damaged    {name}: {}; run `nvtier repair {name}`",
                why.join(", ")
            )?;
        }
        writeln!(
            f,
            "budget     {} of {} pmem used ({:.1}%)",
            human(self.pmem_used_bytes),
            human(self.pmem_budget_bytes),
            if self.pmem_budget_bytes > 0 {
                self.pmem_used_bytes as f64 * 100.0 / self.pmem_budget_bytes as f64
            } else {
                0.0
            }
        )?;
        writeln!(
            f,
            "  of which  layers {}, metadata layers {}, hot copies {}, retired (still mounted) {}",
            human(self.pmem_layer_bytes),
            human(self.pmem_meta_bytes),
            human(self.pmem_hot_bytes),
            human(self.pmem_retired_bytes)
        )?;
        writeln!(f, "disk used  {}", human(self.disk_used_bytes))?;
        writeln!(f, "tracer     {} ({})", self.tracer, self.tracer_reason)?;
        if self.unsynced_layers > 0 {
            writeln!(
                f,
                "  write-back pending for {} layer(s); {} of blobs kept in {} until it is done",
                self.unsynced_layers,
                human(self.unsynced_blob_bytes),
                self.unsynced_dir.display()
            )?;
        }
        match &self.tiering_reason {
            None => {
                writeln!(
                    f,
                    "tiering    file-granular (metadata layers + hot data layers)"
                )?;
                writeln!(
                    f,
                    "  mounts    {} tiered, {} with hot data layers interleaved \
                     (a lower layer's hot file is shadowed above; those may read the disk tier)",
                    self.tiered_mounts, self.interleaved_mounts
                )?;
            }
            Some(why) => writeln!(f, "tiering    whole-layer: {why}")?,
        }
        writeln!(
            f,
            "store      {} images, {} layers ({} pmem, {} disk), {} mounts; placement {}",
            self.images,
            self.layers,
            self.pmem_layers,
            self.disk_layers,
            self.mounts,
            self.placement
        )?;
        writeln!(
            f,
            "containerd {} snapshots; socket {}",
            self.snapshots,
            self.snapshotter_socket
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "disabled".into())
        )?;
        for r in &self.recordings {
            writeln!(
                f,
                "  recording {} (pid {}), started {}",
                r.image,
                r.pid,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.started_ms)
                )
            )?;
        }
        if !self.migrations_pending.is_empty() {
            writeln!(
                f,
                "  migration pending: {}",
                self.migrations_pending.join(", ")
            )?;
        }
        for fb in &self.engine_fallbacks {
            writeln!(
                f,
                "  fallback  {}: containerd unpacked it itself, without LASS ({} time(s)){}: {}",
                fb.image,
                fb.count,
                if fb.auth {
                    "; registry credentials"
                } else {
                    ""
                },
                fb.reason
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            config: "/etc/nvtier/config.toml".into(),
            damaged_images: BTreeMap::new(),
            dax: DaxState::Emulated,
            disk_dir: "/srv/disk".into(),
            disk_fs: Some(FsSpace {
                free: 1 << 30,
                total: 2 << 30,
            }),
            disk_layer_sync: DiskLayerSync::Background,
            disk_layers: 3,
            disk_used_bytes: 3 << 20,
            engine_fallbacks: Vec::new(),
            images: 2,
            interleaved_mounts: 1,
            layers: 5,
            max_concurrent_downloads: 3,
            migrations_pending: Vec::new(),
            mounts: 4,
            placement: Placement::Lass,
            pmem_budget_bytes: 4 << 20,
            pmem_dir: "/mnt/pmem".into(),
            pmem_fs: None,
            pmem_hot_bytes: 512 << 10,
            pmem_layer_bytes: 1 << 20,
            pmem_layers: 2,
            pmem_meta_bytes: 1024,
            pmem_retired_bytes: 0,
            pmem_used_bytes: 1 << 20,
            recordings: Vec::new(),
            snapshots: 6,
            snapshotter_socket: Some("/run/nvtier/snapshotter.sock".into()),
            state_dir: "/var/lib/nvtier".into(),
            tiered_mounts: 2,
            tiering: "file-granular".into(),
            tiering_reason: None,
            tiers: vec![],
            tracer: "fanotify".into(),
            tracer_reason: "forced by NVTIER_TRACER".into(),
            unsynced_blob_bytes: 0,
            unsynced_layers: 0,
            unsynced_dir: "/var/lib/nvtier/unsynced".into(),
        }
    }

    #[test]
    fn text_file_granular() {
        let text = status().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "config     /etc/nvtier/config.toml",
                "pmem tier  /mnt/pmem (DAX: emulated)",
                "disk tier  /srv/disk",
                "budget     1.0 MiB of 4.0 MiB pmem used (25.0%)",
                "  of which  layers 1.0 MiB, metadata layers 1.0 KiB, hot copies 512.0 KiB, \
                 retired (still mounted) 0 B",
                "disk used  3.0 MiB",
                "tracer     fanotify (forced by NVTIER_TRACER)",
                "tiering    file-granular (metadata layers + hot data layers)",
                "  mounts    2 tiered, 1 with hot data layers interleaved (a lower layer's hot \
                 file is shadowed above; those may read the disk tier)",
                "store      2 images, 5 layers (2 pmem, 3 disk), 4 mounts; placement lass",
                "containerd 6 snapshots; socket /run/nvtier/snapshotter.sock",
            ]
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn text_whole_layer_pending_write_back() {
        let s = Status {
            pmem_budget_bytes: 0,
            tiering: "whole-layer".into(),
            tiering_reason: Some("tiering = false in /etc/nvtier/config.toml".into()),
            unsynced_layers: 2,
            unsynced_blob_bytes: 3 << 20,
            snapshotter_socket: None,
            ..status()
        };
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11);
        assert_eq!(lines[3], "budget     1.0 MiB of 0 B pmem used (0.0%)");
        assert_eq!(
            lines[7],
            "  write-back pending for 2 layer(s); 3.0 MiB of blobs kept in \
             /var/lib/nvtier/unsynced until it is done"
        );
        assert_eq!(
            lines[8],
            "tiering    whole-layer: tiering = false in /etc/nvtier/config.toml"
        );
        assert_eq!(lines[10], "containerd 6 snapshots; socket disabled");
    }

    #[test]
    fn text_lost_tier_and_damaged_image() {
        let mut damaged = BTreeMap::new();
        damaged.insert(
            "r/demo:1".to_string(),
            vec!["layer 0123456789ab lost from the pmem tier".to_string()],
        );
        let s = Status {
            damaged_images: damaged,
            tiers: vec![TierRow {
                tier: TierKind::Pmem,
                state: TierState::Replaced {
                    previous_id: "00ff".into(),
                },
                lost_layers: 2,
                lost_hot_generations: 3,
                lost_meta_layers: 1,
                lost_snapshots: 0,
            }],
            ..status()
        };
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[3],
            "  pmem tier replaced (was 00ff; content checked); lost: 2 layer(s), 3 hot \
             generation(s), 1 metadata layer(s), 0 snapshot(s)"
        );
        assert_eq!(
            lines[4],
            "damaged    r/demo:1: layer 0123456789ab lost from the pmem tier; run `nvtier repair r/demo:1`"
        );
        let v = serde_json::to_value(&s).expect("json");
        let fb = Status {
            engine_fallbacks: vec![crate::store::fallbacks::Fallback {
                image: "r/private:1".into(),
                auth: true,
                reason: "registry r refused access".into(),
                at_ms: 1,
                count: 2,
            }],
            ..status()
        };
        let rec = Status {
            recordings: vec![crate::record::RecordingState {
                image: "r/demo:1".into(),
                pid: 42,
                started_ms: 0,
            }],
            migrations_pending: vec!["r/demo:1".into()],
            ..status()
        };
        let t = rec.to_string();
        assert!(
            t.contains("  recording r/demo:1 (pid 42), started 1970-01-01T00:00:00Z"),
            "{t}"
        );
        assert!(t.contains("  migration pending: r/demo:1"), "{t}");
        let text = fb.to_string();
        assert_eq!(
            text.lines().last(),
            Some(
                "  fallback  r/private:1: containerd unpacked it itself, without LASS (2 time(s)); \
                 registry credentials: registry r refused access"
            )
        );
        assert_eq!(
            serde_json::to_value(&fb).expect("json")["engine_fallbacks"][0]["auth"],
            true
        );
        assert_eq!(v["tiers"][0]["state"], "replaced");
        assert_eq!(v["tiers"][0]["previous_id"], "00ff");
        assert_eq!(v["tiers"][0]["lost_layers"], 2);
        assert_eq!(
            v["damaged_images"]["r/demo:1"][0],
            "layer 0123456789ab lost from the pmem tier"
        );
    }

    #[test]
    fn json_keys_and_types() {
        let v = serde_json::to_value(status()).expect("json");
        let keys = crate::testutil::object_keys(&v);
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 37);
        assert!(v.get("unsynced_dir").is_none());
        assert_eq!(v["recordings"], serde_json::json!([]));
        assert_eq!(v["migrations_pending"], serde_json::json!([]));
        assert_eq!(v["dax"], "emulated");
        assert_eq!(v["placement"], "lass");
        assert_eq!(v["disk_layer_sync"], "background");
        assert_eq!(
            v["disk_fs"],
            serde_json::json!({"free": 1u64 << 30, "total": 2u64 << 30})
        );
        assert!(v["pmem_fs"].is_null());
        assert!(v["tiering_reason"].is_null());
        assert_eq!(v["snapshotter_socket"], "/run/nvtier/snapshotter.sock");
    }
}
