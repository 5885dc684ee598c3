//! Root integration tests of the daemon's recordings of real container
//! cold starts: no `nvtier trace`, only engines starting containers.
//! `nvtier serve` runs in a mount namespace without tracefs or debugfs.

mod common;
mod engines;

use common::Bed;
use engines::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Whether the store has a record of `name` made for the engine.
fn has_engine_image(bed: &Bed, name: &str) -> bool {
    bed.nvtier_json(&["images"]).as_array().is_some_and(|a| {
        a.iter()
            .any(|i| i["name"] == name && i["origin"] == "engine")
    })
}

fn profile_runs(bed: &Bed, image: &str) -> u64 {
    bed.nvtier_json(&["profile", "list"])
        .as_array()
        .and_then(|a| a.iter().find(|r| r["image"] == image).cloned())
        .and_then(|r| r["runs"].as_u64())
        .unwrap_or(0)
}

/// The profile's observed paths (engine reads left out).
fn observed_paths(bed: &Bed, image: &str) -> BTreeSet<String> {
    let p = bed.nvtier_json(&["profile", "show", image]);
    p["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter(|f| {
            f["kinds"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x != "engine"))
        })
        .filter_map(|f| f["path"].as_str().map(str::to_string))
        .collect()
}

/// Sectors read from the loop device behind `dir`.
fn sectors_read(dir: &Path) -> u64 {
    let o = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "--target"])
        .arg(dir)
        .output()
        .expect("findmnt");
    let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let name = dev.trim_start_matches("/dev/");
    assert!(name.starts_with("loop"), "{} is on {dev:?}", dir.display());
    let st = fs::read_to_string(format!("/sys/block/{name}/stat")).expect("stat");
    st.split_whitespace()
        .nth(2)
        .and_then(|x| x.parse().ok())
        .expect("sectors read")
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
}

/// Regular files under `dir` holding data (allocated blocks), relative.
fn data_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            let p = e.path();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && m.blocks() > 0 {
                if let Ok(r) = p.strip_prefix(dir) {
                    out.push(r.display().to_string());
                }
            }
        }
    }
    out.sort();
    out
}

/// Every file named `name` under `dir`.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if e.file_name() == name {
                out.push(p);
            }
        }
    }
    out
}

