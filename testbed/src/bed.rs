//! A private testbed for root integration tests: an emulated pmem tier,
//! emulated HDD and a real registry behind an emulated link, brought up with
//! the same scripts and helpers as `nvbench` ([`crate::testbed`]) and torn
//! down on drop (also when the test fails). Failures panic: this is for
//! tests. The nvtier binary is an argument of the methods that run it, as
//! only the driver's test build knows where Cargo put it.

use crate::testbed::{crate_scripts, down_steps, registry_up, script, tiers_up};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository (workspace) root.
pub fn repo() -> PathBuf {
    crate_scripts()
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests need root (mounts, loop devices, netns): run `sudo bash .ci/run`"
    );
}

/// The entries of `dirs` (a missing or unreadable dir has none): what a
/// test that freed everything expects to be empty.
pub fn entries_under(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|d| {
            fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
        })
        .collect()
}

/// The stdout of `cmd`; panics with its status and output when it fails.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `testbed/NAME ARGS`; its stdout.
pub fn sh(name: &str, args: &[&str]) -> String {
    run_ok(
        script(&crate_scripts(), name).args(args),
        &format!("testbed/{name} {args:?}"),
    )
}

/// Best-effort `registry.sh down NAME` and `tiers.sh down NAME`.
fn down(name: &str) {
    for (_, mut c) in down_steps(&crate_scripts(), name, true, true) {
        let _ = c.output();
    }
}

