//! Root integration tests of the containerd proxy snapshotter against real
//! engines: containerd 1.6 (bookworm) with `ctr`, and containerd 1.7 +
//! dockerd 26 (trixie, via `testbed/engines.sh`) with the containerd image
//! store. Each test brings up its own tiers, registry, `nvtier serve` and
//! engines on private sockets and directories; all are stopped on drop.

mod common;
mod engines;

use common::{check_lass_rule, Bed};
use engines::*;
use serde_json::Value;
use std::fs;
use std::path::PathBuf;

fn snapshot_records(bed: &Bed) -> Vec<Value> {
    let mut v = Vec::new();
    for e in fs::read_dir(bed.state.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "json") {
            let t = fs::read_to_string(e.path()).expect("record");
            v.push(serde_json::from_str(&t).expect("record json"));
        }
    }
    v
}

fn layers_json(bed: &Bed) -> Vec<Value> {
    bed.nvtier_json(&["layers"])
        .as_array()
        .expect("layers array")
        .clone()
}

/// containerd 1.6 + `ctr`: pull through nvtier (the engine's own unpack
/// path, placed by the ingest rule), run, write into the upper dir, restart
/// `nvtier serve` under a running container, remove everything.
#[test]
fn ctr_pull_run_restart_remove() {
    let bed = Bed::up("ctr", "1gbit", "256M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config(&bed, "256M", &containerd_root(&bed));
    let mut nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, None);
    let img = bed.push("ctr1", "busybox,4M,2M,1M");
    let img2 = bed.push("ctr2", "busybox,3M,1M");

    // 1. `ctr pull` fetches everything, then unpacks: no download runs when
    //    any unpack begins, so every layer goes to pmem.
    let t = std::time::Instant::now();
    ctd.pull_nvtier(&img);
    eprintln!("ctr pull of {img}: {:?}", t.elapsed());
    let layers = layers_json(&bed);
    assert_eq!(layers.len(), 4, "{layers:?}");
    for l in &layers {
        assert_eq!(l["tier"], "pmem", "{l}");
        assert_eq!(l["refs"], 1, "{l}");
    }
    let snaps = ctd.ctr_ok(&["snapshots", "--snapshotter", "nvtier", "ls"]);
    assert_eq!(snaps.matches("Committed").count(), 4, "{snaps}");

    // 2. The same rule with a download running (a fresh ingest): the
    //    unpacked layers that are new go to disk.
    {
        let _busy = FakeIngest::start(&ctd.root);
        ctd.pull_nvtier(&img2);
    }
    let layers = layers_json(&bed);
    assert_eq!(layers.len(), 6, "base layer shared: {layers:?}");
    let new: Vec<&Value> = layers.iter().filter(|l| l["tier"] == "disk").collect();
    assert_eq!(new.len(), 2, "the two new layers go to disk: {layers:?}");

    // 3. Run: the image content is visible (whiteouts applied), a write
    //    lands in the active snapshot's upper dir on the disk tier.
    let out = ctd.run_nvtier(
        &[],
        &img,
        "c1",
        &[
            "sh",
            "-c",
            "cat /data/layer1.txt; ls /etc; echo written-by-c1 > /root/w",
        ],
    );
    assert!(out.contains("nvtier testbed layer 1"), "{out}");
    assert!(!out.contains("removeme"), "whiteout not applied: {out}");
    let rec = snapshot_records(&bed)
        .into_iter()
        .find(|r| r["key"].as_str().is_some_and(|k| k.ends_with("/c1")))
        .expect("snapshot record of c1");
    assert_eq!(rec["kind"], "active");
    assert_eq!(rec["tier"], "disk");
    let upper = bed
        .disk
        .join("snapshots")
        .join(rec["id"].as_str().expect("id"))
        .join("fs");
    assert_eq!(
        fs::read_to_string(upper.join("root/w")).expect("write in upper"),
        "written-by-c1\n"
    );

    // 4. Restart nvtier serve while a container runs on a snapshot.
    ctd.run_nvtier(&["-d"], &img, "c2", &["sleep", "600"]);
    let before = snapshot_records(&bed).len();
    let status = bed.nvtier_json(&["status"]);
    assert_eq!(
        status["snapshots"].as_u64(),
        Some(before as u64),
        "{status}"
    );
    assert!(nv.stop(20), "nvtier serve did not stop on SIGTERM");
    assert!(!sock.exists(), "socket left after SIGTERM");
    nv = start_nvtier(&bed, &sock, "nvtier2");
    assert_eq!(snapshot_records(&bed).len(), before);
    // The running container never needed the snapshotter.
    let out = ctd.ctr_ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "c2",
        "cat",
        "/data/layer2.txt",
    ]);
    assert!(out.contains("nvtier testbed layer 2"), "{out}");
    // containerd reconnects to the proxy after its gRPC back-off.
    let t = std::time::Instant::now();
    wait_for("containerd to reconnect to nvtier", 60, || {
        ctd.ctr(&["snapshots", "--snapshotter", "nvtier", "ls"])
            .status
            .success()
    });
    eprintln!("containerd reconnected after {:?}", t.elapsed());
    let snaps2 = ctd.ctr_ok(&["snapshots", "--snapshotter", "nvtier", "ls"]);
    assert!(snaps2.contains("c2") && snaps2.contains("c1"), "{snaps2}");
    // A new container after the restart works too.
    let out = ctd.run_nvtier(&["--rm"], &img, "c3", &["cat", "/data/layer3.txt"]);
    assert!(out.contains("nvtier testbed layer 3"), "{out}");

    // 5. nvtier rm can never free what containerd uses: the layers are
    //    referenced by snapshot records.
    for l in layers_json(&bed) {
        assert!(l["refs"].as_u64().unwrap_or(0) >= 1, "{l}");
    }
    bed.nvtier_ok(&["gc"]);
    assert_eq!(layers_json(&bed).len(), 6);

    // 6. Remove containers and images: every snapshot and layer is freed.
    ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "c2"]);
    wait_for("c2 to stop", 20, || {
        ctd.ctr(&["tasks", "rm", "c2"]).status.success()
    });
    ctd.ctr_ok(&["containers", "rm", "c1", "c2"]);
    ctd.ctr_ok(&["images", "rm", "--sync", &img, &img2]);
    wait_for("snapshots to be removed", 30, || {
        snapshot_records(&bed).is_empty()
    });
    wait_for("layers to be freed", 10, || layers_json(&bed).is_empty());
    let left = entries_under(&[
        bed.pmem.join("snapshots"),
        bed.disk.join("snapshots"),
        bed.state.join("l"),
    ]);
    assert!(left.is_empty(), "leftovers: {left:?}");
    assert!(nv.alive(), "nvtier serve died:\n{}", nv.log_text());
    drop(ctd);
    drop(nv);
    drop(rd);
}

