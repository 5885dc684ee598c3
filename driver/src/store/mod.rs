//! The layer and image store.
//!
//! Layout:
//! - `STATE/layers/<chain>.json`: layer metadata; a layer exists exactly when
//!   this file exists. Its files live in `<tier>/layers/<chain>/`.
//! - `STATE/images/<sha256(name)>.json`: image records (name, manifest, the
//!   layer chain).
//! - `STATE/mounts/<sha256(target)>.json`: overlay mounts with refcounts.
//! - `STATE/snapshots/<sha256(key)>.json`: containerd snapshots (see
//!   `server::snapshotter`); `STATE/l/<id>`: their short lowerdir links.
//! - `STATE/reservations/`: pmem budget held by extractions in progress.
//! - `STATE/graph/layers/<id>.json`: Docker graph-driver layers (see
//!   `server::docker_plugin`); one whose `chain_id` is set references that
//!   store layer.
//! - `STATE/locks/`: flock files. `gc.lock` is held shared by every pull and
//!   exclusively by garbage collection, so a layer stored by a running pull
//!   is never collected before its image record is written.
//! - `<tier>/staging/<chain>.<rand>/`: extraction in progress; renamed into
//!   `layers/` when complete.
//! - `STATE/unsynced/`: kept blobs of disk-tier layers published before
//!   their write-back finished (see `durable`).
//! - `STATE/hot/`, `STATE/meta/`, `STATE/retired/`, `STATE/usage/`,
//!   `STATE/journal/` and `PMEM/{hot,meta,retired}/`: hot-file tiering
//!   records and data (see [`hot`], [`journal`]); recovered and collected
//!   here (`recover`).
//! - `STATE/profiles/`: the images' hot profiles (see [`profiles`]).
//!
//! Reference counts are derived, never stored: a layer is referenced by every
//! image whose chain contains it, every mount that uses it and every Docker
//! graph-driver layer whose content it is. Nothing can
//! drift after a crash.

mod budget;
mod durable;
pub mod fallbacks;
mod gc;
pub mod health;
pub mod hot;
pub mod identity;
pub mod journal;
mod leftovers;
mod meta;
pub mod profiles;
#[cfg(test)]
mod profiles_proptests;
pub mod rates;
mod recover;

pub use budget::Reservation;
pub use durable::{boot_id, SyncReport, Unsynced};
pub use gc::GcReport;
pub use meta::{
    read_all as meta_read_all, read_json as meta_read, ImageOrigin, ImageRecord, LayerMeta,
    MountRecord, SnapshotKind, SnapshotRecord,
};
pub(crate) use recover::{gc_hot, retire_pmem_copy};

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, syncfs, write_atomic};
use crate::tier::{Tier, TierKind};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

/// An image config's `rootfs.diff_ids` (`None` without that array; entries
/// that are not strings are skipped).
pub fn config_diff_ids(config: &serde_json::Value) -> Option<Vec<String>> {
    config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
}

/// OCI chainID: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let h = Sha256::digest(format!("{parent} {d}").as_bytes());
                format!("sha256:{}", hex::encode(h))
            }
        };
        out.push(next);
    }
    out
}

/// The hex part of a `sha256:` digest, validated (used as a file name).
pub fn digest_hex(d: &str) -> Result<&str> {
    let h = d
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::Other(format!("unsupported digest {d:?}: only sha256")))?;
    if h.len() != 64
        || !h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(Error::Other(format!("malformed digest {d:?}")));
    }
    Ok(h)
}

