//! Recording real container cold starts (`nvtier serve`, key
//! `record_starts`): no per-image command, no operator step.
//!
//! - **Start.** The eBPF root watcher ([`nvtier_tracer::watch`]) reports
//!   the first access from a task whose root is a new overlay superblock:
//!   a container right after its runtime's `pivot_root`, whichever engine
//!   started it. The kernel records that root from its first access on,
//!   so nothing is lost while user space decides. That signal is the same
//!   for containerd, CRI and Docker, needs no engine API, and comes before
//!   the container's first exec; the snapshotter's `Mounts` call and the
//!   plugin's `Get` come before the mount exists, and engine events come
//!   after the container is already running.
//! - **Attribution.** The root's mount (its line in `/proc/PID/mountinfo`)
//!   names its upper directory, which names the nvtier snapshot, whose
//!   parents name the image's layers. Host processes (root not an
//!   overlay) never pass the kernel filter, and concurrent containers have
//!   different roots.
//! - **Decision.** [`nvtier_policy::record::should_record`]: the image's
//!   profile is missing or older than `profile_max_age_s`, and fewer than
//!   `record_max_concurrent` recordings run. Any other root is ignored in
//!   the kernel from then on.
//! - **End.** [`nvtier_policy::record::recording_over`]: the container's
//!   first process exits, no new file for `record_quiet_ms`, or
//!   `record_max_s` passed. Then the events are resolved against the
//!   image's layers and merged into its profile, which the background
//!   migration picks up.

use crate::error::{Error, Result};
use crate::store::{digest_hex, now_ms, ImageOrigin, ImageRecord, SnapshotRecord, Store};
use nvtier_policy::record::{recording_over, should_record, End, Progress, Skip, Start};
use nvtier_tracer::bpf::Sighting;
use nvtier_tracer::{LayerIndex, LayerRef, Profile, RawEvent};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The upper directory named in a `/proc/PID/mountinfo` line of an
/// overlay mount.
pub fn upperdir_of(mount_line: &str) -> Option<PathBuf> {
    let f: Vec<&str> = mount_line.split(' ').collect();
    let sep = f.iter().position(|x| *x == "-")?;
    if f.get(sep + 1) != Some(&"overlay") {
        return None;
    }
    f.get(sep + 3)?
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(|u| PathBuf::from(unescape_mountinfo(u)))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a container root is recorded for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The image record the profile is saved under.
    pub image: String,
    pub chain_ids: Vec<String>,
    /// The container's upper directory (files it copied up).
    pub upper: PathBuf,
}

/// The nvtier layers below the active snapshot whose upper directory is
/// `upper`, bottom first; `None` when `upper` is no active snapshot's or a
/// parent is not an nvtier layer. Committed snapshots without a layer
/// right above the image (dockerd's init layer) are skipped.
pub fn chain_of_upper(
    snaps: &[SnapshotRecord],
    store: &Store,
    upper: &Path,
) -> Option<Vec<String>> {
    let by_key: BTreeMap<&str, &SnapshotRecord> =
        snaps.iter().map(|r| (r.key.as_str(), r)).collect();
    let snap = snaps.iter().find(|r| {
        r.kind == crate::store::SnapshotKind::Active
            && store
                .tier(r.tier)
                .root
                .join("snapshots")
                .join(&r.id)
                .join("fs")
                == upper
    })?;
    let mut chain = Vec::new();
    let mut p = snap.parent.as_str();
    while !p.is_empty() {
        let r = by_key.get(p)?;
        match &r.layer {
            Some(c) => chain.push(c.clone()),
            None if chain.is_empty() && r.kind == crate::store::SnapshotKind::Committed => {}
            None => return None,
        }
        if chain.len() > 4096 {
            return None;
        }
        p = r.parent.as_str();
    }
    chain.reverse();
    (!chain.is_empty()).then_some(chain)
}

