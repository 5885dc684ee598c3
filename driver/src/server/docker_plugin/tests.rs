use super::diff::{changes, changes_size, write_layer_tar, Change, ChangeKind};
use super::graph::{choose_tier, validate_id, validate_parent, Placement, BACK_TO_BACK};
use super::*;
use crate::extract::{extract_layer, Expect};
use crate::fsutil::xattr::get as lgetxattr;
use crate::testutil::require_root;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// A tar with full header control.
struct T {
    b: tar::Builder<Vec<u8>>,
}

impl T {
    fn new() -> T {
        T {
            b: tar::Builder::new(Vec::new()),
        }
    }
    fn entry(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid + 1);
        h.set_mtime(1_600_000_000 + data.len() as u64);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => self.b.append_link(&mut h, name, l).expect("link"),
            None => self.b.append_data(&mut h, name, data).expect("append"),
        }
        self
    }
    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Directory, 0o750, 0, None, b"")
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, 0o640, 1000, None, data)
    }
    fn done(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

fn extract_to(tar: &[u8], dest: &Path) {
    std::fs::create_dir_all(dest).expect("mkdir");
    extract_layer(tar, dest, &Expect::default(), &mut |_| Ok(())).expect("extract");
}

/// Everything about a tree that a layer tar can carry.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("prefix").display().to_string();
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let ft = md.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                format!(
                    "dir opaque={:?}",
                    lgetxattr(&p, "trusted.overlay.opaque").expect("xattr")
                )
            } else if ft.is_symlink() {
                format!(
                    "link {}",
                    std::fs::read_link(&p).expect("readlink").display()
                )
            } else if ft.is_file() {
                let data = std::fs::read(&p).expect("read");
                format!(
                    "file {} {} nlink {}",
                    data.len(),
                    hex::encode(Sha256::digest(&data)),
                    md.nlink()
                )
            } else if ft.is_char_device() {
                format!("chr {}", md.rdev())
            } else if ft.is_fifo() {
                "fifo".into()
            } else {
                "other".into()
            };
            // Whiteouts carry no mtime in a layer tar (extraction stamps "now").
            let whiteout = ft.is_char_device() && md.rdev() == 0;
            let mtime = if ft.is_symlink() || whiteout {
                0
            } else {
                md.mtime()
            };
            let ux = lgetxattr(&p, "user.k").ok().flatten();
            m.insert(
                rel,
                format!(
                    "{what} mode {:o} {}:{} mtime {mtime} user.k={ux:?}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            );
        }
    }
    m
}

