use super::*;
use crate::testutil::require_root;
use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A tar under construction, with raw-header control for hostile cases.
struct T {
    b: tar::Builder<Vec<u8>>,
}

impl T {
    fn new() -> T {
        T {
            b: tar::Builder::new(Vec::new()),
        }
    }
    fn raw(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let n = &mut h.as_old_mut().name;
            n.fill(0);
            n[..name.len()].copy_from_slice(name.as_bytes());
        }
        if let Some(l) = link {
            let n = &mut h.as_old_mut().linkname;
            n.fill(0);
            n[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(4321);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).expect("append");
    }
    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Directory, 0o750, None, b"");
        self
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, tar::EntryType::Regular, 0o640, None, data);
        self
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Symlink, 0o777, Some(target), b"");
        self
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Link, 0o640, Some(target), b"");
        self
    }
    fn done(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn extract(tar: &[u8]) -> (tempfile::TempDir, Result<ExtractStats>) {
    let d = tempfile::tempdir().expect("tempdir");
    let r = extract_layer(tar, d.path(), &Expect::default(), &mut |_| Ok(()));
    (d, r)
}

fn ok(tar: &[u8]) -> (tempfile::TempDir, ExtractStats) {
    let (d, r) = extract(tar);
    match r {
        Ok(s) => (d, s),
        Err(e) => panic!("extraction failed: {e}"),
    }
}

fn hostile(tar: &[u8], needle: &str) {
    let (_d, r) = extract(tar);
    match r {
        Ok(_) => panic!("hostile tar accepted (expected error containing {needle:?})"),
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains(needle),
                "error {s:?} does not mention {needle:?}"
            );
        }
    }
}

#[test]
fn regular_files_dirs_modes_owners_mtimes() {
    require_root("file owners");
    let mut t = T::new();
    t.dir("etc/")
        .file("etc/hello", b"hello\n")
        .file("etc/empty", b"");
    let (d, s) = ok(&t.done());
    let m = fs::symlink_metadata(d.path().join("etc/hello")).expect("stat");
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!((m.uid(), m.gid()), (1234, 4321));
    let dm = fs::symlink_metadata(d.path().join("etc")).expect("stat dir");
    assert_eq!(dm.mode() & 0o7777, 0o750);
    assert_eq!(
        dm.mtime(),
        1_600_000_000,
        "dir mtime restored after children"
    );
    assert_eq!(
        fs::read(d.path().join("etc/hello")).expect("read"),
        b"hello\n"
    );
    assert_eq!(
        fs::metadata(d.path().join("etc/empty"))
            .expect("stat")
            .len(),
        0
    );
    assert_eq!(s.file_bytes, 6);
    assert_eq!(s.charged_bytes, 4096);
    assert_eq!(s.entries, 3);
}

#[test]
fn digests_are_computed_and_verified() {
    let mut t = T::new();
    t.file("a", b"x");
    let tar = t.done();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gz");
    let gz = gz.finish().expect("gz finish");
    let d = tempfile::tempdir().expect("tempdir");
    let s = extract_layer(
        &gz[..],
        d.path(),
        &Expect {
            blob_digest: Some(&sha(&gz)),
            diff_id: Some(&sha(&tar)),
        },
        &mut |_| Ok(()),
    )
    .expect("gzip layer");
    assert_eq!(s.diff_id, sha(&tar));
    assert_eq!(s.blob_digest, Some(sha(&gz)));
    assert_eq!(s.compressed_bytes, gz.len() as u64);
    assert_eq!(s.uncompressed_bytes, tar.len() as u64);

    let d = tempfile::tempdir().expect("tempdir");
    let e = extract_layer(
        &gz[..],
        d.path(),
        &Expect {
            blob_digest: None,
            diff_id: Some(&sha(b"other")),
        },
        &mut |_| Ok(()),
    )
    .expect_err("wrong diffID must fail");
    assert!(matches!(e, Error::Digest { .. }), "{e}");
}

#[test]
fn zstd_and_plain() {
    let mut t = T::new();
    t.file("z", b"zstd data");
    let tar = t.done();
    let z = zstd::encode_all(&tar[..], 3).expect("zstd");
    let d = tempfile::tempdir().expect("tempdir");
    let s = extract_layer(&z[..], d.path(), &Expect::default(), &mut |_| Ok(())).expect("zstd");
    assert_eq!(s.diff_id, sha(&tar));
    assert_eq!(fs::read(d.path().join("z")).expect("read"), b"zstd data");
    let (d, _) = ok(&tar);
    assert_eq!(fs::read(d.path().join("z")).expect("read"), b"zstd data");
}

