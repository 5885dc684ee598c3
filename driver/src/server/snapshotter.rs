//! containerd proxy snapshotter (`containerd.services.snapshots.v1`).
//!
//! Semantics follow containerd's overlay snapshotter:
//! - `Prepare` makes an *active* snapshot: an upper + work dir, mounted as an
//!   overlay over the parent chain (a read-write bind of the empty upper when
//!   there is no parent). `View` makes a read-only one (a read-only bind of
//!   the single parent, or an overlay with lowerdirs only).
//! - `Commit` turns an active snapshot into an immutable *committed* one.
//!   When the snapshot is an unpacked image layer (label
//!   `containerd.io/snapshot.ref=<chainID>`, set by containerd's unpacker),
//!   its upper dir is published as an nvtier store layer by a rename: the
//!   committed snapshot IS that layer, and its record references it, so
//!   `nvtier rm`/GC never frees a layer containerd still uses.
//! - `Remove` of a snapshot with children fails with FailedPrecondition;
//!   unknown keys give NotFound; existing keys give AlreadyExists.
//!
//! Placement on the engine's unpack path (LASS approximation, see
//! `nvtier_policy::unpack`): the tier of an unpacked layer is fixed when its
//! `Prepare` arrives (the moment its storing begins): pmem exactly when no
//! download is running in containerd's content ingest area. The upper dir is
//! created on that tier, so `Commit` is a rename, never a copy.
//!
//! Remote-snapshotter pull: a `Prepare` with `containerd.io/snapshot.ref` and
//! the CRI labels (`containerd.io/snapshot/cri.image-ref`, …) makes nvtier
//! pull the whole image itself with LASS ([`crate::pull::pull`], deduplicated
//! per image), create the committed snapshot for the chainID, and answer
//! AlreadyExists: containerd then skips fetching and unpacking the layer.
//!
//! Keys are never used as paths: records live in
//! `STATE/snapshots/<sha256(key)>.json`, directories are named by a random
//! short id. Overlay lowerdirs are short links `STATE/l/<id>` so that a mount
//! spec with many layers stays below the one-page limit of mount(2) options
//! (containerd performs the mount itself, with the legacy API).

use crate::error::{Error, IoContext, Result};
use crate::extract::charged_bytes;
use crate::fsutil::{fsync_dir, write_atomic};
use crate::pull::{pull, PullOptions};
use crate::store::hot::MountTiering;
use crate::store::{digest_hex, now_ms, LayerMeta, SnapshotKind, SnapshotRecord, Store};
use crate::tier::TierKind;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind, Snapshotter, Usage};
use nvtier_policy::unpack::{decide_unpack, UnpackMoment, INGEST_FRESH_MS};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const LABEL_REF: &str = "containerd.io/snapshot.ref";
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const LABEL_CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

/// Longest key/name accepted (containerd's own keys are < 200 bytes).
pub const MAX_KEY_BYTES: usize = 4096;
/// containerd's limit for one label (key + value).
pub const MAX_LABEL_BYTES: usize = 4096;
pub const MAX_LABELS: usize = 256;

/// Errors of the snapshotter, mapped to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] Error),
}

impl From<SnapError> for tonic::Status {
    fn from(e: SnapError) -> Self {
        let msg = e.to_string();
        match e {
            SnapError::NotFound(_) => tonic::Status::not_found(msg),
            SnapError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            SnapError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            SnapError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            SnapError::Store(_) => tonic::Status::internal(msg),
        }
    }
}

type SResult<T> = std::result::Result<T, SnapError>;

