//! The cold-start probe behind `nvtier run`: mount the image, run one
//! command chrooted into it in new mount/pid/uts/ipc namespaces, time it,
//! unmount. Not a container runtime: no cgroups, no seccomp, no network
//! namespace, no user namespace.

use crate::error::{Error, IoContext, Result};
use crate::mount::{mount_image_opts, umount_image};
use crate::store::Store;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    pub image: String,
    pub exit_code: i32,
    /// Wall time of the command, from spawn to exit (or to ready, with
    /// `ready_port`).
    pub elapsed_ms: f64,
    /// Wall time to mount the rootfs.
    pub mount_ms: f64,
    /// The mount was tiered (metadata layer + hot data layers).
    pub tiered: bool,
    /// Ended because 127.0.0.1:`ready_port` accepted a connection.
    pub ready: bool,
}

/// Drop the page cache, dentries and inodes (for cold measurements).
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", b"3").ctx("write", "/proc/sys/vm/drop_caches")
}

/// Run `cmd` in `image`. The image is mounted on a private directory under
/// the state dir and unmounted afterwards, also on error.
/// With `quiet_stdout`, the command's stdout goes to stderr so that the
/// caller's stdout carries only its JSON report.
pub fn run(
    store: &Store,
    image: &str,
    cmd: &[String],
    quiet_stdout: bool,
    flat: bool,
    ready_port: Option<u16>,
) -> Result<RunResult> {
    if cmd.is_empty() {
        return Err(Error::Other(
            "no command given (nvtier run IMAGE -- CMD...)".into(),
        ));
    }
    let root: PathBuf = store.state().join("run").join(format!(
        "{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&root).ctx("create", &root)?;
    let t0 = Instant::now();
    let rec = match mount_image_opts(store, image, &root, flat) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir(&root);
            return Err(e);
        }
    };
    let mount_ms = t0.elapsed().as_secs_f64() * 1e3;
    let ready = std::cell::Cell::new(false);
    let r = match ready_port {
        None => spawn_in(
            &rec.target,
            cmd,
            SpawnOptions {
                quiet_stdout,
                ..Default::default()
            },
        ),
        Some(port) => Cgroup::create("nvtier-run").and_then(|cg| {
            let mut stop = || {
                let ok = std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    std::time::Duration::from_millis(20),
                )
                .is_ok();
                if ok {
                    ready.set(true);
                }
                ok
            };
            spawn_in(
                &rec.target,
                cmd,
                SpawnOptions {
                    quiet_stdout,
                    cgroup: Some(&cg),
                    stop_when: Some(&mut stop),
                },
            )
        }),
    };
    let u = umount_image(store, &rec.target);
    let _ = std::fs::remove_dir(&root);
    let (code, elapsed) = r?;
    u?;
    let ready = ready.get();
    if ready_port.is_some() && !ready {
        return Err(Error::Other(format!(
            "{image}: the command exited with {code} before 127.0.0.1:{} accepted a connection",
            ready_port.unwrap_or(0)
        )));
    }
    Ok(RunResult {
        image: image.to_string(),
        exit_code: if ready { 0 } else { code },
        elapsed_ms: elapsed,
        mount_ms,
        tiered: rec.tiering.is_some(),
        ready,
    })
}

/// How to run the command.
#[derive(Default)]
pub struct SpawnOptions<'a> {
    /// Send the command's stdout to stderr.
    pub quiet_stdout: bool,
    /// Join this cgroup (v2 directory) before anything else.
    pub cgroup: Option<&'a Cgroup>,
    /// End the run (kill the cgroup) when this returns true; polled every
    /// 5 ms. Requires `cgroup`.
    pub stop_when: Option<&'a mut dyn FnMut() -> bool>,
}

/// A cgroup v2 directory made for one run, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    pub dir: PathBuf,
    pub id: u64,
    procs: std::ffi::CString,
}