/// The name of the record made for layers an engine stored itself, when
/// its image name is unknown or taken by another record.
pub fn engine_image_name(top_chain: &str) -> String {
    format!("engine/{}", top_chain.trim_start_matches("sha256:"))
}

/// The nvtier layers below the Docker graph driver plugin's read-write
/// layer whose directory is `upper` (`DISK/graph/<id>/diff`), bottom
/// first; read-write layers right above the image (the init layer) are
/// skipped. `None` for any other directory.
pub fn chain_of_graph_upper(store: &Store, upper: &Path) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct G {
        parent: Option<String>,
        chain_id: Option<String>,
    }
    let home = upper.parent()?;
    if upper.file_name()? != "diff" || home.parent()? != store.disk.root.join("graph") {
        return None;
    }
    let load = |id: &str| -> Option<G> {
        if id.contains('/') || id.starts_with('.') {
            return None;
        }
        crate::store::meta_read(&store.graph_layers_dir().join(format!("{id}.json")))
            .ok()
            .flatten()
    };
    let me = load(home.file_name()?.to_str()?)?;
    if me.chain_id.is_some() {
        return None;
    }
    let mut chain = Vec::new();
    let mut next = me.parent;
    while let Some(p) = next {
        let r = load(&p)?;
        match r.chain_id {
            Some(c) => chain.push(c),
            None if chain.is_empty() => {}
            None => return None,
        }
        if chain.len() > 4096 {
            return None;
        }
        next = r.parent;
    }
    chain.reverse();
    (!chain.is_empty()).then_some(chain)
}

/// An image the engine unpacked itself, as the engine knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineImage {
    pub name: Option<String>,
    pub manifest_digest: Option<String>,
    pub config_digest: String,
    pub config: serde_json::Value,
    pub diff_ids: Vec<String>,
}

/// Where the diffIDs of layers an engine unpacked itself come from (the
/// snapshotter sees only chainIDs).
pub trait EngineImages: Send {
    /// The image whose layers' chainIDs are `chain` (bottom first).
    fn lookup(&self, chain: &[String]) -> Option<EngineImage>;
}

/// The image record of `chain`: an existing one, else (layers containerd
/// unpacked itself) a new record of origin `engine` from what the engine
/// knows, so the image is profiled and tiered like one nvtier pulled. It
/// goes with the engine's last snapshot of its top layer.
pub fn image_for_chain(
    store: &Store,
    chain: &[String],
    engine: &dyn EngineImages,
) -> Result<ImageRecord> {
    let images = store.images()?;
    if let Some(i) = images.iter().find(|i| i.chain_ids == chain) {
        return Ok(i.clone());
    }
    let top = chain
        .last()
        .ok_or_else(|| Error::Other("empty layer chain".into()))?;
    digest_hex(top)?;
    let mut blobs = Vec::new();
    let mut local_diffs = Vec::new();
    for c in chain {
        let m = store
            .layer(c)?
            .ok_or_else(|| Error::Other(format!("layer {c} is not in the store")))?;
        blobs.push(m.blob_digest.clone().unwrap_or_else(|| m.diff_id.clone()));
        local_diffs.push(m.diff_id);
    }
    // Layers the graph driver plugin applied know their diffIDs (it hashed
    // the tars); containerd's unpacks do not, containerd does.
    let known = local_diffs.iter().all(|d| digest_hex(d).is_ok())
        && crate::store::chain_ids(&local_diffs) == chain;
    let e = match engine.lookup(chain) {
        Some(e) => e,
        None if known => EngineImage {
            name: None,
            manifest_digest: None,
            config_digest: top.clone(),
            config: serde_json::json!({"rootfs": {"type": "layers", "diff_ids": local_diffs}}),
            diff_ids: local_diffs,
        },
        None => {
            return Err(Error::Other(format!(
                "no engine image has the layers up to {top}: their diffIDs are unknown"
            )))
        }
    };
    let name = e
        .name
        .filter(|n| !images.iter().any(|i| &i.name == n))
        .unwrap_or_else(|| engine_image_name(top));
    let rec = ImageRecord {
        name,
        manifest_digest: e.manifest_digest.unwrap_or_else(|| top.clone()),
        config_digest: e.config_digest,
        config: e.config,
        chain_ids: chain.to_vec(),
        diff_ids: e.diff_ids,
        blob_digests: blobs,
        created_ms: now_ms(),
        origin: ImageOrigin::Engine,
    };
    store.put_image(&rec)?;
    Ok(rec)
}