#[test]
fn whiteouts_and_opaque_dirs() {
    require_root("whiteouts: mknod and trusted xattrs");
    let mut t = T::new();
    t.dir("etc/")
        .file("etc/.wh.removed", b"")
        .dir("opt/")
        .dir("opt/fresh/")
        .file("opt/fresh/.wh..wh..opq", b"")
        .file("opt/fresh/new", b"n")
        .file("deep/nested/.wh.gone", b"");
    let (d, _) = ok(&t.done());
    let w = fs::symlink_metadata(d.path().join("etc/removed")).expect("whiteout");
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
    assert_eq!(w.mtime(), 1_600_000_000, "the .wh. entry's mtime");
    assert!(!d.path().join("etc/.wh.removed").exists());
    assert_eq!(
        lgetxattr(&d.path().join("opt/fresh"), OVERLAY_OPAQUE_XATTR).expect("getxattr"),
        Some(b"y".to_vec())
    );
    assert!(!d.path().join("opt/fresh/.wh..wh..opq").exists());
    assert_eq!(
        lgetxattr(&d.path().join("opt"), OVERLAY_OPAQUE_XATTR).expect("getxattr"),
        None
    );
    assert!(fs::symlink_metadata(d.path().join("deep/nested/gone"))
        .expect("nested whiteout")
        .file_type()
        .is_char_device());
}

#[test]
fn symlinks_and_hardlinks() {
    let mut t = T::new();
    t.dir("bin/")
        .file("bin/busybox", b"\x7fELF")
        .hardlink("bin/sh", "bin/busybox")
        .symlink("bin/ls", "busybox")
        .symlink("abs", "/etc/passwd")
        .symlink("up", "../../../../etc");
    let (d, _) = ok(&t.done());
    let a = fs::metadata(d.path().join("bin/busybox")).expect("stat");
    let b = fs::metadata(d.path().join("bin/sh")).expect("stat");
    assert_eq!(a.ino(), b.ino(), "hardlink shares the inode");
    assert_eq!(a.nlink(), 2);
    assert_eq!(
        fs::read_link(d.path().join("bin/ls")).expect("readlink"),
        Path::new("busybox")
    );
    // Symlinks pointing anywhere are fine as symlinks: they are only
    // resolved inside the container's root.
    assert_eq!(
        fs::read_link(d.path().join("abs")).expect("readlink"),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::symlink_metadata(d.path().join("up"))
            .expect("lstat")
            .mtime(),
        1_600_000_000
    );
}

#[test]
fn xattrs_are_preserved_and_overlay_xattrs_dropped() {
    require_root("trusted xattrs");
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.test", &b"v1"[..]),
        ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc/shadow"[..]),
    ])
    .expect("pax");
    let mut h = tar::Header::new_gnu();
    h.set_path("f").expect("path");
    h.set_size(1);
    h.set_mode(0o755);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, &b"x"[..]).expect("append");
    let (d, _) = ok(&b.into_inner().expect("tar"));
    let f = d.path().join("f");
    assert_eq!(
        lgetxattr(&f, "user.test").expect("get"),
        Some(b"v1".to_vec())
    );
    assert!(lgetxattr(&f, "security.capability").expect("get").is_some());
    assert_eq!(
        lgetxattr(&f, "trusted.overlay.redirect").expect("get"),
        None
    );
}

#[test]
fn device_nodes_and_fifos() {
    require_root("device nodes");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("dev/null").expect("path");
    h.set_entry_type(tar::EntryType::Char);
    h.set_device_major(1).expect("major");
    h.set_device_minor(3).expect("minor");
    h.set_mode(0o666);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, io::empty()).expect("append");
    let mut h = tar::Header::new_gnu();
    h.set_path("run/fifo").expect("path");
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_mode(0o600);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, io::empty()).expect("append");
    let (d, _) = ok(&b.into_inner().expect("tar"));
    let m = fs::symlink_metadata(d.path().join("dev/null")).expect("stat");
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), libc::makedev(1, 3));
    assert_eq!(m.mode() & 0o7777, 0o666);
    assert!(fs::symlink_metadata(d.path().join("run/fifo"))
        .expect("stat")
        .file_type()
        .is_fifo());
}

#[test]
fn later_entries_replace_earlier_ones() {
    let mut t = T::new();
    t.file("a", b"old")
        .file("a", b"new")
        .dir("d/")
        .file("d/x", b"")
        .file("d", b"now a file");
    let (d, _) = ok(&t.done());
    assert_eq!(fs::read(d.path().join("a")).expect("read"), b"new");
    assert_eq!(fs::read(d.path().join("d")).expect("read"), b"now a file");
}

