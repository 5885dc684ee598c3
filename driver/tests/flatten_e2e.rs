//! The flattened metadata layer over data-only lower layers shows exactly
//! the same tree as the plain overlay of the image's layers.

mod common;
use common::*;
use nvtier::mount::{mount_overlay, OverlaySpec};
use std::fs;
use std::path::PathBuf;

struct Unmount(Vec<PathBuf>);
impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn meta_layer_over_data_only_layers_equals_plain_overlay() {
    let bed = Bed::up("flat", "none", "4G");
    let r = bed.push("lassdemo", "busybox,8M,4M,30M,2M,1M");
    bed.nvtier_ok(&["pull", &r]);
    let layers: Vec<PathBuf> = bed
        .nvtier_json(&["layers", &r])
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            let tier = if l["tier"] == "pmem" {
                &bed.pmem
            } else {
                &bed.disk
            };
            tier.join("layers").join(
                l["chain_id"]
                    .as_str()
                    .expect("chain")
                    .trim_start_matches("sha256:"),
            )
        })
        .collect();
    let work = bed.state.parent().expect("parent").join("flat");
    let (meta, plain, flat) = (work.join("meta"), work.join("plain"), work.join("flat"));
    for d in [&meta, &plain, &flat] {
        fs::create_dir_all(d).expect("mkdir");
    }
    let stats = nvtier::flatten::build_meta_layer(&layers, &meta).expect("build meta layer");
    assert!(
        stats.stubs >= 10 && stats.hardlinks >= 1 && stats.symlinks >= 1,
        "{stats:?}"
    );
    // Owners: every file not in the top layer, by the top-most layer that
    // has it (bottom first); the top layer's own files are left out.
    let n = layers.len();
    assert_eq!(
        stats.owners.get("/bin/busybox"),
        Some(&0),
        "{:?}",
        stats.owners
    );
    assert_eq!(stats.owners.get("/etc/passwd"), Some(&0));
    // /data/hard and /data/layer1.txt are one file; its stubs redirect to
    // the first name.
    assert_eq!(stats.owners.get("/data/hard"), Some(&1));
    assert_eq!(stats.owners.get("/data/layer1.txt"), None);
    assert_eq!(stats.owners.get("/data/layer2.bin"), Some(&2));
    assert_eq!(stats.owners.get("/opt/dir/c"), Some(&2));
    let top_file = format!("/data/layer{}.txt", n - 1);
    assert!(!stats.owners.contains_key(&top_file), "{top_file}");
    assert!(
        !stats.owners.contains_key("/opt/dir/a") && !stats.owners.contains_key("/etc/removeme"),
        "hidden files have no stub"
    );
    assert!(stats.owners.values().all(|&o| o < n - 1));
    let top_first: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    let _guard = Unmount(vec![plain.clone(), flat.clone()]);
    mount_overlay(
        &OverlaySpec {
            lower: top_first.clone(),
            ..Default::default()
        },
        &plain,
    )
    .expect("plain overlay");
    mount_overlay(
        &OverlaySpec {
            lower: vec![meta.clone()],
            data: top_first,
            ..Default::default()
        },
        &flat,
    )
    .expect("meta::data overlay");
    let a = listing(&plain);
    let b = listing(&flat);
    assert_same_tree(&a, &b);
    assert_same_tree(&listing(&reference_rootfs("lassdemo")), &b);
    // The stubs hold no data: the metadata layer is tiny.
    let (_, meta_bytes) = nvtier::fsutil::walk::tree_usage(&meta).expect("usage");
    assert!(meta_bytes > 40 << 20, "apparent sizes are kept");
    let blocks: u64 = walk_blocks(&meta);
    assert!(
        blocks < 1 << 20,
        "stubs are sparse: {blocks} bytes allocated"
    );
}

fn walk_blocks(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut sum = 0;
    for e in fs::read_dir(p).expect("ls").flatten() {
        let m = e.metadata().expect("stat");
        if m.is_dir() {
            sum += walk_blocks(&e.path());
        } else {
            sum += m.blocks() * 512;
        }
    }
    sum
}