#[test]
fn layer_ids_are_validated() {
    for ok in [
        "a".repeat(64),
        format!("{}-init", "0".repeat(64)),
        "x".into(),
        "Ab_9-z".into(),
        "z".repeat(128),
    ] {
        assert!(validate_id(&ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/abs",
        "-x",
        "_x",
        "a b",
        "a\0b",
        "sha256:abc",
        "a.b",
        "ä",
        "a\n",
    ] {
        assert!(validate_id(bad).is_err(), "{bad:?}");
    }
    assert!(validate_id(&"z".repeat(129)).is_err());
    assert_eq!(validate_parent("").expect("empty parent"), None);
    assert!(validate_parent("../p").is_err());
}

#[test]
fn apply_diff_query_is_parsed_strictly() {
    assert_eq!(
        apply_params("id=abc&parent=def").expect("ok"),
        ("abc".into(), "def".into())
    );
    assert_eq!(
        apply_params("parent=&id=abc").expect("ok"),
        ("abc".into(), "".into())
    );
    assert!(apply_params("parent=x").is_err());
    assert!(apply_params("id=a&id=b").is_err());
}

#[test]
fn tier_rule_is_back_to_back() {
    let now = Instant::now();
    assert_eq!(choose_tier(None, now), Placement::Gated);
    assert_eq!(choose_tier(Some(now), now), Placement::BackToBack);
    let late = now + BACK_TO_BACK + Duration::from_millis(1);
    assert_eq!(choose_tier(Some(now), late), Placement::Gated);
}

#[test]
fn diff_converts_whiteouts_and_opaque_dirs_back_to_oci() {
    require_root("whiteouts and trusted xattrs");
    let d = tempfile::tempdir().expect("tmp");
    let mut t = T::new();
    t.dir("etc")
        .file("etc/.wh.gone", b"")
        .dir("opt")
        .dir("opt/o")
        .file("opt/o/.wh..wh..opq", b"")
        .file("opt/o/kept", b"k");
    extract_to(&t.done(), d.path());
    let out = write_layer_tar(d.path(), Vec::new()).expect("diff");
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(&out[..]);
    for e in ar.entries().expect("entries") {
        let e = e.expect("entry");
        names.push((
            e.path().expect("path").display().to_string(),
            e.header().entry_type(),
            e.header().mode().expect("mode"),
        ));
    }
    let just: Vec<&str> = names.iter().map(|n| n.0.as_str()).collect();
    assert_eq!(
        just,
        [
            "etc",
            "etc/.wh.gone",
            "opt",
            "opt/o",
            "opt/o/.wh..wh..opq",
            "opt/o/kept"
        ]
    );
    assert_eq!(names[1].1, tar::EntryType::Regular);
    assert_eq!(names[1].2, 0o600);
    assert_eq!(names[4].1, tar::EntryType::Regular);
    // No overlay-internal xattrs leak into the tar.
    assert!(!out
        .windows(b"trusted.overlay".len())
        .any(|w| w == b"trusted.overlay"));
}

#[test]
fn apply_diff_of_diff_reproduces_the_layer_exactly() {
    require_root("owners, whiteouts and trusted xattrs");
    let long = format!("deep/{}/{}", "d".repeat(90), "f".repeat(80));
    let mut t = T::new();
    t.dir("bin")
        .file("bin/tool", b"#!/bin/sh\necho hi\n")
        .entry("bin/suid", tar::EntryType::Regular, 0o4755, 0, None, b"s")
        .entry(
            "bin/sh",
            tar::EntryType::Symlink,
            0o777,
            0,
            Some("tool"),
            b"",
        )
        .entry(
            "bin/hard",
            tar::EntryType::Link,
            0o640,
            1000,
            Some("bin/tool"),
            b"",
        )
        .entry(
            "bin/longlink",
            tar::EntryType::Symlink,
            0o777,
            0,
            Some(&"t".repeat(150)),
            b"",
        )
        .dir("deep")
        .dir(&format!("deep/{}", "d".repeat(90)))
        .file(&long, b"long name")
        .entry("fifo", tar::EntryType::Fifo, 0o600, 5, None, b"")
        .dir("etc")
        .file("etc/.wh.removed", b"")
        .dir("opq")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/only", &[7u8; 10_000])
        .entry("emptydir", tar::EntryType::Directory, 0o1777, 3, None, b"");
    let mut b = t.b;
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"value"[..])])
        .expect("pax");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "xattr-file", &b"x"[..])
        .expect("xattr file");
    let original = b.into_inner().expect("tar");

    let d = tempfile::tempdir().expect("tmp");
    let x = d.path().join("x");
    extract_to(&original, &x);
    let t1 = write_layer_tar(&x, Vec::new()).expect("diff x");
    let y = d.path().join("y");
    extract_to(&t1, &y);
    let tx = tree(&x);
    assert!(tx.len() >= 15, "{tx:#?}");
    assert_eq!(tx, tree(&y), "ApplyDiff(Diff(x)) differs from x");
    // And the diff itself is deterministic, byte for byte.
    let t2 = write_layer_tar(&y, Vec::new()).expect("diff y");
    assert!(t1 == t2, "Diff is not reproducible");
    // Hardlinks come out as links, not copies.
    assert!(tx["bin/hard"].contains("nlink 2"), "{}", tx["bin/hard"]);
}