/// Age of `image`'s profile in ms (from its file's time), `None` if it
/// has none.
pub fn profile_age_ms(store: &Store, image: &str) -> Option<u64> {
    let f = crate::store::profiles::profile_file(store, image)?;
    let t = std::fs::metadata(f).ok()?.modified().ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(now_ms().saturating_sub(ms))
}

/// Events kept per undecided root, and for how long.
const MAX_PENDING: usize = 100_000;
const PENDING_MAX_S: u64 = 10;
/// Ignored roots remembered (to drop their events still in flight).
const MAX_IGNORED: usize = 65_536;

/// How long after the container's exit its recording ends.
const EXIT_GRACE_MS: u64 = 300;

/// A recording in progress.
struct Recording {
    target: Target,
    pid: u32,
    start_ns: u64,
    started: Instant,
    started_ms: u64,
    last_new: Instant,
    /// When the first process was first seen gone.
    gone_since: Option<Instant>,
    seen: HashSet<(u64, u64)>,
    seen_paths: HashSet<String>,
    events: Vec<RawEvent>,
}

impl Recording {
    fn add(&mut self, ev: RawEvent) {
        let new = match &ev {
            RawEvent::Inode { dev, ino, .. } => self.seen.insert((*dev, *ino)),
            RawEvent::Path { path, .. } | RawEvent::ImagePath { path, .. } => {
                self.seen_paths.insert(path.clone())
            }
        };
        if new {
            self.last_new = Instant::now();
        }
        self.events.push(ev);
    }
}

/// A recording as `nvtier status` shows it (`STATE/recordings/<root>.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordingState {
    pub image: String,
    pub pid: u32,
    pub started_ms: u64,
}

/// What finished recordings produced.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub image: String,
    pub end: End,
    pub files: usize,
    pub bytes: u64,
    pub duration_ms: u64,
    /// Events the recording took in.
    pub events: usize,
}

/// Where a sighting goes: the watcher, told to ignore roots.
pub trait Roots {
    fn ignore(&self, root: u64);
}

impl Roots for nvtier_tracer::watch::RootWatcher {
    fn ignore(&self, root: u64) {
        nvtier_tracer::watch::RootWatcher::ignore(self, root)
    }
}

/// The daemon's recordings: fed with the watcher's sightings and ticked.
pub struct Recorder {
    store: Store,
    engine: Box<dyn EngineImages>,
    active: HashMap<u64, Recording>,
    /// Events of roots not decided yet (at most one sighting away).
    pending: HashMap<u64, (Instant, Vec<RawEvent>)>,
    /// Roots told to the watcher to ignore: their events still in flight
    /// are dropped.
    ignored: HashSet<u64>,
    lost: u64,
}

impl Recorder {
    pub fn new(store: Store, engine: Box<dyn EngineImages>) -> Recorder {
        let _ = std::fs::remove_dir_all(Self::dir(&store));
        Recorder {
            store,
            engine,
            active: HashMap::new(),
            pending: HashMap::new(),
            ignored: HashSet::new(),
            lost: 0,
        }
    }

    fn dir(store: &Store) -> PathBuf {
        store.state().join("recordings")
    }

    /// Recordings in progress (for `nvtier status`).
    pub fn in_progress(store: &Store) -> Vec<RecordingState> {
        let mut v: Vec<RecordingState> = std::fs::read_dir(Self::dir(store))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        v.sort_by_key(|r: &RecordingState| r.started_ms);
        v
    }

