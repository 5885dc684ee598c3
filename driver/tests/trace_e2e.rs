//! Root integration tests of the file-access tracer: the real eBPF tracer
//! (and the fanotify fallback) on nvtier-mounted images.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

/// Build (once) an image whose top layer holds a dynamically linked
/// program with its ELF interpreter and libc, on top of a 4-layer busybox
/// image. Returns the OCI tag.
fn dynamic_image() -> String {
    let tag = "tracedyn".to_string();
    let base = "tracebase";
    let oci = oci_dir();
    let _lock = build_lock();
    let stamp = oci.join(format!(".nvtier-stamps/{tag}"));
    if stamp.exists() {
        return tag;
    }
    sh(
        "build-image.sh",
        &[
            "--out",
            oci.to_str().expect("utf8"),
            "--tag",
            base,
            "--layers",
            "busybox,1M,2M,1M",
        ],
    );
    let work = tempfile::tempdir().expect("tmp");
    let root = work.path().join("root");
    for d in ["usr/bin", "lib64", "lib/x86_64-linux-gnu"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let src = work.path().join("hello.c");
    fs::write(
        &src,
        "#include <stdio.h>\nint main(void){puts(\"hello from a dynamic binary\");return 0;}\n",
    )
    .expect("write");
    run_ok(
        Command::new("gcc")
            .arg("-O2")
            .arg("-o")
            .arg(root.join("usr/bin/hello"))
            .arg(&src),
        "gcc",
    );
    for (from, to) in [
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
    ] {
        let real = fs::canonicalize(from).expect("host lib");
        fs::copy(&real, root.join(to)).expect("copy lib");
    }
    let tar = work.path().join("layer.tar");
    run_ok(
        Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@1700000000",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-C",
            ])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "tar",
    );
    run_ok(
        Command::new("umoci")
            .args(["raw", "add-layer", "--image"])
            .arg(format!("{}:{base}", oci.display()))
            .args([
                "--tag",
                &tag,
                "--history.created_by",
                "COPY hello /usr/bin/hello",
            ])
            .arg(&tar),
        "umoci raw add-layer",
    );
    fs::create_dir_all(stamp.parent().expect("parent")).expect("mkdir");
    fs::write(&stamp, "dynamic").expect("stamp");
    tag
}

/// A report (`status` or `trace`) of the eBPF tracer, attached without
/// tracefs.
#[track_caller]
fn assert_ebpf_without_tracefs(v: &Value) {
    assert_eq!(v["tracer"], "ebpf", "{v}");
    assert!(
        v["tracer_reason"]
            .as_str()
            .is_some_and(|r| r.contains("no tracefs")),
        "{v}"
    );
}

/// A bed with the dynamic image pushed and pulled: (bed, reference, the
/// chain IDs of its layers).
fn bed_with_dynamic(tag: &str, rate: &str) -> (Bed, String, Vec<String>) {
    let bed = Bed::up(tag, rate, "4G");
    let r = bed.push_built(&dynamic_image());
    bed.nvtier_ok(&["pull", &r]);
    let layers = chain_ids(&bed, &r);
    (bed, r, layers)
}

/// path → (layer index, kinds) from a profile JSON.
fn files(p: &Value, layers: &[String]) -> BTreeMap<String, (usize, BTreeSet<String>)> {
    p["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            let chain = f["layer_chain_id"].as_str().expect("chain");
            let layer = layers
                .iter()
                .position(|c| c == chain)
                .expect("a layer of the image");
            let kinds = f["kinds"]
                .as_array()
                .expect("kinds")
                .iter()
                .map(|k| k.as_str().expect("kind").to_string())
                .collect();
            (
                f["path"].as_str().expect("path").to_string(),
                (layer, kinds),
            )
        })
        .collect()
}

fn chain_ids(bed: &Bed, r: &str) -> Vec<String> {
    bed.nvtier_json(&["layers", r])
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["chain_id"].as_str().expect("chain").to_string())
        .collect()
}

