//! A tier that loses its content, goes missing or fills up: real tmpfs
//! "pmem" tiers replaced and unmounted under the store, a real registry to
//! fetch lost layers from again, and the rootfs compared with `umoci
//! unpack` of the image afterwards.

mod common;
use common::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mount(args: &[&str]) {
    let st = Command::new("mount").args(args).status().expect("mount");
    assert!(st.success(), "mount {args:?}");
}

fn umount(p: &Path) {
    let st = Command::new("umount").arg(p).status().expect("umount");
    assert!(st.success(), "umount {}", p.display());
}

/// Throw the pmem tier's content away: a fresh, empty tmpfs in its place
/// (what a reboot does to emulated pmem).
fn replace_pmem(bed: &Bed) {
    // Lazily: a running `nvtier serve` may hold files of the old one open.
    let st = Command::new("umount")
        .arg("-l")
        .arg(&bed.pmem)
        .status()
        .expect("umount");
    assert!(st.success(), "umount -l {}", bed.pmem.display());
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=512M",
        "nvtier-pmem-new",
        bed.pmem.to_str().expect("utf8"),
    ]);
}

/// The rootfs of `image` mounted by nvtier, listed, then unmounted.
fn mounted_listing(
    bed: &Bed,
    image: &str,
    name: &str,
) -> std::collections::BTreeMap<String, String> {
    let mnt = bed.state.parent().expect("parent").join(name);
    fs::create_dir_all(&mnt).expect("mkdir");
    let m = mnt.to_str().expect("utf8");
    bed.nvtier_ok(&["mount", image, m]);
    let l = listing(&mnt);
    bed.nvtier_ok(&["umount", m]);
    l
}

fn mount_fails(bed: &Bed, image: &str, name: &str) -> String {
    let mnt = bed.state.parent().expect("parent").join(name);
    fs::create_dir_all(&mnt).expect("mkdir");
    let out = bed.nvtier(&["mount", image, mnt.to_str().expect("utf8")]);
    assert!(!out.status.success(), "mount of a damaged image succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn image_row(bed: &Bed, image: &str) -> Value {
    bed.nvtier_json(&["images"])
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["name"] == image)
        .cloned()
        .unwrap_or_else(|| panic!("{image} not listed"))
}

fn pmem_tier(status: &Value) -> Value {
    status["tiers"]
        .as_array()
        .expect("tiers")
        .iter()
        .find(|t| t["tier"] == "pmem")
        .cloned()
        .expect("pmem row")
}

/// Every entry under `dirs`, recursively (for "nothing left behind").
fn entries(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
            v.push(e.path());
        }
    }
    v.sort();
    v
}

/// Files under the state dir and both tiers, except lock files, the
/// tiers' identity and the disk filesystem's `lost+found`: after a failed
/// first pull, there must be none.
fn files_left(bed: &Bed) -> Vec<PathBuf> {
    entries(&[bed.state.clone(), bed.pmem.clone(), bed.disk.clone()])
        .into_iter()
        .filter(|p| !p.is_dir())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !(n.ends_with(".lock")
                || n == ".nvtier-tier.json"
                || p.starts_with(bed.state.join("tiers")))
        })
        .filter(|p| !p.starts_with(bed.disk.join("lost+found")))
        .collect()
}