    /// Recordings running now.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Set the kernel's dropped-event count (charged to the next profile).
    pub fn set_lost(&mut self, lost: u64) {
        self.lost = lost;
    }

    /// Decide on a new root: record it or tell the watcher to ignore it.
    fn decide(&mut self, root: u64, pid: u32, ts_ns: u64, mount: Option<&str>, roots: &dyn Roots) {
        let cfg = &self.store.cfg;
        let target = mount.and_then(upperdir_of).and_then(|upper| {
            let snaps = self.store.snapshots().ok()?;
            let chain = chain_of_upper(&snaps, &self.store, &upper)
                .or_else(|| chain_of_graph_upper(&self.store, &upper))?;
            Some((upper, chain))
        });
        let image = target.as_ref().and_then(|(_, chain)| {
            match image_for_chain(&self.store, chain, &*self.engine) {
                Ok(i) => Some(i),
                Err(e) => {
                    tracing::warn!(error = %e, "recording: the container's image");
                    None
                }
            }
        });
        let start = Start {
            enabled: cfg.record_starts,
            ours: image.is_some(),
            profile_age_ms: image
                .as_ref()
                .and_then(|i| profile_age_ms(&self.store, &i.name)),
            max_age_ms: cfg.profile_max_age_s.saturating_mul(1000),
            active: self.active.len(),
            max_concurrent: cfg.record_max_concurrent,
        };
        let pending = self
            .pending
            .remove(&root)
            .map(|(_, v)| v)
            .unwrap_or_default();
        let (Some((upper, _)), Some(img)) = (target, image) else {
            tracing::debug!(
                root,
                pid,
                ?mount,
                "container start not recorded: not an nvtier container"
            );
            self.ignore(root, roots);
            return;
        };
        if let Err(why) = should_record(&start) {
            self.ignore(root, roots);
            match why {
                Skip::Busy => {
                    tracing::info!(image = %img.name, pid, %why, "container start not recorded")
                }
                _ => tracing::debug!(image = %img.name, pid, %why, "container start not recorded"),
            }
            return;
        }
        tracing::info!(image = %img.name, pid, "recording a container cold start");
        let started_ms = now_ms();
        let state = RecordingState {
            image: img.name.clone(),
            pid,
            started_ms,
        };
        let dir = Self::dir(&self.store);
        if std::fs::create_dir_all(&dir).is_ok() {
            if let Ok(b) = serde_json::to_vec(&state) {
                let _ = crate::fsutil::write_atomic(&dir.join(format!("{root}.json")), &b);
            }
        }
        let mut rec = Recording {
            target: Target {
                image: img.name,
                chain_ids: img.chain_ids,
                upper,
            },
            pid,
            start_ns: ts_ns,
            started: Instant::now(),
            started_ms,
            last_new: Instant::now(),
            gone_since: None,
            seen: HashSet::new(),
            seen_paths: HashSet::new(),
            events: Vec::new(),
        };
        for e in pending {
            rec.add(e);
        }
        self.active.insert(root, rec);
    }

    /// Stop recording `root`, in the kernel and here.
    fn ignore(&mut self, root: u64, roots: &dyn Roots) {
        roots.ignore(root);
        if self.ignored.len() >= MAX_IGNORED {
            self.ignored.clear();
        }
        self.ignored.insert(root);
    }

    /// Take one sighting from the watcher.
    pub fn on_sighting(&mut self, s: Sighting, roots: &dyn Roots) {
        match s {
            Sighting::NewRoot {
                root,
                pid,
                ts_ns,
                mount,
                ..
            } => {
                // A root is reported again only after the kernel evicted
                // it from its table: a recording of it goes on.
                if !self.active.contains_key(&root) {
                    self.ignored.remove(&root);
                    self.decide(root, pid, ts_ns, mount.as_deref(), roots)
                }
            }
            Sighting::Event { group, event } => {
                if let Some(r) = self.active.get_mut(&group) {
                    r.add(event);
                } else if !self.ignored.contains(&group) {
                    // Events before the root's own sighting was decided.
                    let (_, v) = self
                        .pending
                        .entry(group)
                        .or_insert_with(|| (Instant::now(), Vec::new()));
                    if v.len() < MAX_PENDING {
                        v.push(event);
                    }
                }
            }
        }
    }