// `>> /data/layer3.bin` opens an image file for writing only: overlayfs
// copies it up first, so the tracer sees the upper copy's inode, and the
// profile must still name the image file (its data lookup is a cold-start
// read). `/tmp/written` is created by the workload: it is no image file.
const WORKLOAD: &str = "cat /data/layer1.txt /data/layer2.txt /data/layer3.txt >/dev/null; \
                        test -e /etc/passwd; echo new > /tmp/written; cat /tmp/written >/dev/null; \
                        echo appended >> /data/layer3.bin; /usr/bin/hello";

#[test]
fn ebpf_profile_is_exact_and_complete() {
    let (bed, r, layers) = bed_with_dynamic("trc", "100mbit");
    assert_eq!(layers.len(), 5);
    // A process outside the container reads image files of the same layers
    // directly while the trace runs: none of it may appear.
    let l2 = bed.nvtier_json(&["layers", &r])[2].clone();
    let tier = if l2["tier"] == "pmem" {
        &bed.pmem
    } else {
        &bed.disk
    };
    let outside = tier
        .join("layers")
        .join(
            l2["chain_id"]
                .as_str()
                .expect("chain")
                .trim_start_matches("sha256:"),
        )
        .join("data/layer2.bin");
    let noise = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 200); do cat {} >/dev/null; done",
            outside.display()
        ))
        .spawn()
        .expect("noise");
    // As on a fresh host: no tracefs mounted (a private mount namespace
    // where it is unmounted). The per-syscall tracepoints cannot attach
    // there, which shows tracefs really is gone ...
    let tp = bed.nvtier_without_tracefs(
        &["trace", "--json", &r, "--tracer", "ebpf", "--", "/bin/true"],
        &[("NVTIER_BPF_ATTACH", "tracepoint")],
    );
    assert!(!tp.status.success(), "tracepoints attached without tracefs");
    let tp_err = String::from_utf8_lossy(&tp.stderr);
    assert!(tp_err.contains("tracefs"), "{tp_err}");
    // ... and the default attach works all the same; `status` says so.
    let st = bed.nvtier_without_tracefs(&["status", "--json"], &[]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let st: Value = serde_json::from_slice(&st.stdout).expect("status --json");
    assert_ebpf_without_tracefs(&st);
    let out = bed.nvtier_without_tracefs(
        &[
            "trace", "--json", &r, "--tracer", "ebpf", "--", "/bin/sh", "-c", WORKLOAD,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "trace without tracefs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).expect("trace --json");
    let mut noise = noise;
    let _ = noise.wait();
    // The per-syscall tracepoints (with tracefs) see the same files.
    let tp = bed.nvtier_with_tracefs(
        &[
            "trace", "--json", &r, "--tracer", "ebpf", "--", "/bin/sh", "-c", WORKLOAD,
        ],
        &[("NVTIER_BPF_ATTACH", "tracepoint")],
    );
    assert!(
        tp.status.success(),
        "{}",
        String::from_utf8_lossy(&tp.stderr)
    );
    let tp: Value = serde_json::from_slice(&tp.stdout).expect("trace --json");
    assert!(
        tp["tracer_reason"]
            .as_str()
            .is_some_and(|r| r.contains("per-syscall tracepoints")),
        "{tp}"
    );
    let run_files = |v: &Value| -> BTreeMap<String, (String, BTreeSet<String>)> {
        v["profile"]["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().expect("path").to_string(),
                    (
                        f["layer_chain_id"].as_str().expect("layer").to_string(),
                        f["kinds"]
                            .as_array()
                            .expect("kinds")
                            .iter()
                            .map(|k| k.as_str().expect("kind").to_string())
                            .collect(),
                    ),
                )
            })
            .collect()
    };
    assert_eq!(run_files(&rep), run_files(&tp), "btf vs tracepoint attach");
    assert_ebpf_without_tracefs(&rep);
    assert_eq!(rep["exit_code"], 0, "{rep}");
    assert_eq!(rep["lost_events"], 0);
    // Miss mode: exactly the touched files of disk-tier layers.
    let tiers: Vec<String> = bed
        .nvtier_json(&["layers", &r])
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["tier"].as_str().expect("tier").to_string())
        .collect();
    let missed: BTreeSet<String> = rep["misses"]
        .as_array()
        .expect("misses")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect();
    let prof = bed.nvtier_json(&["profile", "show", &r]);
    // `profile list` agrees with the profile.
    let list = bed.nvtier_json(&["profile", "list"]);
    let row = list
        .as_array()
        .expect("rows")
        .iter()
        .find(|x| x["image"] == r.as_str())
        .expect("the image is listed");
    assert_eq!(row["profiled"], true, "{row}");
    assert_eq!(row["files"], prof["files"].as_array().expect("files").len());
    assert_eq!(row["runs"], prof["runs"]);
    assert_eq!(row["tracer"], prof["tracer"]);
    assert!(row["recorded_ms"].as_u64().is_some_and(|t| t > 0), "{row}");
    let got = files(&prof, &layers);
    let names: BTreeSet<&str> = got.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        "/bin/busybox",
        "/data/layer1.txt",
        "/data/hard", // a second name of layer1.txt's inode
        "/data/layer2.txt",
        "/data/layer3.txt",
        "/data/layer3.bin", // only opened for writing (copied up)
        "/etc/passwd",
        "/etc/group", // not touched by the workload: an engine read
        "/usr/bin/hello",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .collect();
    assert_eq!(names, want, "profile: {prof:#}");
    let want_missed: BTreeSet<String> = got
        .iter()
        .filter(|(_, (layer, kinds))| {
            tiers[*layer] == "disk" && kinds.iter().any(|k| k != "engine")
        })
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(missed, want_missed);
    assert!(
        !missed.is_empty(),
        "the bottom layers are on disk after a LASS pull"
    );
    // Right layers.
    assert_eq!(got["/bin/busybox"].0, 0);
    assert_eq!(got["/data/layer1.txt"].0, 1);
    assert_eq!(got["/data/layer2.txt"].0, 2);
    assert_eq!(got["/data/layer3.txt"].0, 3);
    assert_eq!(got["/data/layer3.bin"].0, 3);
    assert!(got["/data/layer3.bin"].1.contains("open"), "{prof:#}");
    assert_eq!(got["/usr/bin/hello"].0, 4);
    // Kinds: exec'd binaries, mapped libraries, the kernel-mapped
    // interpreter, a stat-only file.
    assert!(got["/bin/busybox"].1.contains("exec"));
    assert!(got["/usr/bin/hello"].1.contains("exec"));
    assert!(got["/lib/x86_64-linux-gnu/libc.so.6"].1.contains("mmap"));
    assert!(got["/lib/x86_64-linux-gnu/libc.so.6"].1.contains("open"));
    assert!(!got["/lib64/ld-linux-x86-64.so.2"].1.is_empty());
    // /etc/passwd: looked up by the workload, and listed as an engine read
    // (dockerd resolves the user from it before the container starts).
    assert_eq!(
        got["/etc/passwd"].1,
        ["engine".to_string(), "stat".to_string()]
            .into_iter()
            .collect()
    );
    // First-access order.
    let order: Vec<f64> = prof["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["first_access_ms"].as_f64().expect("ms"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    // The engine's reads come first (0 ms), then the container's.
    assert_eq!(prof["files"][0]["path"], "/etc/group");
    assert_eq!(prof["files"][1]["path"], "/etc/passwd");
    assert_eq!(prof["files"][1]["first_access_ms"].as_f64(), Some(0.0));
    assert_eq!(prof["files"][2]["path"], "/bin/busybox");
    assert_eq!(
        got["/etc/group"].1,
        ["engine".to_string()].into_iter().collect()
    );
    for f in prof["files"].as_array().expect("files") {
        assert!(f["bytes"].as_u64().is_some());
        assert!(f["count"].as_u64().expect("count") >= 1);
    }

    // Export, remove, import: the same profile back.
    let exported = bed.state.join("exported.json");
    bed.nvtier_ok(&[
        "profile",
        "export",
        &r,
        "-o",
        exported.to_str().expect("utf8"),
    ]);
    fs::remove_dir_all(bed.state.join("profiles")).expect("rm profiles");
    assert!(!bed.nvtier(&["profile", "show", &r]).status.success());
    bed.nvtier_ok(&["profile", "import", exported.to_str().expect("utf8")]);
    let back = bed.nvtier_json(&["profile", "show", &r]);
    assert_eq!(back, prof);
    // Garbage is rejected and changes nothing.
    fs::write(&exported, "{ not json").expect("write");
    assert!(!bed
        .nvtier(&["profile", "import", exported.to_str().expect("utf8")])
        .status
        .success());
    assert_eq!(bed.nvtier_json(&["profile", "show", &r]), prof);
}