/// Wait (up to 30 s) until the log file holds `needle`.
fn wait_for_log(log: &Path, needle: &str) {
    let t0 = std::time::Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{needle:?} not logged within 30 s:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn pull_json(bed: &Bed, args: &[&str]) -> Value {
    let mut a = vec!["pull"];
    a.extend_from_slice(args);
    bed.nvtier_json(&a)
}

fn tiers_of(rep: &Value) -> Vec<String> {
    rep["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["tier"].as_str().expect("tier").to_string())
        .collect()
}

#[test]
fn lost_pmem_tier_is_reported_then_repaired_by_pull_and_by_repair() {
    let bed = Bed::up("heal", "none", "4G");
    // A disk tier slower than the wire (100 KiB/s): the pull's LASS rule
    // puts the restored layers on pmem again.
    {
        use std::io::Write;
        fs::OpenOptions::new()
            .append(true)
            .open(&bed.config)
            .and_then(|mut f| f.write_all(b"disk_store_rate = \"100K\"\n"))
            .expect("append to the config");
    }
    let r = bed.push("healdemo", "busybox,2M,1M,3M");
    let reference = listing(&reference_rootfs("healdemo"));
    let rep = pull_json(&bed, &["--placement", "pmem", &r]);
    assert!(tiers_of(&rep).iter().all(|t| t == "pmem"), "{rep}");
    assert_same_tree(&reference, &mounted_listing(&bed, &r, "m0"));

    for (round, how) in ["pull", "repair"].iter().enumerate() {
        let on_pmem: Vec<String> = bed
            .nvtier_json(&["layers", &r])
            .as_array()
            .expect("l")
            .iter()
            .filter(|l| l["tier"] == "pmem")
            .map(|l| l["chain_id"].as_str().expect("c").to_string())
            .collect();
        assert!(!on_pmem.is_empty(), "round {round}: a layer on pmem");
        replace_pmem(&bed);
        let st = bed.nvtier_json(&["status"]);
        let p = pmem_tier(&st);
        assert_eq!(p["lost_layers"], on_pmem.len(), "round {round}: {st}");
        assert!(
            st["damaged_images"][&r]
                .as_array()
                .is_some_and(|a| a.len() == on_pmem.len()),
            "{st}"
        );
        assert_eq!(st["pmem_layer_bytes"], 0, "lost layers hold no pmem: {st}");
        let row = image_row(&bed, &r);
        assert_eq!(row["pmem_bytes"], 0, "lost layers are not counted: {row}");
        assert!(row["damaged"].is_array(), "{row}");
        let layers = bed.nvtier_json(&["layers", &r]);
        for l in layers.as_array().expect("l") {
            let lost = on_pmem.iter().any(|c| l["chain_id"] == c.as_str());
            assert_eq!(
                l["damaged"].as_str().is_some_and(|d| d.contains("lost")),
                lost,
                "exactly the pmem layers are damaged: {layers}"
            );
        }
        let err = mount_fails(&bed, &r, &format!("x{round}"));
        assert!(
            err.contains(&format!("image {r} is damaged")) && err.contains("nvtier repair"),
            "the error names the image and the fix: {err}"
        );
        assert!(!err.contains("lowerdir"), "no raw overlay error: {err}");

        match *how {
            "pull" => {
                let rep = pull_json(&bed, &[&r]);
                for l in rep["layers"].as_array().expect("l") {
                    let lost = on_pmem.iter().any(|c| l["chain_id"] == c.as_str());
                    assert_eq!(
                        l["reused"] == false,
                        lost,
                        "exactly the lost layers are fetched again: {rep}"
                    );
                }
            }
            _ => {
                let rep = bed.nvtier_json(&["repair"]);
                assert_eq!(rep["images"][0]["image"], r.as_str(), "{rep}");
                assert_eq!(rep["images"][0]["restored_layers"], on_pmem.len(), "{rep}");
                assert!(rep["images"][0]["error"].is_null(), "{rep}");
                assert_eq!(rep["damaged_after"], serde_json::json!({}), "{rep}");
            }
        }
        let row = image_row(&bed, &r);
        assert!(row["damaged"].is_null(), "repaired by {how}: {row}");
        assert!(row["pmem_bytes"].as_u64().unwrap_or(0) > 0, "{row}");
        assert_same_tree(
            &reference,
            &mounted_listing(&bed, &r, &format!("m{}", round + 1)),
        );
        assert!(bed.leftovers().is_empty(), "{:?}", bed.leftovers());
    }
    // Nothing to do any more.
    let rep = bed.nvtier_json(&["repair"]);
    assert_eq!(rep["images"], serde_json::json!([]), "{rep}");
}

#[test]
fn missing_pmem_at_start_degrades_then_the_tier_is_used_again() {
    let bed = Bed::up("degr", "none", "4G");
    let on_disk = bed.push("degdisk", "busybox,1M");
    let on_pmem = bed.push("degpmem", "busybox,1M,2M");
    let later = bed.push("deglater", "busybox,2M,1M");
    pull_json(&bed, &["--placement", "disk", &on_disk]);
    pull_json(&bed, &["--placement", "pmem", &on_pmem]);

    // The DAX mount "fails at boot": the tier directory is a bare mount
    // point. A second mount of the same tmpfs keeps its content to bring
    // it back later.
    let hold = bed.state.parent().expect("parent").join("hold");
    fs::create_dir_all(&hold).expect("mkdir");
    mount(&[
        "--bind",
        bed.pmem.to_str().expect("utf8"),
        hold.to_str().expect("utf8"),
    ]);
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _hold = Unmount(hold.clone());
    umount(&bed.pmem);

    let st = bed.nvtier_json(&["status"]);
    let p = pmem_tier(&st);
    assert_eq!(p["state"], "missing", "{st}");
    assert!(
        p["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer a mount point")),
        "{st}"
    );
    assert!(st["damaged_images"][&on_pmem].is_array(), "{st}");
    assert!(st["damaged_images"][&on_disk].is_null(), "{st}");
    let out: Output = bed.nvtier(&["status"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("running degraded"),
        "the log says so"
    );

    // Images on disk keep working; the others say why they cannot.
    assert_same_tree(
        &listing(&reference_rootfs("degdisk")),
        &mounted_listing(&bed, &on_disk, "a"),
    );
    // The daemon starts too, degraded, and says so.
    let sock = bed.state.parent().expect("p").join("snap.sock");
    let mut cfg = fs::read_to_string(&bed.config).expect("cfg");
    cfg.push_str(&format!(
        "snapshotter_socket = {sock:?}\ndocker_plugin_socket = \"\"\nrepair_interval_s = 1\n"
    ));
    fs::write(&bed.config, cfg).expect("cfg");
    let log = bed.state.parent().expect("p").join("serve.log");
    let serve = Serve::start(&bed, Some(&log));
    wait_for_log(&log, "running degraded");
    assert!(sock.exists(), "the degraded daemon serves");
    let err = mount_fails(&bed, &on_pmem, "b");
    assert!(err.contains("pmem tier, which is missing"), "{err}");
    // New pulls go to the disk tier, whatever the placement says.
    let rep = pull_json(&bed, &["--placement", "pmem", &later]);
    assert!(tiers_of(&rep).iter().all(|t| t == "disk"), "{rep}");
    assert_same_tree(
        &listing(&reference_rootfs("deglater")),
        &mounted_listing(&bed, &later, "c"),
    );
    assert!(
        entries(std::slice::from_ref(&bed.pmem)).is_empty(),
        "nothing written to the bare mount point: {:?}",
        entries(std::slice::from_ref(&bed.pmem))
    );

    // The tier is back: used again, with its content.
    mount(&[
        "--bind",
        hold.to_str().expect("utf8"),
        bed.pmem.to_str().expect("utf8"),
    ]);
    wait_for_log(&log, "the pmem tier is back");
    drop(serve);
    let st = bed.nvtier_json(&["status"]);
    assert_eq!(pmem_tier(&st)["state"], "ok", "{st}");
    assert_eq!(st["damaged_images"], serde_json::json!({}), "{st}");
    assert_same_tree(
        &listing(&reference_rootfs("degpmem")),
        &mounted_listing(&bed, &on_pmem, "d"),
    );
    let again = bed.push("degagain", "busybox,1M,1M");
    let rep = pull_json(&bed, &["--placement", "pmem", &again]);
    let fresh: Vec<&Value> = rep["layers"]
        .as_array()
        .expect("l")
        .iter()
        .filter(|l| l["reused"] == false)
        .collect();
    assert!(
        !fresh.is_empty() && fresh.iter().all(|l| l["tier"] == "pmem"),
        "new layers go to pmem again: {rep}"
    );
}

#[test]
fn serve_repairs_lost_layers_and_rebuilds_hot_copies_in_the_background() {
    let bed = Bed::up("hserv", "none", "4G");
    let lass = bed.push("hslass", "busybox,1M,2M");
    let tiered = bed.push("tierfeat", "busybox,1M,1M,2M,1M");
    pull_json(&bed, &["--placement", "pmem", &lass]);
    pull_json(&bed, &["--placement", "disk", &tiered]);
    // Hot copies and a metadata layer on pmem, the bases on disk.
    let t = bed.nvtier_json(&[
        "trace",
        &tiered,
        "--",
        "/bin/sh",
        "-c",
        "cat /data/layer3.bin /opt/dir/c >/dev/null",
    ]);
    assert_eq!(t["exit_code"], 0, "{t}");
    bed.nvtier_json(&["migrate", &tiered]);
    let hot_files = |bed: &Bed| -> u64 {
        bed.nvtier_json(&["layers", &tiered])
            .as_array()
            .expect("l")
            .iter()
            .map(|l| l["hot_files"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(hot_files(&bed) > 0, "migrated");

    let sock = bed.state.parent().expect("p").join("snap.sock");
    let mut cfg = fs::read_to_string(&bed.config).expect("cfg");
    cfg.push_str(&format!(
        "snapshotter_socket = {sock:?}\ndocker_plugin_socket = \"\"\nmigrate_interval_s = 3600\nrepair_interval_s = 1\n"
    ));
    fs::write(&bed.config, cfg).expect("cfg");
    let log = bed.state.parent().expect("p").join("serve.log");
    let serve = Serve::start(&bed, Some(&log));
    std::thread::sleep(std::time::Duration::from_secs(2));
    replace_pmem(&bed);
    let t0 = std::time::Instant::now();
    loop {
        let st = bed.nvtier_json(&["status"]);
        let p = pmem_tier(&st);
        let done = st["damaged_images"] == serde_json::json!({})
            && p["lost_hot_generations"] == 0
            && p["lost_meta_layers"] == 0
            && p["lost_layers"] == 0
            && hot_files(&bed) > 0;
        if done {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(90),
            "serve did not repair within 90 s: {st}\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(serve);
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("background repair done"), "{logged}");
    assert!(
        fs::read_dir(bed.pmem.join("hot"))
            .map(|d| d.count())
            .unwrap_or(0)
            > 0,
        "hot copies rebuilt on the new tier"
    );
    assert_same_tree(
        &listing(&reference_rootfs("hslass")),
        &mounted_listing(&bed, &lass, "a"),
    );
    assert_same_tree(
        &listing(&reference_rootfs("tierfeat")),
        &mounted_listing(&bed, &tiered, "b"),
    );
}

#[test]
fn full_pmem_tier_fails_clearly_and_leaves_nothing() {
    let bed = Bed::up("pmfull", "none", "4G");
    let r = bed.push("pmnospc", "busybox,8M,1M");
    let pmem = bed.pmem.to_str().expect("utf8").to_string();
    // The budget says 4 GiB, the filesystem holds 3 MiB.
    mount(&["-o", "remount,size=3M", &pmem]);
    let out = bed.nvtier(&["pull", "--placement", "pmem", &r]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "pull onto a full pmem tier succeeded"
    );
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
    assert!(
        err.contains(&format!("pmem tier at {pmem} is full")),
        "names the tier and the fix: {err}"
    );
    assert_eq!(bed.nvtier_json(&["images"]), serde_json::json!([]));
    assert_eq!(bed.nvtier_json(&["layers"]), serde_json::json!([]));
    let st = bed.nvtier_json(&["status"]);
    assert_eq!(st["pmem_used_bytes"], 0, "no reservation left: {st}");
    assert_eq!(st["unsynced_layers"], 0, "{st}");
    // A full listing of what the store keeps: nothing but empty layout
    // directories and the tiers' id files.
    let left = files_left(&bed);
    assert!(left.is_empty(), "left behind: {left:?}");
    mount(&["-o", "remount,size=512M", &pmem]);
    let rep = pull_json(&bed, &["--placement", "pmem", &r]);
    assert!(tiers_of(&rep).iter().all(|t| t == "pmem"), "{rep}");
    assert_same_tree(
        &listing(&reference_rootfs("pmnospc")),
        &mounted_listing(&bed, &r, "m"),
    );
}

#[test]
fn a_layer_lost_from_the_disk_tier_is_fetched_again() {
    let bed = Bed::up("hdisk", "none", "4G");
    let r = bed.push("hdiskdemo", "busybox,1M,2M");
    let rep = pull_json(&bed, &["--placement", "disk", &r]);
    let chain = rep["layers"][1]["chain_id"]
        .as_str()
        .expect("c")
        .to_string();
    let dir = bed
        .disk
        .join("layers")
        .join(chain.trim_start_matches("sha256:"));
    fs::remove_dir_all(&dir).expect("lose the layer");
    let st = bed.nvtier_json(&["status"]);
    let d = st["tiers"]
        .as_array()
        .expect("tiers")
        .iter()
        .find(|t| t["tier"] == "disk")
        .cloned()
        .expect("disk row");
    assert_eq!(d["state"], "ok", "{st}");
    assert_eq!(d["lost_layers"], 1, "{st}");
    let err = mount_fails(&bed, &r, "x");
    assert!(
        err.contains("lost from the disk tier") && err.contains("nvtier repair"),
        "{err}"
    );
    let rep = bed.nvtier_json(&["repair", &r]);
    assert_eq!(rep["images"][0]["restored_layers"], 1, "{rep}");
    // Stored again, where the pull's placement rule puts it now.
    let hex = chain.trim_start_matches("sha256:");
    assert!(
        dir.is_dir() || bed.pmem.join("layers").join(hex).is_dir(),
        "stored again"
    );
    assert_same_tree(
        &listing(&reference_rootfs("hdiskdemo")),
        &mounted_listing(&bed, &r, "m"),
    );
}

#[test]
fn registry_failure_mid_pull_leaves_nothing_and_the_retry_succeeds() {
    let bed = Bed::up("regflt", "40mbit", "4G");
    let r = bed.push("regfail", "busybox,16M,16M");
    let pidfile = PathBuf::from(format!("/run/nvtier-testbed/{}/registry.pid", bed.name));
    let child = Command::new(env!("CARGO_BIN_EXE_nvtier"))
        .args(["pull", "--json", &r])
        .env("NVTIER_CONFIG", &bed.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pull");
    // Mid-download (32 MiB at 40 Mbit/s take about 7 s): the registry dies.
    let t0 = std::time::Instant::now();
    while !entries(&[bed.state.join("downloads")])
        .iter()
        .any(|p| fs::metadata(p).map(|m| m.len() > 1 << 20).unwrap_or(false))
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "no download in progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid: i32 = fs::read_to_string(&pidfile)
        .expect("registry pid")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the registry");
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pull survived a dead registry");
    assert!(
        err.contains("registry") && err.contains(&r),
        "the error names the registry fault and the image: {err}"
    );
    assert_eq!(bed.nvtier_json(&["images"]), serde_json::json!([]));
    let st = bed.nvtier_json(&["status"]);
    assert_eq!(st["layers"], 0, "{st}");
    assert_eq!(st["pmem_used_bytes"], 0, "no reservation left: {st}");
    assert_eq!(st["unsynced_layers"], 0, "{st}");
    let left = files_left(&bed);
    assert!(left.is_empty(), "left behind: {left:?}");
    // The registry is back: the same pull succeeds.
    sh("registry.sh", &["up", &bed.name, "--rate", "1gbit"]);
    let rep = pull_json(&bed, &[&r]);
    assert_eq!(rep["layers"].as_array().map(Vec::len), Some(3), "{rep}");
    assert_same_tree(
        &listing(&reference_rootfs("regfail")),
        &mounted_listing(&bed, &r, "m"),
    );
}
