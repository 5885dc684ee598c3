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
    wait_for("everything to be freed", 10, || {
        full_listing(&bed).is_empty()
    });
    assert_all_freed(&bed, "after ctr images rm");
    assert!(nv.alive(), "nvtier serve died:\n{}", nv.log_text());
    drop(ctd);
    drop(nv);
    drop(rd);
    eprintln!("test time {:?}", t0.elapsed());
}
