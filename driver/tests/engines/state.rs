//! What the engine tests check in nvtier's state dir and tiers: snapshot
//! records against their directories, short links and layers; leftovers
//! of interrupted work; a full listing for "everything is freed"; and the
//! content of a container's files against the image.

use crate::common::{reference_rootfs, Bed};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The snapshot records in `STATE/snapshots/` (panics on one that does
/// not parse: a torn record is a bug).
pub fn snapshot_records(bed: &Bed) -> Vec<Value> {
    let mut v = Vec::new();
    for e in fs::read_dir(bed.state.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            // A record removed between the listing and the read (the
            // snapshotter removes records concurrently) is gone.
            let t = match fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("record {}: {e}", p.display()),
            };
            v.push(
                serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("torn snapshot record {}: {e}", p.display())),
            );
        }
    }
    v
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn hex(chain: &str) -> String {
    chain.trim_start_matches("sha256:").to_string()
}

/// Problems in the state dir and tiers while snapshots may exist; empty
/// when consistent:
/// - every entry of `STATE/snapshots/` is a record; every record's own
///   directory exists on its tier and every directory there has a record;
/// - `STATE/l/` holds exactly one link per committed record, and it
///   resolves;
/// - every layer record has its directory on its tier and nothing else is
///   in `layers/`; every layer a snapshot names exists;
/// - no staging, partial download, reservation or migration journal.
pub fn inconsistencies(bed: &Bed) -> Vec<String> {
    let mut bad = Vec::new();
    let recs = snapshot_records(bed);
    for n in names(&bed.state.join("snapshots")) {
        if !n.ends_with(".json") || n.starts_with('.') {
            bad.push(format!("stray entry state/snapshots/{n}"));
        }
    }
    let layer_recs: BTreeMap<String, Value> = names(&bed.state.join("layers"))
        .into_iter()
        .filter_map(|n| {
            let h = n.strip_suffix(".json")?.to_string();
            let t = fs::read_to_string(bed.state.join("layers").join(&n)).ok()?;
            Some((h, serde_json::from_str(&t).ok()?))
        })
        .collect();
    for (tier, root) in [("pmem", &bed.pmem), ("disk", &bed.disk)] {
        let want: BTreeSet<String> = recs
            .iter()
            .filter(|r| r["tier"] == tier && r["layer"].is_null())
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        let have = names(&root.join("snapshots"));
        for x in have.difference(&want) {
            bad.push(format!("{tier}/snapshots/{x} has no record"));
        }
        for x in want.difference(&have) {
            bad.push(format!("record with id {x} has no {tier}/snapshots/{x}"));
        }
        let want: BTreeSet<String> = layer_recs
            .iter()
            .filter(|(_, m)| m["tier"] == tier)
            .map(|(h, _)| h.clone())
            .collect();
        let have = names(&root.join("layers"));
        for x in have.difference(&want) {
            bad.push(format!("{tier}/layers/{x} has no layer record on {tier}"));
        }
        for x in want.difference(&have) {
            bad.push(format!("layer record {x} has no {tier}/layers/{x}"));
        }
        for x in names(&root.join("staging")) {
            bad.push(format!("staging leftover {tier}/staging/{x}"));
        }
    }
    let committed: BTreeSet<String> = recs
        .iter()
        .filter(|r| r["kind"] == "committed")
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    let links = names(&bed.state.join("l"));
    for x in links.difference(&committed) {
        bad.push(format!("short link state/l/{x} has no committed record"));
    }
    for x in committed.difference(&links) {
        bad.push(format!("committed record {x} has no short link"));
    }
    for x in links.intersection(&committed) {
        if fs::metadata(bed.state.join("l").join(x)).is_err() {
            bad.push(format!("short link state/l/{x} is dangling"));
        }
    }
    for r in &recs {
        if let Some(c) = r["layer"].as_str() {
            if !layer_recs.contains_key(&hex(c)) {
                bad.push(format!("snapshot {} names missing layer {c}", r["key"]));
            }
        }
    }
    for d in ["downloads", "reservations", "journal"] {
        for x in names(&bed.state.join(d)) {
            bad.push(format!("leftover state/{d}/{x}"));
        }
    }
    bad
}

/// Panics with the problems [`inconsistencies`] finds, and with every
/// layer that nothing references (`nvtier layers`, which counts images,
/// mounts, graph-driver layers and snapshot records).
pub fn assert_consistent(bed: &Bed, when: &str) {
    assert_consistent_but(bed, when, false)
}

/// [`assert_consistent`]; with `unreferenced_ok`, layers nothing references
/// yet are only listed: the layers an interrupted pull stored stay for its
/// retry to reuse (as after a killed `nvtier pull`), and GC frees them if
/// none comes.
pub fn assert_consistent_but(bed: &Bed, when: &str, unreferenced_ok: bool) {
    // A background migration (the daemon migrates after each recording)
    // may be under way: its journal is there until it ends.
    let journal = bed.state.join("journal");
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(60)
        && fs::read_dir(&journal)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "json"))
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let bad = inconsistencies(bed);
    assert!(
        bad.is_empty(),
        "{when}: inconsistent state:\n{}\n{}",
        bad.join("\n"),
        full_listing(bed).join("\n")
    );
    let layers = bed.nvtier_json(&["layers"]);
    for l in layers.as_array().expect("layers") {
        if l["refs"].as_u64().unwrap_or(0) == 0 {
            assert!(unreferenced_ok, "{when}: layer referenced by nothing: {l}");
            eprintln!(
                "{when}: kept for the retry: layer {} on {}",
                l["chain_id"], l["tier"]
            );
        }
    }
}

