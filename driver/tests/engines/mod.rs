//! Real container engines for the snapshotter tests: `nvtier serve`,
//! containerd (bookworm 1.6, or trixie 1.7 from `testbed/engines.sh`) and
//! dockerd 26, each on private sockets and directories, stopped on drop
//! (also when the test fails).
#![allow(dead_code)]

use crate::common::{repo, Bed};
#[allow(unused_imports)]
pub use nvtier_testbed::bed::entries_under;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod state;

/// The root directory of one test's containerd.
pub fn containerd_root(bed: &Bed) -> PathBuf {
    PathBuf::from(format!("/var/tmp/nvtier-tests/{}/containerd", bed.name))
}

/// Runtime directory of one test's engines (short: socket paths ≤ 107 bytes).
pub fn run_dir(bed: &Bed) -> PathBuf {
    PathBuf::from(format!("/run/nvtier-eng/{}", bed.name))
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

pub fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A child process that is stopped (TERM, then KILL) on drop.
pub struct Daemon {
    pub name: &'static str,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Daemon {
        let f = fs::File::create(log).expect("log file");
        cmd.stdout(f.try_clone().expect("dup")).stderr(f);
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon {
            name,
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait up to `secs`, then SIGKILL. Returns whether it exited
    /// on TERM.
    pub fn stop(&mut self, secs: u64) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// `kill -9`, then reap it; its exit status.
    pub fn kill9(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        c.wait().ok()
    }

    /// Wait up to `secs` for it to exit by itself; its exit status.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            let c = self.child.as_mut()?;
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(20);
    }
}

/// Write the bed's nvtier config with the snapshotter keys (containerd's
/// socket is the one [`Containerd::start`] makes).
pub fn write_serve_config(bed: &Bed, budget: &str, containerd_root: &Path) -> PathBuf {
    write_serve_config_extra(bed, budget, containerd_root, "")
}

/// [`write_serve_config`] with `extra` TOML lines appended.
pub fn write_serve_config_extra(
    bed: &Bed,
    budget: &str,
    containerd_root: &Path,
    extra: &str,
) -> PathBuf {
    // In a sub-directory that `nvtier serve` must create itself.
    let sock = run_dir(bed).join("sock/nvtier.sock");
    fs::write(
        &bed.config,
        format!(
            "state_dir = {:?}\npmem_dir = {:?}\ndisk_dir = {:?}\npmem_budget = {:?}\ninsecure_registries = [{:?}]\nsnapshotter_socket = {:?}\ndocker_plugin_socket = \"\"\ncontainerd_root = {:?}\ncontainerd_socket = {:?}\n{extra}",
            bed.state,
            bed.pmem,
            bed.disk,
            budget,
            bed.registry,
            sock,
            containerd_root,
            run_dir(bed).join("ctd.sock")
        ),
    )
    .expect("write config");
    sock
}

pub fn start_nvtier(bed: &Bed, sock: &Path, log_name: &str) -> Daemon {
    start_nvtier_env(bed, sock, log_name, &[])
}

/// [`start_nvtier`] with more environment (`NVTIER_FAULT`, `NVTIER_LOG`).
pub fn start_nvtier_env(bed: &Bed, sock: &Path, log_name: &str, env: &[(&str, &str)]) -> Daemon {
    let _ = fs::remove_file(sock);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nvtier"));
    cmd.arg("serve")
        .env("NVTIER_CONFIG", &bed.config)
        .env("NVTIER_LOG", "info,h2=warn,tower=warn,hyper=warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let d = Daemon::spawn(
        "nvtier serve",
        cmd,
        &run_dir(bed).join(format!("{log_name}.log")),
    );
    wait_for("the nvtier socket", 30, || sock.exists());
    d
}

/// `nvtier serve` in a private mount namespace without tracefs or
/// debugfs, as on a fresh host (the host's mounts are untouched).
pub fn start_nvtier_without_tracefs(bed: &Bed, sock: &Path, log_name: &str) -> Daemon {
    let _ = fs::remove_file(sock);
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(nvtier_testbed::bed::HIDE_TRACEFS_SH)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_nvtier"))
        .arg("serve")
        .env("NVTIER_CONFIG", &bed.config)
        .env(
            "NVTIER_LOG",
            "info,nvtier::record=debug,h2=warn,tower=warn,hyper=warn",
        );
    let mut d = Daemon::spawn(
        "nvtier serve",
        cmd,
        &run_dir(bed).join(format!("{log_name}.log")),
    );
    wait_for("the nvtier socket", 30, || sock.exists() || !d.alive());
    assert!(
        d.alive(),
        "nvtier serve (no tracefs) exited:\n{}",
        d.log_text()
    );
    d
}

/// A private containerd.
pub struct Containerd {
    pub daemon: Daemon,
    pub root: PathBuf,
    pub sock: PathBuf,
    pub path_env: String,
}

impl Containerd {
    /// `bin_dir`: where `containerd`/`containerd-shim-runc-v2` come from
    /// (None = the system's bookworm containerd 1.6).
    pub fn start(bed: &Bed, snap_sock: &Path, bin_dir: Option<&Path>) -> Containerd {
        Containerd::start_with(bed, snap_sock, bin_dir, None)
    }

    /// [`Containerd::start`] with the CRI plugin enabled and configured by
    /// `cri` (TOML tables appended to the config), or disabled (None).
    pub fn start_with(
        bed: &Bed,
        snap_sock: &Path,
        bin_dir: Option<&Path>,
        cri: Option<&str>,
    ) -> Containerd {
        let run = run_dir(bed);
        let root = containerd_root(bed);
        fs::create_dir_all(&root).expect("containerd root");
        let sock = run.join("ctd.sock");
        let cfg = run.join("containerd.toml");
        let disabled = if cri.is_some() {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        fs::write(
            &cfg,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n{disabled}[grpc]\n  address = {:?}\n[proxy_plugins]\n  [proxy_plugins.nvtier]\n    type = \"snapshot\"\n    address = {:?}\n{}",
                root,
                run.join("ctd-state"),
                sock,
                snap_sock,
                cri.unwrap_or_default()
            ),
        )
        .expect("containerd config");
        let path_env = match bin_dir {
            Some(b) => format!(
                "{}:{}",
                b.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
            None => std::env::var("PATH").unwrap_or_default(),
        };
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&cfg).env("PATH", &path_env);
        let daemon = Daemon::spawn("containerd", cmd, &run.join("containerd.log"));
        let s2 = sock.clone();
        wait_for("the containerd socket", 30, || s2.exists());
        Containerd {
            daemon,
            root,
            sock,
            path_env,
        }
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(args)
            .env("PATH", &self.path_env)
            .output()
            .expect("run ctr")
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
        ok(self.ctr(args), &format!("ctr {args:?}"))
    }

    /// `ctr run FLAGS --snapshotter nvtier IMG ID CMD...`: its output.
    pub fn run_nvtier(&self, flags: &[&str], img: &str, id: &str, cmd: &[&str]) -> String {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--snapshotter", "nvtier", img, id]);
        args.extend_from_slice(cmd);
        self.ctr_ok(&args)
    }

    /// `ctr images pull` of `img` from the plain-HTTP test registry into
    /// the nvtier snapshotter.
    pub fn pull_nvtier(&self, img: &str) -> String {
        self.ctr_ok(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "nvtier",
            img,
        ])
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Kill leftover tasks (shims outlive containerd otherwise).
        for ns in ["default", "moby", "k8s.io"] {
            if let Ok(o) = Command::new("ctr")
                .arg("-a")
                .arg(&self.sock)
                .args(["-n", ns, "tasks", "ls", "-q"])
                .env("PATH", &self.path_env)
                .output()
            {
                for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("ctr")
                        .arg("-a")
                        .arg(&self.sock)
                        .args(["-n", ns, "tasks", "kill", "-s", "SIGKILL", id])
                        .env("PATH", &self.path_env)
                        .output();
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = Command::new("ctr")
                        .arg("-a")
                        .arg(&self.sock)
                        .args(["-n", ns, "tasks", "rm", "-f", id])
                        .env("PATH", &self.path_env)
                        .output();
                }
            }
        }
        self.daemon.stop(20);
        // Unmount what containerd left (rootfs mounts under its state).
        unmount_under(&run_dir_of(&self.sock));
        unmount_under(&self.root);
    }
}