#[test]
fn changes_against_the_parent_chain() {
    require_root("whiteouts and trusted xattrs");
    let d = tempfile::tempdir().expect("tmp");
    let (l1, l2, up) = (
        d.path().join("l1"),
        d.path().join("l2"),
        d.path().join("up"),
    );
    let mut t = T::new();
    t.dir("a")
        .file("a/1", b"1")
        .file("a/2", b"2")
        .dir("b")
        .file("b/x", b"x")
        .file("c", b"c")
        .file("gone-below", b"g");
    extract_to(&t.done(), &l1);
    // l2 deletes gone-below and adds b/w.
    let mut t = T::new();
    t.file(".wh.gone-below", b"").dir("b").file("b/w", b"w");
    extract_to(&t.done(), &l2);
    let mut t = T::new();
    t.dir("a")
        .file("a/.wh.1", b"")
        .file("a/3", b"three")
        .dir("b")
        .file("b/.wh..wh..opq", b"")
        .file("b/y", b"yy")
        .file("c", b"changed")
        .file(".wh.gone-below", b"") // already deleted below: no change
        .file(".wh.never", b""); // never existed: no change
    extract_to(&t.done(), &up);
    let lowers = vec![l2.clone(), l1.clone()];
    let ch = changes(&up, &lowers).expect("changes");
    let got: Vec<(String, u8)> = ch.iter().map(|c| (c.path.clone(), c.kind.into())).collect();
    let want: Vec<(String, u8)> = [
        ("/a", 0),
        ("/a/1", 2),
        ("/a/3", 1),
        ("/b", 0),
        ("/b/w", 2),
        ("/b/x", 2),
        ("/b/y", 1),
        ("/c", 0),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), *k))
    .collect();
    assert_eq!(got, want);
    assert_eq!(changes_size(&up, &ch), 5 + 2 + 7);
    // Docker's JSON shape.
    let j = serde_json::to_string(&Change {
        path: "/a".into(),
        kind: ChangeKind::Delete,
    })
    .expect("json");
    assert_eq!(j, r#"{"Path":"/a","Kind":2}"#);
    // A layer without parents: everything is added.
    let all = changes(&l1, &[]).expect("changes");
    assert!(all.iter().all(|c| c.kind == ChangeKind::Add));
    assert_eq!(all.len(), 7);
}

fn temp_graph(budget: &str) -> (tempfile::TempDir, graph::Graph) {
    let (d, store) = crate::testutil::temp_store(budget);
    let g = graph::Graph::new(store).expect("graph");
    (d, g)
}

