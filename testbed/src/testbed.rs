//! A testbed instance (emulated tiers + shaped registry) brought up with the
//! scripts next to this crate, and always torn down by `Drop`.

use crate::proc::{self, parse_kv, run, run_ok, Opts};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Values printed by `tiers.sh up` and `registry.sh up`.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

impl Env {
    pub fn get(&self, k: &str) -> Result<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .with_context(|| format!("the testbed scripts did not print {k}="))
    }
}

/// The directory holding tiers.sh, registry.sh & co. (this crate's own).
pub fn crate_scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `bash SCRIPTS/NAME`.
pub fn script(scripts: &Path, name: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(scripts.join(name));
    c
}

/// The `KEY=value` lines printed by `tiers.sh up` and `registry.sh up`
/// (surrounding double quotes removed).
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    parse_kv(text)
        .into_iter()
        .map(|(k, v)| (k, v.trim().trim_matches('"').to_string()))
        .collect()
}

/// `tiers.sh up NAME --pmem-size P --hdd-size H`: its variables and stderr.
pub fn tiers_up(
    scripts: &Path,
    name: &str,
    pmem_size: &str,
    hdd_size: &str,
) -> Result<(BTreeMap<String, String>, String)> {
    let out = run_ok(
        script(scripts, "tiers.sh").args([
            "up",
            name,
            "--pmem-size",
            pmem_size,
            "--hdd-size",
            hdd_size,
        ]),
        Opts::new(300),
    )?;
    Ok((parse_env(&out.stdout), out.stderr))
}

/// `registry.sh up NAME --rate RATE`: its variables and stderr.
pub fn registry_up(
    scripts: &Path,
    name: &str,
    rate: &str,
) -> Result<(BTreeMap<String, String>, String)> {
    let out = run_ok(
        script(scripts, "registry.sh").args(["up", name, "--rate", rate]),
        Opts::new(120),
    )?;
    Ok((parse_env(&out.stdout), out.stderr))
}

/// The teardown commands of NAME, in order: `registry.sh down NAME` (if
/// `registry`), then `tiers.sh down NAME` (if `tiers`).
pub fn down_steps(
    scripts: &Path,
    name: &str,
    registry: bool,
    tiers: bool,
) -> Vec<(&'static str, Command)> {
    let mut steps = Vec::new();
    if registry {
        let mut c = script(scripts, "registry.sh");
        c.args(["down", name]);
        steps.push(("registry.sh down", c));
    }
    if tiers {
        let mut c = script(scripts, "tiers.sh");
        c.args(["down", name]);
        steps.push(("tiers.sh down", c));
    }
    steps
}

/// A running testbed. Dropping it runs `registry.sh down` and `tiers.sh
/// down` (each only if its `up` was attempted), printing but otherwise
/// ignoring failures, and removes the bench state directory.
pub struct Testbed {
    pub name: String,
    pub scripts: PathBuf,
    pub env: Env,
    /// /var/tmp/nvtier-bench/NAME (config, nvtier state).
    pub work: PathBuf,
    tiers_started: bool,
    registry_started: bool,
    _lock: File,
}

/// Is `name` a valid testbed NAME (1–12 of [a-z0-9-], not starting with -)?
pub fn valid_name(name: &str) -> bool {
    (1..=12).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
}

extern "C" {
    fn flock(fd: i32, op: i32) -> i32;
}
const LOCK_EX: i32 = 2;
const LOCK_NB: i32 = 4;