/// containerd + `ctr run` of an image containerd unpacked itself: the
/// daemon records the start by itself, attributes only that container's
/// accesses, tiers the image, and the next cold start reads nothing from
/// the disk tier. A fresh profile is not recorded again.
#[test]
fn ctr_run_is_recorded_then_tiered() {
    let bed = Bed::up("rec", "1gbit", "256M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config_extra(
        &bed,
        "256M",
        &containerd_root(&bed),
        "upper_tier = \"pmem\"\nmigrate_interval_s = 3600\n",
    );
    let nv = start_nvtier_without_tracefs(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, None);
    let img = bed.push_seed("rec", "busybox,2M,1M,1M", 7);
    // Shares its first four layers with `img`.
    let other = bed.push_seed("recother", "busybox,2M,1M,1M,1M", 7);
    {
        // A download running: the unpacked layers go to the disk tier.
        let _busy = FakeIngest::start(&ctd.root);
        ctd.pull_nvtier(&img);
        ctd.pull_nvtier(&other);
    }
    let layers = bed.nvtier_json(&["layers"]);
    for l in layers.as_array().expect("layers") {
        assert_eq!(l["tier"], "disk", "{l}");
    }

    // A container of another image reads a file of a shared layer that
    // `img`'s container never reads, and so does a host process.
    ctd.run_nvtier(
        &["-d"],
        &other,
        "c-other",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do cat /data/layer3.bin /data/layer3.txt > /dev/null; sleep 0.5; done; sleep 600",
        ],
    );
    let host_files = find_named(&bed.disk, "layer3.txt");
    assert!(!host_files.is_empty(), "layer3.txt on the disk tier");
    let (ctd_sock, ctd_path) = (ctd.sock.clone(), ctd.path_env.clone());
    let img2 = img.clone();
    let c1 = std::thread::spawn(move || {
        Command::new("ctr")
            .arg("-a")
            .arg(&ctd_sock)
            .args(["run", "--rm", "--snapshotter", "nvtier", &img2, "c1"])
            .args([
                "sh",
                "-c",
                "sleep 2; cat /data/layer1.txt; cat /data/layer2.bin > /dev/null",
            ])
            .env("PATH", &ctd_path)
            .output()
            .expect("ctr run c1")
    });
    for _ in 0..6 {
        for f in &host_files {
            let _ = fs::read(f);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = c1.join().expect("c1 thread");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("layer 1"),
        "ctr run c1: {out:?}"
    );

    // The daemon recorded the start when the container exited.
    wait_for("a record of the unpacked image", 20, || {
        has_engine_image(&bed, &img)
    });
    let name = img.clone();
    wait_for("the recording of c1", 20, || profile_runs(&bed, &name) == 1);
    let paths = observed_paths(&bed, &name);
    for want in ["/bin/busybox", "/data/layer1.txt", "/data/layer2.bin"] {
        assert!(
            paths.contains(want),
            "{want} missing from {paths:?}: {}\nserve log:\n{}",
            bed.nvtier_json(&["profile", "show", &name]),
            nv.log_text()
        );
    }
    let data: Vec<&String> = paths.iter().filter(|p| p.starts_with("/data/")).collect();
    // /data/hard is a hardlink of /data/layer1.txt: the same data.
    assert_eq!(
        data,
        ["/data/hard", "/data/layer1.txt", "/data/layer2.bin"],
        "only c1's own reads: {paths:?}"
    );
    let allowed: BTreeSet<&str> = [
        "/bin/busybox",
        "/bin/sh",
        "/bin/sleep",
        "/bin/cat",
        // runc reads them to resolve the user and groups.
        "/etc/passwd",
        "/etc/group",
        "/data/hard",
        "/data/layer1.txt",
        "/data/layer2.bin",
    ]
    .into();
    let extra: Vec<&String> = paths
        .iter()
        .filter(|p| !allowed.contains(p.as_str()))
        .collect();
    assert!(extra.is_empty(), "files c1 did not touch: {extra:?}");
    let log = nv.log_text();
    assert!(
        log.contains("recorded a container cold start"),
        "serve log:\n{log}"
    );

    // The migration (woken by the recording) tiers the image: pmem holds
    // the hot data and the metadata layer, no other file data.
    ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "c-other"]);
    wait_for("c-other to stop", 20, || {
        ctd.ctr(&["tasks", "rm", "c-other"]).status.success()
    });
    ctd.ctr_ok(&["containers", "rm", "c-other"]);
    // Both recordings are over and migrated (the other container's ended
    // when it was killed).
    wait_for("the recordings and their migrations", 60, || {
        let st = bed.nvtier_json(&["status"]);
        st["recordings"].as_array().is_some_and(|a| a.is_empty())
            && st["migrations_pending"]
                .as_array()
                .is_some_and(|a| a.is_empty())
            && st["pmem_hot_bytes"].as_u64().unwrap_or(0) > 0
    });
    let on_pmem: Vec<String> = data_files(&bed.pmem)
        .into_iter()
        .filter(|p| !p.starts_with("snapshots/") && !p.starts_with(".nvtier"))
        .collect();
    // Hot copies by their path in the image (`hot/<chain>/g<N>/<path>`).
    let hot: BTreeSet<String> = on_pmem
        .iter()
        .filter_map(|p| p.strip_prefix("hot/"))
        .filter_map(|p| p.splitn(3, '/').nth(2))
        .map(|p| format!("/{p}"))
        .collect();
    // A hardlinked file is copied once, under one of its names.
    for want in ["/bin/busybox", "/data/layer2.bin"] {
        assert!(hot.contains(want), "{want} not hot: {on_pmem:?}");
    }
    assert!(
        hot.contains("/data/layer1.txt") || hot.contains("/data/hard"),
        "/data/layer1.txt not hot: {on_pmem:?}"
    );
    // Everything else on pmem is a hot copy of a file one of the two
    // recorded images touched (the other image's container was recorded
    // too): no other file data.
    let profiled: BTreeSet<String> = [&img, &other]
        .iter()
        .filter(|i| has_engine_image(&bed, i))
        .flat_map(|i| {
            bed.nvtier_json(&["profile", "show", i])["files"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|f| f["path"].as_str().map(str::to_string))
        .collect();
    let not_hot: Vec<&String> = on_pmem
        .iter()
        .filter(|p| {
            !p.starts_with("hot/")
                || !p
                    .splitn(4, '/')
                    .nth(3)
                    .is_some_and(|x| profiled.contains(&format!("/{x}")))
        })
        .collect();
    assert!(not_hot.is_empty(), "other file data on pmem: {not_hot:?}");

    // The next cold start reads nothing from the disk tier (the daemon
    // pins the directories tiered mounts name, refreshed after each
    // migration and every 2 s), and with a fresh profile it is not
    // recorded again.
    std::thread::sleep(Duration::from_secs(3));
    drop_caches();
    let before = sectors_read(&bed.disk);
    let out = ctd.run_nvtier(
        &["--rm"],
        &img,
        "c2",
        &[
            "sh",
            "-c",
            "cat /data/layer1.txt; cat /data/layer2.bin > /dev/null",
        ],
    );
    let read = sectors_read(&bed.disk) - before;
    assert!(out.contains("layer 1"), "{out}");
    assert_eq!(read, 0, "sectors read from the disk tier by the cold start");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        profile_runs(&bed, &name),
        1,
        "a fresh profile is not recorded"
    );

    // Removing the image in the engine removes its record and layers.
    ctd.ctr_ok(&["images", "rm", "--sync", &img, &other]);
    wait_for("the unpacked image record to go", 30, || {
        !has_engine_image(&bed, &img)
    });
    drop(ctd);
    drop(nv);
    drop(rd);
}

