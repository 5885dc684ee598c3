//! Hot-file tiering end to end: real eBPF profiles, real overlay
//! mounts with a metadata layer over data-only layers, real migrations,
//! real `kill -9`.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// [`listing`] plus what it leaves out: the user xattr, link counts and
/// which names share an inode (hardlinks).
fn full_listing(root: &Path) -> BTreeMap<String, String> {
    let mut m = listing(root);
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (rel, desc) in m.iter_mut() {
        let p = root.join(rel);
        let md = fs::symlink_metadata(&p).expect("lstat");
        if md.file_type().is_file() {
            let x = nvtier::extract::lgetxattr(&p, "user.nvtier").expect("xattr");
            desc.push_str(&format!(" nlink {} xattr {:?}", md.nlink(), x));
            if md.nlink() > 1 {
                by_ino.entry(md.ino()).or_default().push(rel.clone());
            }
        }
        if md.file_type().is_symlink() || md.is_dir() {
            continue;
        }
        if std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()) {
            desc.push_str(" fifo");
        }
    }
    for names in by_ino.values() {
        for n in names {
            if let Some(d) = m.get_mut(n) {
                d.push_str(&format!(" links-with {names:?}"));
            }
        }
    }
    m
}

struct Mounted<'a> {
    bed: &'a Bed,
    dir: PathBuf,
}
impl<'a> Mounted<'a> {
    fn new(bed: &'a Bed, image: &str, name: &str) -> Mounted<'a> {
        let dir = bed.state.parent().expect("parent").join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        bed.nvtier_ok(&["mount", image, dir.to_str().expect("utf8")]);
        Mounted { bed, dir }
    }
}
impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = self
            .bed
            .nvtier(&["umount", self.dir.to_str().unwrap_or("/")]);
    }
}

/// The data-only layers of the overlay mounted at `dir`, in order, from
/// its mountinfo options (`datadir+=` with the new mount API, the part
/// after `::` of `lowerdir=` with the legacy one).
fn data_layers_of(dir: &Path) -> Vec<String> {
    let mi = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = dir.to_str().expect("utf-8");
    let line = mi
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want))
        .unwrap_or_else(|| panic!("{want} not in mountinfo"));
    let opts = line.rsplit(' ').next().expect("super options");
    let mut out: Vec<String> = opts
        .split(',')
        .filter_map(|o| o.strip_prefix("datadir+="))
        .map(str::to_string)
        .collect();
    if out.is_empty() {
        if let Some(l) = opts.split(',').find_map(|o| o.strip_prefix("lowerdir=")) {
            out = l.split("::").skip(1).map(str::to_string).collect();
        }
    }
    out
}

fn chain_hex(l: &Value) -> String {
    l["chain_id"]
        .as_str()
        .expect("chain")
        .trim_start_matches("sha256:")
        .to_string()
}

/// Everything that must be empty once nothing is in flight.
fn tiering_leftovers(bed: &Bed) -> Vec<PathBuf> {
    let mut v = bed.leftovers();
    for d in [bed.state.join("journal"), bed.pmem.join("meta")] {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if d.ends_with("journal") || n.starts_with('.') {
                v.push(e.path());
            }
        }
    }
    for l in fs::read_dir(bed.pmem.join("hot"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for g in fs::read_dir(l.path()).into_iter().flatten().flatten() {
            if g.file_name().to_string_lossy().starts_with('.') {
                v.push(g.path());
            }
        }
    }
    v
}

/// Generation directories of every layer's hot data layer.
fn gen_dirs(bed: &Bed) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for l in fs::read_dir(bed.pmem.join("hot"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for g in fs::read_dir(l.path()).into_iter().flatten().flatten() {
            v.push(g.path());
        }
    }
    v.sort();
    v
}

/// The cold start the tests profile: it reads every kind of feature file.
const FEATURE_READS: &str =
    "cat /feat/xattr /feat/zeros /feat/empty /feat/suid /data/hard /data/layer3.bin /opt/dir/c >/dev/null";

/// Trace a cold start that reads the feature files; returns the profile.
fn profile_features(bed: &Bed, image: &str) -> Value {
    bed.nvtier_json(&["trace", image, "--", "/bin/sh", "-c", FEATURE_READS])
}

