//! Root integration test of content-store parity on dockerd 26 +
//! containerd 1.7 (containerd image store, nvtier snapshotter): an image
//! that nvtier pulled for Docker is listed, has a history, saves, loads
//! into a second dockerd on stock overlayfs, pushes to another repository
//! (pulled back there by the stock dockerd), and is removed without a
//! trace. Each daemon runs on private sockets and directories and is
//! stopped on drop, also when the test fails.

mod common;
mod engines;

use common::{check_lass_rule, Bed};
use engines::state::{assert_hashes, image_hashes, sha256sum_cmd, snapshot_records};
use engines::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

fn layers_json(bed: &Bed) -> Vec<Value> {
    bed.nvtier_json(&["layers"])
        .as_array()
        .expect("layers array")
        .clone()
}

/// A second dockerd 26 on stock overlayfs: the classic `overlay2` graph
/// driver and a containerd that dockerd manages itself, with its own
/// data-root, exec-root and socket.
fn start_stock_dockerd(bed: &Bed, path_env: &str) -> Dockerd {
    let d = Dockerd::launch(
        bed,
        "stock",
        r#"{"storage-driver": "overlay2"}"#,
        &[],
        path_env,
    );
    let info = d.docker_ok(&["info", "--format", "{{.Driver}} {{.ServerVersion}}"]);
    assert!(
        info.starts_with("overlay2 26."),
        "stock docker info: {info}"
    );
    d
}

/// Files of `dir` (recursively), for "nothing left" checks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// The members of a `docker save` archive: path → bytes.
fn archive_members(tar_path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(fs::File::open(tar_path).expect("open archive"));
    let mut m = BTreeMap::new();
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        if !e.header().entry_type().is_file() {
            continue;
        }
        let p = e.path().expect("path").to_string_lossy().into_owned();
        let mut v = Vec::new();
        e.read_to_end(&mut v).expect("read member");
        m.insert(p, v);
    }
    m
}

/// sha256 of a layer as a tar: gzip is inflated first.
fn tar_digest(data: &[u8]) -> String {
    let mut h = Sha256::new();
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut d = flate2::read::GzDecoder::new(data);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = d.read(&mut buf).expect("inflate layer");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    } else {
        h.update(data);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// `s` without ANSI colour sequences (the log is coloured).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn image_listed(d: &Dockerd, img: &str) -> bool {
    d.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .any(|l| l.trim() == img)
}