#[test]
fn fallback_tracers_see_the_same_files() {
    let (bed, r, layers) = bed_with_dynamic("fan", "none");
    // Opens and execs only: stat-only lookups are invisible to the
    // fallbacks.
    let work = "cat /data/layer1.txt /data/layer3.txt >/dev/null; /usr/bin/hello";
    let a = bed.nvtier_json(&["trace", &r, "--tracer", "ebpf", "--", "/bin/sh", "-c", work]);
    assert_eq!(a["tracer"], "ebpf");
    let pa = files(&bed.nvtier_json(&["profile", "show", &r]), &layers);
    let la: BTreeMap<_, _> = pa.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    for fallback in ["fanotify", "inotify"] {
        fs::remove_dir_all(bed.state.join("profiles")).expect("rm profiles");
        let out = Command::new(env!("CARGO_BIN_EXE_nvtier"))
            .args(["trace", "--json", &r, "--", "/bin/sh", "-c", work])
            .env("NVTIER_CONFIG", &bed.config)
            .env("NVTIER_TRACER", fallback)
            .output()
            .expect("trace");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(b["tracer"], fallback);
        let pb = files(&bed.nvtier_json(&["profile", "show", &r]), &layers);
        let lb: BTreeMap<_, _> = pb.iter().map(|(k, v)| (k.clone(), v.0)).collect();
        assert_eq!(la, lb, "ebpf and {fallback} file sets differ");
    }
}

