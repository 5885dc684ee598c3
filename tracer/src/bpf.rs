//! The eBPF tracer: loads `bpf/nvtier_trace.bpf.c`, filters by cgroup v2 id
//! in the kernel, and drains the ring buffer on its own thread.
//!
//! Syscalls are attached through the BTF-typed raw syscall tracepoints
//! (`tp_btf/sys_enter`, `tp_btf/sys_exit`), which need no tracefs: a fresh
//! host has none mounted, and libbpf resolves the per-syscall tracepoints
//! (`syscalls:sys_exit_openat`, ...) through it. [`AttachMode::Tracepoint`]
//! loads those instead; `docs/tracing.md` has the measured cost of each.

use crate::event::{kdev_to_user, Kind, RawEvent};
use crate::{Error, Result, Tracer};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, RingBufferBuilder};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/nvtier_trace.skel.rs"));
}
use skel::NvtierTraceSkelBuilder;

const EV_INODE: u32 = 1;
const EV_PATH: u32 = 2;
const INODE_EVENT_LEN: usize = 40;
const PATH_EVENT_LEN: usize = 32 + 256;

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    b.get(o..o + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
}

/// Decode one ring-buffer record (layout of `struct inode_event` /
/// `struct path_event` in the BPF program).
pub fn decode(b: &[u8]) -> Option<RawEvent> {
    let ty = u32_at(b, 0)?;
    let kind = Kind::from_bits(u32_at(b, 4)?)?;
    let ts_ns = u64_at(b, 8)?;
    match ty {
        EV_INODE if b.len() >= INODE_EVENT_LEN => Some(RawEvent::Inode {
            kind,
            ts_ns,
            ino: u64_at(b, 24)?,
            dev: kdev_to_user(u32_at(b, 32)?),
            pid: u32_at(b, 36)?,
        }),
        EV_PATH if b.len() >= PATH_EVENT_LEN => {
            let dfd = u32_at(b, 24)? as i32;
            let pid = u32_at(b, 28)?;
            let raw = &b[32..PATH_EVENT_LEN];
            let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
            Some(RawEvent::Path {
                kind,
                ts_ns,
                dfd,
                pid,
                path: String::from_utf8_lossy(&raw[..end]).into_owned(),
                cwd: None,
            })
        }
        _ => None,
    }
}

/// Is this kernel 6.13 or newer (overlay files carry a `struct ovl_file`)?
fn ovl_file_indirect() -> bool {
    let rel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let minor: u32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 13)
}

/// How the syscall programs attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Raw syscall tracepoints with BTF types (`tp_btf/sys_enter`,
    /// `tp_btf/sys_exit`, `tp_btf/mm_filemap_add_to_page_cache`): no
    /// tracefs needed. The default.
    #[default]
    Btf,
    /// Per-syscall tracepoints (`syscalls:sys_exit_openat`, ...): libbpf
    /// resolves them through tracefs, which must be mounted.
    Tracepoint,
}

impl AttachMode {
    /// From `NVTIER_BPF_ATTACH` (`btf` or `tracepoint`); the default when
    /// unset. An unknown value is an error naming the choices.
    pub fn from_env() -> Result<AttachMode> {
        match std::env::var("NVTIER_BPF_ATTACH") {
            Err(_) => Ok(AttachMode::Btf),
            Ok(v) => v.parse(),
        }
    }

    /// `"btf"` or `"tracepoint"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Btf => "btf",
            AttachMode::Tracepoint => "tracepoint",
        }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<AttachMode> {
        match s {
            "btf" | "tp_btf" | "" => Ok(AttachMode::Btf),
            "tracepoint" | "tp" => Ok(AttachMode::Tracepoint),
            o => Err(Error::BpfUnavailable(format!(
                "NVTIER_BPF_ATTACH={o:?}: use btf (default, no tracefs needed) or tracepoint"
            ))),
        }
    }
}

