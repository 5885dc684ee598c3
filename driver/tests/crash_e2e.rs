//! `kill -9` of `nvtier serve` under real engines, then a restart on the
//! same state: during a remote-snapshot pull that dockerd 26 started,
//! during containerd's unpack `Commit`, and during a background migration
//! while a container runs. Each test checks that the kill landed in its
//! window, that the engine's retry succeeds, that running containers and
//! new ones read the image's exact bytes, and that no record, directory,
//! short link, staging dir or reservation is left over.

mod common;
mod engines;

use common::Bed;
use engines::state::*;
use engines::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A command running in the background (an engine client), killed on drop.
struct Bg {
    child: Option<Child>,
    log: PathBuf,
}

impl Bg {
    fn spawn(mut cmd: Command, log: PathBuf) -> Bg {
        let f = fs::File::create(&log).expect("log");
        cmd.stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .stdin(Stdio::null());
        Bg {
            child: Some(cmd.spawn().expect("spawn")),
            log,
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Wait up to `secs`; its exit status and output.
    fn finish(&mut self, secs: u64) -> (Option<std::process::ExitStatus>, String) {
        let t = Instant::now();
        let mut st = None;
        if let Some(c) = self.child.as_mut() {
            while t.elapsed() < Duration::from_secs(secs) {
                if let Ok(Some(s)) = c.try_wait() {
                    st = Some(s);
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if st.is_some() {
            self.child = None;
        }
        (st, fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run an engine command until it stops failing with gRPC `Unavailable`
/// (containerd reconnects to a restarted proxy after a back-off; `ctr
/// snapshots ls` answers from containerd's own database, so it cannot tell
/// when that happened). Returns the last output.
fn retry_unavailable(what: &str, mut f: impl FnMut() -> std::process::Output) -> String {
    let t = Instant::now();
    loop {
        let o = f();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if o.status.success()
            || !err.contains("unavailable")
            || t.elapsed() > Duration::from_secs(60)
        {
            return ok(o, what);
        }
        eprintln!("{what}: proxy not reconnected yet ({})", err.trim());
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pmem_within_budget(bed: &Bed, budget: u64, when: &str) {
    let st = bed.nvtier_json(&["status"]);
    let used = st["pmem_used_bytes"].as_u64().expect("pmem_used_bytes");
    assert!(
        used <= budget,
        "{when}: pmem {used} > budget {budget}: {st}"
    );
}

/// (b) containerd's own unpack (`ctr images pull` of an image nvtier never
/// pulled): `kill -9` while `Commit` runs. The layer is unpacked on pmem
/// and does not fit the budget at Commit, so Commit copies it to disk with
/// `cp -a`: the kill lands while that copy (a child of `nvtier serve`)
/// runs, and the test fails if it did not.
#[test]
fn ctr_unpack_kill_9_during_commit_then_retry() {
    const BUDGET: u64 = 4 << 20;
    let t0 = Instant::now();
    let bed = Bed::up("crcm", "1gbit", "4M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config(&bed, "4M", &containerd_root(&bed));
    let mut nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, None);
    // Layer 2 (96 MiB) holds the whiteout of /etc/removeme and the opaque
    // /opt/dir; busybox and layer 1 fit the budget.
    let img = bed.push("crcm1", "busybox,1M,96M");
    let want = image_hashes("crcm1");

    let mut cmd = Command::new("ctr");
    cmd.arg("-a")
        .arg(&ctd.sock)
        .args([
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "nvtier",
            &img,
        ])
        .env("PATH", &ctd.path_env);
    let mut pull = Bg::spawn(cmd, rd.0.join("pull1.log"));
    let pid = nv.pid().expect("serve pid");
    let t = Instant::now();
    let mut copying = Vec::new();
    while t.elapsed() < Duration::from_secs(120) && pull.running() {
        copying = children_named(pid, "cp");
        if !copying.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !copying.is_empty(),
        "the kill missed Commit: no copy to disk was seen (pull running: {})\n{}",
        pull.running(),
        nv.log_text()
    );
    let st = nv.kill9().expect("killed");
    assert_eq!(st.signal(), Some(9));
    // A service manager kills the whole unit (systemd's control group):
    // the copy does not outlive the server.
    for p in &copying {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_for("the copy to die", 10, || {
        copying.iter().all(|p| !pid_alive(*p))
    });
    let log1 = nv.log_text();
    assert!(
        log1.contains("moving it to disk"),
        "not inside Commit's copy:\n{log1}"
    );
    eprintln!(
        "killed during Commit after {:?}; left behind:\n{}",
        t.elapsed(),
        full_listing(&bed).join("\n")
    );
    let (st, out) = pull.finish(60);
    let st = st.expect("ctr pull did not end after the snapshotter died");
    assert!(
        !st.success(),
        "ctr pull succeeded although Commit was killed:\n{out}"
    );
    eprintln!("first ctr pull: {st}: {}", out.lines().last().unwrap_or(""));

    nv = start_nvtier(&bed, &sock, "nvtier2");
    assert_consistent(&bed, "after the restart");
    // The engine's retry.
    retry_unavailable("ctr pull (retry)", || {
        ctd.ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "nvtier",
            &img,
        ])
    });
    let layers = bed.nvtier_json(&["layers"]);
    let layers = layers.as_array().expect("layers");
    assert_eq!(layers.len(), 3, "{layers:?}");
    let big = layers
        .iter()
        .find(|l| l["file_bytes"].as_u64().unwrap_or(0) >= 96 << 20)
        .expect("the 96 MiB layer");
    assert_eq!(big["tier"], "disk", "{big}");
    pmem_within_budget(&bed, BUDGET, "after the retry");
    let mut args = vec!["run", "--rm", "--snapshotter", "nvtier", &img, "crcm-c1"];
    let cmdline = sha256sum_cmd(&want);
    args.extend(cmdline.iter().map(String::as_str));
    let out = ctd.ctr_ok(&args);
    assert_hashes(&out, &want, "container after the retry");
    let out = ctd.run_nvtier(
        &["--rm"],
        &img,
        "crcm-c2",
        &["sh", "-c", "ls /opt/dir; echo --; ls /etc"],
    );
    let (opt, etc) = out.split_once("--").expect("two listings");
    assert_eq!(opt.split_whitespace().collect::<Vec<_>>(), ["c"], "{out}");
    assert!(!etc.contains("removeme"), "whiteout lost: {out}");
    assert_consistent(&bed, "with the image");

    ctd.ctr_ok(&["images", "rm", "--sync", &img]);
    wait_for("snapshots to be removed", 30, || {
        snapshot_records(&bed).is_empty()
    });
    assert_all_freed(&bed, "after ctr images rm", 10);
    assert!(nv.alive(), "nvtier serve died:\n{}", nv.log_text());
    drop(ctd);
    drop(nv);
    drop(rd);
    eprintln!("test time {:?}", t0.elapsed());
}

/// (a) dockerd 26 with the containerd image store: `docker pull` makes
/// nvtier pull the image itself (remote snapshot). `kill -9` while that
/// pull downloads, with at least one layer already stored; the test fails
/// if the pull had finished or not yet begun.
#[test]
fn docker26_remote_pull_kill_9_then_retry() {
    let t0 = Instant::now();
    let eng = trixie_engines();
    let bin = PathBuf::from(&eng["ENGINES_BIN"]);
    let bed = Bed::up("crdk", "100mbit", "256M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config(&bed, "256M", &containerd_root(&bed));
    let mut nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, Some(&bin));
    let dockerd = Dockerd::start(&bed, &ctd);
    // About 52 MiB: some 4 s at 100 Mbit/s.
    let img = bed.push("crdk1", "busybox,8M,16M,24M,4M");
    let mut want = image_hashes("crdk1");
    // dockerd bind-mounts its own /etc/hostname into every container.
    want.remove("/etc/hostname");

    let mut cmd = Command::new("docker");
    cmd.arg("-H")
        .arg(format!("unix://{}", dockerd.sock.display()))
        .args(["pull", &img])
        .env("PATH", &dockerd.path_env);
    let mut pull = Bg::spawn(cmd, rd.0.join("pull1.log"));
    let pulls = bed.state.join("pulls");
    let t = Instant::now();
    let (mut stored, mut partial) = (0, 0);
    while t.elapsed() < Duration::from_secs(120) && pull.running() {
        stored = fs::read_dir(bed.state.join("layers")).map_or(0, |d| d.count());
        partial = fs::read_dir(bed.state.join("downloads")).map_or(0, |d| d.count());
        if stored > 0 && partial > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = nv.kill9().expect("killed");
    assert_eq!(st.signal(), Some(9));
    let log1 = nv.log_text();
    assert!(
        stored > 0 && partial > 0,
        "the kill missed the pull: {stored} layers stored, {partial} downloads running\n{log1}"
    );
    assert!(log1.contains("pulling for containerd"), "{log1}");
    assert!(
        fs::read_dir(&pulls).map_or(0, |d| d.count()) == 0,
        "the pull had finished before the kill"
    );
    eprintln!(
        "killed during the remote pull after {:?} ({stored} layers stored, {partial} downloading); left behind:\n{}",
        t.elapsed(),
        full_listing(&bed).join("\n")
    );
    let (st, out) = pull.finish(90);
    let st = st.expect("docker pull did not end after the snapshotter died");
    eprintln!("first docker pull: {st}: {}", out.trim());

    nv = start_nvtier(&bed, &sock, "nvtier2");
    assert_consistent_but(&bed, "after the restart", true);
    // The engine's retry: nvtier pulls again, reusing the stored layers.
    retry_unavailable("docker pull (retry)", || dockerd.docker(&["pull", &img]));
    let images = bed.nvtier_json(&["images"]);
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    let name = images[0]["name"].as_str().expect("name").to_string();
    assert_eq!(
        fs::read_dir(&pulls).map_or(0, |d| d.count()),
        1,
        "no pull report after the retry"
    );
    let layers = bed.nvtier_json(&["layers"]);
    assert_eq!(layers.as_array().map(Vec::len), Some(5), "{layers}");
    for l in layers.as_array().expect("layers") {
        assert!(l["blob_digest"].is_string(), "not pulled by nvtier: {l}");
    }
    let mut args = vec!["run", "--rm", "--network", "none", &img];
    let cmdline = sha256sum_cmd(&want);
    args.extend(cmdline.iter().map(String::as_str));
    let out = dockerd.docker_ok(&args);
    assert_hashes(&out, &want, "container after the retry");
    assert_consistent(&bed, "with the image");

    // nvtier pulled it for the engine: its record goes with docker rmi.
    assert_eq!(images[0]["origin"], "engine", "{images}");
    dockerd.docker_ok(&["rmi", &img]);
    wait_for("snapshots to be removed", 30, || {
        snapshot_records(&bed).is_empty()
    });
    wait_for("the engine image's record to go", 10, || {
        bed.nvtier_json(&["images"])
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    assert!(
        nv.log_text().contains(&name),
        "the removal of {name} is not logged"
    );
    assert_all_freed(&bed, "after docker rmi", 10);
    assert!(nv.alive(), "nvtier serve died:\n{}", nv.log_text());
    drop(dockerd);
    drop(ctd);
    drop(nv);
    drop(rd);
    eprintln!("test time {:?}", t0.elapsed());
}

/// `ctr tasks exec` of `sha256sum` over the image's files in `id`.
fn exec_hashes(ctd: &Containerd, id: &str, exec_id: &str, want: &BTreeMap<String, String>) {
    let mut args = vec!["tasks", "exec", "--exec-id", exec_id, id];
    let cmdline = sha256sum_cmd(want);
    args.extend(cmdline.iter().map(String::as_str));
    let out = ctd.ctr_ok(&args);
    assert_hashes(&out, want, &format!("running container {id} ({exec_id})"));
}

/// (c) `nvtier serve`'s background migration is killed (`NVTIER_FAULT`
/// makes serve SIGKILL itself at a named step, so the kill is always
/// inside the migration) while a `ctr run -d` container runs on the
/// image: first half-way through publishing a hot generation, then, on
/// the restarted server that resumes the migration, right after a base
/// layer's metadata switched to disk. The container reads the same bytes
/// throughout, the third server finishes the migration, and new
/// containers read the same bytes.
#[test]
fn kill_9_during_background_migration_under_a_running_container() {
    let t0 = Instant::now();
    let bed = Bed::up("crmg", "1gbit", "256M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config(&bed, "256M", &containerd_root(&bed));
    let mut cfg = fs::read_to_string(&bed.config).expect("config");
    cfg.push_str("migrate_interval_s = 1\n");
    fs::write(&bed.config, cfg).expect("config");
    let img = bed.push("tierfeat", "busybox,1M,1M,2M,1M");
    let want = image_hashes("tierfeat");
    bed.nvtier_json(&["pull", "--placement", "pmem", &img]);
    let name = bed.nvtier_json(&["images"])[0]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let mut nv = start_nvtier_env(&bed, &sock, "nvtier1", &[("NVTIER_FAULT", "mid_publish")]);
    let ctd = Containerd::start(&bed, &sock, None);
    // containerd's pull attaches nvtier's layers (nothing is unpacked).
    ctd.pull_nvtier(&img);
    assert_eq!(
        bed.nvtier_json(&["layers"]).as_array().map(Vec::len),
        Some(5)
    );
    ctd.run_nvtier(&["-d"], &img, "crmg-c1", &["sleep", "600"]);
    exec_hashes(&ctd, "crmg-c1", "e0", &want);

    // A profile makes the next round of the background loop migrate.
    let p = bed.nvtier_json(&[
        "trace",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "cat /data/layer1.bin /data/layer3.bin /feat/xattr >/dev/null",
    ]);
    assert_eq!(p["exit_code"], 0, "{p}");
    for (round, (fault, next)) in [("mid_publish", "layer_switched"), ("layer_switched", "")]
        .into_iter()
        .enumerate()
    {
        let st = nv
            .wait_exit(60)
            .unwrap_or_else(|| panic!("serve was not killed at {fault}:\n{}", nv.log_text()));
        assert_eq!(st.signal(), Some(9), "{st}: {}", nv.log_text());
        let log = nv.log_text();
        assert!(
            log.contains("NVTIER_FAULT: killing myself") && log.contains(fault),
            "not killed at {fault}:\n{log}"
        );
        eprintln!(
            "round {round}: killed at {fault}; left behind:\n{}",
            full_listing(&bed).join("\n")
        );
        // With the server down and the migration half done.
        exec_hashes(&ctd, "crmg-c1", &format!("e{round}a"), &want);
        let env: Vec<(&str, &str)> = if next.is_empty() {
            vec![]
        } else {
            vec![("NVTIER_FAULT", next)]
        };
        nv = start_nvtier_env(
            &bed,
            &sock,
            if next.is_empty() {
                "nvtier3"
            } else {
                "nvtier2"
            },
            &env,
        );
        exec_hashes(&ctd, "crmg-c1", &format!("e{round}b"), &want);
    }
    wait_for("the background migration to finish", 60, || {
        nv.log_text().contains("background migration done")
    });
    let layers = bed.nvtier_json(&["layers"]);
    for l in layers.as_array().expect("layers") {
        assert_eq!(l["tier"], "disk", "base not relocated: {l}");
    }
    let hot: u64 = layers
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["pmem_files"].as_u64().unwrap_or(0))
        .sum();
    assert!(hot > 0, "no hot files on pmem: {layers}");
    exec_hashes(&ctd, "crmg-c1", "e9", &want);
    // A new container mounts the new placement and reads the same bytes.
    let mut args = vec!["run", "--rm", "--snapshotter", "nvtier", &img, "crmg-c2"];
    let cmdline = sha256sum_cmd(&want);
    args.extend(cmdline.iter().map(String::as_str));
    let out = retry_unavailable("ctr run after the restarts", || ctd.ctr(&args));
    assert_hashes(&out, &want, "new container after the migration");
    assert_consistent(&bed, "after the migration");
    let st = bed.nvtier_json(&["status"]);
    assert!(
        st["pmem_retired_bytes"].as_u64().unwrap_or(0) > 0,
        "the running container's pmem bases must be kept: {st}"
    );

    ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "crmg-c1"]);
    wait_for("crmg-c1 to stop", 20, || {
        ctd.ctr(&["tasks", "rm", "crmg-c1"]).status.success()
    });
    ctd.ctr_ok(&["containers", "rm", "crmg-c1"]);
    ctd.ctr_ok(&["images", "rm", "--sync", &img]);
    wait_for("snapshots to be removed", 30, || {
        snapshot_records(&bed).is_empty()
    });
    bed.nvtier_ok(&["rm", &name]);
    assert_all_freed(&bed, "after removing the container and the image", 10);
    assert!(nv.alive(), "nvtier serve died:\n{}", nv.log_text());
    drop(ctd);
    drop(nv);
    drop(rd);
    eprintln!("test time {:?}", t0.elapsed());
}
