//! The cold-start probe behind `nvtier run`: mount the image, run one
//! command chrooted into it in new mount/pid/uts/ipc namespaces, time it,
//! unmount. Not a container runtime: no cgroups, no seccomp, no network
//! namespace, no user namespace.

use crate::error::{Error, IoContext, Result};
use crate::mount::{mount_image, umount_image};
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
    /// Wall time of the command, from spawn to exit.
    pub elapsed_ms: f64,
    /// Wall time to mount the rootfs.
    pub mount_ms: f64,
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
pub fn run(store: &Store, image: &str, cmd: &[String], quiet_stdout: bool) -> Result<RunResult> {
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
    let rec = match mount_image(store, image, &root) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir(&root);
            return Err(e);
        }
    };
    let mount_ms = t0.elapsed().as_secs_f64() * 1e3;
    let r = spawn_in(&rec.target, cmd, quiet_stdout);
    let u = umount_image(store, &rec.target);
    let _ = std::fs::remove_dir(&root);
    let (code, elapsed) = r?;
    u?;
    Ok(RunResult {
        image: image.to_string(),
        exit_code: code,
        elapsed_ms: elapsed,
        mount_ms,
    })
}

fn spawn_in(root: &Path, cmd: &[String], quiet_stdout: bool) -> Result<(i32, f64)> {
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
            nix::sched::unshare(
                F::CLONE_NEWNS | F::CLONE_NEWPID | F::CLONE_NEWUTS | F::CLONE_NEWIPC,
            )?;
            // The first child after CLONE_NEWPID is pid 1 of the new
            // namespace: fork once more, wait, and pass the status through.
            match nix::unistd::fork()? {
                nix::unistd::ForkResult::Parent { child } => {
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
    let status = c.status().map_err(|e| {
        Error::Other(format!(
            "cannot start {:?} in the image: {e} (does the image contain it?)",
            cmd[0]
        ))
    })?;
    let elapsed = t.elapsed().as_secs_f64() * 1e3;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok((code, elapsed))
}