/// A running eBPF tracer.
pub struct BpfTracer {
    mode: AttachMode,
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<RawEvent>>>,
    thread: Option<JoinHandle<Result<u64>>>,
}

/// Maps a pid to its cwd inside the image (see [`BpfTracer::start`]).
pub type CwdFn = Arc<dyn Fn(u32) -> Option<String> + Send + Sync>;

impl BpfTracer {
    /// Load, attach and start draining. `cgroup_ids` are cgroup v2 ids
    /// (the inode number of the cgroup directory). `cwd_of` maps a pid to
    /// its cwd inside the image; it is called while the process is alive,
    /// for stat events with relative paths.
    pub fn start(cgroup_ids: &[u64], cwd_of: Option<CwdFn>) -> Result<BpfTracer> {
        Self::start_with(AttachMode::from_env()?, cgroup_ids, cwd_of)
    }

    /// [`BpfTracer::start`] with an explicit [`AttachMode`].
    pub fn start_with(
        mode: AttachMode,
        cgroup_ids: &[u64],
        cwd_of: Option<CwdFn>,
    ) -> Result<BpfTracer> {
        if !cfg!(target_arch = "x86_64") {
            return Err(Error::BpfUnavailable(
                "the BPF program decodes x86_64 syscall numbers and registers; this build is for another architecture".into(),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop2, events2, ids) = (stop.clone(), events.clone(), cgroup_ids.to_vec());
        let thread = std::thread::Builder::new()
            .name("nvtier-bpf".into())
            .spawn(move || run(mode, ids, stop2, events2, ready_tx, cwd_of))
            .map_err(|e| Error::BpfUnavailable(format!("spawn tracer thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(BpfTracer {
                mode,
                stop,
                events,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let r = thread.join();
                Err(Error::BpfUnavailable(format!(
                    "tracer thread ended during load: {r:?}"
                )))
            }
        }
    }
}

impl BpfTracer {
    /// How the syscall programs are attached.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Stop and discard the events (a probe that only checks loading).
    pub fn stop_tracer(self: Box<Self>) -> Result<()> {
        Tracer::stop(self).map(|_| ())
    }
}

fn fail(what: &str, e: libbpf_rs::Error) -> Error {
    Error::BpfUnavailable(format!("{what}: {e}"))
}

fn setup<'o>(
    mode: AttachMode,
    obj: &'o mut MaybeUninit<libbpf_rs::OpenObject>,
    ids: &[u64],
) -> Result<skel::NvtierTraceSkel<'o>> {
    let mut open = NvtierTraceSkelBuilder::default()
        .open(obj)
        .map_err(|e| fail("open BPF object", e))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.ovl_file_indirect = ovl_file_indirect();
    }
    // Load one of the two sets of syscall programs (and page-cache
    // programs): both see the same events.
    let btf = mode == AttachMode::Btf;
    let p = &mut open.progs;
    p.btf_sys_exit.set_autoload(btf);
    p.btf_sys_enter.set_autoload(btf);
    p.btf_page_cache_add.set_autoload(btf);
    for prog in [
        &mut p.exit_openat,
        &mut p.exit_open,
        &mut p.exit_openat2,
        &mut p.enter_mmap,
        &mut p.on_page_cache_add,
        &mut p.enter_newfstatat,
        &mut p.enter_statx,
        &mut p.enter_newstat,
        &mut p.enter_newlstat,
        &mut p.enter_newfstat,
    ] {
        prog.set_autoload(!btf);
    }
    let mut skel = open.load().map_err(|e| fail("load BPF programs", e))?;
    for id in ids {
        skel.maps
            .cgroups
            .update(&id.to_ne_bytes(), &[1u8], MapFlags::ANY)
            .map_err(|e| fail("add cgroup to filter", e))?;
    }
    skel.attach().map_err(|e| {
        let hint = if mode == AttachMode::Tracepoint {
            " (per-syscall tracepoints need tracefs at /sys/kernel/tracing; unset NVTIER_BPF_ATTACH to attach without it)"
        } else {
            ""
        };
        fail(&format!("attach BPF programs{hint}"), e)
    })?;
    Ok(skel)
}