/// Validate a snapshot key or name: 1..=4096 bytes, no NUL or control
/// characters. Keys are never used as paths, so `/` and `..` are fine.
pub fn validate_key(what: &str, k: &str) -> SResult<()> {
    if k.is_empty() {
        return Err(SnapError::InvalidArgument(format!("{what} is empty")));
    }
    if k.len() > MAX_KEY_BYTES {
        return Err(SnapError::InvalidArgument(format!(
            "{what} is {} bytes, the limit is {MAX_KEY_BYTES}",
            k.len()
        )));
    }
    if k.chars().any(char::is_control) {
        return Err(SnapError::InvalidArgument(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

pub fn validate_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> SResult<()> {
    let mut n = 0;
    for (k, v) in labels {
        n += 1;
        if n > MAX_LABELS {
            return Err(SnapError::InvalidArgument(format!(
                "more than {MAX_LABELS} labels"
            )));
        }
        if k.is_empty() || k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(SnapError::InvalidArgument(format!(
                "label {:?}: key must be non-empty and key+value at most {MAX_LABEL_BYTES} bytes",
                k.chars().take(64).collect::<String>()
            )));
        }
        if k.chars().any(char::is_control) {
            return Err(SnapError::InvalidArgument(
                "label key contains control characters".into(),
            ));
        }
    }
    Ok(())
}

/// The chainID an unpack snapshot is for: the `containerd.io/snapshot.ref`
/// label (set by containerd's pull-time unpacker), or containerd's unpack key
/// format `[<ns>/<n>/]extract-<unique> <chainID>` (used by `ctr`'s separate
/// unpack, which sets no label). `None` for any other snapshot.
pub fn unpack_chain(key: &str, labels: &BTreeMap<String, String>) -> Option<String> {
    if let Some(t) = labels.get(LABEL_REF).filter(|t| digest_hex(t).is_ok()) {
        return Some(t.clone());
    }
    let mut parts = key.splitn(3, '/');
    let (a, b, c) = (parts.next(), parts.next(), parts.next());
    let last = match (a, b, c) {
        (Some(_), Some(n), Some(rest)) if n.bytes().all(|x| x.is_ascii_digit()) => rest,
        _ => key,
    };
    let (head, chain) = last.rsplit_once(' ')?;
    (head.starts_with("extract-") && digest_hex(chain).is_ok()).then(|| chain.to_string())
}

/// The mounts of a snapshot. `lowers` are the parent chain's directories,
/// top-most (the direct parent) first.
pub fn build_mounts(
    kind: SnapshotKind,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Vec<Mount> {
    let bind = |src: &Path, ro: bool| Mount {
        r#type: "bind".into(),
        source: src.to_string_lossy().into_owned(),
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    };
    let lowerdir = || {
        format!(
            "lowerdir={}",
            lowers
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(":")
        )
    };
    let overlay = |options: Vec<String>| Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    };
    match kind {
        SnapshotKind::Active | SnapshotKind::Committed if lowers.is_empty() => {
            vec![bind(upper, kind == SnapshotKind::Committed)]
        }
        SnapshotKind::Active => vec![overlay(vec![
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            lowerdir(),
        ])],
        SnapshotKind::Committed => vec![overlay(vec!["ro".into(), lowerdir()])],
        SnapshotKind::View => match lowers {
            [] => vec![bind(upper, true)],
            [one] => vec![bind(one, true)],
            _ => vec![overlay(vec!["ro".into(), lowerdir()])],
        },
    }
}

/// The mount of an active snapshot of a tiered image: the committed
/// snapshots above the image (`above`, e.g. dockerd's init layer) and the
/// image's metadata layer as the regular lower layers, then the data-only
/// layers after `::` (overlayfs legacy syntax, Linux 6.5+), top-most first. `None` when
/// the options would not fit the one page mount(2) takes (containerd mounts
/// with the legacy API) or a path cannot be written in the option.
pub fn build_tiered_mount(
    above: &[PathBuf],
    meta: &Path,
    data: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Option<Mount> {
    let mut lower = String::new();
    for a in above {
        lower.push_str(a.to_str()?);
        lower.push(':');
    }
    lower.push_str(meta.to_str()?);
    for d in data {
        lower.push_str("::");
        lower.push_str(d.to_str()?);
    }
    let options = vec![
        format!("workdir={}", work.to_str()?),
        format!("upperdir={}", upper.to_str()?),
        format!("lowerdir={lower}"),
        "metacopy=on".to_string(),
        "redirect_dir=on".to_string(),
    ];
    let bad = |o: &String| {
        let v = o.split_once('=').map_or("", |(_, v)| v);
        v.contains(',') || v.contains('\\') || (o.starts_with("lowerdir=") && v.contains(":::"))
    };
    if options.iter().any(bad) || options.iter().map(|o| o.len() + 1).sum::<usize>() > 4000 {
        return None;
    }
    Some(Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    })
}

/// `name==v`, `labels."k"==v`, `parent!=v`, `kind==committed`, bare field
/// (exists); clauses separated by `,` are ANDed, filters are ORed.
/// Operators we do not support (`~=`) match everything: containerd re-checks
/// what it walks.
pub fn filter_matches(filters: &[String], info: &Info) -> bool {
    if filters.iter().all(|f| f.trim().is_empty()) {
        return true;
    }
    filters.iter().any(|f| {
        split_clauses(f)
            .iter()
            .all(|c| clause_matches(c.trim(), info))
    })
}

fn split_clauses(f: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in f.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s)
        .replace("\\\"", "\"")
}

fn clause_matches(c: &str, info: &Info) -> bool {
    if c.is_empty() {
        return true;
    }
    let (field, op, value) = if let Some((f, v)) = c.split_once("!=") {
        (f, "!=", Some(unquote(v)))
    } else if let Some((f, v)) = c.split_once("==") {
        (f, "==", Some(unquote(v)))
    } else if c.contains("~=") {
        return true;
    } else {
        (c, "", None)
    };
    let field = field.trim();
    let actual: Option<String> = if let Some(l) = field.strip_prefix("labels.") {
        info.labels.get(&unquote(l)).cloned()
    } else {
        match field {
            "name" => Some(info.name.clone()),
            "parent" => Some(info.parent.clone()),
            "kind" => Some(
                match info.kind {
                    Kind::View => "view",
                    Kind::Active => "active",
                    Kind::Committed => "committed",
                    Kind::Unknown => "unknown",
                }
                .into(),
            ),
            _ => return true,
        }
    };
    match (op, value) {
        ("==", Some(v)) => actual.as_deref() == Some(v.as_str()),
        ("!=", Some(v)) => actual.as_deref() != Some(v.as_str()),
        _ => actual.is_some_and(|a| !a.is_empty()),
    }
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn info_of(r: &SnapshotRecord) -> Info {
    Info {
        kind: match r.kind {
            SnapshotKind::View => Kind::View,
            SnapshotKind::Active => Kind::Active,
            SnapshotKind::Committed => Kind::Committed,
        },
        name: r.key.clone(),
        parent: r.parent.clone(),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at: time_of(r.created_ms),
        updated_at: time_of(r.updated_ms),
    }
}

fn new_id() -> String {
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..10)
        .map(|_| A[rand::random::<usize>() % A.len()] as char)
        .collect()
}

/// (entries, regular-file bytes, bytes charged at 4 KiB per file).
fn tree_charge(dir: &Path) -> std::io::Result<(u64, u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let (mut n, mut bytes, mut charged) = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            n += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                bytes += m.len();
                charged += charged_bytes(m.len());
            }
        }
    }
    Ok((n, bytes, charged))
}

