//! `nvtier trace`: cold-start an image under the file-access tracer and
//! keep the result as the image's hot profile (`STATE/profiles/`).
//!
//! The eBPF tracer is used when it loads; otherwise fanotify on the
//! container's overlay mount, and if that is unavailable too, inotify on
//! the merged directories. `NVTIER_TRACER=fanotify|inotify` (or
//! `--tracer`) forces a fallback. One log line says which is active and why,
//! and the report carries both.
//!
//! The eBPF programs attach to the raw syscall tracepoints with BTF types,
//! so tracing needs no tracefs (`NVTIER_BPF_ATTACH` selects the
//! per-syscall tracepoints instead; see `nvtier_tracer::bpf::AttachMode`).

use crate::error::{Error, IoContext, Result};
use crate::mount::{mount_image, umount_image};
use crate::run::{drop_caches, spawn_in, Cgroup, SpawnOptions};
pub use crate::store::profiles::{load_profile, profile_path, save_profile};
use crate::store::Store;
use nvtier_tracer::bpf::{AttachMode, BpfTracer};
use nvtier_tracer::fanotify::FanotifyTracer;
use nvtier_tracer::inotify::InotifyTracer;
use nvtier_tracer::{LayerIndex, LayerRef, Profile, Tracer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which tracer to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TracerChoice {
    #[default]
    Auto,
    Ebpf,
    Fanotify,
    Inotify,
}

impl std::str::FromStr for TracerChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(TracerChoice::Auto),
            "ebpf" | "bpf" => Ok(TracerChoice::Ebpf),
            "fanotify" => Ok(TracerChoice::Fanotify),
            "inotify" => Ok(TracerChoice::Inotify),
            o => Err(format!(
                "unknown tracer {o:?}: auto, ebpf, fanotify or inotify"
            )),
        }
    }
}

/// When the trace window ends (besides the command exiting).
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub max: Option<Duration>,
    /// A TCP port on 127.0.0.1 that accepts ("ready").
    pub ready_port: Option<u16>,
    /// A path inside the image that appears ("ready").
    pub ready_file: Option<String>,
    /// Keep tracing this long after ready: a server goes on with its
    /// start-up after it starts listening (Flask's dev server imported
    /// colorama and ctypes 100 ms after it, apache starts its workers), and
    /// a cold start measured from outside may see those reads before it
    /// sees the port.
    pub after_ready: Duration,
}

#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub tracer: TracerChoice,
    pub warm: bool,
    pub window: Window,
    pub quiet_stdout: bool,
}

/// What one traced cold start produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceReport {
    pub image: String,
    pub tracer: String,
    pub tracer_reason: String,
    pub exit_code: i32,
    pub elapsed_ms: f64,
    pub lost_events: u64,
    pub files: usize,
    pub bytes: u64,
    pub image_bytes: u64,
    pub hot_share: f64,
    /// (chainID, files, bytes) per layer in chain order.
    pub per_layer: Vec<(String, usize, u64)>,
    /// Miss mode: image files this cold start touched whose data lives on
    /// the disk tier (each one costs disk I/O on a cold start). Promotion
    /// aims to make this empty. `None` when the active tracer cannot tell
    /// (see `misses_unknown_reason`).
    pub misses: Option<Vec<nvtier_tracer::ProfileFile>>,
    pub miss_bytes: Option<u64>,
    /// Why `misses` is `None`.
    pub misses_unknown_reason: Option<String>,
    /// This run alone (the saved profile merges every run).
    pub profile: Profile,
}

/// The image's layers as the tracer needs them, chain order.
pub fn layer_refs(store: &Store, image: &str) -> Result<Vec<LayerRef>> {
    let rec = store
        .image(image)?
        .ok_or_else(|| Error::ImageNotFound(image.to_string()))?;
    rec.chain_ids
        .iter()
        .zip(&rec.diff_ids)
        .map(|(c, d)| {
            let m = store
                .layer(c)?
                .ok_or_else(|| Error::Other(format!("layer {c} missing; re-pull the image")))?;
            Ok(LayerRef {
                chain_id: c.clone(),
                diff_id: d.clone(),
                dir: store.layer_dir(&m)?,
            })
        })
        .collect()
}