#[test]
fn budget_is_enforced_per_file() {
    let mut t = T::new();
    t.file("a", &[1u8; 5000]).file("b", &[2u8; 5000]);
    let tar = t.done();
    let d = tempfile::tempdir().expect("tempdir");
    let mut left: u64 = 8192;
    let r = extract_layer(&tar[..], d.path(), &Expect::default(), &mut |n| {
        if n > left {
            Err(Error::BudgetExhausted(format!("{n} > {left}")))
        } else {
            left -= n;
            Ok(())
        }
    });
    assert!(matches!(r, Err(Error::BudgetExhausted(_))), "{r:?}");
    assert!(
        !d.path().join("b").exists(),
        "nothing written past the budget"
    );
}

#[test]
fn hostile_absolute_path() {
    let mut t = T::new();
    t.file("/etc/evil", b"x");
    hostile(&t.done(), "absolute path");
}

#[test]
fn hostile_dotdot_path() {
    let mut t = T::new();
    t.file("a/../../evil", b"x");
    hostile(&t.done(), "..");
}

#[test]
fn hostile_write_through_symlink() {
    let mut t = T::new();
    t.symlink("escape", "/tmp").file("escape/evil", b"x");
    hostile(&t.done(), "through the symlink");
    let mut t = T::new();
    t.symlink("rel", "../../..").file("rel/evil", b"x");
    hostile(&t.done(), "through the symlink");
}

#[test]
fn hostile_hardlink_outside() {
    let mut t = T::new();
    t.hardlink("passwd", "/etc/passwd");
    hostile(&t.done(), "absolute path");
    let mut t = T::new();
    t.hardlink("passwd", "../../etc/passwd");
    hostile(&t.done(), "..");
    let mut t = T::new();
    t.hardlink("passwd", "etc/passwd");
    hostile(&t.done(), "not in this layer");
    // Through a symlink that leaves the layer.
    let mut t = T::new();
    t.symlink("l", "/etc").hardlink("passwd", "l/passwd");
    hostile(&t.done(), "through the symlink");
}

#[test]
fn hostile_truncated_and_garbage() {
    let mut t = T::new();
    t.file("big", &[7u8; 100_000]);
    let tar = t.done();
    // Truncated inside the file data.
    let (_d, r) = extract(&tar[..50_000]);
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
    // Truncated gzip.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gz");
    let gz = gz.finish().expect("gz");
    let (_d, r) = extract(&gz[..gz.len() / 2]);
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
    // Garbage.
    let (_d, r) = extract(&[0x5au8; 4096]);
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
    let (_d, r) = extract(b"");
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
    // Truncated at an entry boundary: only the diffID can tell.
    let mut t = T::new();
    t.file("a", b"1").file("b", b"2");
    let full = t.done();
    let cut = &full[..1024];
    let d = tempfile::tempdir().expect("tempdir");
    let r = extract_layer(
        cut,
        d.path(),
        &Expect {
            blob_digest: None,
            diff_id: Some(&sha(&full)),
        },
        &mut |_| Ok(()),
    );
    assert!(matches!(r, Err(Error::Digest { .. })), "{r:?}");
}

#[test]
fn safe_paths() {
    assert_eq!(
        safe_rel_path(Path::new("./a/b")).expect("ok"),
        Some(PathBuf::from("a/b"))
    );
    assert_eq!(safe_rel_path(Path::new("./")).expect("ok"), None);
    assert!(safe_rel_path(Path::new("/a")).is_err());
    assert!(safe_rel_path(Path::new("a/../b")).is_err());
}

#[test]
fn hostile_whiteout_of_dot_or_dotdot() {
    require_root("whiteouts");
    // `.wh..` and `.wh...` name `.` and `..`: replacing them must never
    // remove the layer directory or its parent.
    for (name, leaf) in [
        (".wh...", ".."),
        (".wh..", "."),
        ("a/.wh..", "."),
        ("a/.wh...", ".."),
    ] {
        let d = tempfile::tempdir().expect("tempdir");
        let dest = d.path().join("dest");
        let sentinel = d.path().join("sentinel");
        fs::create_dir(&dest).expect("mkdir");
        fs::create_dir(&sentinel).expect("mkdir");
        fs::write(sentinel.join("f"), b"keep").expect("write");
        let mut t = T::new();
        t.dir("a/").file("a/kept", b"k").file(name, b"");
        let r = extract_layer(&t.done()[..], &dest, &Expect::default(), &mut |_| Ok(()));
        assert_eq!(
            fs::read(sentinel.join("f")).expect("sentinel survives"),
            b"keep",
            "{name}"
        );
        assert!(dest.join("a/kept").is_file(), "{name}: layer emptied");
        let e = r.expect_err(name);
        assert!(e.to_string().contains(leaf), "{name}: {e}");
        assert!(matches!(e, Error::Hostile(_)), "{name}: {e}");
    }
}