/// One deduplicated pull: its outcome, shared by every waiting Prepare.
type PullCell = Arc<tokio::sync::OnceCell<std::result::Result<(), String>>>;

/// The snapshotter state shared by all requests.
pub struct Inner {
    store: Store,
    snaps: Mutex<BTreeMap<String, SnapshotRecord>>,
    pulls: tokio::sync::Mutex<HashMap<String, PullCell>>,
    ingest_dir: PathBuf,
    /// Whether the next cleanup must look for orphans on the disk tier:
    /// set at start-up (and consumed by the cleanup `open` runs) and
    /// whenever removing a snapshot directory there failed. containerd asks
    /// for a cleanup after every container it removes, and after
    /// `drop_caches` reading the disk tier's directory costs seeks on the
    /// HDD while other containers cold-start.
    disk_scan: std::sync::atomic::AtomicBool,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SnapshotRecord>> {
        self.snaps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snap_dir(&self, r: &SnapshotRecord) -> PathBuf {
        self.store.tier(r.tier).root.join("snapshots").join(&r.id)
    }

    /// The directory holding a snapshot's own files.
    fn content_dir(&self, r: &SnapshotRecord) -> Result<PathBuf> {
        match &r.layer {
            Some(c) => {
                let m = self.store.layer(c)?.ok_or_else(|| {
                    Error::Other(format!(
                        "snapshot {:?}: layer {c} is missing from the store",
                        r.key
                    ))
                })?;
                self.store.layer_dir(&m)
            }
            None => Ok(self.snap_dir(r).join("fs")),
        }
    }

    fn link_path(&self, r: &SnapshotRecord) -> PathBuf {
        self.store.links_dir().join(&r.id)
    }

    /// Point `STATE/l/<id>` at the committed snapshot's directory.
    fn ensure_link(&self, r: &SnapshotRecord) -> Result<PathBuf> {
        let link = self.link_path(r);
        let target = self.content_dir(r)?;
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            return Ok(link);
        }
        let tmp = self
            .store
            .links_dir()
            .join(format!(".{}.{}", r.id, rand::random::<u32>()));
        std::os::unix::fs::symlink(&target, &tmp).ctx("create link", &tmp)?;
        fs::rename(&tmp, &link).ctx("publish link", &link)?;
        Ok(link)
    }

