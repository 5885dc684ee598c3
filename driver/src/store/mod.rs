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
pub mod hot;
pub mod journal;
mod meta;
pub mod profiles;
#[cfg(test)]
mod profiles_proptests;
mod recover;

pub use budget::Reservation;
pub use durable::{boot_id, SyncReport, Unsynced};
pub use meta::{
    read_all as meta_read_all, read_json as meta_read, ImageRecord, LayerMeta, MountRecord,
    SnapshotKind, SnapshotRecord,
};
pub(crate) use recover::{gc_hot, retire_pmem_copy};

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, syncfs, write_atomic};
use crate::tier::{Tier, TierKind};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

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
    pub fn open(cfg: &Config) -> Result<Store> {
        let pmem = Tier::open(TierKind::Pmem, &cfg.pmem_dir)?;
        let disk = Tier::open(TierKind::Disk, &cfg.disk_dir)?;
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
        self.tier(self.cfg.upper_tier).root.join("containers")
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

    /// Remove staging directories, orphaned layer directories, partial
    /// downloads and reservations left by killed processes.
    fn cleanup_leftovers(&self) -> Result<()> {
        for t in [&self.pmem, &self.disk] {
            // Staging: `<hex>.<rand>`; free if nobody holds the chain lock.
            for e in fs::read_dir(t.staging_dir()).ctx("list", t.staging_dir())? {
                let e = e.ctx("list", t.staging_dir())?;
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.split('.').next().unwrap_or("").to_string();
                if hex.len() != 64 {
                    continue;
                }
                if let Some(_l) = self.try_lock_chain_hex(&hex)? {
                    tracing::info!(path = %e.path().display(), "removing staging leftover");
                    fs::remove_dir_all(e.path()).ctx("remove staging leftover", e.path())?;
                }
            }
            // Layer directories without metadata (crash between rename and
            // metadata write, or during deletion).
            for e in fs::read_dir(t.layers_dir()).ctx("list", t.layers_dir())? {
                let e = e.ctx("list", t.layers_dir())?;
                let hex = e.file_name().to_string_lossy().into_owned();
                if hex.len() != 64 || self.layers_meta_dir().join(format!("{hex}.json")).exists() {
                    continue;
                }
                if let Some(_l) = self.try_lock_chain_hex(&hex)? {
                    if !self.layers_meta_dir().join(format!("{hex}.json")).exists() {
                        tracing::info!(path = %e.path().display(), "removing orphaned layer directory");
                        fs::remove_dir_all(e.path()).ctx("remove orphaned layer", e.path())?;
                    }
                }
            }
        }
        for e in fs::read_dir(self.downloads_dir()).ctx("list", self.downloads_dir())? {
            let e = e.ctx("list", self.downloads_dir())?;
            let name = e.file_name().to_string_lossy().into_owned();
            // `<hex>.<pid>.partial`
            let pid: u32 = name
                .split('.')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if !pid_alive(pid) {
                let _ = fs::remove_file(e.path());
            }
        }
        budget::cleanup_dead(self)?;
        recover::recover(self)?;
        self.recover_unsynced()?;
        Ok(())
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
    pub fn pmem_layer_bytes(&self) -> Result<u64> {
        Ok(self
            .layers()?
            .iter()
            .filter(|l| l.tier == TierKind::Pmem)
            .map(|l| l.charged_bytes)
            .sum())
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

    // ---- mounts ----

    pub fn mount_record_path(&self, target: &Path) -> PathBuf {
        self.mounts_dir()
            .join(format!("{}.json", name_key(&target.to_string_lossy())))
    }

    pub fn mounts(&self) -> Result<Vec<MountRecord>> {
        meta::read_all(&self.mounts_dir())
    }

    // ---- references and GC ----

    /// How many images, mounts and containerd snapshots reference each
    /// chainID.
    pub fn refcounts(&self) -> Result<BTreeMap<String, u32>> {
        let mut m = BTreeMap::new();
        for i in self.images()? {
            for c in &i.chain_ids {
                *m.entry(c.clone()).or_insert(0) += 1;
            }
        }
        for mr in self.mounts()? {
            for c in &mr.chain_ids {
                *m.entry(c.clone()).or_insert(0) += 1;
            }
        }
        for c in self.graph_driver_refs()? {
            *m.entry(c).or_insert(0) += 1;
        }
        for s in self.snapshots()? {
            if let Some(c) = s.layer {
                *m.entry(c).or_insert(0) += 1;
            }
        }
        Ok(m)
    }

    /// Store layers that Docker graph-driver layers use as their content
    /// (the `chain_id` of each record in [`Store::graph_layers_dir`]). They
    /// count as references, so `nvtier rm`/`gc` never frees a layer Docker
    /// still has.
    pub fn graph_driver_refs(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct GraphRef {
            #[serde(default)]
            chain_id: Option<String>,
        }
        let dir = self.graph_layers_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let refs: Vec<GraphRef> = meta::read_all(&dir)?;
        Ok(refs.into_iter().filter_map(|r| r.chain_id).collect())
    }

    /// Collect unreferenced layers. Skips (returns an empty report) when a
    /// pull is running; that pull's own end runs GC again.
    pub fn gc(&self) -> Result<GcReport> {
        match self.try_lock_gc()? {
            Some(l) => self.gc_locked(&l),
            None => Ok(GcReport::default()),
        }
    }

    fn gc_locked(&self, _gc: &Lock) -> Result<GcReport> {
        let _l = self.lock_store()?;
        let referenced: HashSet<String> = self.refcounts()?.into_keys().collect();
        let mut report = GcReport::default();
        for l in self.layers()? {
            if referenced.contains(&l.chain_id) {
                continue;
            }
            let dir = self.layer_dir(&l)?;
            let mp = self.layer_meta_path(&l.chain_id)?;
            // Metadata first: from here on the layer does not exist, and a
            // crash leaves only an orphan directory that start-up removes.
            fs::remove_file(&mp).ctx("remove layer metadata", &mp)?;
            fs::remove_dir_all(&dir).ctx("remove layer directory", &dir)?;
            // A kept blob waiting for the write-back of a layer that is gone.
            self.drop_unsynced(digest_hex(&l.chain_id)?)?;
            report.removed.push(l.chain_id.clone());
            match l.tier {
                TierKind::Pmem => report.pmem_bytes_freed += l.charged_bytes,
                TierKind::Disk => report.disk_bytes_freed += l.charged_bytes,
            }
        }
        fsync_dir(&self.layers_meta_dir())?;
        // Metadata layers, hot generations and retired copies nobody uses.
        recover::gc_hot_locked(self)?;
        Ok(report)
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub pmem_bytes_freed: u64,
    pub disk_bytes_freed: u64,
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
    fn digest_hex_validates() {
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(digest_hex("sha256:../../etc").is_err());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
    }
}