/// Every entry under the state dir and both tiers, as `state/…`, `pmem/…`
/// and `disk/…`, except lock files, pull reports, profiles and start counts
/// (learned per image, kept across `nvtier rm` like profiles), the node's
/// learned disk storing and network rates, the tiers' identity (their id files and the state's record of them), and the empty
/// directories of the layout. Descends at most 3 levels (a layer's files
/// are not listed one by one).
pub fn full_listing(bed: &Bed) -> Vec<String> {
    let mut out = Vec::new();
    for (tag, root) in [
        ("state", &bed.state),
        ("pmem", &bed.pmem),
        ("disk", &bed.disk),
    ] {
        walk(root, tag, 0, &mut out);
    }
    out.retain(|p| {
        !(p.starts_with("state/locks/")
            || p.starts_with("state/pulls/")
            || p.starts_with("state/profiles/")
            || p.starts_with("state/usage/")
            || p.starts_with("state/tiers/")
            || p == "state/last-migration"
            || p == "state/disk-store-rate.json"
            || p == "state/link-rates.json"
            || p == "pmem/.nvtier-tier.json"
            || p == "disk/.nvtier-tier.json"
            || p.starts_with("pmem/lost+found")
            || p.starts_with("disk/lost+found"))
    });
    out
}

fn walk(dir: &Path, rel: &str, depth: usize, out: &mut Vec<String>) {
    let mut es: Vec<_> = fs::read_dir(dir).into_iter().flatten().flatten().collect();
    es.sort_by_key(|e| e.file_name());
    for e in es {
        let r = format!("{rel}/{}", e.file_name().to_string_lossy());
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && depth < 2 {
            let before = out.len();
            walk(&e.path(), &r, depth + 1, out);
            // Layout directories (snapshots/, layers/, …) count only when
            // something is in them; deeper ones always count.
            if out.len() == before && depth >= 1 {
                out.push(format!("{r}/"));
            }
        } else {
            out.push(if is_dir { format!("{r}/") } else { r });
        }
    }
}

/// Panics unless [`full_listing`] is empty within `secs`: nothing at all
/// is left.
pub fn assert_all_freed(bed: &Bed, when: &str, secs: u64) {
    let t = std::time::Instant::now();
    let mut left = full_listing(bed);
    while !left.is_empty() && t.elapsed() < std::time::Duration::from_secs(secs) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        left = full_listing(bed);
    }
    assert!(
        left.is_empty(),
        "{when}: left in the state dir and tiers:\n{}",
        left.join("\n")
    );
}

/// The regular files of image `tag` (as built in the OCI dir) and their
/// sha256, from `umoci unpack`: path (absolute, in the container) → hex.
pub fn image_hashes(tag: &str) -> BTreeMap<String, String> {
    let root = reference_rootfs(tag);
    let mut m = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e.path().strip_prefix(&root).expect("prefix").to_path_buf();
                let data = fs::read(e.path()).expect("read");
                m.insert(
                    format!("/{}", rel.display()),
                    hex::encode(Sha256::digest(&data)),
                );
            }
        }
    }
    assert!(m.len() > 3, "suspiciously few files in {tag}: {m:?}");
    m
}

/// The `sha256sum FILES` command line for [`image_hashes`]' files
/// (skipping fifos and devices, which it does not list).
pub fn sha256sum_cmd(want: &BTreeMap<String, String>) -> Vec<String> {
    let mut v = vec!["sha256sum".to_string()];
    v.extend(want.keys().cloned());
    v
}

/// Compare `sha256sum` output with the image's hashes; panics naming the
/// differences.
pub fn assert_hashes(out: &str, want: &BTreeMap<String, String>, what: &str) {
    let got: BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| {
            let (h, p) = l.split_once("  ")?;
            Some((p.to_string(), h.to_string()))
        })
        .collect();
    assert_eq!(&got, want, "{what}: file hashes differ from the image");
}

/// Overlay mounts under any of `dirs` in /proc/self/mountinfo.
pub fn mounts_under(dirs: &[&Path]) -> Vec<String> {
    let t = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    t.lines()
        .filter(|l| {
            let mp = l.split(' ').nth(4).unwrap_or("");
            dirs.iter().any(|d| {
                let d = d.to_string_lossy();
                mp.starts_with(d.as_ref()) || l.contains(d.as_ref())
            })
        })
        .map(str::to_string)
        .collect()
}

/// The pids of `pid`'s children named `comm`.
pub fn children_named(pid: u32, comm: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let name = head.split_once(" (").map(|x| x.1).unwrap_or("");
        let ppid = tail.split(' ').nth(1).and_then(|x| x.parse::<u32>().ok());
        if name == comm && ppid == Some(pid) {
            v.push(p);
        }
    }
    v
}

pub fn pid_alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}