#[test]
fn merged_view_identical_across_promote_demote_and_back() {
    let bed = Bed::up("tier", "none", "4G");
    let r = bed.push("tierfeat", "busybox,1M,1M,2M,1M");
    bed.nvtier_ok(&["pull", "--placement", "pmem", &r]);
    let reference = full_listing(&reference_rootfs("tierfeat"));
    assert!(reference.contains_key("feat/xattr") && reference.contains_key("feat/chr"));

    // A container that runs through every placement change: plain overlay.
    let a = Mounted::new(&bed, &r, "a");
    assert_same_tree(&reference, &full_listing(&a.dir));
    let held = fs::File::open(a.dir.join("data/layer3.bin")).expect("open in old mount");

    let t = profile_features(&bed, &r);
    assert_eq!(t["exit_code"], 0, "{t}");
    let plan = bed.nvtier_json(&["migrate", &r, "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert!(gen_dirs(&bed).is_empty(), "a dry run changes nothing");

    // Promote.
    let m = bed.nvtier_json(&["migrate", &r]);
    let promoted: usize = m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["promote"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(promoted >= 6, "{m}");
    let layers = bed.nvtier_json(&["layers", &r]);
    for l in layers.as_array().expect("layers") {
        assert_eq!(l["tier"], "disk", "bases relocated: {l}");
        assert!(!bed.pmem.join("layers").join(chain_hex(l)).exists());
    }
    let feat_layer = &layers[3];
    assert!(
        feat_layer["pmem_files"].as_u64().expect("n") >= 4,
        "{feat_layer}"
    );
    let hot_zeros = bed
        .pmem
        .join("hot")
        .join(chain_hex(feat_layer))
        .join("g1/feat/zeros");
    assert_eq!(
        fs::read(&hot_zeros).expect("hot copy on pmem"),
        fs::read(reference_rootfs("tierfeat").join("feat/zeros")).expect("ref")
    );
    // Closing the loop: a miss-mode cold start reads nothing from disk.
    let miss = bed.nvtier_json(&[
        "trace",
        "--misses",
        &r,
        "--",
        "/bin/sh",
        "-c",
        FEATURE_READS,
    ]);
    assert_eq!(miss["tracer"], "ebpf", "{miss}");
    assert_eq!(
        miss["misses"].as_array().map(Vec::len),
        Some(0),
        "{}",
        miss["misses"]
    );
    // A fallback tracer sees overlay paths only: on this tiered mount it
    // says it cannot tell, rather than calling every hot file a miss.
    let fan = bed.nvtier_json(&[
        "trace",
        "--misses",
        "--tracer",
        "fanotify",
        &r,
        "--",
        "/bin/sh",
        "-c",
        FEATURE_READS,
    ]);
    assert_eq!(fan["tracer"], "fanotify", "{fan}");
    assert!(fan["misses"].is_null(), "{fan}");
    assert!(
        fan["misses_unknown_reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot tell")),
        "{fan}"
    );
    assert!(fan["files"].as_u64().is_some_and(|n| n > 0), "{fan}");
    let b = Mounted::new(&bed, &r, "b");
    assert_same_tree(&reference, &full_listing(&b.dir));
    assert_same_tree(&reference, &full_listing(&a.dir));
    // No layer overwrites another's hot file, so every hot data layer comes
    // before every base: resolving a hot file never looks into the disk.
    let data = data_layers_of(&b.dir);
    let first_base = data
        .iter()
        .position(|d| !d.contains("/hot/"))
        .expect("a base");
    let hot: Vec<&String> = data.iter().filter(|d| d.contains("/hot/")).collect();
    assert!(hot.len() >= 3, "hot data layers: {data:?}");
    assert!(
        data[..first_base].len() == hot.len(),
        "hot data layers first: {data:?}"
    );
    let st = bed.nvtier_json(&["status"]);
    assert!(st["tiered_mounts"].as_u64() >= Some(1), "{st}");
    assert_eq!(st["interleaved_mounts"], 0, "{st}");

    // The new mount reads the pmem copy, the old one its own layers: mark
    // the pmem copy (same length) and look through both.
    let hot_c = bed
        .pmem
        .join("hot")
        .join(chain_hex(&layers[2]))
        .join("g1/opt/dir/c");
    let orig = fs::read(&hot_c).expect("hot copy of /opt/dir/c");
    let marked: Vec<u8> = orig.iter().map(|_| b'X').collect();
    fs::write(&hot_c, &marked).expect("mark");
    assert_eq!(fs::read(b.dir.join("opt/dir/c")).expect("read"), marked);
    assert_eq!(fs::read(a.dir.join("opt/dir/c")).expect("read"), orig);
    fs::write(&hot_c, &orig).expect("unmark");

    // Demote everything: no profile, no hot files.
    let prof = bed.state.join("profiles");
    let saved = bed.state.parent().expect("p").join("profiles.saved");
    fs::rename(&prof, &saved).expect("move profiles away");
    let m2 = bed.nvtier_json(&["migrate", &r]);
    let demoted: usize = m2["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["demote"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(demoted, promoted, "{m2}");
    let c = Mounted::new(&bed, &r, "c");
    assert_same_tree(&reference, &full_listing(&c.dir));
    for l in bed.nvtier_json(&["layers", &r]).as_array().expect("l") {
        assert_eq!(l["pmem_files"], 0, "{l}");
    }
    // Mount b still holds generation 1, so it is kept.
    assert!(hot_zeros.exists());
    assert_same_tree(&reference, &full_listing(&b.dir));
    drop(b);
    assert!(!hot_zeros.exists(), "generation 1 goes with its last mount");

    // And back again.
    fs::rename(&saved, &prof).expect("restore profiles");
    bed.nvtier_json(&["migrate", &r]);
    let d = Mounted::new(&bed, &r, "d");
    assert_same_tree(&reference, &full_listing(&d.dir));
    assert!(bed
        .pmem
        .join("hot")
        .join(chain_hex(feat_layer))
        .join("g3/feat/zeros")
        .exists());

    // The container that lived through all of it.
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut buf).expect("read held file");
    assert_eq!(
        buf,
        fs::read(reference_rootfs("tierfeat").join("data/layer3.bin")).expect("r")
    );
    assert_same_tree(&reference, &full_listing(&a.dir));
    drop(held);
    drop((a, c, d));

    // Unmounted: only the current generations and no retired copies remain.
    let st = bed.nvtier_json(&["status"]);
    assert_eq!(st["pmem_retired_bytes"], 0, "{st}");
    assert!(
        st["pmem_used_bytes"].as_u64().expect("u") <= st["pmem_budget_bytes"].as_u64().expect("b")
    );
    assert!(st["pmem_meta_bytes"].as_u64().expect("m") > 0);
    let dirs = gen_dirs(&bed);
    assert!(dirs.iter().all(|g| g.ends_with("g3")), "{dirs:?}");
    assert!(
        tiering_leftovers(&bed).is_empty(),
        "{:?}",
        tiering_leftovers(&bed)
    );
    // rm + gc frees it all.
    bed.nvtier_ok(&["rm", &r]);
    assert!(gen_dirs(&bed).is_empty());
    assert_eq!(
        fs::read_dir(bed.pmem.join("meta")).map_or(0, |d| d.count()),
        0
    );
}

#[test]
fn kill_9_during_migration_leaves_a_consistent_store() {
    let bed = Bed::up("tkill", "none", "4G");
    let r = bed.push("tierfeat", "busybox,1M,1M,2M,1M");
    let reference = full_listing(&reference_rootfs("tierfeat"));
    let saved = bed.state.parent().expect("p").join("profile.saved");
    for point in [
        "after_copy",
        "after_journal:copied",
        "mid_publish",
        "after_journal:committed",
        "layer_copied",
        "layer_switched",
        "after_journal:layer_switched",
    ] {
        bed.nvtier_ok(&["pull", "--placement", "pmem", &r]);
        if saved.exists() {
            fs::create_dir_all(bed.state.join("profiles")).expect("mkdir");
            for e in fs::read_dir(&saved).expect("ls").flatten() {
                fs::copy(e.path(), bed.state.join("profiles").join(e.file_name())).expect("cp");
            }
        } else {
            profile_features(&bed, &r);
            fs::create_dir_all(&saved).expect("mkdir");
            for e in fs::read_dir(bed.state.join("profiles"))
                .expect("ls")
                .flatten()
            {
                fs::copy(e.path(), saved.join(e.file_name())).expect("cp");
            }
        }
        // A container from before the migration.
        let old = Mounted::new(&bed, &r, "old");
        let out = Command::new(env!("CARGO_BIN_EXE_nvtier"))
            .args(["migrate", &r])
            .env("NVTIER_CONFIG", &bed.config)
            .env("NVTIER_FAULT", point)
            .output()
            .expect("run");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: migrate was not killed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Restart: any command opens (and recovers) the store.
        bed.nvtier_ok(&["status"]);
        assert!(
            tiering_leftovers(&bed).is_empty(),
            "{point}: {:?}",
            tiering_leftovers(&bed)
        );
        assert_same_tree(&reference, &full_listing(&old.dir));
        {
            let now = Mounted::new(&bed, &r, "now");
            assert_same_tree(&reference, &full_listing(&now.dir));
        }
        // Every layer exists exactly once, on the tier its metadata says.
        for l in bed.nvtier_json(&["layers", &r]).as_array().expect("l") {
            let h = chain_hex(l);
            let (on, off) = if l["tier"] == "pmem" {
                (&bed.pmem, &bed.disk)
            } else {
                (&bed.disk, &bed.pmem)
            };
            assert!(on.join("layers").join(&h).is_dir(), "{point}: {l}");
            assert!(
                !off.join("layers").join(&h).exists(),
                "{point}: duplicate {l}"
            );
        }
        // The migration completes when run again.
        bed.nvtier_json(&["migrate", &r]);
        {
            let now = Mounted::new(&bed, &r, "now");
            assert_same_tree(&reference, &full_listing(&now.dir));
        }
        drop(old);
        let st = bed.nvtier_json(&["status"]);
        assert_eq!(st["pmem_retired_bytes"], 0, "{point}: {st}");
        assert_eq!(
            fs::read_dir(bed.pmem.join("retired")).map_or(0, |d| d.count()),
            0,
            "{point}"
        );
        bed.nvtier_ok(&["rm", &r]);
        assert!(tiering_leftovers(&bed).is_empty(), "{point}");
        assert!(gen_dirs(&bed).is_empty(), "{point}: {:?}", gen_dirs(&bed));
        assert!(
            bed.stored_layers().is_empty(),
            "{point}: {:?}",
            bed.stored_layers()
        );
    }
}

#[test]
fn small_budget_keeps_the_hottest_images_data() {
    // Three images with disjoint data layers (seeds) over the same base.
    let bed = Bed::up("tbudg", "none", "4G");
    let refs: Vec<String> = ["tierhot", "tierwarm", "tiercold"]
        .iter()
        .zip([11, 12, 13])
        .map(|(t, seed)| bed.push_seed(t, "busybox,2M,1M", seed))
        .collect();
    for r in &refs {
        bed.nvtier_ok(&["pull", "--placement", "disk", r]);
        let t = bed.nvtier_json(&[
            "trace",
            r,
            "--",
            "/bin/sh",
            "-c",
            "cat /data/layer1.bin /data/layer2.bin >/dev/null",
        ]);
        assert_eq!(t["exit_code"], 0, "{t}");
    }
    // Heat: more starts for the hot one.
    for (r, n) in refs.iter().zip([4, 2, 0]) {
        for i in 0..n {
            drop(Mounted::new(&bed, r, &format!("m{i}")));
        }
    }
    // Room for the hot image's metadata and hot files (busybox ~1.1 MiB +
    // 3 MiB of data) but not for everything.
    bed.write_config("5M");
    let m = bed.nvtier_json(&["migrate"]);
    let st = bed.nvtier_json(&["status"]);
    let used = st["pmem_used_bytes"].as_u64().expect("used");
    assert!(used <= 5 << 20, "budget exceeded: {used}\n{m}");
    let on_pmem = |r: &str| -> Vec<u64> {
        bed.nvtier_json(&["layers", r])
            .as_array()
            .expect("l")
            .iter()
            .map(|l| l["pmem_files"].as_u64().expect("n"))
            .collect()
    };
    let hot = on_pmem(&refs[0]);
    assert_eq!(
        &hot[1..],
        &[1, 1],
        "the hottest image's data is on pmem: {hot:?}\n{m}"
    );
    let cold = on_pmem(&refs[2]);
    assert_eq!(
        &cold[1..],
        &[0, 0],
        "the coldest image's data is not: {cold:?}\n{m}"
    );
    // Shrinking the budget never fails; it demotes.
    bed.write_config("0");
    bed.nvtier_json(&["migrate"]);
    for r in &refs {
        assert!(on_pmem(r).iter().all(|&n| n == 0));
    }
}

#[test]
fn serve_migrates_in_the_background_when_a_profile_appears() {
    let bed = Bed::up("tserv", "none", "4G");
    let r = bed.push("tierfeat", "busybox,1M,1M,2M,1M");
    bed.nvtier_ok(&["pull", "--placement", "disk", &r]);
    let sock = bed.state.parent().expect("p").join("snap.sock");
    let mut cfg = fs::read_to_string(&bed.config).expect("cfg");
    cfg.push_str(&format!(
        "snapshotter_socket = {:?}\ndocker_plugin_socket = \"\"\nmigrate_interval_s = 1\n",
        sock
    ));
    fs::write(&bed.config, cfg).expect("cfg");
    let serve = Serve::start(&bed, None);
    let hot = || -> u64 {
        bed.nvtier_json(&["layers", &r])
            .as_array()
            .expect("l")
            .iter()
            .map(|l| l["pmem_files"].as_u64().expect("n"))
            .sum()
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(hot(), 0, "nothing to migrate without a profile");
    profile_features(&bed, &r);
    let t = std::time::Instant::now();
    while hot() == 0 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "serve did not migrate within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(serve);
    let d = Mounted::new(&bed, &r, "d");
    assert_same_tree(
        &full_listing(&reference_rootfs("tierfeat")),
        &full_listing(&d.dir),
    );
}
