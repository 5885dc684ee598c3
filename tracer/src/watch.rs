//! Watching every container on the host (`nvtier serve`): the eBPF program
//! filtered by the root of the task instead of a cgroup.
//!
//! A task whose root directory is on an overlayfs superblock belongs to a
//! container. The kernel reports the first access from each new root
//! ([`Sighting::NewRoot`]) and records its accesses from then on, so
//! nothing between the container's `pivot_root` and the caller's decision
//! is lost. The caller then either keeps the root recorded or calls
//! [`RootWatcher::ignore`], after which its accesses cost the kernel one
//! map lookup and reach user space no more.

use crate::bpf::{decode_sighting, fail, lost_count, setup, spawn_loaded, AttachMode, Sighting};
use crate::event::RawEvent;
use crate::{Error, Result};
use libbpf_rs::{MapCore, MapFlags, RingBufferBuilder};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// The value of a root in the kernel's `roots` map: stop reporting it.
const ROOT_IGNORE: u8 = 2;

enum Cmd {
    Ignore(u64),
    Forget(u64),
}

/// See [`RootWatcher::ignorer`].
#[derive(Clone)]
pub struct Ignorer(mpsc::Sender<Cmd>);

impl Ignorer {
    /// As [`RootWatcher::ignore`].
    pub fn ignore(&self, root: u64) {
        let _ = self.0.send(Cmd::Ignore(root));
    }
}

/// A running root watcher. Dropping it detaches the programs.
pub struct RootWatcher {
    mode: AttachMode,
    cmds: mpsc::Sender<Cmd>,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl RootWatcher {
    /// Load and attach the programs with the root filter; every sighting
    /// goes to `sink` (from the watcher's own thread). Stat events with a
    /// relative path get the process's cwd (as `/proc/PID/cwd` shows it:
    /// the path inside the container) while the process lives.
    pub fn start(mode: AttachMode, sink: mpsc::Sender<Sighting>) -> Result<RootWatcher> {
        if !cfg!(target_arch = "x86_64") {
            return Err(Error::BpfUnavailable(
                "the BPF program decodes x86_64 syscall numbers and registers; this build is for another architecture".into(),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicU64::new(0));
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (stop2, lost2) = (stop.clone(), lost.clone());
        let thread = spawn_loaded("nvtier-watch", move |ready| {
            run(mode, sink, cmd_rx, stop2, lost2, ready)
        })?;
        Ok(RootWatcher {
            mode,
            cmds: cmd_tx,
            stop,
            lost,
            thread: Some(thread),
        })
    }

    /// How the syscall programs are attached.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Stop reporting `root`'s accesses (the kernel keeps the root as
    /// ignored until it is evicted from its table of 4096 roots; a root's
    /// id is never reused).
    pub fn ignore(&self, root: u64) {
        let _ = self.cmds.send(Cmd::Ignore(root));
    }

    /// A handle that tells this watcher to ignore roots, for another
    /// thread (it does not keep the watcher alive).
    pub fn ignorer(&self) -> Ignorer {
        Ignorer(self.cmds.clone())
    }

    /// Forget `root`: its next access is a new sighting.
    pub fn forget(&self, root: u64) {
        let _ = self.cmds.send(Cmd::Forget(root));
    }

    /// Events the kernel dropped because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for RootWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The line of `mountinfo` for the mount at `/` whose device is `root` (a
/// kernel `dev_t`: `major << 20 | minor`).
pub fn root_mount_line(mountinfo: &str, root: u64) -> Option<String> {
    let want = format!("{}:{}", root >> 20, root & 0xfffff);
    mountinfo
        .lines()
        .find(|l| {
            let mut f = l.split(' ');
            f.nth(2) == Some(want.as_str()) && f.nth(1) == Some("/")
        })
        .map(str::to_string)
}

/// Any mount line of `mountinfo` on device `root` (the rootfs as the
/// engine mounted it in its own namespace).
pub fn mount_line_on(mountinfo: &str, root: u64) -> Option<String> {
    let want = format!("{}:{}", root >> 20, root & 0xfffff);
    mountinfo
        .lines()
        .find(|l| l.split(' ').nth(2) == Some(want.as_str()))
        .map(str::to_string)
}

fn mount_of(pid: u32, root: u64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .ok()
        .and_then(|mi| root_mount_line(&mi, root))
        .or_else(|| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|mi| mount_line_on(&mi, root))
        })
}

fn cwd_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with('/'))
}

fn run(
    mode: AttachMode,
    sink: mpsc::Sender<Sighting>,
    cmds: mpsc::Receiver<Cmd>,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    let mut obj = MaybeUninit::uninit();
    let skel = match setup(mode, &mut obj, &[], true) {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            return Err(Error::BpfUnavailable(msg));
        }
    };
    let mut rb = RingBufferBuilder::new();
    rb.add(&skel.maps.events, move |data: &[u8]| {
        if let Some(mut s) = decode_sighting(data) {
            match &mut s {
                Sighting::Event {
                    event: RawEvent::Path { pid, path, cwd, .. },
                    ..
                } if !path.starts_with('/') => *cwd = cwd_of(*pid),
                Sighting::NewRoot {
                    dev, pid, mount, ..
                } => *mount = mount_of(*pid, *dev),
                _ => {}
            }
            let _ = sink.send(s);
        }
        0
    })
    .map_err(|e| fail("ring buffer", e))?;
    let rb = rb.build().map_err(|e| fail("ring buffer", e))?;
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = rb.poll(Duration::from_millis(50)) {
            // A signal handled on this thread interrupts the wait.
            if e.kind() == libbpf_rs::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %e, "the eBPF watcher stopped: polling its ring buffer failed");
            return Err(fail("poll ring buffer", e));
        }
        // Wake-ups are batched in the kernel (one per 64 KiB): a poll that
        // times out has consumed nothing, so drain what is there.
        if let Err(e) = rb.consume() {
            tracing::warn!(error = %e, "the eBPF watcher stopped: draining its ring buffer failed");
            return Err(fail("drain ring buffer", e));
        }
        while let Ok(c) = cmds.try_recv() {
            let r = match c {
                Cmd::Ignore(root) => {
                    skel.maps
                        .roots
                        .update(&root.to_ne_bytes(), &[ROOT_IGNORE], MapFlags::ANY)
                }
                Cmd::Forget(root) => skel.maps.roots.delete(&root.to_ne_bytes()),
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "updating the roots map");
            }
        }
        lost.store(lost_count(&skel), Ordering::SeqCst);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: &str = "\
1043 990 0:123 / / rw,relatime - overlay overlay rw,upperdir=/p/snapshots/k3/fs,workdir=/p/snapshots/k3/work
1044 1043 0:5 / /dev rw,nosuid - tmpfs tmpfs rw
1045 990 0:124 / /run/x/rootfs rw - overlay overlay rw,upperdir=/o/fs,workdir=/o/w
";

    #[test]
    fn root_mount_lines() {
        let dev = |maj: u64, min: u64| (maj << 20) | min;
        assert!(root_mount_line(MI, dev(0, 123)).is_some_and(|l| l.starts_with("1043 ")));
        assert_eq!(root_mount_line(MI, dev(0, 124)), None, "not at /");
        assert_eq!(root_mount_line(MI, dev(0, 5)), None);
        assert!(mount_line_on(MI, dev(0, 124)).is_some_and(|l| l.starts_with("1045 ")));
        assert_eq!(mount_line_on(MI, dev(0, 7)), None);
        assert_eq!(root_mount_line("", dev(0, 123)), None);
    }
}