/// A private testbed.
pub struct Bed {
    pub name: String,
    pub pmem: PathBuf,
    pub disk: PathBuf,
    pub registry: String,
    pub registry_data: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl Bed {
    /// `tag` is a short test name (≤ 6 chars); the pid makes it unique.
    pub fn up(tag: &str, rate: &str, pmem_budget: &str) -> Bed {
        require_root();
        let name = format!("{tag}{:x}", std::process::id() % 0xffff);
        // run-tests.sh checks afterwards that every testbed named here is gone.
        if let Some(f) = std::env::var_os("NVTIER_TEST_NAMES_FILE") {
            use std::io::Write;
            if let Ok(mut f) = fs::OpenOptions::new().append(true).open(f) {
                let _ = writeln!(f, "{name}");
            }
        }
        // Tear down anything left by an earlier crashed run of this name.
        down(&name);
        let mut bed = Bed {
            name: name.clone(),
            pmem: PathBuf::new(),
            disk: PathBuf::new(),
            registry: String::new(),
            registry_data: PathBuf::new(),
            state: PathBuf::from(format!("/var/tmp/nvtier-tests/{name}/state")),
            config: PathBuf::from(format!("/var/tmp/nvtier-tests/{name}/config.toml")),
        };
        let (t, _) = tiers_up(&crate_scripts(), &name, "512M", "2G")
            .unwrap_or_else(|e| panic!("testbed/tiers.sh up {name}: {e:#}"));
        bed.pmem = PathBuf::from(&t["PMEM_DIR"]);
        bed.disk = PathBuf::from(&t["DISK_DIR"]);
        let (r, _) = registry_up(&crate_scripts(), &name, rate)
            .unwrap_or_else(|e| panic!("testbed/registry.sh up {name}: {e:#}"));
        bed.registry = r["REGISTRY"].clone();
        bed.registry_data = PathBuf::from(&r["REGISTRY_DATA"]);
        let _ = fs::remove_dir_all(bed.state.parent().expect("parent"));
        fs::create_dir_all(&bed.state).expect("state dir");
        bed.write_config(pmem_budget);
        bed
    }

    pub fn write_config(&self, pmem_budget: &str) {
        fs::write(
            &self.config,
            format!(
                "state_dir = {:?}\npmem_dir = {:?}\ndisk_dir = {:?}\npmem_budget = {:?}\ninsecure_registries = [{:?}]\n",
                self.state, self.pmem, self.disk, pmem_budget, self.registry
            ),
        )
        .expect("write config");
    }

    /// Build (cached) and push a test image; returns its reference.
    pub fn push(&self, tag: &str, spec: &str) -> String {
        self.push_seed(tag, spec, 1)
    }

    /// [`Bed::push`] with another data seed (different data layers).
    pub fn push_seed(&self, tag: &str, spec: &str, seed: u32) -> String {
        self.push_cmd(tag, spec, seed, None)
    }

    /// [`Bed::push_seed`] with the image config's Cmd (`build-image.sh
    /// --cmd`, words split at spaces; None keeps `/bin/sh`).
    pub fn push_cmd(&self, tag: &str, spec: &str, seed: u32, cmd: Option<&str>) -> String {
        let oci = oci_dir();
        let _lock = build_lock();
        let seed = seed.to_string();
        let mut args = vec![
            "--out",
            oci.to_str().expect("utf8"),
            "--tag",
            tag,
            "--layers",
            spec,
            "--seed",
            &seed,
        ];
        if let Some(c) = cmd {
            args.extend_from_slice(&["--cmd", c]);
        }
        sh("build-image.sh", &args);
        self.push_built(tag)
    }

    /// Push `tag`, already built in [`oci_dir`]; returns its reference.
    pub fn push_built(&self, tag: &str) -> String {
        let reference = format!("{}/nvtier-test/{tag}:latest", self.registry);
        sh(
            "push-image.sh",
            &[&format!("{}:{tag}", oci_dir().display()), &reference],
        );
        reference
    }

    /// `BIN ARGS` with this bed's config.
    pub fn nvtier(&self, bin: &Path, args: &[&str]) -> Output {
        Command::new(bin)
            .args(args)
            .env("NVTIER_CONFIG", &self.config)
            .env("NVTIER_LOG", "info")
            .output()
            .expect("run nvtier")
    }

    /// Run nvtier in a private mount namespace where no tracefs or
    /// debugfs is mounted, as on a fresh host (the host's mounts are not
    /// touched). Fails the test if one is still visible in there.
    pub fn nvtier_without_tracefs(
        &self,
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        self.nvtier_in_mount_ns(bin, false, args, env)
    }

    /// Run nvtier in a private mount namespace with tracefs mounted at
    /// /sys/kernel/tracing (the host's mounts are not touched).
    pub fn nvtier_with_tracefs(&self, bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.nvtier_in_mount_ns(bin, true, args, env)
    }

    fn nvtier_in_mount_ns(
        &self,
        bin: &Path,
        tracefs: bool,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        const SHOW: &str = r#"
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing || exit 96
fi
[ -e /sys/kernel/tracing/events/syscalls ] || exit 97
exec "$@"
"#;
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(if tracefs { SHOW } else { HIDE_TRACEFS_SH })
            .arg("sh")
            .arg(bin)
            .args(args)
            .env("NVTIER_CONFIG", &self.config)
            .env("NVTIER_LOG", "info");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().expect("run nvtier under unshare");
        let code = o.status.code();
        assert!(
            !matches!(code, Some(96..=98)),
            "could not set up tracefs={tracefs} in the test namespace: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    pub fn nvtier_ok(&self, bin: &Path, args: &[&str]) -> String {
        let o = self.nvtier(bin, args);
        assert!(
            o.status.success(),
            "nvtier {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `nvtier_ok` with `--json`, parsed. The report of a `pull` is also
    /// read as a [`crate::pull_report::PullReport`], so a change of its
    /// shape fails the test that pulled.
    pub fn nvtier_json(&self, bin: &Path, args: &[&str]) -> Value {
        // Before `--`, so it never becomes part of the container's command.
        let mut a = args.to_vec();
        let at = a.iter().position(|x| *x == "--").unwrap_or(a.len());
        a.insert(at, "--json");
        let out = self.nvtier_ok(bin, &a);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"));
        if args.first() == Some(&"pull") {
            check_pull_report(&v);
        }
        v
    }

    /// Entries left in every place that must be empty after cleanup.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        entries_under(&[
            self.pmem.join("staging"),
            self.disk.join("staging"),
            self.state.join("downloads"),
            self.state.join("reservations"),
        ])
    }

    pub fn stored_layers(&self) -> Vec<PathBuf> {
        entries_under(&[
            self.pmem.join("layers"),
            self.disk.join("layers"),
            self.state.join("layers"),
        ])
    }

    /// Blob files of the registry's filesystem storage, largest first.
    pub fn registry_blobs(&self) -> Vec<(u64, PathBuf)> {
        let mut v = Vec::new();
        let mut stack = vec![self.registry_data.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n == "data")
                    && p.to_string_lossy().contains("/blobs/")
                {
                    v.push((fs::metadata(&p).map(|m| m.len()).unwrap_or(0), p));
                }
            }
        }
        v.sort_by_key(|b| std::cmp::Reverse(b.0));
        v
    }

    pub fn set_rate(&self, rate: &str) {
        sh("registry.sh", &["rate", &self.name, rate]);
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Unmount anything nvtier left under our state or tiers.
        if let Ok(t) = fs::read_to_string("/proc/self/mountinfo") {
            for l in t.lines() {
                if let Some(mp) = l.split(' ').nth(4) {
                    if mp.starts_with(self.state.to_str().unwrap_or("/nonexistent"))
                        || mp.starts_with("/var/tmp/nvtier-tests/") && mp.contains(&self.name)
                    {
                        let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                    }
                }
            }
        }
        down(&self.name);
        if let Some(p) = self.state.parent() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// A `sh -c` script that unmounts every tracefs and debugfs in its (private)
/// mount namespace, checks none is left, then runs `"$@"`. Exit codes
/// 96–98: the set-up failed.
pub const HIDE_TRACEFS_SH: &str = r#"
for m in $(awk '$3 == "tracefs" || $3 == "debugfs" { print $2 }' /proc/self/mounts | sort -r); do
    umount -l "$m" || exit 96
done
if awk '$3 == "tracefs" || $3 == "debugfs" { found = 1 } END { exit !found }' /proc/self/mounts; then
    echo "tracefs/debugfs still mounted in the test namespace" >&2
    exit 97
fi
if [ -e /sys/kernel/tracing/events ]; then
    echo "/sys/kernel/tracing/events exists without tracefs" >&2
    exit 98
fi
exec "$@"
"#;

pub fn oci_dir() -> PathBuf {
    PathBuf::from("/var/tmp/nvtier-test-images/oci")
}

/// Serialise image builds across test processes.
pub fn build_lock() -> nix::fcntl::Flock<fs::File> {
    fs::create_dir_all("/var/tmp/nvtier-test-images").expect("mkdir");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/var/tmp/nvtier-test-images/.lock")
        .expect("lock file");
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock")
}

/// The manifest digest (`sha256:…`) of `tag` in [`oci_dir`]'s index.
pub fn manifest_digest(tag: &str) -> String {
    let index: Value =
        serde_json::from_slice(&fs::read(oci_dir().join("index.json")).expect("read OCI index"))
            .expect("OCI index JSON");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .expect("tag in the OCI index")
        .to_string()
}

/// A reference root filesystem of `tag`, unpacked by umoci (an independent
/// implementation of layer application, whiteouts included).
pub fn reference_rootfs(tag: &str) -> PathBuf {
    let _lock = build_lock();
    // Keyed by the manifest digest, so a rebuilt image is unpacked afresh.
    let digest = manifest_digest(tag);
    let digest = digest.trim_start_matches("sha256:");
    let dir = PathBuf::from(format!(
        "/var/tmp/nvtier-test-images/unpacked-{tag}-{}",
        &digest[..16]
    ));
    let rootfs = dir.join("rootfs");
    if !rootfs.is_dir() {
        let _ = fs::remove_dir_all(&dir);
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:{tag}", oci_dir().display()))
                .arg(&dir),
            "umoci unpack",
        );
    }
    rootfs
}