fn start_tracer(
    choice: TracerChoice,
    cg: &Cgroup,
    root: &Path,
) -> Result<(Box<dyn Tracer>, String)> {
    let forced = std::env::var("NVTIER_TRACER")
        .ok()
        .and_then(|v| v.parse::<TracerChoice>().ok());
    let choice = forced.unwrap_or(choice);
    let why_forced = if forced.is_some() {
        "forced by NVTIER_TRACER"
    } else {
        "requested with --tracer"
    };
    let mut why = String::new();
    if matches!(choice, TracerChoice::Auto | TracerChoice::Ebpf) {
        let root2 = root.to_path_buf();
        let cwd_of: nvtier_tracer::bpf::CwdFn = Arc::new(move |pid| {
            let c = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            c.strip_prefix(&root2)
                .ok()
                .map(|r| format!("/{}", r.display()))
        });
        match BpfTracer::start(&[cg.id], Some(cwd_of)) {
            Ok(t) => {
                let why = ebpf_reason(t.mode());
                return Ok((Box::new(t), why));
            }
            Err(e) if choice == TracerChoice::Auto => why = format!("{e}; "),
            Err(e) => return Err(Error::Other(e.to_string())),
        }
    }
    if matches!(choice, TracerChoice::Auto | TracerChoice::Fanotify) {
        match FanotifyTracer::start(root) {
            Ok(t) => {
                let why = if choice == TracerChoice::Auto {
                    format!("{why}falling back to fanotify")
                } else {
                    why_forced.to_string()
                };
                return Ok((Box::new(t), why));
            }
            Err(e) if choice == TracerChoice::Auto => why = format!("{why}{e}; "),
            Err(e) => return Err(Error::Other(e.to_string())),
        }
    }
    let t = InotifyTracer::start(root)
        .map_err(|e| Error::Other(format!("no tracer available: {why}{e}")))?;
    let why = if choice == TracerChoice::Auto {
        format!(
            "{why}falling back to inotify ({} directory watches)",
            t.watches
        )
    } else {
        why_forced.to_string()
    };
    Ok((Box::new(t), why))
}

fn ebpf_reason(mode: AttachMode) -> String {
    match mode {
        AttachMode::Btf => {
            "eBPF loaded: raw syscall tracepoints with BTF types, no tracefs needed".into()
        }
        AttachMode::Tracepoint => {
            "eBPF loaded: per-syscall tracepoints through tracefs, set by NVTIER_BPF_ATTACH".into()
        }
    }
}

/// Which tracer `nvtier trace` would use now, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TracerProbe {
    /// `ebpf`, `fanotify` or `inotify`.
    pub tracer: String,
    pub reason: String,
}

/// Find out which tracer a trace started now would use: load (and unload)
/// the eBPF programs with an empty cgroup filter, else check fanotify.
/// Honours `NVTIER_TRACER`.
pub fn probe_tracer() -> TracerProbe {
    let forced = std::env::var("NVTIER_TRACER")
        .ok()
        .and_then(|v| v.parse::<TracerChoice>().ok())
        .filter(|c| *c != TracerChoice::Auto);
    match forced {
        Some(TracerChoice::Fanotify) => {
            return TracerProbe {
                tracer: "fanotify".into(),
                reason: "forced by NVTIER_TRACER".into(),
            }
        }
        Some(TracerChoice::Inotify) => {
            return TracerProbe {
                tracer: "inotify".into(),
                reason: "forced by NVTIER_TRACER".into(),
            }
        }
        _ => {}
    }
    let err = match BpfTracer::start(&[], None) {
        Ok(t) => {
            let reason = ebpf_reason(t.mode());
            let _ = Box::new(t).stop_tracer();
            return TracerProbe {
                tracer: "ebpf".into(),
                reason,
            };
        }
        Err(e) => e.to_string(),
    };
    let fan = nix::sys::fanotify::Fanotify::init(
        nix::sys::fanotify::InitFlags::FAN_CLASS_NOTIF | nix::sys::fanotify::InitFlags::FAN_CLOEXEC,
        nix::sys::fanotify::EventFFlags::O_RDONLY,
    );
    match fan {
        Ok(_) => TracerProbe {
            tracer: "fanotify".into(),
            reason: format!("{err}; falling back to fanotify (miss mode cannot tell disk-tier reads on tiered mounts)"),
        },
        Err(e) => TracerProbe {
            tracer: "inotify".into(),
            reason: format!("{err}; fanotify_init: {e}; falling back to inotify"),
        },
    }
}

/// Regular files in a mount's upper directory, by (device, inode), with
/// their paths in the image (`/…`). Unreadable entries are skipped.
pub(crate) fn upper_files(upper: &Path) -> HashMap<(u64, u64), String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    let mut stack = vec![upper.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let p = e.path();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                if let Ok(rel) = p.strip_prefix(upper) {
                    out.insert((m.dev(), m.ino()), format!("/{}", rel.display()));
                }
            }
        }
    }
    out
}