fn recordings(bed: &Bed) -> Vec<String> {
    bed.nvtier_json(&["status"])["recordings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["image"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A server container: its recording ends at the quiet period while it
/// keeps running, and `nvtier status` shows the recording meanwhile. A
/// profile older than `profile_max_age_s` is recorded again.
#[test]
fn server_quiet_period_and_stale_profile() {
    let bed = Bed::up("recq", "1gbit", "256M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config_extra(
        &bed,
        "256M",
        &containerd_root(&bed),
        "profile_max_age_s = 1\nrecord_quiet_ms = 1500\n",
    );
    let nv = start_nvtier_without_tracefs(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, None);
    let img = bed.push_seed("recq", "busybox,1M,1M", 11);
    ctd.pull_nvtier(&img);
    ctd.run_nvtier(
        &["-d"],
        &img,
        "srv",
        &[
            "sh",
            "-c",
            "cat /data/layer1.txt > /dev/null; sleep 0.5; cat /data/layer2.txt > /dev/null; sleep 600",
        ],
    );
    let mut shown = false;
    wait_for("the recording in nvtier status", 10, || {
        shown |= recordings(&bed).contains(&img);
        shown || profile_runs(&bed, &img) > 0
    });
    assert!(shown, "nvtier status never showed the recording");
    wait_for("the recording to end at the quiet period", 15, || {
        profile_runs(&bed, &img) == 1
    });
    let tasks = ctd.ctr_ok(&["tasks", "ls"]);
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("srv ") && l.contains("RUNNING")),
        "the server must keep running: {tasks}"
    );
    assert!(
        nv.log_text().contains("quiet period"),
        "serve log:\n{}",
        nv.log_text()
    );
    assert!(recordings(&bed).is_empty(), "{:?}", recordings(&bed));
    let paths = observed_paths(&bed, &img);
    for want in ["/data/layer1.txt", "/data/layer2.txt"] {
        assert!(paths.contains(want), "{want} missing from {paths:?}");
    }
    assert!(!paths.contains("/data/layer2.bin"), "{paths:?}");

    // The profile is older than 1 s now: the next start is recorded and
    // merged into it.
    std::thread::sleep(Duration::from_millis(1200));
    ctd.run_nvtier(
        &["--rm"],
        &img,
        "c2",
        &["sh", "-c", "cat /data/layer2.bin > /dev/null"],
    );
    wait_for("the second recording", 15, || profile_runs(&bed, &img) == 2);
    let paths = observed_paths(&bed, &img);
    assert!(paths.contains("/data/layer2.bin"), "{paths:?}");
    assert!(paths.contains("/data/layer1.txt"), "merged: {paths:?}");

    ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "srv"]);
    wait_for("srv to stop", 20, || {
        ctd.ctr(&["tasks", "rm", "srv"]).status.success()
    });
    ctd.ctr_ok(&["containers", "rm", "srv"]);
    assert!(nv.log_text().contains("recorded a container cold start"));
    drop(ctd);
    drop(nv);
    drop(rd);
}