fn run(
    mode: AttachMode,
    ids: Vec<u64>,
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<RawEvent>>>,
    ready: mpsc::Sender<Result<()>>,
    cwd_of: Option<CwdFn>,
) -> Result<u64> {
    let mut obj = MaybeUninit::uninit();
    let skel = match setup(mode, &mut obj, &ids) {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            return Err(Error::BpfUnavailable(msg));
        }
    };
    let sink = events.clone();
    let mut rb = RingBufferBuilder::new();
    rb.add(&skel.maps.events, move |data: &[u8]| {
        if let Some(mut ev) = decode(data) {
            // Relative stat paths need the cwd, read while the process
            // (most likely) still lives.
            if let (RawEvent::Path { pid, path, cwd, .. }, Some(f)) = (&mut ev, &cwd_of) {
                if !path.starts_with('/') {
                    *cwd = f(*pid);
                }
            }
            if let Ok(mut v) = sink.lock() {
                v.push(ev);
            }
        }
        0
    })
    .map_err(|e| fail("ring buffer", e))?;
    let rb = rb.build().map_err(|e| fail("ring buffer", e))?;
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::SeqCst) {
        // Wake-ups are batched in the kernel; poll with a timeout so a
        // quiet trace still drains.
        rb.poll(Duration::from_millis(50))
            .map_err(|e| fail("poll ring buffer", e))?;
    }
    rb.consume().map_err(|e| fail("drain ring buffer", e))?;
    let lost = skel
        .maps
        .lost
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|v| {
            v.get(..8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_ne_bytes)
        })
        .unwrap_or(0);
    Ok(lost)
}

impl Tracer for BpfTracer {
    fn stop(mut self: Box<Self>) -> Result<(Vec<RawEvent>, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        let lost = match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(Error::BpfUnavailable("tracer thread panicked".into())),
            None => 0,
        };
        let ev = std::mem::take(
            &mut *self
                .events
                .lock()
                .map_err(|_| Error::BpfUnavailable("event buffer poisoned".into()))?,
        );
        Ok((ev, lost))
    }
    fn name(&self) -> &'static str {
        "ebpf"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_inode_events() {
        let mut b = vec![0u8; INODE_EVENT_LEN];
        b[0..4].copy_from_slice(&1u32.to_ne_bytes());
        b[4..8].copy_from_slice(&2u32.to_ne_bytes());
        b[8..16].copy_from_slice(&77u64.to_ne_bytes());
        b[24..32].copy_from_slice(&1234u64.to_ne_bytes());
        b[32..36].copy_from_slice(&((8u32 << 20) | 3).to_ne_bytes());
        b[36..40].copy_from_slice(&42u32.to_ne_bytes());
        assert_eq!(
            decode(&b),
            Some(RawEvent::Inode {
                kind: Kind::Exec,
                ts_ns: 77,
                dev: libc::makedev(8, 3),
                ino: 1234,
                pid: 42
            })
        );
        assert_eq!(decode(&b[..10]), None);
        b[4..8].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(decode(&b), None, "unknown kind");
    }

    #[test]
    fn decodes_path_events() {
        let mut b = vec![0u8; PATH_EVENT_LEN];
        b[0..4].copy_from_slice(&2u32.to_ne_bytes());
        b[4..8].copy_from_slice(&8u32.to_ne_bytes());
        b[24..28].copy_from_slice(&(-100i32).to_ne_bytes());
        b[32..41].copy_from_slice(b"/etc/conf");
        match decode(&b) {
            Some(RawEvent::Path {
                dfd, path, kind, ..
            }) => {
                assert_eq!((dfd, path.as_str(), kind), (-100, "/etc/conf", Kind::Stat))
            }
            other => panic!("{other:?}"),
        }
    }
}