impl Cgroup {
    /// Create a fresh cgroup under the v2 hierarchy
    /// (`/sys/fs/cgroup` on a unified system, else `/sys/fs/cgroup/unified`).
    pub fn create(prefix: &str) -> Result<Cgroup> {
        use std::os::unix::fs::MetadataExt;
        let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/unified")
        };
        let dir = base.join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).ctx("create cgroup (is cgroup v2 mounted?)", &dir)?;
        let id = std::fs::metadata(&dir).ctx("stat cgroup", &dir)?.ino();
        let procs = std::ffi::CString::new(dir.join("cgroup.procs").to_string_lossy().as_bytes())
            .map_err(|_| Error::Other("cgroup path contains NUL".into()))?;
        Ok(Cgroup { dir, id, procs })
    }

    /// Kill every process in the cgroup.
    pub fn kill(&self) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.kill"), b"1").ctx("kill cgroup", &self.dir)
    }

    fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if !self.populated() {
                break;
            }
            let _ = self.kill();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Run `cmd` chrooted into the mounted rootfs `root` in new namespaces.
/// Returns the exit code and the wall time in ms.
pub fn spawn_in(root: &Path, cmd: &[String], opts: SpawnOptions<'_>) -> Result<(i32, f64)> {
    let quiet_stdout = opts.quiet_stdout;
    if cmd.is_empty() {
        return Err(Error::Other("no command given".into()));
    }
    let cgroup_procs = opts.cgroup.map(|c| c.procs.clone());
    let root = root.to_path_buf();
    let proc_dir = root.join("proc");
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    c.env_clear();
    c.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    c.env("HOME", "/root");
    c.env("TERM", "xterm");
    if quiet_stdout {
        let err = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::Other(format!("dup stderr: {e}")))?;
        c.stdout(std::process::Stdio::from(err));
    }
    // SAFETY: the closure runs in the forked child before exec and only
    // makes raw syscalls (unshare, fork, waitpid, mount, chroot, chdir,
    // sethostname, _exit); it allocates nothing the parent depends on.
    unsafe {
        c.pre_exec(move || {
            use nix::sched::CloneFlags as F;
            if let Some(p) = &cgroup_procs {
                // Allocation-free: open/write/close on a prepared path.
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::sched::unshare(
                F::CLONE_NEWNS | F::CLONE_NEWPID | F::CLONE_NEWUTS | F::CLONE_NEWIPC,
            )?;
            // The first child after CLONE_NEWPID is pid 1 of the new
            // namespace: fork once more, wait, and pass the status through.
            match nix::unistd::fork()? {
                nix::unistd::ForkResult::Parent { child } => {
                    // This process never execs: close std's exec-status pipe
                    // (and every other inherited fd) so `spawn` returns now
                    // instead of when the container ends.
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    let code = match nix::sys::wait::waitpid(child, None) {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                        Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                        _ => 127,
                    };
                    libc::_exit(code);
                }
                nix::unistd::ForkResult::Child => {}
            }
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            if proc_dir.is_dir() {
                nix::mount::mount(
                    Some("proc"),
                    &proc_dir,
                    Some("proc"),
                    nix::mount::MsFlags::MS_NOSUID
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOEXEC,
                    None::<&str>,
                )?;
            }
            let _ = nix::unistd::sethostname("nvtier-run");
            nix::unistd::chroot(&root)?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    let t = Instant::now();
    let mut child = c.spawn().map_err(|e| {
        Error::Other(format!(
            "cannot start {:?} in the image: {e} (does the image contain it?)",
            cmd[0]
        ))
    })?;
    let status = match (opts.stop_when, opts.cgroup) {
        (Some(stop), Some(cg)) => loop {
            if let Some(st) = child
                .try_wait()
                .map_err(|e| Error::Other(format!("wait: {e}")))?
            {
                break st;
            }
            if stop() {
                cg.kill()?;
                break child
                    .wait()
                    .map_err(|e| Error::Other(format!("wait: {e}")))?;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        },
        _ => child
            .wait()
            .map_err(|e| Error::Other(format!("wait: {e}")))?,
    };
    let elapsed = t.elapsed().as_secs_f64() * 1e3;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok((code, elapsed))
}