    /// End the recordings that are over; return what they produced.
    pub fn tick(&mut self, roots: &dyn Roots) -> Vec<Recorded> {
        // Events of roots whose sighting never came (lost in a full ring
        // buffer): dropped after a while.
        self.pending
            .retain(|_, (t, _)| t.elapsed() < Duration::from_secs(PENDING_MAX_S));
        let cfg = &self.store.cfg;
        let over: Vec<(u64, End)> = self
            .active
            .iter_mut()
            .filter_map(|(root, r)| {
                // An exit counts once the watcher has drained what the
                // container did before it (its poll period is 50 ms).
                if r.gone_since.is_none() && !crate::store::pid_alive(r.pid) {
                    r.gone_since = Some(Instant::now());
                }
                let alive = r
                    .gone_since
                    .is_none_or(|t| t.elapsed() < Duration::from_millis(EXIT_GRACE_MS));
                let p = Progress {
                    elapsed_ms: r.started.elapsed().as_millis() as u64,
                    last_new_ms: r.last_new.duration_since(r.started).as_millis() as u64,
                    alive,
                    quiet_ms: cfg.record_quiet_ms,
                    max_ms: cfg.record_max_s.saturating_mul(1000),
                };
                recording_over(&p).map(|e| (*root, e))
            })
            .collect();
        let mut out = Vec::new();
        for (root, end) in over {
            self.ignore(root, roots);
            let _ = std::fs::remove_file(Self::dir(&self.store).join(format!("{root}.json")));
            let Some(r) = self.active.remove(&root) else {
                continue;
            };
            let duration_ms = r.started.elapsed().as_millis() as u64;
            match self.finish(r, end) {
                Ok(mut rec) => {
                    rec.duration_ms = duration_ms;
                    tracing::info!(image = %rec.image, files = rec.files, bytes = rec.bytes, events = rec.events, %end, duration_ms, "recorded a container cold start");
                    out.push(rec);
                }
                Err(e) => tracing::warn!(error = %e, "recording a container cold start failed"),
            }
        }
        out
    }

    /// Resolve a finished recording and merge it into the image's profile.
    fn finish(&self, r: Recording, end: End) -> Result<Recorded> {
        let n_events = r.events.len();
        let layers: Vec<LayerRef> = crate::trace::layer_refs(&self.store, &r.target.image)?;
        let index = LayerIndex::build(layers).map_err(|e| Error::Other(e.to_string()))?;
        let events =
            crate::trace::copied_up_as_paths(r.events, &crate::trace::upper_files(&r.target.upper));
        let mut profile = Profile::from_events(
            &r.target.image,
            "ebpf",
            &events,
            &index,
            r.start_ns,
            self.lost,
        );
        let engine = nvtier_policy::engine::engine_reads(|p| index.resolve(p).is_some());
        profile.add_engine_reads(&index, &engine);
        let mut saved = crate::store::profiles::load_profile(&self.store, &r.target.image)?
            .unwrap_or_else(|| Profile {
                runs: 0,
                files: Vec::new(),
                ..profile.clone()
            });
        saved.merge(&profile);
        crate::store::profiles::save_profile(&self.store, &saved)?;
        let _ = r.started_ms;
        Ok(Recorded {
            image: r.target.image,
            end,
            files: profile.files.len(),
            bytes: profile.total_bytes(),
            duration_ms: 0,
            events: n_events,
        })
    }
}