/// `docker pull` through nvtier, then everything Docker does with an image
/// whose blobs are in containerd's content store.
#[test]
fn docker26_content_store_parity() {
    let eng = trixie_engines();
    let bin = PathBuf::from(&eng["ENGINES_BIN"]);
    let bed = Bed::up("prty", "1gbit", "256M");
    let rd = make_run_dir(&bed);
    let ctd_root = containerd_root(&bed);
    let sock = write_serve_config(&bed, "256M", &ctd_root);
    let nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, Some(&bin));
    let dockerd = Dockerd::start(&bed, &ctd);
    let img = bed.push("prty1", "busybox,4M,2M,3M,1M");
    let mut want = image_hashes("prty1");
    // dockerd bind-mounts its own /etc/hostname into every container.
    want.remove("/etc/hostname");
    let sums = sha256sum_cmd(&want);

    // 1. docker pull: nvtier pulls it (engine origin, layers placed by
    //    LASS), containerd skips the layers.
    dockerd.docker_ok(&["pull", &img]);
    let images = bed.nvtier_json(&["images"]);
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    assert_eq!(images[0]["origin"], "engine", "{images}");
    let layers = layers_json(&bed);
    assert_eq!(layers.len(), 5, "{layers:?}");
    for l in &layers {
        assert!(l["blob_digest"].is_string(), "not pulled by nvtier: {l}");
    }
    let reports = common::pull_reports(&bed);
    assert_eq!(reports.len(), 1);
    let rep = &reports[0];
    check_lass_rule(rep);
    for l in rep["layers"].as_array().expect("layers") {
        assert_eq!(l["reused"], false, "{l}");
        let stored = layers
            .iter()
            .find(|x| x["chain_id"] == l["chain_id"])
            .expect("stored layer");
        assert_eq!(stored["tier"], l["tier"], "{stored} vs {l}");
    }

    // 2. The blobs reach containerd's content store in the background, with
    //    their labels: docker images lists the image.
    wait_for("docker images to list the image", 60, || {
        image_listed(&dockerd, &img)
    });
    let content = ctd.ctr_ok(&["-n", "moby", "content", "ls"]);
    let diff_ids: Vec<String> = rep["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["diff_id"].as_str().expect("diff_id").to_string())
        .collect();
    for l in rep["layers"].as_array().expect("layers") {
        let d = l["digest"].as_str().expect("digest");
        let line = content
            .lines()
            .find(|x| x.starts_with(d))
            .unwrap_or_else(|| panic!("layer blob {d} not in the content store:\n{content}"));
        let diff = l["diff_id"].as_str().expect("diff_id");
        assert!(
            line.contains(&format!("containerd.io/uncompressed={diff}")),
            "{line}"
        );
        assert!(
            line.contains(&format!(
                "containerd.io/distribution.source.{}=nvtier-test/prty1",
                bed.registry
            )),
            "{line}"
        );
    }
    // containerd's fetch made the manifest reference every layer: that is
    // what keeps the blobs once nvtier's lease is gone.
    let manifest = rep["manifest_digest"].as_str().expect("manifest digest");
    let mline = content
        .lines()
        .find(|x| x.starts_with(manifest))
        .unwrap_or_else(|| panic!("no manifest {manifest}:\n{content}"));
    for (i, l) in rep["layers"].as_array().expect("layers").iter().enumerate() {
        let d = l["digest"].as_str().expect("digest");
        assert!(
            mline.contains(&format!("containerd.io/gc.ref.content.l.{i}={d}")),
            "{mline}"
        );
    }
    let leases = ctd.ctr_ok(&["-n", "moby", "leases", "ls"]);
    assert!(!leases.contains("nvtier-content-"), "lease left: {leases}");
    let log = plain(&nv.log_text());
    assert!(
        log.contains("content store: image blobs handed to containerd")
            && log.contains("written=5")
            && !log.contains("blob not written"),
        "{log}"
    );

    // 2b. An image `nvtier pull` stored first (no blob files kept): the
    //     engine's pull attaches its layers, and the blobs containerd
    //     lacks are fetched from the registry again.
    let img2 = bed.push("prty2", "busybox,1M");
    bed.nvtier_json(&["pull", &img2]);
    dockerd.docker_ok(&["pull", &img2]);
    wait_for("docker images to list the CLI-pulled image", 60, || {
        image_listed(&dockerd, &img2)
    });
    let log = plain(&nv.log_text());
    assert!(
        log.contains("image=") && log.contains("prty2:latest namespace=moby written=1 present=2"),
        "{log}"
    );

    // 3. docker image history.
    let hist = dockerd.docker_ok(&["image", "history", "--no-trunc", &img]);
    assert!(hist.lines().count() >= 6, "{hist}");

    // 4. docker save: each layer tar hashes to its diffID.
    let archive = rd.0.join("prty1.tar");
    dockerd.docker_ok(&["save", "-o", archive.to_str().expect("utf-8"), &img]);
    let members = archive_members(&archive);
    let mf: Value =
        serde_json::from_slice(members.get("manifest.json").expect("manifest.json")).expect("json");
    let cfg_path = mf[0]["Config"].as_str().expect("Config");
    let cfg: Value = serde_json::from_slice(members.get(cfg_path).expect("config")).expect("json");
    let want_diffs: Vec<&str> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|d| d.as_str().expect("diff id"))
        .collect();
    assert_eq!(
        want_diffs,
        diff_ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let saved: Vec<&str> = mf[0]["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| l.as_str().expect("layer path"))
        .collect();
    assert_eq!(saved.len(), want_diffs.len(), "{mf}");
    for (p, want) in saved.iter().zip(&want_diffs) {
        let data = members
            .get(*p)
            .unwrap_or_else(|| panic!("no {p} in the archive"));
        assert_eq!(&tar_digest(data), want, "layer {p}");
    }

    // 5. docker push to another repository; the stock dockerd pulls it and
    //    runs it with the image's files.
    let stock = start_stock_dockerd(&bed, &ctd.path_env);
    let pushed = format!("{}/nvtier-test/prty1-pushed:v1", bed.registry);
    dockerd.docker_ok(&["tag", &img, &pushed]);
    dockerd.docker_ok(&["push", &pushed]);
    stock.docker_ok(&["pull", &pushed]);
    let mut args = vec!["run", "--rm", "--network", "none", pushed.as_str()];
    args.extend(sums.iter().map(String::as_str));
    assert_hashes(
        &stock.docker_ok(&args),
        &want,
        "stock dockerd, pushed image",
    );
    stock.docker_ok(&["rmi", &pushed]);
    stock.docker_ok(&["image", "prune", "-a", "-f"]);

    // 6. docker load of the saved archive into the stock dockerd.
    stock.docker_ok(&["load", "-i", archive.to_str().expect("utf-8")]);
    let mut args = vec!["run", "--rm", "--network", "none", img.as_str()];
    args.extend(sums.iter().map(String::as_str));
    assert_hashes(
        &stock.docker_ok(&args),
        &want,
        "stock dockerd, loaded image",
    );
    drop(stock);

    // 7. docker rmi + prune: containerd's GC leaves no blob, no snapshot,
    //    and nvtier no image and no layer.
    dockerd.docker_ok(&["rmi", &img, &pushed, &img2]);
    dockerd.docker_ok(&["image", "prune", "-a", "-f"]);
    wait_for("snapshots to be removed", 30, || {
        snapshot_records(&bed).is_empty()
    });
    wait_for("the engine image's record to go", 10, || {
        bed.nvtier_json(&["images"])
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    // The CLI's record stays until `nvtier rm`.
    bed.nvtier_ok(&["rm", &img2]);
    wait_for("layers to be freed", 10, || layers_json(&bed).is_empty());
    let blobs = ctd_root.join("io.containerd.content.v1.content/blobs");
    wait_for("containerd's GC to remove the blobs", 30, || {
        files_under(&blobs).is_empty()
    });
    let snaps = ctd.ctr_ok(&["-n", "moby", "snapshots", "--snapshotter", "nvtier", "ls"]);
    assert_eq!(snaps.lines().count(), 1, "snapshots left: {snaps}");
    assert!(!image_listed(&dockerd, &img));
    drop(dockerd);
    drop(ctd);
    drop(nv);
    drop(rd);
}

/// containerd's content service unreachable (a wrong `containerd_socket`):
/// `docker pull` and `docker run` still work, the failure is logged with
/// its cause, and the job is retried.
#[test]
fn docker26_content_store_unreachable_never_fails_the_pull() {
    let eng = trixie_engines();
    let bin = PathBuf::from(&eng["ENGINES_BIN"]);
    let bed = Bed::up("prtx", "1gbit", "256M");
    let rd = make_run_dir(&bed);
    let ctd_root = containerd_root(&bed);
    let sock = write_serve_config(&bed, "256M", &ctd_root);
    let good = format!("containerd_socket = {:?}", run_dir(&bed).join("ctd.sock"));
    let bad = format!(
        "containerd_socket = {:?}",
        run_dir(&bed).join("no-such.sock")
    );
    let cfg = fs::read_to_string(&bed.config).expect("config");
    assert!(cfg.contains(&good), "{cfg}");
    fs::write(&bed.config, cfg.replace(&good, &bad)).expect("config");
    let nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, Some(&bin));
    let dockerd = Dockerd::start(&bed, &ctd);
    let img = bed.push("prtx1", "busybox,1M");
    dockerd.docker_ok(&["pull", &img]);
    let images = bed.nvtier_json(&["images"]);
    assert_eq!(images[0]["origin"], "engine", "{images}");
    let out = dockerd.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &img,
        "cat",
        "/data/layer1.txt",
    ]);
    assert!(out.contains("nvtier testbed layer 1"), "{out}");
    // The first attempt (1 s after the pull) and the first retry (10 s
    // later) fail and say why.
    wait_for("two failed attempts to be logged", 60, || {
        plain(&nv.log_text())
            .matches("content store: cannot write the image's blobs into containerd")
            .count()
            >= 2
    });
    let log = plain(&nv.log_text());
    assert!(
        log.contains("cannot connect to containerd at") && log.contains("no-such.sock"),
        "{log}"
    );
    assert!(!image_listed(&dockerd, &img));
    // The kept blob files wait for the retries.
    assert!(
        !files_under(&bed.state.join("kept-blobs")).is_empty(),
        "kept blobs removed before the last attempt"
    );
    dockerd.docker_ok(&["rmi", &img]);
    wait_for("layers to be freed", 30, || layers_json(&bed).is_empty());
    drop(dockerd);
    drop(ctd);
    drop(nv);
    drop(rd);
}