fn name_key(name: &str) -> String {
    hex::encode(Sha256::digest(name.as_bytes()))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// An open store.
#[derive(Debug, Clone)]
pub struct Store {
    pub cfg: Config,
    pub pmem: Tier,
    pub disk: Tier,
}

/// A held flock.
pub type Lock = Flock<File>;

impl Store {
    /// Open the store: check the tier directories, create the layout and
    /// remove leftovers of interrupted work.
    ///
    /// A missing pmem tier (see [`identity`]) does not stop it: the store
    /// opens degraded, neither reads nor writes that tier, and uses it again
    /// once it is back. A missing disk tier is an error.
    pub fn open(cfg: &Config) -> Result<Store> {
        let dstate = identity::check_and_adopt(&cfg.state_dir, TierKind::Disk, &cfg.disk_dir)
            .map_err(|e| Error::Config {
                file: cfg.file.clone(),
                msg: format!("cannot record the disk tier's identity: {e}"),
            })?;
        if let identity::TierState::Missing { reason } = &dstate {
            if cfg.disk_dir.is_dir() {
                return Err(Error::Tier {
                    tier: "disk",
                    path: cfg.disk_dir.clone(),
                    msg: format!("{reason}; mount it, or fix `disk_dir` in the config"),
                });
            }
        }
        let disk = Tier::open(TierKind::Disk, &cfg.disk_dir)?;
        let pstate = identity::check_and_adopt(&cfg.state_dir, TierKind::Pmem, &cfg.pmem_dir)?;
        let pmem = match &pstate {
            identity::TierState::Missing { reason } => {
                tracing::warn!(
                    path = %cfg.pmem_dir.display(), %reason,
                    "the pmem tier is missing: running degraded (new layers go to the disk tier; \
                     images with data on pmem cannot be mounted until it is back)"
                );
                Tier {
                    kind: TierKind::Pmem,
                    root: cfg.pmem_dir.clone(),
                }
            }
            _ => Tier::open(TierKind::Pmem, &cfg.pmem_dir)?,
        };
        let s = Store {
            cfg: cfg.clone(),
            pmem,
            disk,
        };
        for d in [
            s.layers_meta_dir(),
            s.images_dir(),
            s.mounts_dir(),
            s.locks_dir(),
            s.downloads_dir(),
            s.reservations_dir(),
            s.snapshots_dir(),
            s.links_dir(),
            s.containers_dir(),
        ] {
            fs::create_dir_all(&d).map_err(|e| Error::Config {
                file: cfg.file.clone(),
                msg: format!(
                    "cannot create {} (key `state_dir`/`disk_dir`): {e}",
                    d.display()
                ),
            })?;
        }
        s.cleanup_leftovers()?;
        Ok(s)
    }

    pub fn state(&self) -> &Path {
        &self.cfg.state_dir
    }
    pub fn layers_meta_dir(&self) -> PathBuf {
        self.state().join("layers")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.state().join("images")
    }
    pub fn mounts_dir(&self) -> PathBuf {
        self.state().join("mounts")
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.state().join("locks")
    }
    pub fn downloads_dir(&self) -> PathBuf {
        self.state().join("downloads")
    }
    /// Blobs a pull kept for `nvtier serve` to hand on (see
    /// `PullOptions::keep_blobs`); emptied when `serve` starts.
    pub fn kept_blobs_dir(&self) -> PathBuf {
        self.state().join("kept-blobs")
    }
    pub fn reservations_dir(&self) -> PathBuf {
        self.state().join("reservations")
    }
    /// Records of the Docker graph driver plugin, one per Docker layer ID.
    pub fn graph_layers_dir(&self) -> PathBuf {
        self.state().join("graph").join("layers")
    }
    /// containerd snapshot records.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.state().join("snapshots")
    }
    /// Short per-snapshot links used as overlay lowerdirs.
    pub fn links_dir(&self) -> PathBuf {
        self.state().join("l")
    }
    /// The record file of a snapshot key (the key is hashed: never a path).
    pub fn snapshot_path(&self, key: &str) -> PathBuf {
        self.snapshots_dir().join(format!("{}.json", name_key(key)))
    }
    /// Containers' writable layers (`upper_tier`).
    pub fn containers_dir(&self) -> PathBuf {
        self.tier(self.upper_tier()).root.join("containers")
    }
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        meta::read_all(&self.snapshots_dir())
    }
    pub fn tier(&self, k: TierKind) -> &Tier {
        match k {
            TierKind::Pmem => &self.pmem,
            TierKind::Disk => &self.disk,
        }
    }

    fn lock_file(&self, name: &str, arg: FlockArg) -> Result<Option<Lock>> {
        let p = self.locks_dir().join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx("open lock", &p)?;
        match Flock::lock(f, arg) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e).ctx("flock", &p),
        }
    }

    fn must(l: Option<Lock>) -> Result<Lock> {
        l.ok_or_else(|| Error::Other("blocking lock returned without the lock".into()))
    }

    /// The short-held lock for image/mount records.
    pub fn lock_store(&self) -> Result<Lock> {
        Self::must(self.lock_file("store.lock", FlockArg::LockExclusive)?)
    }
    /// Serialises the updates of images' start counts
    /// ([`hot::note_start`]); taken last, held briefly.
    pub(crate) fn lock_usage(&self) -> Result<Lock> {
        Self::must(self.lock_file("usage.lock", FlockArg::LockExclusive)?)
    }
    /// Held shared by pulls for their whole duration.
    pub fn lock_pull(&self) -> Result<Lock> {
        Self::must(self.lock_file("gc.lock", FlockArg::LockShared)?)
    }
    /// Held exclusively by garbage collection.
    pub fn lock_gc(&self) -> Result<Lock> {
        Self::must(self.lock_file("gc.lock", FlockArg::LockExclusive)?)
    }
    pub fn try_lock_gc(&self) -> Result<Option<Lock>> {
        self.lock_file("gc.lock", FlockArg::LockExclusiveNonblock)
    }
    /// Serialises storing of one layer across processes.
    pub fn lock_chain(&self, chain: &str) -> Result<Lock> {
        let h = digest_hex(chain)?;
        Self::must(self.lock_file(&format!("{h}.lock"), FlockArg::LockExclusive)?)
    }
    fn try_lock_chain_hex(&self, hex: &str) -> Result<Option<Lock>> {
        self.lock_file(&format!("{hex}.lock"), FlockArg::LockExclusiveNonblock)
    }

    // ---- layers ----

    fn layer_meta_path(&self, chain: &str) -> Result<PathBuf> {
        Ok(self
            .layers_meta_dir()
            .join(format!("{}.json", digest_hex(chain)?)))
    }

    pub fn layer(&self, chain: &str) -> Result<Option<LayerMeta>> {
        let p = self.layer_meta_path(chain)?;
        meta::read_json(&p)
    }

    pub fn layer_dir(&self, m: &LayerMeta) -> Result<PathBuf> {
        Ok(self.tier(m.tier).layer_dir(digest_hex(&m.chain_id)?))
    }

    /// All layers, oldest first.
    pub fn layers(&self) -> Result<Vec<LayerMeta>> {
        let mut v: Vec<LayerMeta> = meta::read_all(&self.layers_meta_dir())?;
        v.sort_by(|a, b| {
            a.created_ms
                .cmp(&b.created_ms)
                .then(a.chain_id.cmp(&b.chain_id))
        });
        Ok(v)
    }

    /// `e`, or when it is `ENOSPC` on a path of `tier`, an
    /// [`Error::TierFull`] that names the tier and what to do.
    pub fn tier_full_or(&self, tier: TierKind, e: Error) -> Error {
        let root = &self.tier(tier).root;
        if e.errno() != Some(libc::ENOSPC) || !e.io_path().is_some_and(|p| p.starts_with(root)) {
            return e;
        }
        Error::TierFull {
            tier: match tier {
                TierKind::Pmem => "pmem",
                TierKind::Disk => "disk",
            },
            path: root.clone(),
            detail: e.to_string(),
        }
    }

    /// Make a fresh staging directory for a layer on a tier.
    pub fn new_staging(&self, tier: TierKind, chain: &str) -> Result<PathBuf> {
        let p = self.tier(tier).staging_dir().join(format!(
            "{}.{:08x}",
            digest_hex(chain)?,
            rand::random::<u32>()
        ));
        fs::create_dir(&p).ctx("create staging directory", &p)?;
        Ok(p)
    }

    /// Publish a fully extracted staging directory as a layer. The caller
    /// holds the chain lock. If `reservation` is given, its pmem bytes are
    /// converted into the layer's in one step under the budget lock.
    pub fn commit_layer(
        &self,
        staging: &Path,
        meta: &LayerMeta,
        reservation: Option<Reservation>,
    ) -> Result<()> {
        let tier = self.tier(meta.tier);
        syncfs(staging)?;
        let dest = tier.layer_dir(digest_hex(&meta.chain_id)?);
        if dest.exists() {
            // Orphan of an earlier crash (we hold the chain lock).
            fs::remove_dir_all(&dest).ctx("remove stale layer directory", &dest)?;
        }
        let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Other(e.to_string()))?;
        let path = self.layer_meta_path(&meta.chain_id)?;
        fs::rename(staging, &dest).ctx("publish layer", &dest)?;
        let r = fsync_dir(&tier.layers_dir()).and_then(|()| match reservation {
            Some(r) => r.convert(|| write_atomic(&path, &json)),
            None => write_atomic(&path, &json),
        });
        if r.is_err() {
            self.unpublish(&path, &dest);
        }
        r
    }

    /// Undo a publication that failed half-way (the caller holds the chain
    /// lock, and the layer did not exist before): metadata first, as in
    /// garbage collection. Best effort: start-up removes what is left.
    fn unpublish(&self, meta_path: &Path, dir: &Path) {
        let _ = fs::remove_file(meta_path);
        let _ = fs::remove_dir_all(dir);
    }

    // ---- budget ----

    /// Bytes of pmem charged to stored layers.
    /// Layers lost from the tier (see [`health`]) hold nothing.
    pub fn pmem_layer_bytes(&self) -> Result<u64> {
        let mut n = 0;
        for l in self.layers()?.iter().filter(|l| l.tier == TierKind::Pmem) {
            if self.pmem.layer_dir(digest_hex(&l.chain_id)?).is_dir() {
                n += l.charged_bytes;
            }
        }
        Ok(n)
    }

    /// Bytes of pmem committed: stored layers plus hot-file tiering
    /// (metadata layers, hot copies, retired copies still mounted).
    pub fn pmem_committed(&self) -> Result<u64> {
        Ok(self.pmem_layer_bytes()? + hot::pmem_use(self)?.total())
    }

    /// Bytes of pmem in use: committed plus live reservations.
    pub fn pmem_used(&self) -> Result<u64> {
        Ok(self.pmem_committed()? + budget::reserved(self)?)
    }

    /// Rewrite a stored layer's metadata (tier relocation). The caller
    /// holds the chain lock.
    pub(crate) fn put_layer_meta(&self, meta: &LayerMeta) -> Result<()> {
        let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&self.layer_meta_path(&meta.chain_id)?, &json)
    }

    /// Serialises migrations (held for a whole `nvtier migrate`).
    pub fn lock_migrate(&self) -> Result<Lock> {
        Self::must(self.lock_file("migrate.lock", FlockArg::LockExclusive)?)
    }
    pub(crate) fn try_lock_migrate(&self) -> Result<Option<Lock>> {
        self.lock_file("migrate.lock", FlockArg::LockExclusiveNonblock)
    }

    pub fn reserve(&self) -> Reservation {
        Reservation::new(self.clone())
    }

    // ---- images ----

    pub fn image_path(&self, name: &str) -> PathBuf {
        self.images_dir().join(format!("{}.json", name_key(name)))
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        meta::read_json(&self.image_path(name))
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut v: Vec<ImageRecord> = meta::read_all(&self.images_dir())?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub fn put_image(&self, rec: &ImageRecord) -> Result<()> {
        let _l = self.lock_store()?;
        let json = serde_json::to_vec_pretty(rec).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&self.image_path(&rec.name), &json)
    }

    /// Remove an image record and collect layers nobody references.
    pub fn remove_image(&self, name: &str) -> Result<GcReport> {
        // A running migration finishes first (it must not see its layers
        // vanish).
        let _m = self.lock_migrate()?;
        let gc = self.lock_gc()?;
        {
            let _l = self.lock_store()?;
            let p = self.image_path(name);
            if !p.exists() {
                return Err(Error::ImageNotFound(name.to_string()));
            }
            fs::remove_file(&p).ctx("remove image record", &p)?;
            fsync_dir(&self.images_dir())?;
        }
        self.gc_locked(&gc)
    }

    /// Remove the records of the images an engine had nvtier pull
    /// ([`ImageOrigin::Engine`]) whose top layer is `top`; the caller has
    /// seen that no containerd snapshot is backed by `top` any more. The
    /// records of `nvtier pull` are never touched. Returns the names
    /// removed; the caller collects the layers.
    pub fn remove_engine_images_on(&self, top: &str) -> Result<Vec<String>> {
        let _l = self.lock_store()?;
        let mut gone = Vec::new();
        for i in self.images()? {
            if i.origin != ImageOrigin::Engine
                || i.chain_ids.last().map(String::as_str) != Some(top)
            {
                continue;
            }
            let p = self.image_path(&i.name);
            match fs::remove_file(&p) {
                Ok(()) => gone.push(i.name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("remove image record", &p),
            }
        }
        if !gone.is_empty() {
            fsync_dir(&self.images_dir())?;
        }
        Ok(gone)
    }

    // ---- mounts ----

    pub fn mount_record_path(&self, target: &Path) -> PathBuf {
        self.mounts_dir()
            .join(format!("{}.json", name_key(&target.to_string_lossy())))
    }

    pub fn mounts(&self) -> Result<Vec<MountRecord>> {
        meta::read_all(&self.mounts_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[d('a'), d('b'), d('c')]);
        assert_eq!(ids[0], d('a'));
        let c1 = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{} {}", d('a'), d('b')).as_bytes()))
        );
        assert_eq!(ids[1], c1);
        let c2 = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{c1} {}", d('c')).as_bytes()))
        );
        assert_eq!(ids[2], c2);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn open_removes_temp_files_of_killed_record_writes() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = |s: &str| d.path().join(s);
        for s in ["pmem", "disk", "state"] {
            fs::create_dir(p(s)).expect("mkdir");
        }
        let text = format!(
            "state_dir = {:?}\npmem_dir = {:?}\ndisk_dir = {:?}\npmem_budget = \"1M\"\n",
            p("state"),
            p("pmem"),
            p("disk")
        );
        let cfg = Config::parse(&p("config.toml"), &text).expect("config");
        drop(Store::open(&cfg).expect("store"));
        // A process killed between create and rename (pid 0 never runs a
        // writer), next to one of a live writer (this process).
        let me = std::process::id();
        let dead = [
            "state/layers/.aa.json.tmp.0.17",
            "state/snapshots/.bb.json.tmp.0.18",
            "state/reservations/.1.2.json.tmp.0.19",
        ];
        let live = format!("state/images/.cc.json.tmp.{me}.20");
        fs::create_dir_all(p("state/graph/layers")).expect("mkdir");
        let deep = "state/graph/layers/.dd.json.tmp.0.21";
        for f in dead.iter().copied().chain([live.as_str(), deep]) {
            fs::write(p(f), b"{").expect("write");
        }
        drop(Store::open(&cfg).expect("store"));
        for f in dead.iter().copied().chain([deep]) {
            assert!(!p(f).exists(), "{f} left");
        }
        assert!(p(&live).exists(), "a live writer's temp file was removed");
    }

    #[test]
    fn digest_hex_validates() {
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(digest_hex("sha256:../../etc").is_err());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
    }
}