fn run_dir_of(sock: &Path) -> PathBuf {
    sock.parent().map(Path::to_path_buf).unwrap_or_default()
}

pub fn unmount_under(dir: &Path) {
    let Some(d) = dir.to_str() else { return };
    if d.len() < 5 {
        return;
    }
    if let Ok(t) = fs::read_to_string("/proc/self/mountinfo") {
        let mut mps: Vec<&str> = t
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|mp| mp.starts_with(d))
            .collect();
        mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mp in mps {
            let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Runtime dir cleanup, last (after every daemon stopped).
pub struct RunDir(pub PathBuf);
impl Drop for RunDir {
    fn drop(&mut self) {
        unmount_under(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn make_run_dir(bed: &Bed) -> RunDir {
    let d = run_dir(bed);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("run dir");
    RunDir(d)
}

/// `testbed/engines.sh fetch`: the trixie engines (cached).
pub fn trixie_engines() -> std::collections::BTreeMap<String, String> {
    let o = Command::new("bash")
        .arg(repo().join("testbed/engines.sh"))
        .arg("fetch")
        .output()
        .expect("engines.sh");
    let text = ok(o, "testbed/engines.sh fetch");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A private dockerd 26 with the containerd image store and nvtier as its
/// snapshotter.
pub struct Dockerd {
    pub daemon: Daemon,
    pub sock: PathBuf,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub path_env: String,
}

impl Dockerd {
    pub fn start(bed: &Bed, ctd: &Containerd) -> Dockerd {
        Self::start_with(bed, ctd, &[])
    }

    /// [`Dockerd::start`] with more `dockerd` arguments.
    pub fn start_with(bed: &Bed, ctd: &Containerd, extra: &[&str]) -> Dockerd {
        let mut args = vec!["--containerd", ctd.sock.to_str().expect("utf8 socket path")];
        args.extend_from_slice(extra);
        Self::launch(
            bed,
            "docker",
            r#"{"features": {"containerd-snapshotter": true}, "storage-driver": "nvtier"}"#,
            &args,
            &ctd.path_env,
        )
    }

    /// A dockerd of the bed named `name`: config `daemon_json`, data-root
    /// `/var/tmp/nvtier-tests/BED/NAME`, exec-root, pidfile, socket and log
    /// in the bed's run dir, no iptables or bridge, the bed's registry as
    /// insecure, and `args`. Waits until it answers.
    pub fn launch(
        bed: &Bed,
        name: &str,
        daemon_json: &str,
        args: &[&str],
        path_env: &str,
    ) -> Dockerd {
        let run = run_dir(bed);
        let cfg = run.join(format!("{name}.json"));
        fs::write(&cfg, daemon_json).expect("daemon.json");
        let data_root = PathBuf::from(format!("/var/tmp/nvtier-tests/{}/{name}", bed.name));
        // Short: dockerd puts sockets under it.
        let exec_root = run.join(format!("{}x", &name[..1]));
        let sock = run.join(format!("{name}.sock"));
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(&cfg)
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(run.join(format!("{name}.pid")))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--insecure-registry")
            .arg(&bed.registry)
            .args(args)
            .env("PATH", path_env);
        let daemon = Daemon::spawn("dockerd", cmd, &run.join(format!("{name}d.log")));
        let d = Dockerd {
            daemon,
            sock,
            data_root,
            exec_root,
            path_env: path_env.to_string(),
        };
        wait_for(&format!("dockerd {name}"), 60, || {
            d.docker(&["version"]).status.success()
        });
        d
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env("PATH", &self.path_env)
            .output()
            .expect("run docker")
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        ok(self.docker(args), &format!("docker {args:?}"))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(["ps", "-aq"])
            .env("PATH", &self.path_env)
            .output()
        {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.daemon.stop(30);
        unmount_under(&self.exec_root);
        unmount_under(&self.data_root);
    }
}

/// Keeps a fake, growing download in containerd's ingest area (as if
/// another pull were running) until dropped.
pub struct FakeIngest {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    t: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl FakeIngest {
    pub fn start(ctd_root: &Path) -> FakeIngest {
        let dir = ctd_root.join("io.containerd.content.v1.content/ingest/nvtier-test-fake");
        fs::create_dir_all(&dir).expect("ingest dir");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _ = fs::write(dir.join("ref"), "nvtier-test-fake-download");
        let _ = fs::write(dir.join("startedat"), "2026-01-01T00:00:00Z");
        let _ = fs::write(dir.join("updatedat"), "2026-01-01T00:00:00Z");
        let _ = fs::write(dir.join("total"), "1000000000");
        let (s2, d2) = (stop.clone(), dir.clone());
        let t = std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fs::write(d2.join("data"), b"partial");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        FakeIngest {
            stop,
            t: Some(t),
            dir,
        }
    }
}

impl Drop for FakeIngest {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