/// Docker 26 + containerd 1.7 with the containerd image store: `docker pull`
/// is served by nvtier's own LASS pull (remote-snapshot protocol), and
/// `docker run` works on the nvtier snapshots. With `content_store_blobs =
/// false`: containerd's content store gets no layer blobs, so `docker
/// images` does not list the image (content-store parity is tested in
/// `docker_parity_e2e.rs`).
#[test]
fn docker26_containerd_store() {
    let eng = trixie_engines();
    let bin = PathBuf::from(&eng["ENGINES_BIN"]);
    let bed = Bed::up("dkr", "100mbit", "256M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config_extra(
        &bed,
        "256M",
        &containerd_root(&bed),
        // Hot files are traced and migrated by hand below (the daemon's
        // own recordings are tested in record_e2e.rs). A disk tier slower
        // than the wire: LASS puts the bases on pmem, and the migration
        // below relocates them under a running container.
        "content_store_blobs = false\nrecord_starts = false\ndisk_store_rate = \"100K\"\n",
    );
    let nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, Some(&bin));
    let v = ctd.ctr_ok(&["version"]);
    assert!(v.contains("1.7.24"), "{v}");
    let dockerd = Dockerd::start(&bed, &ctd);
    let info = dockerd.docker_ok(&["info", "--format", "{{.Driver}} {{.ServerVersion}}"]);
    assert!(info.starts_with("nvtier 26.1.5"), "docker info: {info}");

    let img = bed.push("dkr1", "busybox,8M,4M,12M,2M,1M");
    let t = std::time::Instant::now();
    dockerd.docker_ok(&["pull", &img]);
    eprintln!("docker pull of {img} at 100mbit: {:?}", t.elapsed());

    // nvtier pulled it itself: an image record, blob digests on the layers,
    // and the placement follows LASS on the recorded timeline.
    let images = bed.nvtier_json(&["images"]);
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    let layers = layers_json(&bed);
    assert_eq!(layers.len(), 6, "{layers:?}");
    for l in &layers {
        assert!(l["blob_digest"].is_string(), "not pulled by nvtier: {l}");
    }
    let reports = common::pull_reports(&bed);
    assert_eq!(reports.len(), 1);
    let rep = &reports[0];
    check_lass_rule(rep);
    // The report's tiers follow the streamed LASS rule (checked above);
    // the store holds each layer where the report says.
    for l in rep["layers"].as_array().expect("layers") {
        let i = l["index"].as_u64().expect("index") as usize;
        let want = l["tier"].as_str().expect("tier");
        let stored = layers
            .iter()
            .find(|x| x["chain_id"] == l["chain_id"])
            .expect("stored layer");
        assert_eq!(stored["tier"], want, "layer {i}: {stored}");
    }
    eprintln!(
        "LDL {}; pmem {} B, disk {} B, stored_done {} ms",
        rep["ldl_index"], rep["pmem_bytes"], rep["disk_bytes"], rep["stored_done_ms"]
    );
    // containerd skipped the layer blobs, and nvtier wrote none: the
    // content store has none (still so after the time the writes would
    // take), and docker images does not list the image.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let content = ctd.ctr_ok(&["-n", "moby", "content", "ls", "-q"]);
    for l in rep["layers"].as_array().expect("layers") {
        let d = l["digest"].as_str().expect("digest");
        assert!(!content.contains(d), "layer blob {d} in the content store");
    }
    let listed = dockerd.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!listed.lines().any(|l| l.trim() == img), "{listed}");
    assert!(
        !nv.log_text().contains("content store:"),
        "{}",
        nv.log_text()
    );

    let out = dockerd.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &img,
        "sh",
        "-c",
        "cat /data/layer3.txt; ls /etc",
    ]);
    assert!(out.contains("nvtier testbed layer 3"), "{out}");
    assert!(!out.contains("removeme"), "{out}");
    dockerd.docker_ok(&["image", "inspect", &img]);

    // Hot-file tiering through dockerd. A container started before the
    // migration keeps its whole-layer mount on the pmem bases.
    let name0 = images[0]["name"].as_str().expect("name").to_string();
    let read = "cat /data/layer3.txt; ls /etc";
    let old = dockerd.docker_ok(&["run", "-d", "--network", "none", &img, "sleep", "300"]);
    let old = old.trim().to_string();
    bed.nvtier_json(&["trace", &name0, "--", "sh", "-c", read]);
    let mg = bed.nvtier_json(&["migrate"]);
    assert!(mg["relocated_bytes"].as_u64().unwrap_or(0) > 0, "{mg}");
    for l in layers_json(&bed) {
        assert_eq!(l["tier"], "disk", "base not relocated: {l}");
    }
    let st = bed.nvtier_json(&["status"]);
    assert!(
        st["pmem_retired_bytes"].as_u64().unwrap_or(0) > 0,
        "the old container's pmem bases must be kept: {st}"
    );
    let o = dockerd.docker_ok(&["exec", &old, "cat", "/data/layer3.txt"]);
    assert!(o.contains("nvtier testbed layer 3"), "{o}");
    // A new container mounts tiered: metadata layer + data-only layers
    // (dockerd's init layer stays a regular lower layer).
    let new = dockerd.docker_ok(&["run", "-d", "--network", "none", &img, "sleep", "300"]);
    let new = new.trim().to_string();
    let tiered: Vec<Value> = snapshot_records(&bed)
        .into_iter()
        .filter(|r| r["tiering"].is_object())
        .collect();
    assert_eq!(tiered.len(), 1, "one tiered active snapshot: {tiered:?}");
    let mi = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let meta = bed.pmem.join("meta");
    assert!(
        mi.lines()
            .any(|l| l.contains(meta.to_str().expect("utf-8")) && l.contains("::")),
        "no overlay with the metadata layer and data-only layers in mountinfo"
    );
    let o = dockerd.docker_ok(&["exec", &new, "sh", "-c", read]);
    assert!(
        o.contains("nvtier testbed layer 3") && !o.contains("removeme"),
        "{o}"
    );
    // The engine writes hostname, hosts, resolv.conf and mtab into /etc
    // when each container starts, so their times differ between the two
    // containers; everything from the image must match.
    let view = |c: &str| {
        dockerd.docker_ok(&[
            "exec",
            c,
            "sh",
            "-c",
            "ls -lR /data /etc | grep -vE ' (hostname|hosts|resolv.conf|mtab)( |$)'; cat /data/*.txt",
        ])
    };
    assert_eq!(view(&new), view(&old));
    // Removing the old container frees the retired pmem copies.
    dockerd.docker_ok(&["rm", "-f", &old]);
    wait_for("retired pmem copies to be freed", 30, || {
        bed.nvtier_json(&["status"])["pmem_retired_bytes"].as_u64() == Some(0)
    });
    dockerd.docker_ok(&["rm", "-f", &new]);

    // docker rmi drops containerd's snapshots; nvtier pulled the image for
    // the engine, so its own record goes with them and the layers are freed.
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
    wait_for("layers to be freed", 10, || layers_json(&bed).is_empty());
    assert!(dockerd.docker(&["version"]).status.success());
    drop(dockerd);
    drop(ctd);
    drop(nv);
    drop(rd);
}