/// Exclusive, non-blocking lock so two nvbench runs never share a NAME.
fn lock_name(work_root: &Path, name: &str) -> Result<File> {
    std::fs::create_dir_all(work_root)
        .with_context(|| format!("cannot create {}", work_root.display()))?;
    let path = work_root.join(format!(".{name}.lock"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { flock(std::os::fd::AsRawFd::as_raw_fd(&f), LOCK_EX | LOCK_NB) };
    if rc != 0 {
        bail!(
            "another nvbench is using testbed name '{name}' (lock {} is held); pick another --name",
            path.display()
        );
    }
    Ok(f)
}

impl Testbed {
    /// Bring up tiers and registry for NAME. Leftovers of an earlier,
    /// crashed run with the same NAME (we hold its lock, so it is ours) are
    /// torn down first.
    pub fn up(scripts: &Path, name: &str, rate: &str) -> Result<Testbed> {
        if !valid_name(name) {
            bail!("--name '{name}' must be 1-12 characters of [a-z0-9-], not starting with '-'");
        }
        let work_root = PathBuf::from("/var/tmp/nvtier-bench");
        let lock = lock_name(&work_root, name)?;
        let mut tb = Testbed {
            name: name.to_string(),
            scripts: scripts.to_path_buf(),
            env: Env::default(),
            work: work_root.join(name),
            tiers_started: false,
            registry_started: false,
            _lock: lock,
        };
        let run_dir = Path::new("/run/nvtier-testbed").join(name);
        if run_dir.exists() || tb.work.exists() {
            eprintln!("nvbench: leftovers of an earlier run named '{name}' found; tearing them down first");
            tb.tiers_started = true;
            tb.registry_started = true;
            tb.teardown();
        }
        tb.tiers_started = true;
        eprintln!("nvbench: tiers.sh up {name} --pmem-size 2G --hdd-size 8G");
        let (vars, stderr) = tiers_up(scripts, name, "2G", "8G")?;
        show_stderr(&stderr);
        tb.env.vars.extend(vars);
        proc::check_stop()?;
        tb.registry_started = true;
        eprintln!("nvbench: registry.sh up {name} --rate {rate}");
        let (vars, stderr) = registry_up(scripts, name, rate)?;
        show_stderr(&stderr);
        tb.env.vars.extend(vars);
        for k in [
            "PMEM_DIR",
            "DISK_DIR",
            "LOOP_DEV",
            "BLKIO_CGROUP",
            "REGISTRY",
        ] {
            tb.env.get(k)?;
        }
        std::fs::create_dir_all(&tb.work)
            .with_context(|| format!("cannot create {}", tb.work.display()))?;
        Ok(tb)
    }

    /// A command run inside the HDD throttle cgroup. The child joins the
    /// cgroup itself between fork and exec (what `tiers.sh exec` does, without
    /// a shell: a cold bash and `lib.sh` cost ~50 ms after a cache drop, which
    /// a timed command would otherwise include), with the same environment.
    pub fn exec_throttled(&self, program: &Path) -> Result<Command> {
        use std::os::unix::process::CommandExt;
        let procs =
            std::ffi::CString::new(format!("{}/cgroup.procs", self.env.get("BLKIO_CGROUP")?))
                .context("BLKIO_CGROUP holds a NUL byte")?;
        let mut c = Command::new(program);
        for k in [
            "PMEM_DIR",
            "DISK_DIR",
            "LOOP_DEV",
            "LOOP_MAJMIN",
            "BLKIO_CGROUP",
        ] {
            c.env(k, self.env.get(k)?);
        }
        // SAFETY: between fork and exec only async-signal-safe calls (open,
        // write, close) on memory prepared before the fork.
        unsafe {
            c.pre_exec(move || {
                use nix::libc;
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
        Ok(c)
    }

    fn teardown(&mut self) {
        let opts = Opts {
            timeout: Duration::from_secs(180),
            interruptible: false,
        };
        let steps = down_steps(
            &self.scripts,
            &self.name,
            self.registry_started,
            self.tiers_started,
        );
        for (what, mut c) in steps {
            eprintln!("nvbench: {what} {}", self.name);
            match run(&mut c, opts) {
                Ok(o) if o.status.success() => show_stderr(&o.stderr),
                Ok(o) => eprintln!(
                    "nvbench: warning: {what} {} failed ({}), ignoring:\n{}",
                    self.name,
                    o.status,
                    proc::tail(&o.stderr, 20)
                ),
                Err(e) => eprintln!("nvbench: warning: {what} {}: {e:#}, ignoring", self.name),
            }
        }
        self.registry_started = false;
        self.tiers_started = false;
        if self.work.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.work) {
                eprintln!(
                    "nvbench: warning: cannot remove {}: {e}, ignoring",
                    self.work.display()
                );
            }
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn show_stderr(s: &str) {
    for l in s.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("  | {l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("bench"));
        assert!(valid_name("a-1"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Bench"));
        assert!(!valid_name("abcdefghijklm"));
    }

    #[test]
    fn env_lines() {
        let e = parse_env("PMEM_DIR=/run/x/pmem\nnoise\nREGISTRY=\"10.0.0.2:5000\"\nlower=1\n");
        assert_eq!(e["PMEM_DIR"], "/run/x/pmem");
        assert_eq!(e["REGISTRY"], "10.0.0.2:5000");
        assert_eq!(e.len(), 2);
    }
}