#[test]
fn graph_lifecycle_without_mounts() {
    require_root("extraction with owners");
    let (_d, g) = temp_graph("64M");
    let id = "a".repeat(64);
    g.create(&id, "", false).expect("create");
    assert!(g.create(&id, "", false).is_err(), "duplicate create");
    assert!(g.create("b", "nope", false).is_err(), "missing parent");
    assert!(g.exists(&id).expect("exists"));
    let mut t = T::new();
    t.dir("etc").file("etc/f", b"hello");
    let tar = t.done();
    // Wrong parent is refused before the body is read.
    assert!(g.apply_diff(&id, "zzz", &mut &tar[..]).is_err());
    let size = g.apply_diff(&id, "", &mut &tar[..]).expect("apply");
    assert_eq!(size, 5);
    assert!(
        g.apply_diff(&id, "", &mut &tar[..]).is_err(),
        "second ApplyDiff"
    );
    let rec = g.load(&id).expect("load").expect("record");
    let chain = rec.chain_id.clone().expect("chain");
    // No parent: the chainID is the diffID of the tar Docker sent.
    assert_eq!(
        chain,
        format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
    );
    // Chain bottoms are gated: disk.
    let meta = g.store.layer(&chain).expect("meta").expect("stored");
    assert_eq!(meta.tier, crate::tier::TierKind::Disk);
    // The store counts the graph layer as a reference; gc keeps it.
    assert_eq!(g.store.refcounts().expect("refs").get(&chain), Some(&1));
    assert!(g.store.gc().expect("gc").removed.is_empty());
    // Get of a parentless layer is its own directory; counted.
    let p = g.get(&id).expect("get");
    assert_eq!(std::fs::read(p.join("etc/f")).expect("read"), b"hello");
    g.get(&id).expect("get again");
    assert_eq!(g.load(&id).expect("load").expect("rec").mount_count, 2);
    g.put(&id).expect("put");
    g.put(&id).expect("put");
    assert_eq!(g.load(&id).expect("load").expect("rec").mount_count, 0);
    // A child applied right after its parent goes to pmem.
    let child = "c".repeat(64);
    g.create(&child, &id, false).expect("create child");
    let mut t = T::new();
    t.dir("etc").file("etc/.wh.f", b"").file("etc/g", b"g");
    let size = g
        .apply_diff(&child, &id, &mut &t.done()[..])
        .expect("apply child");
    assert_eq!(size, 1);
    let crec = g.load(&child).expect("load").expect("child");
    let cmeta = g
        .store
        .layer(crec.chain_id.as_deref().expect("chain"))
        .expect("meta")
        .expect("stored");
    assert_eq!(cmeta.tier, crate::tier::TierKind::Pmem, "{crec:?}");
    assert_eq!(cmeta.parent.as_deref(), Some(chain.as_str()));
    let ch = g.changes(&child, &id).expect("changes");
    let got: Vec<(String, u8)> = ch.iter().map(|c| (c.path.clone(), c.kind.into())).collect();
    assert_eq!(
        got,
        [
            ("/etc".into(), 0),
            ("/etc/f".into(), 2),
            ("/etc/g".into(), 1)
        ]
    );
    assert!(g.changes(&child, "").is_err(), "not its parent");
    // Remove frees the store layers once nothing references them.
    g.remove(&child).expect("remove child");
    g.remove(&id).expect("remove");
    g.remove(&id).expect("remove is idempotent");
    assert!(g.store.layers().expect("layers").is_empty());
    assert!(g.list().expect("list").is_empty());
}

#[test]
fn graph_budget_exhaustion_spools_and_stores_on_disk() {
    require_root("extraction with owners and overlay xattrs");
    let (d, g) = temp_graph("16K");
    let (p, c) = ("p".repeat(64), "q".repeat(64));
    g.create(&p, "", false).expect("create");
    let mut t = T::new();
    t.file("small", b"s");
    g.apply_diff(&p, "", &mut &t.done()[..]).expect("apply");
    g.create(&c, &p, false).expect("create child");
    let big = vec![9u8; 100_000];
    let mut t = T::new();
    t.file("big", &big);
    g.apply_diff(&c, &p, &mut &t.done()[..]).expect("apply big");
    let rec = g.load(&c).expect("load").expect("rec");
    let meta = g
        .store
        .layer(rec.chain_id.as_deref().expect("chain"))
        .expect("meta")
        .expect("stored");
    assert_eq!(meta.tier, crate::tier::TierKind::Disk);
    assert!(rec.placement.expect("why").contains("budget"));
    let dir = g
        .data_dir(&g.load(&c).expect("l").expect("r"))
        .expect("dir");
    assert_eq!(std::fs::read(dir.join("big")).expect("read"), big);
    // Nothing left in spool, staging or reservations.
    for sub in [
        "state/graph/spool",
        "state/reservations",
        "pmem/staging",
        "disk/staging",
    ] {
        let n = std::fs::read_dir(d.path().join(sub)).expect("list").count();
        assert_eq!(n, 0, "{sub}");
    }
}

#[test]
fn graph_start_up_removes_orphans_but_keeps_records() {
    let (d, g) = temp_graph("1M");
    g.create("keep", "", true).expect("create");
    let orphan = d.path().join("disk/graph/orphan/diff");
    std::fs::create_dir_all(&orphan).expect("orphan");
    let spool = d.path().join("state/graph/spool/999999999.0000.tar");
    std::fs::write(&spool, b"x").expect("spool");
    let store = g.store.clone();
    drop(g);
    let g = graph::Graph::new(store).expect("reopen");
    assert!(!orphan.exists());
    assert!(!spool.exists());
    assert!(g.exists("keep").expect("exists"));
    assert!(d.path().join("disk/graph/keep/diff").is_dir());
}