    fn save(&self, r: &SnapshotRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(r).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&self.store.snapshot_path(&r.key), &json)
    }

    fn delete_record(&self, key: &str) -> Result<()> {
        let p = self.store.snapshot_path(key);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove snapshot record", &p),
        }
        fsync_dir(&self.store.snapshots_dir())
    }

    fn unique_id(&self, snaps: &BTreeMap<String, SnapshotRecord>) -> String {
        loop {
            let id = new_id();
            if !snaps.values().any(|r| r.id == id) && !self.store.links_dir().join(&id).exists() {
                return id;
            }
        }
    }

    /// Lower dirs (short links) of the parent chain, direct parent first.
    fn lowers(
        &self,
        snaps: &BTreeMap<String, SnapshotRecord>,
        parent: &str,
    ) -> SResult<Vec<PathBuf>> {
        let mut v = Vec::new();
        let mut p = parent.to_string();
        while !p.is_empty() {
            let r = snaps
                .get(&p)
                .ok_or_else(|| SnapError::NotFound(p.clone()))?;
            v.push(self.ensure_link(r)?);
            if v.len() > 4096 {
                return Err(SnapError::FailedPrecondition(
                    "parent chain too long (cycle?)".into(),
                ));
            }
            p = r.parent.clone();
        }
        Ok(v)
    }

    fn mounts_of(
        &self,
        snaps: &BTreeMap<String, SnapshotRecord>,
        r: &SnapshotRecord,
    ) -> SResult<Vec<Mount>> {
        let d = self.snap_dir(r);
        if let (SnapshotKind::Active, Some(t)) = (r.kind, &r.tiering) {
            match self.tiered_mount(snaps, r, t, &d) {
                Ok(Some(m)) => return Ok(vec![m]),
                Ok(None) => {
                    tracing::warn!(key = %r.key, "tiered mount options too long; mounting whole layers")
                }
                Err(e) => {
                    tracing::warn!(key = %r.key, error = %e, "tiered mount not possible; mounting whole layers")
                }
            }
        }
        let lowers = self.lowers(snaps, &r.parent)?;
        let upper = match r.kind {
            SnapshotKind::Committed => self.content_dir(r)?,
            _ => d.join("fs"),
        };
        Ok(build_mounts(r.kind, &lowers, &upper, &d.join("work")))
    }

    /// The tiered mount recorded for an active snapshot: metadata layer,
    /// then per parent layer (top-most first) its hot generation and its
    /// base (short link).
    fn tiered_mount(
        &self,
        snaps: &BTreeMap<String, SnapshotRecord>,
        r: &SnapshotRecord,
        t: &MountTiering,
        d: &Path,
    ) -> Result<Option<Mount>> {
        let meta = crate::store::hot::meta_dir(&self.store, &format!("sha256:{}", t.meta))?;
        let mut above = Vec::new();
        // Top-most first: (hot generation dir, base link) per layer.
        let mut layers: Vec<(Option<PathBuf>, PathBuf)> = Vec::new();
        let mut p = r.parent.clone();
        while !p.is_empty() {
            let pr = snaps
                .get(&p)
                .ok_or_else(|| Error::Other(format!("parent snapshot {p:?} is gone")))?;
            let Some(c) = pr.layer.as_deref() else {
                if !layers.is_empty() {
                    return Err(Error::Other(format!(
                        "parent snapshot {p:?} below the image is not an nvtier layer"
                    )));
                }
                above.push(self.ensure_link(pr)?);
                p = pr.parent.clone();
                continue;
            };
            let hot = match t.hot.iter().find(|(hc, _)| hc == c) {
                Some((_, g)) => Some(crate::store::hot::gen_dir(&self.store, c, *g)?),
                None => None,
            };
            layers.push((hot, self.ensure_link(pr)?));
            if layers.len() > 4096 {
                return Err(Error::Other("parent chain too long (cycle?)".into()));
            }
            p = pr.parent.clone();
        }
        // The order chosen when the snapshot was prepared (policy indices
        // count from the bottom).
        let policy: Vec<nvtier_policy::datalayers::DataLayer> = layers
            .iter()
            .rev()
            .map(|(h, _)| nvtier_policy::datalayers::DataLayer {
                has_hot: h.is_some(),
                hot_paths: Vec::new(),
            })
            .collect();
        let n = layers.len();
        let data: Vec<PathBuf> = nvtier_policy::datalayers::order(&policy, t.hot_first)
            .into_iter()
            .filter_map(|d| match d {
                nvtier_policy::datalayers::Data::Hot(i) => layers[n - 1 - i].0.clone(),
                nvtier_policy::datalayers::Data::Base(i) => Some(layers[n - 1 - i].1.clone()),
            })
            .collect();
        Ok(build_tiered_mount(
            &above,
            &meta,
            &data,
            &d.join("fs"),
            &d.join("work"),
        ))
    }

    /// An active snapshot on top of an image nvtier pulled (possibly with
    /// committed snapshots in between), with a metadata layer: what its
    /// tiered mount uses. Counts the start for the
    /// migration policy. The caller holds the store lock.
    fn tiering_for(
        &self,
        snaps: &BTreeMap<String, SnapshotRecord>,
        parent: &str,
    ) -> Result<Option<MountTiering>> {
        let mut chain = Vec::new();
        let mut links = Vec::new();
        let mut p = parent.to_string();
        while !p.is_empty() {
            let Some(r) = snaps.get(&p) else {
                return Ok(None);
            };
            // Committed snapshots above the image's layers (dockerd's init
            // layer) stay regular lower layers.
            let Some(c) = &r.layer else {
                if chain.is_empty() && r.kind == SnapshotKind::Committed {
                    p = r.parent.clone();
                    continue;
                }
                return Ok(None);
            };
            chain.push(c.clone());
            links.push(self.ensure_link(r)?);
            if chain.len() > 4096 {
                return Ok(None);
            }
            p = r.parent.clone();
        }
        chain.reverse();
        let images: Vec<_> = self
            .store
            .images()?
            .into_iter()
            .filter(|i| i.chain_ids == chain)
            .collect();
        let mut chosen = None;
        for i in &images {
            if crate::store::hot::meta_record(&self.store, &i.manifest_digest)?.is_some() {
                chosen = Some(i);
                break;
            }
        }
        let Some(img) = chosen.or(images.first()) else {
            return Ok(None);
        };
        crate::store::hot::note_start(&self.store, &img.manifest_digest);
        Ok(crate::tiering::mount_layers(&self.store, img, &links, false)?.map(|(_, _, t)| t))
    }

    fn ingest_ages(&self) -> Option<Vec<u64>> {
        let rd = fs::read_dir(&self.ingest_dir).ok()?;
        let now = SystemTime::now();
        Some(
            rd.flatten()
                .filter_map(|e| {
                    let m = fs::metadata(e.path().join("data"))
                        .or_else(|_| e.metadata())
                        .ok()?;
                    let t = m.modified().ok()?;
                    Some(now.duration_since(t).unwrap_or_default().as_millis() as u64)
                })
                .collect(),
        )
    }

    /// The LASS-approximation tier of an unpack starting now.
    fn unpack_tier(&self) -> Result<TierKind> {
        let ages = self.ingest_ages();
        if ages.is_none() {
            tracing::warn!(dir = %self.ingest_dir.display(), "cannot read containerd's ingest directory (key `containerd_root`); unpacked layers go to disk");
        }
        let free = self
            .store
            .cfg
            .pmem_budget
            .saturating_sub(self.store.pmem_used()?);
        let d = decide_unpack(
            self.store.cfg.placement,
            &UnpackMoment {
                ingest_ages_ms: ages.clone(),
                pmem_free: free,
            },
            INGEST_FRESH_MS,
        );
        tracing::info!(tier = %d.tier(), ingests = ?ages, "unpack begins");
        Ok(d.tier())
    }

    fn create(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: SnapshotKind,
        tier: TierKind,
    ) -> SResult<Vec<Mount>> {
        let mut snaps = self.lock();
        if snaps.contains_key(key) {
            return Err(SnapError::AlreadyExists(key.to_string()));
        }
        if !parent.is_empty() {
            let p = snaps
                .get(parent)
                .ok_or_else(|| SnapError::NotFound(parent.to_string()))?;
            if p.kind != SnapshotKind::Committed {
                return Err(SnapError::FailedPrecondition(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
        }
        let now = now_ms();
        let mut r = SnapshotRecord {
            key: key.to_string(),
            id: self.unique_id(&snaps),
            kind,
            parent: parent.to_string(),
            labels,
            created_ms: now,
            updated_ms: now,
            tier,
            layer: None,
            tiering: None,
        };
        // Tiered mounts: decided and recorded under the store lock, so that
        // a concurrent migration's GC sees the generations this snapshot
        // uses before it frees any.
        let _store_lock = if kind == SnapshotKind::Active && !parent.is_empty() {
            let l = self.store.lock_store()?;
            match self.tiering_for(&snaps, parent) {
                Ok(t) => r.tiering = t,
                Err(e) => {
                    tracing::warn!(key, error = %e, "tiered mount not possible; mounting whole layers")
                }
            }
            Some(l)
        } else {
            None
        };
        let d = self.snap_dir(&r);
        let mk = || -> Result<()> {
            fs::create_dir_all(d.join("fs")).ctx("create snapshot dir", d.join("fs"))?;
            if kind == SnapshotKind::Active {
                fs::create_dir_all(d.join("work")).ctx("create snapshot dir", d.join("work"))?;
            }
            self.save(&r)
        };
        if let Err(e) = mk() {
            if fs::remove_dir_all(&d).is_err() && r.tier == crate::tier::TierKind::Disk {
                self.disk_scan
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            return Err(e.into());
        }
        // The record is on disk: keep memory in step even if building the
        // mounts fails (containerd can ask again with Mounts, or Remove).
        snaps.insert(key.to_string(), r.clone());
        self.mounts_of(&snaps, &r)
    }

    /// Attach an existing nvtier layer (or committed snapshot) for `target`
    /// on top of `parent`. Returns true when containerd can skip the layer.
    fn try_attach(
        &self,
        key: &str,
        parent: &str,
        target: &str,
        labels: &BTreeMap<String, String>,
    ) -> SResult<bool> {
        let mut snaps = self.lock();
        if snaps.contains_key(key) {
            return Err(SnapError::AlreadyExists(key.to_string()));
        }
        if snaps.values().any(|r| {
            r.kind == SnapshotKind::Committed
                && r.parent == parent
                && r.labels.get(LABEL_REF).map(String::as_str) == Some(target)
        }) {
            return Ok(true);
        }
        let Some(layer) = self.store.layer(target)? else {
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
        {
            // The record must exist before GC can run again.
            let _gc = self.store.lock_pull()?;
            if self.store.layer(target)?.is_none() {
                return Ok(false);
            }
            self.save(&r)?;
        }
        self.ensure_link(&r)?;
        tracing::info!(key, name = %name, layer = target, tier = %layer.tier, "layer provided by nvtier; containerd skips it");
        snaps.insert(name, r);
        Ok(true)
    }

    fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> SResult<()> {
        let mut snaps = self.lock();
        let r = snaps
            .get(key)
            .cloned()
            .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
        if r.kind != SnapshotKind::Active {
            return Err(SnapError::FailedPrecondition(format!(
                "snapshot {key:?} is not active; only active snapshots can be committed"
            )));
        }
        if snaps.contains_key(name) {
            return Err(SnapError::AlreadyExists(name.to_string()));
        }
        let chain = labels
            .get(LABEL_REF)
            .filter(|c| digest_hex(c).is_ok())
            .cloned()
            .or_else(|| unpack_chain(key, &r.labels));
        let parent_layer = match snaps.get(&r.parent) {
            Some(p) => p.layer.clone().map(Some),
            None => Some(None),
        };
        let now = now_ms();
        let mut c = SnapshotRecord {
            key: name.to_string(),
            kind: SnapshotKind::Committed,
            labels,
            updated_ms: now,
            created_ms: now,
            // Committed snapshots mount whole layers.
            tiering: None,
            ..r.clone()
        };
        let d = self.snap_dir(&r);
        match (chain, parent_layer) {
            (Some(chain), Some(parent_layer)) => {
                let _gc = self.store.lock_pull()?;
                let _cl = self.store.lock_chain(&chain)?;
                match self.store.layer(&chain)? {
                    Some(m) => {
                        tracing::info!(layer = %chain, "layer already in the store; dropping the unpacked copy");
                        c.tier = m.tier;
                    }
                    None => {
                        let m = self.publish_layer(&r, &chain, parent_layer)?;
                        c.tier = m.tier;
                    }
                }
                c.layer = Some(chain);
                // A fresh id: if we crash between the two record writes
                // below, the stale active record shares nothing (link,
                // directory) with the committed one.
                c.id = self.unique_id(&snaps);
                // Referenced from here on (we still hold the GC lock).
                self.save(&c)?;
                self.delete_record(key)?;
                let _ = fs::remove_dir_all(&d);
            }
            _ => {
                self.save(&c)?;
                self.delete_record(key)?;
                let _ = fs::remove_dir_all(d.join("work"));
            }
        }
        snaps.remove(key);
        self.ensure_link(&c)?;
        snaps.insert(name.to_string(), c);
        Ok(())
    }

    /// Move an active snapshot's upper dir into the store as layer `chain`.
    /// The caller holds the chain lock and the shared GC lock.
    fn publish_layer(
        &self,
        r: &SnapshotRecord,
        chain: &str,
        parent: Option<String>,
    ) -> Result<LayerMeta> {
        let d = self.snap_dir(r);
        let upper = d.join("fs");
        let (files, file_bytes, charged) = tree_charge(&upper).ctx("measure", &upper)?;
        let mut meta = LayerMeta {
            chain_id: chain.to_string(),
            // containerd does not tell the snapshotter the diffID; for a
            // base layer it equals the chainID.
            diff_id: if parent.is_none() {
                chain.to_string()
            } else {
                String::new()
            },
            blob_digest: None,
            media_type: None,
            parent,
            tier: r.tier,
            compressed_bytes: 0,
            uncompressed_bytes: 0,
            file_bytes,
            charged_bytes: charged,
            file_count: files,
            created_ms: now_ms(),
            store_ms: now_ms().saturating_sub(r.created_ms),
        };
        if r.tier == TierKind::Pmem {
            let mut res = self.store.reserve();
            match res.charge(charged) {
                Ok(()) => {
                    self.store.commit_layer(&upper, &meta, Some(res))?;
                    return Ok(meta);
                }
                Err(Error::BudgetExhausted(why)) => {
                    drop(res);
                    tracing::warn!(layer = %chain, %why, "pmem budget cannot hold the unpacked layer; moving it to disk");
                    let staging = self.store.new_staging(TierKind::Disk, chain)?;
                    let out = std::process::Command::new("cp")
                        .arg("-a")
                        .arg(format!("{}/.", upper.display()))
                        .arg(&staging)
                        .output()
                        .ctx("run cp", &staging)?;
                    if !out.status.success() {
                        let _ = fs::remove_dir_all(&staging);
                        return Err(Error::Other(format!(
                            "copying layer {chain} to disk: {}",
                            String::from_utf8_lossy(&out.stderr)
                        )));
                    }
                    meta.tier = TierKind::Disk;
                    self.store.commit_layer(&staging, &meta, None)?;
                    return Ok(meta);
                }
                Err(e) => return Err(e),
            }
        }
        self.store.commit_layer(&upper, &meta, None)?;
        Ok(meta)
    }

    fn remove(&self, key: &str) -> SResult<()> {
        let mut snaps = self.lock();
        let r = snaps
            .get(key)
            .cloned()
            .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
        if let Some(child) = snaps.values().find(|c| c.parent == key) {
            return Err(SnapError::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: it has children (e.g. {:?})",
                child.key
            )));
        }
        self.delete_record(key)?;
        snaps.remove(key);
        let _ = fs::remove_file(self.link_path(&r));
        if r.layer.is_some() {
            drop(snaps);
            let g = self.store.gc()?;
            if !g.removed.is_empty() {
                tracing::info!(layers = g.removed.len(), "freed layers no longer used");
            }
        } else {
            // The disk tier's snapshots directory is scanned for orphans
            // only after a failure (and once at start): a scan after every
            // removal reads the HDD while the node is cold-starting others.
            let d = self.snap_dir(&r);
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    if r.tier == crate::tier::TierKind::Disk {
                        self.disk_scan
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    return Err(Error::Io {
                        what: "remove snapshot dir",
                        path: d,
                        source: e,
                    }
                    .into());
                }
            }
            // The last container on a retired pmem copy or an old hot
            // generation may just have gone: free what nobody uses now.
            if r.kind != SnapshotKind::Committed {
                drop(snaps);
                if let Err(e) = self.store.gc() {
                    tracing::warn!(error = %e, "garbage collection after removing a snapshot");
                }
            }
        }
        Ok(())
    }

    fn update(&self, info: Info, paths: Option<Vec<String>>) -> SResult<Info> {
        validate_key("name", &info.name)?;
        validate_labels(info.labels.iter())?;
        let mut snaps = self.lock();
        let r = snaps
            .get_mut(&info.name)
            .ok_or_else(|| SnapError::NotFound(info.name.clone()))?;
        let mut labels = r.labels.clone();
        let paths = paths.unwrap_or_default();
        if paths.is_empty() {
            labels = info.labels.into_iter().collect();
        } else {
            for p in &paths {
                if p == "labels" {
                    labels = info.labels.clone().into_iter().collect();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match info.labels.get(k) {
                        Some(v) => {
                            labels.insert(k.to_string(), v.clone());
                        }
                        None => {
                            labels.remove(k);
                        }
                    }
                } else {
                    return Err(SnapError::InvalidArgument(format!(
                        "cannot update field {p:?} of a snapshot (only labels)"
                    )));
                }
            }
        }
        validate_labels(labels.iter())?;
        let mut nr = r.clone();
        nr.labels = labels;
        nr.updated_ms = now_ms();
        self.save(&nr)?;
        *r = nr.clone();
        Ok(info_of(&nr))
    }

    fn usage(&self, key: &str) -> SResult<Usage> {
        let r = self
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
        if let Some(c) = &r.layer {
            if let Some(m) = self.store.layer(c)? {
                return Ok(Usage {
                    inodes: m.file_count as i64,
                    size: m.charged_bytes as i64,
                });
            }
        }
        let dir = self.content_dir(&r)?;
        let (n, _, charged) = tree_charge(&dir).ctx("measure", &dir)?;
        Ok(Usage {
            inodes: n as i64,
            size: charged as i64,
        })
    }

    /// Remove snapshot directories and links no record owns.
    fn cleanup(&self) -> Result<()> {
        let snaps = self.lock();
        let ids: std::collections::HashSet<&str> = snaps.values().map(|r| r.id.as_str()).collect();
        let disk = self
            .disk_scan
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let tiers = [Some(&self.store.pmem), disk.then_some(&self.store.disk)];
        for t in tiers.into_iter().flatten() {
            let dir = t.root.join("snapshots");
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !ids.contains(n.as_str()) {
                    tracing::info!(path = %e.path().display(), "removing orphaned snapshot directory");
                    if let Err(err) = fs::remove_dir_all(e.path()) {
                        if disk {
                            self.disk_scan
                                .store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        return Err(err).ctx("remove orphan", e.path());
                    }
                }
            }
        }
        for e in fs::read_dir(self.store.links_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if !ids.contains(n.as_str()) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

/// The containerd snapshotter over an nvtier store.
#[derive(Clone)]
pub struct NvSnapshotter {
    inner: Arc<Inner>,
}

impl NvSnapshotter {
    /// Load the snapshot records and re-create their links.
    pub fn open(store: Store) -> Result<NvSnapshotter> {
        for t in [&store.pmem, &store.disk] {
            let d = t.root.join("snapshots");
            fs::create_dir_all(&d).ctx("create", &d)?;
        }
        let mut snaps = BTreeMap::new();
        for r in store.snapshots()? {
            snaps.insert(r.key.clone(), r);
        }
        let ingest_dir = store
            .cfg
            .containerd_root
            .join("io.containerd.content.v1.content/ingest");
        let inner = Arc::new(Inner {
            store,
            snaps: Mutex::new(snaps),
            pulls: tokio::sync::Mutex::new(HashMap::new()),
            ingest_dir,
            disk_scan: std::sync::atomic::AtomicBool::new(true),
        });
        let recs: Vec<SnapshotRecord> = inner.lock().values().cloned().collect();
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
        tracing::info!(snapshots = recs.len(), "snapshotter state loaded");
        Ok(NvSnapshotter { inner })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> SResult<T> + Send + 'static,
    ) -> SResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| SnapError::Store(Error::Other(format!("snapshotter task: {e}"))))?
    }

    /// Pull `image` once, however many Prepares ask for it concurrently.
    async fn pull_once(&self, image: &str) -> std::result::Result<(), String> {
        let cell = {
            let mut m = self.inner.pulls.lock().await;
            m.entry(image.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
                .clone()
        };
        let store = self.inner.store.clone();
        let r = cell
            .get_or_init(|| async move {
                let opts = PullOptions {
                    placement: store.cfg.placement,
                    progress: false,
                    auth: oci_client::secrets::RegistryAuth::Anonymous,
                };
                tracing::info!(image, "pulling for containerd (remote snapshot)");
                match pull(&store, image, &opts).await {
                    Ok(rep) => {
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
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
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

    async fn prepare_or_view(
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
            self.inner.store.cfg.upper_tier
        } else {
            TierKind::Disk
        };
        if let (Some(target), SnapshotKind::Active) = (target, kind) {
            let labelled = labels.contains_key(LABEL_REF);
            let (k, p, t, l) = (key.clone(), parent.clone(), target.clone(), labels.clone());
            // Only a labelled Prepare may be answered with AlreadyExists:
            // that is containerd's remote-snapshot protocol.
            if labelled && self.blocking(move |i| i.try_attach(&k, &p, &t, &l)).await? {
                return Err(SnapError::AlreadyExists(key));
            }
            if let Some(image) = labels.get(LABEL_CRI_IMAGE_REF).filter(|_| labelled) {
                match self.pull_once(image).await {
                    Ok(()) => {
                        let (k, p, t, l) =
                            (key.clone(), parent.clone(), target.clone(), labels.clone());
                        if self.blocking(move |i| i.try_attach(&k, &p, &t, &l)).await? {
                            return Err(SnapError::AlreadyExists(key));
                        }
                        tracing::warn!(image = %image, layer = %target, "pulled image does not provide this layer; containerd unpacks it");
                    }
                    Err(e) => {
                        tracing::warn!(image = %image, error = %e, "nvtier pull failed; containerd fetches and unpacks the layer itself");
                    }
                }
            }
            tier = self.blocking(|i| Ok(i.unpack_tier()?)).await?;
        }
        self.blocking(move |i| i.create(&key, &parent, labels, kind, tier))
            .await
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
        validate_key("key", &key)?;
        self.inner
            .lock()
            .get(&key)
            .map(info_of)
            .ok_or(SnapError::NotFound(key))
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> SResult<Info> {
        self.blocking(move |i| i.update(info, fieldpaths)).await
    }

    async fn usage(&self, key: String) -> SResult<Usage> {
        validate_key("key", &key)?;
        self.blocking(move |i| i.usage(&key)).await
    }

    async fn mounts(&self, key: String) -> SResult<Vec<Mount>> {
        validate_key("key", &key)?;
        self.blocking(move |i| {
            let snaps = i.lock();
            let r = snaps
                .get(&key)
                .ok_or_else(|| SnapError::NotFound(key.clone()))?;
            i.mounts_of(&snaps, r)
        })
        .await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> SResult<Vec<Mount>> {
        self.prepare_or_view(key, parent, labels, SnapshotKind::Active)
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> SResult<Vec<Mount>> {
        self.prepare_or_view(key, parent, labels, SnapshotKind::View)
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> SResult<()> {
        validate_key("name", &name)?;
        validate_key("key", &key)?;
        validate_labels(labels.iter())?;
        let labels = labels.into_iter().collect();
        self.blocking(move |i| i.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: String) -> SResult<()> {
        validate_key("key", &key)?;
        self.blocking(move |i| i.remove(&key)).await
    }

    async fn clear(&self) -> SResult<()> {
        self.blocking(|i| Ok(i.cleanup()?)).await
    }

    type InfoStream = futures_util::stream::Iter<std::vec::IntoIter<SResult<Info>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> SResult<Self::InfoStream> {
        let infos: Vec<SResult<Info>> = self
            .inner
            .lock()
            .values()
            .map(info_of)
            .filter(|i| filter_matches(&filters, i))
            .map(Ok)
            .collect();
        Ok(futures_util::stream::iter(infos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(validate_key("key", "default/3/sha256:abc").is_ok());
        assert!(
            validate_key("key", "../../../etc/passwd").is_ok(),
            "never a path"
        );
        assert!(validate_key("key", "").is_err());
        assert!(validate_key("key", &"x".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(validate_key("key", "a\0b").is_err());
        assert!(validate_key("key", "a\nb").is_err());
        let mut l = HashMap::new();
        l.insert("k".to_string(), "v".repeat(MAX_LABEL_BYTES));
        assert!(validate_labels(l.iter()).is_err());
        let mut l = HashMap::new();
        l.insert(String::new(), "v".into());
        assert!(validate_labels(l.iter()).is_err());
    }

    #[test]
    fn unpack_keys() {
        let c = format!("sha256:{}", "a".repeat(64));
        let none = BTreeMap::new();
        assert_eq!(
            unpack_chain(&format!("default/5/extract-12-ab {c}"), &none),
            Some(c.clone())
        );
        assert_eq!(
            unpack_chain(&format!("extract-12-ab {c}"), &none),
            Some(c.clone())
        );
        assert_eq!(unpack_chain("default/5/mycontainer", &none), None);
        assert_eq!(
            unpack_chain("default/5/extract-1 sha256:../../x", &none),
            None
        );
        let mut l = BTreeMap::new();
        l.insert(LABEL_REF.to_string(), c.clone());
        assert_eq!(unpack_chain("default/7/whatever", &l), Some(c));
        l.insert(LABEL_REF.to_string(), "sha256:nothex".into());
        assert_eq!(unpack_chain("default/7/whatever", &l), None);
    }

    #[test]
    fn mount_specs() {
        let l = |s: &str| PathBuf::from(s);
        let (u, w) = (l("/d/s/1/fs"), l("/d/s/1/work"));
        let m = build_mounts(SnapshotKind::Active, &[], &u, &w);
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(m[0].source, "/d/s/1/fs");
        assert_eq!(m[0].options, vec!["rw", "rbind"]);
        let m = build_mounts(SnapshotKind::Active, &[l("/s/l/b"), l("/s/l/a")], &u, &w);
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            m[0].options,
            vec![
                "workdir=/d/s/1/work",
                "upperdir=/d/s/1/fs",
                "lowerdir=/s/l/b:/s/l/a"
            ]
        );
        let m = build_mounts(SnapshotKind::View, &[l("/s/l/a")], &u, &w);
        assert_eq!(
            (m[0].r#type.as_str(), m[0].source.as_str()),
            ("bind", "/s/l/a")
        );
        assert_eq!(m[0].options, vec!["ro", "rbind"]);
        let m = build_mounts(SnapshotKind::View, &[l("/s/l/b"), l("/s/l/a")], &u, &w);
        assert_eq!(m[0].options, vec!["ro", "lowerdir=/s/l/b:/s/l/a"]);
        let m = build_mounts(SnapshotKind::View, &[], &u, &w);
        assert_eq!(m[0].options, vec!["ro", "rbind"]);
    }

    #[test]
    fn short_links_keep_many_layers_under_a_page() {
        // STATE = /var/lib/nvtier: each lower is "/var/lib/nvtier/l/<10>" (28 bytes + ':').
        let lowers: Vec<PathBuf> = (0..128)
            .map(|_| PathBuf::from(format!("/var/lib/nvtier/l/{}", new_id())))
            .collect();
        let m = build_mounts(
            SnapshotKind::Active,
            &lowers,
            Path::new("/u"),
            Path::new("/w"),
        );
        let total: usize = m[0].options.iter().map(|o| o.len() + 1).sum();
        assert!(total < 4096, "{total}");
    }

    #[test]
    fn filters() {
        let mut i = Info {
            kind: Kind::Committed,
            name: "sha256:aa".into(),
            parent: "p".into(),
            ..Default::default()
        };
        i.labels.insert(LABEL_REF.into(), "sha256:aa".into());
        let f = |s: &str| vec![s.to_string()];
        assert!(filter_matches(&[], &i));
        assert!(filter_matches(
            &f(r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent=="p""#),
            &i
        ));
        assert!(!filter_matches(
            &f(r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent=="q""#),
            &i
        ));
        assert!(filter_matches(&f("kind==committed"), &i));
        assert!(!filter_matches(&f("kind==active"), &i));
        assert!(filter_matches(&f("name!=x"), &i));
        assert!(filter_matches(
            &f(r#"labels."containerd.io/snapshot.ref""#),
            &i
        ));
        assert!(!filter_matches(&f("labels.nope"), &i));
        assert!(filter_matches(
            &[
                String::from("kind==active"),
                String::from("kind==committed")
            ],
            &i
        ));
    }
}
