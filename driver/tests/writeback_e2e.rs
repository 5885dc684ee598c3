//! Disk-tier layers published before their write-back (`disk_layer_sync =
//! "background"`, the default; `store::durable`): real registry, tiers and
//! overlay mounts.

mod common;
use common::*;
use serde_json::Value;
use std::fs;
use std::process::Command;

const SPEC: &str = "busybox,4M,2M,1M";

/// File names in `STATE/unsynced`, sorted.
fn unsynced_files(bed: &Bed) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(bed.state.join("unsynced"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn sha256_of(p: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// Regular files under `root`, recursively.
fn files_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                v.push(e.path());
            }
        }
    }
    v
}

#[test]
fn disk_layers_are_restored_from_kept_blobs_after_a_lost_write_back() {
    let bed = Bed::up("wback", "none", "4G");
    let r = bed.push("wbdemo", SPEC);
    let rep = bed.nvtier_json(&["pull", "--placement", "disk", "--no-wait", &r]);
    assert_eq!(rep["layers"].as_array().map(Vec::len), Some(4), "{rep:#}");

    // Published at once: a record and a kept blob per layer.
    let st = bed.nvtier_json(&["status"]);
    assert_eq!(st["disk_layers"], 4, "{st:#}");
    assert_eq!(st["unsynced_layers"], 4, "{st:#}");
    assert_eq!(st["disk_layer_sync"], "background");
    let files = unsynced_files(&bed);
    assert_eq!(files.len(), 8, "{files:?}");
    let dir = bed.state.join("unsynced");
    let mut kept_bytes = 0;
    for f in files.iter().filter(|f| f.ends_with(".json")) {
        let hex = f.trim_end_matches(".json");
        // The kept blob is the very blob the layer came from.
        let meta: Value = serde_json::from_slice(
            &fs::read(bed.state.join("layers").join(f)).expect("layer meta"),
        )
        .expect("layer meta JSON");
        let blob = dir.join(format!("{hex}.blob"));
        assert_eq!(
            meta["blob_digest"].as_str(),
            Some(format!("sha256:{}", sha256_of(&blob)).as_str()),
            "kept blob of {hex}"
        );
        kept_bytes += fs::metadata(&blob).expect("blob").len();
    }
    assert_eq!(st["unsynced_blob_bytes"].as_u64(), Some(kept_bytes));
    // Opening the store again in the same boot changes nothing: the data
    // is in the page cache, and the kernel writes it back.
    assert_eq!(
        bed.nvtier_json(&["images"]).as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(unsynced_files(&bed), files);

    // The fault: the machine goes down before the files are written back.
    // That takes a power cut, so it is emulated by what one leaves behind:
    // records written under another boot, and layer files whose data never
    // reached the disk (ext4 leaves never-allocated files empty).
    for f in files.iter().filter(|f| f.ends_with(".json")) {
        let p = dir.join(f);
        let mut rec: Value =
            serde_json::from_slice(&fs::read(&p).expect("record")).expect("record JSON");
        rec["boot_id"] = Value::from("00000000-0000-0000-0000-000000000000");
        fs::write(&p, serde_json::to_vec(&rec).expect("JSON")).expect("rewrite record");
    }
    let mut emptied = 0;
    for e in fs::read_dir(bed.disk.join("layers")).expect("ls").flatten() {
        for f in files_under(&e.path()) {
            if fs::metadata(&f).expect("stat").len() > 0 {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .and_then(|h| h.set_len(0))
                    .expect("truncate");
                emptied += 1;
            }
        }
    }
    assert!(emptied > 10, "only {emptied} files emptied");
    let mnt = bed.state.parent().expect("parent").join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let expected = listing(&reference_rootfs("wbdemo"));

    // The next command to open the store restores every layer from its
    // kept blob, then drops the blobs.
    let st = bed.nvtier_json(&["status"]);
    assert_eq!(st["unsynced_layers"], 0, "{st:#}");
    assert!(
        unsynced_files(&bed).is_empty(),
        "{:?}",
        unsynced_files(&bed)
    );
    assert!(bed.leftovers().is_empty(), "{:?}", bed.leftovers());
    bed.nvtier_ok(&["mount", &r, mnt.to_str().expect("utf8")]);
    let actual = listing(&mnt);
    bed.nvtier_ok(&["umount", mnt.to_str().expect("utf8")]);
    assert_same_tree(&expected, &actual);
}

#[test]
fn sync_writes_back_and_drops_kept_blobs_and_orphans() {
    let bed = Bed::up("wsync", "none", "4G");
    let r = bed.push("wsdemo", SPEC);
    bed.nvtier_json(&["pull", "--placement", "disk", "--no-wait", &r]);
    assert_eq!(unsynced_files(&bed).len(), 8);
    let s = bed.nvtier_json(&["sync"]);
    assert_eq!(s["synced"], 4, "{s:#}");
    assert_eq!(s["orphans"], 0, "{s:#}");
    assert!(
        s["blob_bytes_freed"].as_u64().expect("bytes") > 4 << 20,
        "{s:#}"
    );
    assert!(unsynced_files(&bed).is_empty());
    assert_eq!(bed.nvtier_json(&["status"])["unsynced_layers"], 0);
    // Nothing left to do.
    assert_eq!(bed.nvtier_json(&["sync"])["synced"], 0);

    // A plain pull waits for the write-back before it exits.
    bed.nvtier_ok(&["rm", &r]);
    bed.nvtier_json(&["pull", "--placement", "disk", &r]);
    assert!(
        unsynced_files(&bed).is_empty(),
        "{:?}",
        unsynced_files(&bed)
    );

    // Layers collected before their write-back take their kept blobs and
    // records with them.
    bed.nvtier_ok(&["rm", &r]);
    bed.nvtier_json(&["pull", "--placement", "disk", "--no-wait", &r]);
    let unsynced = bed.state.join("unsynced");
    let kept = bed.state.join("kept-before-rm");
    fs::create_dir_all(&kept).expect("mkdir");
    let names = unsynced_files(&bed);
    assert_eq!(names.len(), 8, "{names:?}");
    for n in &names {
        fs::copy(unsynced.join(n), kept.join(n)).expect("copy kept blob");
    }
    bed.nvtier_ok(&["rm", &r]);
    assert!(bed.stored_layers().is_empty(), "{:?}", bed.stored_layers());
    assert!(
        unsynced_files(&bed).is_empty(),
        "{:?}",
        unsynced_files(&bed)
    );
    // Records whose layer is gone (a crash between the two removals) are
    // orphans that the next sync drops.
    for n in &names {
        fs::copy(kept.join(n), unsynced.join(n)).expect("restore kept blob");
    }
    fs::remove_dir_all(&kept).expect("rm");
    let s = bed.nvtier_json(&["sync"]);
    assert_eq!(
        (s["synced"].clone(), s["orphans"].clone()),
        (0.into(), 4.into()),
        "{s:#}"
    );
    assert!(unsynced_files(&bed).is_empty());

    // `before-publish` syncs before publishing and keeps nothing.
    let cfg = fs::read_to_string(&bed.config).expect("config");
    fs::write(
        &bed.config,
        format!("{cfg}disk_layer_sync = \"before-publish\"\n"),
    )
    .expect("config");
    bed.nvtier_json(&["pull", "--placement", "disk", "--no-wait", &r]);
    assert!(
        unsynced_files(&bed).is_empty(),
        "{:?}",
        unsynced_files(&bed)
    );
    assert_eq!(
        bed.nvtier_json(&["status"])["disk_layer_sync"],
        "before-publish"
    );
}