#[test]
fn directory_times_skip_replaced_directories() {
    // A directory replaced by a later entry: its recorded mtime must not
    // land on the replacement, and its removed subdirectories must not
    // fail the extraction.
    let mut t = T::new();
    t.dir("a/").dir("a/b/").dir("w/");
    t.raw("a", tar::EntryType::Regular, 0o644, None, b"file now");
    let mut h = tar::Header::new_gnu();
    h.set_path("w").expect("path");
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_link_name("target").expect("link");
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h.set_cksum();
    t.b.append(&h, io::empty()).expect("append");
    let (d, _) = ok(&t.done());
    assert_eq!(fs::read(d.path().join("a")).expect("read"), b"file now");
    let m = fs::symlink_metadata(d.path().join("w")).expect("lstat");
    assert!(m.file_type().is_symlink());
    assert_eq!(m.mtime(), 1_700_000_000, "the symlink's own mtime");
}

#[test]
fn corrupt_gzip_inside_file_data_is_a_corrupt_stream() {
    // A flipped byte in the deflate data: flate2 reports the checksum
    // mismatch as InvalidInput while the file's data is copied. That is the
    // stream's fault, not a failed write on the tier.
    let mut t = T::new();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    t.file("f", &data);
    let tar = t.done();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gz");
    let gz = gz.finish().expect("gz");
    let mut seen = 0;
    for i in (20..gz.len() - 8).step_by(97) {
        let mut bad = gz.clone();
        bad[i] ^= 0x40;
        let (_d, r) = extract(&bad);
        match r {
            Err(Error::Corrupt(_)) => seen += 1,
            Err(Error::Hostile(_)) | Err(Error::Digest { .. }) | Ok(_) => {}
            Err(e) => panic!("byte {i}: {e:?}"),
        }
    }
    assert!(seen > 0);
}

#[test]
fn huge_pax_sizes_are_corrupt_not_a_panic() {
    for size in [
        "18446744073709551615",
        "18446744073709547521",
        "9223372036854775808",
    ] {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", size.as_bytes())])
            .expect("pax");
        let mut h = tar::Header::new_gnu();
        h.set_path("f").expect("path");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(3);
        h.set_cksum();
        b.append(&h, &b"abc"[..]).expect("append");
        let tar = b.into_inner().expect("tar");
        let d = tempfile::tempdir().expect("tempdir");
        let mut charged = Vec::new();
        let r = extract_layer(&tar[..], d.path(), &Expect::default(), &mut |n| {
            charged.push(n);
            Ok(())
        });
        assert!(matches!(r, Err(Error::Corrupt(_))), "{size}: {r:?}");
        assert!(
            charged.iter().all(|&n| n >= 3),
            "{size}: charged {charged:?}"
        );
    }
}

#[test]
fn hostile_nul_in_pax_names() {
    // A PAX `path` or `linkpath` can hold a NUL byte, which no path can.
    for (key, kind) in [
        ("path", tar::EntryType::Directory),
        ("linkpath", tar::EntryType::Symlink),
        ("linkpath", tar::EntryType::Link),
    ] {
        let (_d, r) = extract(&pax_link_tar(key, b"a\0b", "x", kind, 0o755));
        assert!(matches!(r, Err(Error::Hostile(_))), "{key} {kind:?}: {r:?}");
    }
}

/// A tar of one empty entry `path` of `kind` (link target "t") after a PAX
/// header setting `key` to `value`.
fn pax_link_tar(key: &str, value: &[u8], path: &str, kind: tar::EntryType, mode: u32) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([(key, value)]).expect("pax");
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_entry_type(kind);
    h.set_link_name("t").expect("link");
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, io::empty()).expect("append");
    b.into_inner().expect("tar")
}

#[test]
fn symlink_with_an_empty_pax_target_is_corrupt() {
    let tar = pax_link_tar("linkpath", b"", "a", tar::EntryType::Symlink, 0o777);
    let (_d, r) = extract(&tar);
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
}