/// `docker run` on dockerd 26 with the containerd image store: the image
/// nvtier pulled for Docker is recorded and tiered, and the next cold
/// start reads nothing from the disk tier.
#[test]
fn docker_run_is_recorded_then_tiered() {
    let eng = trixie_engines();
    let bin = PathBuf::from(&eng["ENGINES_BIN"]);
    let bed = Bed::up("recd", "1gbit", "256M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config_extra(
        &bed,
        "256M",
        &containerd_root(&bed),
        "upper_tier = \"pmem\"\nmigrate_interval_s = 3600\ncontent_store_blobs = false\n",
    );
    let nv = start_nvtier_without_tracefs(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, Some(&bin));
    let dockerd = Dockerd::start(&bed, &ctd);
    let img = bed.push_seed("recd", "busybox,2M,1M,1M", 13);
    dockerd.docker_ok(&["pull", &img]);
    let name = bed.nvtier_json(&["images"])[0]["name"]
        .as_str()
        .expect("the image nvtier pulled for Docker")
        .to_string();
    let script = "cat /data/layer1.txt; cat /data/layer3.bin > /dev/null";
    let out = dockerd.docker_ok(&["run", "--rm", "--network", "none", &img, "sh", "-c", script]);
    assert!(out.contains("layer 1"), "{out}");
    for _ in 0..100 {
        if profile_runs(&bed, &name) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        profile_runs(&bed, &name),
        1,
        "docker run not recorded; serve log:\n{}",
        nv.log_text()
    );
    let paths = observed_paths(&bed, &name);
    for want in ["/bin/busybox", "/data/layer1.txt", "/data/layer3.bin"] {
        assert!(paths.contains(want), "{want} missing from {paths:?}");
    }
    assert!(!paths.contains("/data/layer2.bin"), "{paths:?}");
    wait_for("the migration", 60, || {
        bed.nvtier_json(&["status"])["migrations_pending"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            && bed.nvtier_json(&["status"])["pmem_hot_bytes"]
                .as_u64()
                .unwrap_or(0)
                > 0
    });
    for l in bed.nvtier_json(&["layers"]).as_array().expect("layers") {
        assert_eq!(
            l["tier"],
            "disk",
            "bases relocated to disk: {l}\n{}",
            nv.log_text()
        );
    }
    // The daemon pins the directories tiered mounts name (refreshed after
    // each migration, and every 2 s).
    std::thread::sleep(Duration::from_secs(3));
    drop_caches();
    let before = sectors_read(&bed.disk);
    let out = dockerd.docker_ok(&["run", "--rm", "--network", "none", &img, "sh", "-c", script]);
    let read = sectors_read(&bed.disk) - before;
    assert!(out.contains("layer 1"), "{out}");
    assert_eq!(read, 0, "sectors read from the disk tier by the cold start");
    drop(dockerd);
    drop(ctd);
    drop(nv);
    drop(rd);
}