/// Image GC by the engine: images nvtier pulled for dockerd 26 (remote
/// snapshot) go from nvtier's store when containerd removes them and its
/// GC drops their snapshots, but not while a container uses them; an image
/// pulled with `nvtier pull` stays until `nvtier rm`.
#[test]
fn docker26_image_removal_frees_engine_images() {
    let eng = trixie_engines();
    let bin = PathBuf::from(&eng["ENGINES_BIN"]);
    let bed = Bed::up("dkgc", "1gbit", "256M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config(&bed, "256M", &containerd_root(&bed));
    let nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, Some(&bin));
    let dockerd = Dockerd::start(&bed, &ctd);
    let eimg = bed.push("dkgc1", "busybox,2M,1M");
    let cimg = bed.push("dkgc2", "busybox,1M");

    // cimg by the CLI, then both by dockerd (eimg through nvtier's own
    // pull, cimg from the layers already stored).
    bed.nvtier_json(&["pull", &cimg]);
    dockerd.docker_ok(&["pull", &eimg]);
    dockerd.docker_ok(&["pull", &cimg]);
    let images = bed.nvtier_json(&["images"]);
    let origins: Vec<(String, String)> = images
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().expect("name").to_string(),
                i["origin"].as_str().expect("origin").to_string(),
            )
        })
        .collect();
    assert_eq!(origins.len(), 2, "{images}");
    let origin_of = |tag: &str| {
        origins
            .iter()
            .find(|(n, _)| n.contains(&format!("/{tag}:")))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("no record of {tag}: {images}"))
    };
    assert_eq!(origin_of("dkgc1"), "engine");
    assert_eq!(origin_of("dkgc2"), "cli");
    let layers = layers_json(&bed);
    assert_eq!(layers.len(), 4, "busybox base shared: {layers:?}");

    // A running container keeps the image it runs: containerd keeps the
    // parents of its snapshot, and nvtier keeps the record and layers.
    let cid = dockerd.docker_ok(&["run", "-d", "--network", "none", &eimg, "sleep", "300"]);
    let cid = cid.trim().to_string();
    ctd.ctr_ok(&["-n", "moby", "images", "rm", "--sync", &eimg]);
    let o = dockerd.docker_ok(&["exec", &cid, "cat", "/data/layer2.txt"]);
    assert!(o.contains("nvtier testbed layer 2"), "{o}");
    assert!(
        bed.nvtier_json(&["images"])
            .as_array()
            .is_some_and(|a| a.len() == 2),
        "the running container's image must stay"
    );
    assert_eq!(layers_json(&bed).len(), 4);

    // The container goes; containerd's GC (run by removing cimg from the
    // engine) drops eimg's snapshots, and with them nvtier's record of
    // eimg and its own layers. cimg's record is the CLI's and stays.
    dockerd.docker_ok(&["rm", "-f", &cid]);
    ctd.ctr_ok(&["-n", "moby", "images", "rm", "--sync", &cimg]);
    wait_for("snapshots to be removed", 30, || {
        snapshot_records(&bed).is_empty()
    });
    wait_for("eimg's record to go", 10, || {
        bed.nvtier_json(&["images"])
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    let left = bed.nvtier_json(&["images"]);
    assert_eq!(left[0]["origin"], "cli", "{left}");
    assert!(
        left[0]["name"]
            .as_str()
            .is_some_and(|n| n.contains("/dkgc2:")),
        "{left}"
    );
    wait_for("eimg's layers to be freed", 10, || {
        layers_json(&bed).len() == 2
    });
    for l in layers_json(&bed) {
        assert_eq!(l["refs"], 1, "only cimg's record references it: {l}");
    }
    let dirs = entries_under(&[bed.pmem.join("layers"), bed.disk.join("layers")]);
    assert_eq!(dirs.len(), 2, "layer directories left: {dirs:?}");
    assert!(
        nv.log_text().contains("its nvtier record goes too"),
        "{}",
        nv.log_text()
    );
    // `nvtier rm` frees the rest.
    bed.nvtier_ok(&["rm", left[0]["name"].as_str().expect("name")]);
    assert!(layers_json(&bed).is_empty());
    assert!(entries_under(&[bed.pmem.join("layers"), bed.disk.join("layers")]).is_empty());
    assert!(dockerd.docker(&["version"]).status.success());
    drop(dockerd);
    drop(ctd);
    drop(nv);
    drop(rd);
}

/// An unpack that begins on pmem but does not fit the budget at Commit is
/// copied to disk; whiteouts and opaque dirs survive the copy.
#[test]
fn ctr_unpack_over_budget_goes_to_disk() {
    let bed = Bed::up("ctrb", "1gbit", "3M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config(&bed, "3M", &containerd_root(&bed));
    let nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, None);
    // Layer 2 (4 MiB) holds the whiteout of /etc/removeme and the opaque
    // /opt/dir.
    let img = bed.push("ctrb1", "busybox,1M,4M");
    ctd.pull_nvtier(&img);
    let layers = layers_json(&bed);
    assert_eq!(layers.len(), 3, "{layers:?}");
    let big = layers
        .iter()
        .find(|l| l["file_bytes"].as_u64().unwrap_or(0) >= 4 << 20)
        .expect("the 4 MiB layer");
    assert_eq!(big["tier"], "disk", "{big}");
    assert!(layers.iter().any(|l| l["tier"] == "pmem"), "{layers:?}");
    let status = bed.nvtier_json(&["status"]);
    assert!(
        status["pmem_used_bytes"].as_u64().unwrap_or(u64::MAX) <= 3 << 20,
        "{status}"
    );
    assert!(
        nv.log_text().contains("moving it to disk"),
        "{}",
        nv.log_text()
    );
    let out = ctd.run_nvtier(
        &["--rm"],
        &img,
        "cb",
        &[
            "sh",
            "-c",
            "ls /etc; echo --; ls /opt/dir; echo --; sha256sum /data/layer2.bin",
        ],
    );
    assert!(
        !out.contains("removeme"),
        "whiteout lost in the copy: {out}"
    );
    let opt: Vec<&str> = out
        .split("--")
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(opt, vec!["c"], "opaque dir lost in the copy: {out}");
    // The same bytes as the image's layer file.
    let reference = common::reference_rootfs("ctrb1");
    let want = common::listing(&reference);
    let sum = out
        .split("--")
        .nth(2)
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(sum.len(), 64, "{out}");
    assert!(
        want["data/layer2.bin"].contains(&sum),
        "{sum} vs {}",
        want["data/layer2.bin"]
    );
    ctd.ctr_ok(&["images", "rm", "--sync", &img]);
    wait_for("snapshots to be removed", 30, || {
        snapshot_records(&bed).is_empty()
    });
    wait_for("layers to be freed", 10, || layers_json(&bed).is_empty());
    drop(ctd);
    drop(nv);
    drop(rd);
}
