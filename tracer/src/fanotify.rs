//! The fallback tracer: fanotify on the container's overlay mount
//! (FAN_OPEN, FAN_OPEN_EXEC, marked on the overlay's superblock). It sees opens and execs (the kernel's own
//! open of the ELF interpreter included) but not mmaps of already-open
//! files or stat-only lookups.

use crate::collector::Collector;
use crate::event::{monotonic_ns, Kind, RawEvent};
use crate::{Error, Result, Tracer};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use std::path::{Path, PathBuf};

pub struct FanotifyTracer {
    collector: Collector,
}

impl FanotifyTracer {
    /// Watch every open and exec on the overlay mounted at `root` (the
    /// container's rootfs). Paths are reported relative to it.
    pub fn start(root: &Path) -> Result<FanotifyTracer> {
        let fa = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| Error::FanotifyUnavailable(format!("fanotify_init: {e}")))?;
        fa.mark(
            // The container runs in its own mount namespace, on a copy of
            // this mount: mark the overlay superblock, which both share.
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            MaskFlags::FAN_OPEN | MaskFlags::FAN_OPEN_EXEC,
            None,
            Some(root),
        )
        .map_err(|e| {
            Error::FanotifyUnavailable(format!("fanotify_mark {}: {e}", root.display()))
        })?;
        let root = root.to_path_buf();
        let collector = Collector::spawn("nvtier-fanotify", fa, move |fa: &Fanotify| {
            decode(fa.read_events().unwrap_or_default(), &root)
        })?;
        Ok(FanotifyTracer { collector })
    }
}

fn decode(batch: Vec<nix::sys::fanotify::FanotifyEvent>, root: &PathBuf) -> Vec<RawEvent> {
    let mut out = Vec::new();
    for ev in batch {
        let ts_ns = monotonic_ns();
        let kind = if ev.mask().contains(MaskFlags::FAN_OPEN_EXEC) {
            Kind::Exec
        } else {
            Kind::Open
        };
        let Some(fd) = ev.fd() else { continue };
        let Ok(p) = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        )) else {
            continue;
        };
        // Through our copy of the mount the path carries the mount point;
        // through the container's copy (not reachable from here) it is
        // already relative to the overlay root.
        let path = match p.strip_prefix(root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) if p.is_absolute() => p.display().to_string(),
            Err(_) => continue,
        };
        out.push(RawEvent::ImagePath { kind, ts_ns, path });
    }
    out
}

impl Tracer for FanotifyTracer {
    fn stop(self: Box<Self>) -> Result<(Vec<RawEvent>, u64)> {
        Ok((self.collector.finish()?, 0))
    }
    fn name(&self) -> &'static str {
        "fanotify"
    }
}