/// The paths in an image's saved profile.
fn profile_paths(bed: &Bed, r: &str) -> Vec<String> {
    bed.nvtier_json(&["profile", "show", r])["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn trace_window_ends_a_long_running_container() {
    let bed = Bed::up("win", "none", "4G");
    let r = bed.push("winimg", "busybox,1M");
    bed.nvtier_ok(&["pull", &r]);
    let t = std::time::Instant::now();
    let rep = bed.nvtier_json(&[
        "trace",
        &r,
        "--window",
        "1",
        "--",
        "/bin/sh",
        "-c",
        "cat /data/layer1.txt >/dev/null; sleep 30",
    ]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "window did not end the run"
    );
    assert_ne!(rep["exit_code"], 0, "killed at the end of the window");
    let names = profile_paths(&bed, &r);
    assert!(names.iter().any(|n| n == "/data/layer1.txt"), "{names:?}");
    // Ready file: the window ends --after-ready (default 1 s) after the
    // container creates it. What it reads 0.3 s after ready is part of its
    // start-up; what it reads 4 s after is not.
    fs::remove_dir_all(bed.state.join("profiles")).expect("rm profiles");
    let t = std::time::Instant::now();
    bed.nvtier_json(&[
        "trace",
        &r,
        "--ready-file",
        "/tmp/ready",
        "--",
        "/bin/sh",
        "-c",
        "touch /tmp/ready; sleep 0.3; cat /data/layer1.txt >/dev/null; \
         sleep 4; cat /data/layer1.bin >/dev/null; sleep 30",
    ]);
    assert!(t.elapsed() < std::time::Duration::from_secs(4));
    let names = profile_paths(&bed, &r);
    assert!(names.iter().any(|n| n == "/data/layer1.txt"), "{names:?}");
    assert!(!names.iter().any(|n| n == "/data/layer1.bin"), "{names:?}");
    // --after-ready 0 ends it at once.
    let t = std::time::Instant::now();
    bed.nvtier_json(&[
        "trace",
        &r,
        "--ready-file",
        "/tmp/ready",
        "--after-ready",
        "0",
        "--",
        "/bin/sh",
        "-c",
        "touch /tmp/ready; sleep 30",
    ]);
    assert!(t.elapsed() < std::time::Duration::from_secs(3));
}