/// Run the recorder until `stop`: the watcher's sightings in, profiles
/// out; `on_recorded` is called after each finished recording (the daemon
/// wakes its migration). Blocking; run on a thread of its own.
pub fn run(
    store: Store,
    engine: Box<dyn EngineImages>,
    watcher: &nvtier_tracer::watch::RootWatcher,
    sightings: std::sync::mpsc::Receiver<Sighting>,
    stop: &std::sync::atomic::AtomicBool,
    mut on_recorded: impl FnMut(&Recorded),
) {
    let mut rec = Recorder::new(store, engine);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match sightings.recv_timeout(Duration::from_millis(100)) {
            Ok(s) => {
                rec.on_sighting(s, watcher);
                while let Ok(s) = sightings.try_recv() {
                    rec.on_sighting(s, watcher);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        rec.set_lost(watcher.lost());
        for r in rec.tick(watcher) {
            on_recorded(&r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: &str = "\
1043 990 0:123 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/nvtier/l/ab:/var/lib/nvtier/l/cd,upperdir=/mnt/pmem/nvtier/snapshots/k3j4h5g6f7/fs,workdir=/mnt/pmem/nvtier/snapshots/k3j4h5g6f7/work
1044 1043 0:5 / /dev rw,nosuid - tmpfs tmpfs rw
1045 990 0:124 / /x rw - overlay overlay rw,upperdir=/other/fs,workdir=/other/w
";

    #[test]
    fn upperdir_of_overlay_mounts() {
        let line = |i: usize| MI.lines().nth(i).unwrap_or("");
        assert_eq!(
            upperdir_of(line(0)),
            Some(PathBuf::from("/mnt/pmem/nvtier/snapshots/k3j4h5g6f7/fs"))
        );
        assert_eq!(upperdir_of(line(1)), None, "tmpfs");
        assert_eq!(upperdir_of(line(2)), Some(PathBuf::from("/other/fs")));
        assert_eq!(upperdir_of(""), None);
        assert_eq!(upperdir_of("garbage - - -"), None);
    }

    struct Told(std::cell::RefCell<Vec<u64>>);
    impl Roots for Told {
        fn ignore(&self, root: u64) {
            self.0.borrow_mut().push(root);
        }
    }
    struct NoEngine;
    impl EngineImages for NoEngine {
        fn lookup(&self, _: &[String]) -> Option<EngineImage> {
            None
        }
    }

    fn open(kind: nvtier_tracer::Kind, ino: u64) -> RawEvent {
        RawEvent::Inode {
            kind,
            ts_ns: 1,
            dev: 1,
            ino,
            pid: 1,
        }
    }

    #[test]
    fn roots_that_are_not_nvtier_snapshots_are_ignored_with_their_events() {
        let (_t, store) = crate::testutil::temp_store("1M");
        let mut rec = Recorder::new(store, Box::new(NoEngine));
        let told = Told(Default::default());
        let ev = |g| Sighting::Event {
            group: g,
            event: open(nvtier_tracer::Kind::Open, 7),
        };
        // Events before the root's sighting wait for its decision.
        rec.on_sighting(ev(5), &told);
        assert_eq!(rec.pending.get(&5).map(|p| p.1.len()), Some(1));
        // No mount line for it: not ours.
        let new_root = || Sighting::NewRoot {
            root: 5,
            dev: 44,
            pid: u32::MAX,
            ts_ns: 0,
            mount: None,
        };
        rec.on_sighting(new_root(), &told);
        assert_eq!(*told.0.borrow(), vec![5]);
        assert!(rec.pending.is_empty() && rec.active() == 0);
        // What is still in flight for it is dropped.
        rec.on_sighting(ev(5), &told);
        assert!(rec.pending.is_empty());
        assert!(rec.tick(&told).is_empty());
        // A root seen anew is decided anew.
        rec.on_sighting(new_root(), &told);
        assert_eq!(*told.0.borrow(), vec![5, 5]);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo(r"/a\04"), r"/a\04");
    }
}
