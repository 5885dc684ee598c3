//! The fallback tracer: fanotify on the container's overlay mount
//! (FAN_OPEN, FAN_OPEN_EXEC, marked on the overlay's superblock). It sees opens and execs (the kernel's own
//! open of the ELF interpreter included) but not mmaps of already-open
//! files or stat-only lookups.

use crate::event::{monotonic_ns, Kind, RawEvent};
use crate::{Error, Result, Tracer};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct FanotifyTracer {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<RawEvent>>>,
    thread: Option<JoinHandle<()>>,
}

impl FanotifyTracer {
    /// Watch every open and exec on the mount at `root` (the container's
    /// rootfs). Paths are reported relative to it.
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
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s2, e2, root) = (stop.clone(), events.clone(), root.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("nvtier-fanotify".into())
            .spawn(move || drain(fa, root, s2, e2))
            .map_err(|e| Error::FanotifyUnavailable(format!("spawn: {e}")))?;
        Ok(FanotifyTracer {
            stop,
            events,
            thread: Some(thread),
        })
    }
}

fn drain(fa: Fanotify, root: PathBuf, stop: Arc<AtomicBool>, events: Arc<Mutex<Vec<RawEvent>>>) {
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut fds = [nix::poll::PollFd::new(
            fa.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16));
        let batch = fa.read_events().unwrap_or_default();
        let empty = batch.is_empty();
        for ev in batch {
            let ts_ns = monotonic_ns();
            let kind = if ev.mask().contains(MaskFlags::FAN_OPEN_EXEC) {
                Kind::Exec
            } else {
                Kind::Open
            };
            let Some(fd) = ev.fd() else { continue };
            let link = std::fs::read_link(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ));
            if let Ok(p) = link {
                // Through our copy of the mount the path carries the mount
                // point; through the container's copy (not reachable from
                // here) it is already relative to the overlay root.
                let path = match p.strip_prefix(&root) {
                    Ok(rel) => format!("/{}", rel.display()),
                    Err(_) if p.is_absolute() => p.display().to_string(),
                    Err(_) => continue,
                };
                if let Ok(mut v) = events.lock() {
                    v.push(RawEvent::ImagePath { kind, ts_ns, path });
                }
            }
        }
        if stopping && empty {
            return;
        }
    }
}

impl Tracer for FanotifyTracer {
    fn stop(mut self: Box<Self>) -> Result<(Vec<RawEvent>, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let ev = std::mem::take(
            &mut *self
                .events
                .lock()
                .map_err(|_| Error::FanotifyUnavailable("event buffer poisoned".into()))?,
        );
        Ok((ev, 0))
    }
    fn name(&self) -> &'static str {
        "fanotify"
    }
}