/// A file the container opened for writing was copied up first, so the
/// inode the tracer saw is the upper copy, which no layer holds. Overlayfs
/// still looked the file up in the image's layers (to copy its data), so
/// it is as hot as a file read: report it by its path in the image.
/// Files the container created resolve to no layer file and drop out.
pub(crate) fn copied_up_as_paths(
    events: Vec<nvtier_tracer::RawEvent>,
    upper: &HashMap<(u64, u64), String>,
) -> Vec<nvtier_tracer::RawEvent> {
    use nvtier_tracer::RawEvent;
    if upper.is_empty() {
        return events;
    }
    events
        .into_iter()
        .map(|e| {
            if let RawEvent::Inode {
                kind,
                ts_ns,
                dev,
                ino,
                ..
            } = &e
            {
                if let Some(p) = upper.get(&(*dev, *ino)) {
                    return RawEvent::ImagePath {
                        kind: *kind,
                        ts_ns: *ts_ns,
                        path: p.clone(),
                    };
                }
            }
            e
        })
        .collect()
}

/// Cold-start `image` running `cmd` under the tracer; merge the result into
/// the image's saved profile.
pub fn trace(
    store: &Store,
    image: &str,
    cmd: &[String],
    opts: &TraceOptions,
) -> Result<TraceReport> {
    let layers = layer_refs(store, image)?;
    let index = LayerIndex::build(layers).map_err(|e| Error::Other(e.to_string()))?;
    let image_bytes: u64 = index
        .layers
        .iter()
        .filter_map(|l| store.layer(&l.chain_id).ok().flatten())
        .map(|m| m.file_bytes)
        .sum();
    let root = store.state().join("run").join(format!(
        "trace-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&root).ctx("create", &root)?;
    let rec = match mount_image(store, image, &root) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir(&root);
            return Err(e);
        }
    };
    let upper = store.containers_dir().join(&rec.container_id).join("upper");
    let result = (|| {
        if !opts.warm {
            drop_caches()?;
        }
        let cg = Cgroup::create("nvtier-trace")?;
        let (tracer, why) = start_tracer(opts.tracer, &cg, &rec.target)?;
        let name = tracer.name().to_string();
        tracing::info!(tracer = %name, reason = %why, "tracer active");
        let start_ns = nvtier_tracer::event::monotonic_ns();
        let t0 = Instant::now();
        let w = opts.window.clone();
        let has_window = w.max.is_some() || w.ready_port.is_some() || w.ready_file.is_some();
        let target = rec.target.clone();
        let mut ready_at: Option<Instant> = None;
        let mut stop = move || {
            if w.max.is_some_and(|m| t0.elapsed() >= m) {
                return true;
            }
            if let Some(r) = ready_at {
                return r.elapsed() >= w.after_ready;
            }
            let ready = w.ready_port.is_some_and(|p| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], p)),
                    Duration::from_millis(20),
                )
                .is_ok()
            }) || w
                .ready_file
                .as_ref()
                .is_some_and(|f| target.join(f.trim_start_matches('/')).exists());
            if ready {
                ready_at = Some(Instant::now());
                return w.after_ready.is_zero();
            }
            false
        };
        let run = spawn_in(
            &rec.target,
            cmd,
            SpawnOptions {
                quiet_stdout: opts.quiet_stdout,
                cgroup: Some(&cg),
                // Without a window condition, wait for the exit directly
                // (no polling delay in the measured wall time).
                stop_when: if has_window { Some(&mut stop) } else { None },
            },
        );
        // Let in-flight events reach the ring buffer before stopping.
        std::thread::sleep(Duration::from_millis(60));
        let stopped = tracer.stop().map_err(|e| Error::Other(e.to_string()));
        drop(cg);
        let (code, elapsed) = run?;
        let (events, lost) = stopped?;
        let events = copied_up_as_paths(events, &upper_files(&upper));
        if lost > 0 {
            tracing::warn!(lost, "tracer lost events (ring buffer full)");
        }
        let mut profile = Profile::from_events(image, &name, &events, &index, start_ns, lost);
        // The engine's own reads of the rootfs (user lookup) happen outside
        // the traced cgroup; list them so they stay on pmem too.
        let engine = nvtier_policy::engine::engine_reads(|p| index.resolve(p).is_some());
        profile.add_engine_reads(&index, &engine);
        Ok((code, elapsed, name, why, profile))
    })();
    let u = umount_image(store, &rec.target);
    let _ = std::fs::remove_dir(&root);
    let (exit_code, elapsed_ms, tracer, tracer_reason, profile) = result?;
    u?;
    let mut saved = load_profile(store, image)?.unwrap_or_else(|| Profile {
        runs: 0,
        files: Vec::new(),
        ..profile.clone()
    });
    saved.merge(&profile);
    save_profile(store, &saved)?;
    let bytes = profile.total_bytes();
    let per_layer = index
        .layers
        .iter()
        .map(|l| {
            let fs: Vec<_> = profile
                .files
                .iter()
                .filter(|f| f.layer_chain_id == l.chain_id)
                .collect();
            (
                l.chain_id.clone(),
                fs.len(),
                fs.iter().filter_map(|f| f.bytes).sum(),
            )
        })
        .collect();
    let disk_layers: std::collections::HashSet<&String> = index
        .layers
        .iter()
        .filter(|l| {
            store
                .layer(&l.chain_id)
                .ok()
                .flatten()
                .is_some_and(|m| m.tier == crate::tier::TierKind::Disk)
        })
        .map(|l| &l.chain_id)
        .collect();
    // A tiered mount walks paths in its metadata layer on pmem, and its hot
    // copies are not in the layer index. So only events resolved from the
    // real inode that served the data (open, mmap, page-cache read) are
    // disk reads; path-resolved ones (stat, the exec'd name) always map to
    // the base layer, whichever copy served the data. The fallback tracers
    // see only overlay paths, never the copy that served the data, so on a
    // tiered mount they cannot tell a disk-tier read from a hot copy's.
    let tiered = rec.tiering.is_some();
    let misses_unknown_reason = (tiered && tracer != "ebpf").then(|| {
        format!(
            "the {tracer} tracer sees overlay paths, not the layer copy that served the data, \
             so on a tiered mount it cannot tell disk-tier reads from hot copies on pmem; \
             miss mode needs the eBPF tracer there"
        )
    });
    let misses: Option<Vec<_>> = misses_unknown_reason.is_none().then(|| {
        profile
            .files
            .iter()
            .filter(|f| disk_layers.contains(&f.layer_chain_id))
            // Engine reads are listed, not observed in this run.
            .filter(|f| {
                f.kinds
                    .iter()
                    .any(|k| *k != nvtier_tracer::event::Kind::Engine)
            })
            .filter(|f| {
                use nvtier_tracer::event::Kind;
                !tiered
                    || f.kinds
                        .iter()
                        .any(|k| matches!(k, Kind::Open | Kind::Mmap | Kind::Read))
            })
            .cloned()
            .collect()
    });
    let miss_bytes = misses
        .as_ref()
        .map(|m| m.iter().filter_map(|f| f.bytes).sum());
    Ok(TraceReport {
        misses,
        miss_bytes,
        misses_unknown_reason,
        image: image.to_string(),
        tracer,
        tracer_reason,
        exit_code,
        elapsed_ms,
        lost_events: profile.lost_events,
        files: profile.files.len(),
        bytes,
        image_bytes,
        hot_share: if image_bytes > 0 {
            bytes as f64 / image_bytes as f64
        } else {
            0.0
        },
        per_layer,
        profile,
    })
}

/// Import a profile file (from `nvtier profile export`), keyed by layer
/// diffID + path, as the profile of `image` (default: the name inside it).
/// Entries whose layer is not part of the image are dropped; chainIDs are
/// rewritten to this node's.
pub fn import(store: &Store, text: &str, image: Option<&str>) -> Result<Profile> {
    let mut p = Profile::from_json(text).map_err(|e| Error::Other(e.to_string()))?;
    let name = image.map(str::to_string).unwrap_or_else(|| p.image.clone());
    let rec = store
        .image(&name)?
        .ok_or_else(|| Error::ImageNotFound(name.clone()))?;
    let chain_of: std::collections::HashMap<&String, &String> =
        rec.diff_ids.iter().zip(&rec.chain_ids).collect();
    p.files
        .retain_mut(|f| match chain_of.get(&f.layer_diff_id) {
            Some(c) => {
                f.layer_chain_id = (*c).clone();
                true
            }
            None => false,
        });
    p.image = name;
    p.diff_ids = rec.diff_ids.clone();
    save_profile(store, &p)?;
    Ok(p)
}