/// path → "type mode uid:gid size sha256|target" for every entry under root.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d).expect("read_dir").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let ft = md.file_type();
            let desc = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {}", fs::read_link(&p).expect("readlink").display())
            } else if ft.is_file() {
                let data = fs::read(&p).expect("read");
                format!(
                    "file {} {} mtime {}",
                    data.len(),
                    hex::encode(Sha256::digest(&data)),
                    md.mtime()
                )
            } else if ft.is_char_device() {
                format!("chr {}", md.rdev())
            } else if ft.is_block_device() {
                format!("blk {}", md.rdev())
            } else {
                "other".into()
            };
            m.insert(
                rel,
                format!(
                    "{desc} mode {:o} owner {}:{}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            );
        }
    }
    m
}

/// Compare two listings and explain the differences.
pub fn assert_same_tree(expected: &BTreeMap<String, String>, actual: &BTreeMap<String, String>) {
    let mut diffs = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => diffs.push(format!("missing {k}: {v}")),
            Some(a) if a != v => diffs.push(format!("differs {k}: expected {v}, got {a}")),
            _ => {}
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            diffs.push(format!("unexpected {k}: {v}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "rootfs differs from the image:\n{}",
        diffs.join("\n")
    );
    assert!(expected.len() > 10, "suspiciously small reference tree");
}

/// Panic unless `report` (from `nvtier pull --json`) reads as the
/// testbed's [`crate::pull_report::PullReport`].
pub fn check_pull_report(report: &Value) {
    if let Err(e) = crate::pull_report::PullReport::deserialize(report) {
        panic!("`nvtier pull --json` does not have the shape the testbed reads: {e}\n{report}");
    }
}

/// Check the streamed LASS rule against what a pull report recorded: a
/// layer is on pmem exactly when its storing started after the last byte,
/// or storing it on disk was predicted to end after the last byte (see
/// `nvtier_policy::lass::streamed`).
pub fn check_lass_rule(rep: &Value) {
    check_rule(rep, false)
}

/// The same, but a layer the rule puts on pmem may be on disk when the
/// report says the pmem budget could not hold it.
pub fn check_lass_rule_with_budget(rep: &Value) {
    check_rule(rep, true)
}

fn check_rule(rep: &Value, budget_may_refuse: bool) {
    let layers = rep["layers"].as_array().expect("layers");
    let last = layers
        .iter()
        .filter_map(|l| l["download_end_ms"].as_f64())
        .fold(f64::MIN, f64::max);
    let mut ldl = None;
    for l in layers {
        if l["reused"].as_bool() == Some(true) {
            continue;
        }
        let start = l["store_start_ms"].as_f64().expect("store_start_ms");
        if start >= last && ldl.is_none() {
            ldl = l["index"].as_u64();
        }
        let lass = &l["lass"];
        let all = lass["all_downloaded"].as_bool().expect("lass inputs");
        let wire = lass["wire_left_ms"].as_u64().expect("wire_left_ms");
        let disk = lass["disk_store_ms"].as_u64().expect("disk_store_ms");
        let late = all || disk > wire;
        let mut want = if late { "pmem" } else { "disk" };
        if late && budget_may_refuse && l["disk_reason"] == "budget_exhausted" {
            want = "disk";
        }
        if !late {
            assert_eq!(l["disk_reason"], "ends_before_last_byte", "{l}");
        }
        assert_eq!(
            l["tier"].as_str(),
            Some(want),
            "layer {}: storing started at {start} ms, last download ended at {last} ms: {l}",
            l["index"]
        );
    }
    assert_eq!(
        rep["ldl_index"].as_u64(),
        ldl,
        "ldl_index disagrees with the timeline"
    );
}
