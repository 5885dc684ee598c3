//! Property tests of layer extraction: generated hostile tars, valid
//! layers against a model, and truncated or corrupted streams.

use super::*;
use crate::testutil::{prop_check, require_root};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use tar::EntryType;

/// Replaced by the sentinel directory's absolute path in generated names
/// and link targets.
const SENT: &[u8] = b"@S";

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn subst(b: &[u8], sentinel: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(SENT) {
            out.extend_from_slice(sentinel);
            i += SENT.len();
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

// ---- the hostile generator ----

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// Any other type byte (GNU sparse, volume labels, garbage).
    Other(u8),
}

#[derive(Debug, Clone)]
enum Size {
    Exact,
    /// Octal size far beyond the data that follows.
    Huge,
    /// Raw bytes in the 12-byte size field (base-256, negative, junk).
    Raw([u8; 12]),
}

#[derive(Debug, Clone)]
enum Pax {
    Kv(Vec<u8>, Vec<u8>),
    /// Bytes that are not a PAX record.
    Junk(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Entry {
    name: Vec<u8>,
    kind: Kind,
    mode: u32,
    mtime: u64,
    size: Size,
    pax: Vec<Pax>,
    /// Name through a GNU long-name entry (also for short names).
    long_name: bool,
}

#[derive(Debug, Clone, Copy)]
enum Compression {
    Plain,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(Index),
    Flip(Index, u8),
}

fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => select(vec!["a", "b", "s", "f", "d"]).prop_map(|s| s.as_bytes().to_vec()),
        4 => select(vec![
            "..", ".", "", ".wh.a", ".wh.s", ".wh.f", ".wh..", ".wh...", ".wh.",
            ".wh..wh..opq", ".wh..wh.plnk", ".wh..wh.aufs", "sentinel", "\\",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => select(vec![100usize, 101, 155, 255, 256, 300])
            .prop_map(|n| vec![b'n'; n]),
        1 => prop::collection::vec(any::<u8>(), 1..6)
            .prop_map(|mut v| { v.retain(|&b| b != b'/' && b != 0); if v.is_empty() { v.push(0xff) } v }),
    ]
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    (
        select(vec!["", "", "", "./", "/", "@S/", "../", "@S"]),
        prop::collection::vec(component(), 1..4),
        any::<bool>(),
    )
        .prop_map(|(pre, comps, slash)| {
            let mut p = pre.as_bytes().to_vec();
            p.extend(comps.join(&b'/'));
            if slash {
                p.push(b'/');
            }
            p
        })
}

fn target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => path(),
        2 => select(vec![
            "/", "..", "../..", "../sentinel", "../sentinel/f", "@S", "@S/f", "@S/d",
            "/etc", "/etc/passwd", "a", "a/f", "f", "s/f", ".",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

fn pax() -> impl Strategy<Value = Pax> {
    let key = prop_oneof![
        4 => select(vec![
            "path", "linkpath", "size", "mtime", "uid", "gid", "uname",
            "SCHILY.xattr.user.x", "SCHILY.xattr.trusted.overlay.opaque",
            "SCHILY.xattr.trusted.overlay.redirect", "SCHILY.xattr.security.capability",
            "SCHILY.xattr.", "SCHILY.xattr.bogus", "GNU.sparse.size", "GNU.sparse.map",
            "GNU.sparse.major", "GNU.sparse.name",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ];
    let value = prop_oneof![
        2 => path(),
        2 => select(vec![
            "18446744073709551615", "18446744073709551616", "-1", "0", "1",
            "99999999999999999999999999", "0x10", "1e9", "", "y", "1,2,3",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop_oneof![
        6 => (key, value).prop_map(|(k, v)| Pax::Kv(k, v)),
        1 => select(vec!["18446744073709551615", "18446744073709547521", "4294967296"])
            .prop_map(|v| Pax::Kv(b"size".to_vec(), v.as_bytes().to_vec())),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Pax::Junk),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Dir),
        4 => prop::collection::vec(any::<u8>(), 0..700).prop_map(Kind::File),
        3 => target().prop_map(Kind::Symlink),
        3 => target().prop_map(Kind::Hardlink),
        1 => (0u32..300, 0u32..300).prop_map(|(a, b)| Kind::Char(a, b)),
        1 => (0u32..300, 0u32..300).prop_map(|(a, b)| Kind::Block(a, b)),
        1 => Just(Kind::Fifo),
        1 => any::<u8>().prop_map(Kind::Other),
    ]
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        12 => Just(Size::Exact),
        1 => Just(Size::Huge),
        1 => any::<[u8; 12]>().prop_map(Size::Raw),
        1 => Just(Size::Raw([0xff; 12])),
        1 => Just(Size::Raw([0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        path(),
        kind(),
        prop_oneof![
            Just(0o644u32),
            Just(0o755),
            Just(0),
            Just(0o7777),
            any::<u32>()
        ],
        prop_oneof![Just(1_600_000_000u64), Just(0), any::<u64>()],
        size(),
        prop::collection::vec(pax(), 0..3),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(name, kind, mode, mtime, size, pax, long_name)| Entry {
            name,
            kind,
            mode,
            mtime,
            size,
            pax,
            long_name,
        })
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        4 => Just(Compression::Plain),
        2 => Just(Compression::Gzip),
        1 => Just(Compression::Zstd),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => Just(Damage::None),
        2 => any::<Index>().prop_map(Damage::Truncate),
        1 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
    ]
}

/// A tar written block by block, so that any name and header field can
/// be hostile (tar::Builder refuses `..` and absolute paths).
#[derive(Default)]
struct Raw {
    out: Vec<u8>,
}

impl Raw {
    fn block(&mut self, h: &tar::Header, data: &[u8]) {
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn special(&mut self, kind: EntryType, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        set_bytes(&mut h.as_old_mut().name, b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        self.block(&h, data);
    }

    fn pax(&mut self, recs: &[Pax]) {
        let mut data = Vec::new();
        for r in recs {
            match r {
                Pax::Junk(b) => data.extend_from_slice(b),
                Pax::Kv(k, v) => {
                    let body = k.len() + v.len() + 3; // ' ', '=', '\n'
                    let mut len = body + 1;
                    while body + len.to_string().len() != len {
                        len = body + len.to_string().len();
                    }
                    data.extend_from_slice(len.to_string().as_bytes());
                    data.push(b' ');
                    data.extend_from_slice(k);
                    data.push(b'=');
                    data.extend_from_slice(v);
                    data.push(b'\n');
                }
            }
        }
        let mut h = tar::Header::new_ustar();
        set_bytes(&mut h.as_old_mut().name, b"PaxHeaders/x");
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        self.block(&h, &data);
    }

    fn entry(&mut self, e: &Entry, sentinel: &[u8]) {
        if !e.pax.is_empty() {
            let recs: Vec<Pax> = e
                .pax
                .iter()
                .map(|p| match p {
                    Pax::Kv(k, v) => Pax::Kv(k.clone(), subst(v, sentinel)),
                    j => j.clone(),
                })
                .collect();
            self.pax(&recs);
        }
        let name = subst(&e.name, sentinel);
        let link = match &e.kind {
            Kind::Symlink(t) | Kind::Hardlink(t) => Some(subst(t, sentinel)),
            _ => None,
        };
        if e.long_name || name.len() > 100 {
            let mut n = name.clone();
            n.push(0);
            self.special(EntryType::GNULongName, &n);
        }
        if let Some(l) = link.as_ref().filter(|l| l.len() > 100) {
            let mut n = l.clone();
            n.push(0);
            self.special(EntryType::GNULongLink, &n);
        }
        let mut h = tar::Header::new_gnu();
        set_bytes(&mut h.as_old_mut().name, &name);
        if let Some(l) = &link {
            set_bytes(&mut h.as_old_mut().linkname, l);
        }
        let (ty, data): (EntryType, &[u8]) = match &e.kind {
            Kind::Dir => (EntryType::Directory, b""),
            Kind::File(d) => (EntryType::Regular, d),
            Kind::Symlink(_) => (EntryType::Symlink, b""),
            Kind::Hardlink(_) => (EntryType::Link, b""),
            Kind::Char(..) => (EntryType::Char, b""),
            Kind::Block(..) => (EntryType::Block, b""),
            Kind::Fifo => (EntryType::Fifo, b""),
            Kind::Other(b) => (EntryType::new(*b), b""),
        };
        h.set_entry_type(ty);
        if let Kind::Char(a, b) | Kind::Block(a, b) = e.kind {
            let _ = h.set_device_major(a);
            let _ = h.set_device_minor(b);
        }
        h.set_mode(e.mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(e.mtime % (1 << 33));
        match &e.size {
            Size::Exact => h.set_size(data.len() as u64),
            Size::Huge => h.set_size(0o77_777_777_777),
            Size::Raw(b) => h.as_old_mut().size.copy_from_slice(b),
        }
        h.set_cksum();
        self.block(&h, data);
    }
}

fn set_bytes(field: &mut [u8], b: &[u8]) {
    field.fill(0);
    let n = b.len().min(field.len());
    field[..n].copy_from_slice(&b[..n]);
}

fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::Plain => tar.to_vec(),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).expect("gzip");
            gz.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 1).expect("zstd"),
    }
}

fn damaged(mut b: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::None => {}
        Damage::Truncate(i) => {
            let n = i.index(b.len() + 1);
            b.truncate(n);
        }
        Damage::Flip(i, x) if !b.is_empty() => {
            let n = i.index(b.len());
            b[n] ^= x;
        }
        Damage::Flip(..) => {}
    }
    b
}

// ---- observing the file system ----

/// Everything about a tree that an extraction could change: per path, its
/// type, mode, owner, size, mtime, link count, data hash or link target,
/// and overlay xattrs.
fn snapshot(root: &Path, skip: Option<&Path>) -> BTreeMap<PathBuf, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = fs::symlink_metadata(&d).expect("lstat");
        m.insert(d.clone(), describe(&d, &md));
        if !md.is_dir() || Some(d.as_path()) == skip {
            continue;
        }
        for e in fs::read_dir(&d).expect("read_dir") {
            stack.push(e.expect("dir entry").path());
        }
    }
    m
}

fn describe(p: &Path, md: &fs::Metadata) -> String {
    let ft = md.file_type();
    let what = if ft.is_file() {
        hex::encode(Sha256::digest(fs::read(p).expect("read")))
    } else if ft.is_symlink() {
        format!("-> {:?}", fs::read_link(p).expect("readlink"))
    } else {
        format!("rdev {}", md.rdev())
    };
    let opq = lgetxattr(p, OVERLAY_OPAQUE_XATTR).ok().flatten();
    format!(
        "mode {:o} {}:{} size {} mtime {} nlink {} {what} opaque {opq:?}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.len(),
        md.mtime(),
        md.nlink()
    )
}

/// (dev, inode) of every non-directory under `root`.
fn inodes(root: &Path) -> BTreeSet<(u64, u64)> {
    let mut s = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("dir entry").path();
            let md = fs::symlink_metadata(&p).expect("lstat");
            if md.is_dir() {
                stack.push(p);
            } else {
                s.insert((md.dev(), md.ino()));
            }
        }
    }
    s
}

/// A scratch directory holding `dest` (the staging directory) and a
/// `sentinel` directory beside it that no extraction may touch.
struct Scene {
    tmp: tempfile::TempDir,
    dest: PathBuf,
    sentinel: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("dest");
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&dest).expect("mkdir dest");
        fs::create_dir_all(sentinel.join("d")).expect("mkdir sentinel");
        fs::write(sentinel.join("f"), b"sentinel file").expect("write");
        fs::write(sentinel.join("d/g"), b"sentinel file g").expect("write");
        std::os::unix::fs::symlink("f", sentinel.join("s")).expect("symlink");
        Scene {
            tmp,
            dest,
            sentinel,
        }
    }

    /// Everything outside `dest` (and `dest` itself as a directory entry).
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut m = snapshot(self.tmp.path(), Some(&self.dest));
        // The layer root's own metadata is the layer's to set ("./").
        m.remove(&self.dest);
        m
    }
}

fn is_typed_rejection(e: &Error) -> bool {
    matches!(
        e,
        Error::Hostile(_) | Error::Corrupt(_) | Error::Digest { .. }
    )
}

/// A rejection, an xattr the kernel refuses (a garbage
/// `security.capability` value is `EINVAL`), or a name longer than the
/// file system takes.
fn is_typed_error(e: &Error) -> bool {
    is_typed_rejection(e) || matches!(e, Error::Xattr(_)) || e.errno() == Some(libc::ENAMETOOLONG)
}

// ---- property 1: hostile streams ----

#[derive(Debug, Clone)]
struct HostileCase {
    entries: Vec<Entry>,
    compression: Compression,
    damage: Damage,
    /// End the tar without its two zero blocks.
    no_trailer: bool,
}

fn hostile_case() -> impl Strategy<Value = HostileCase> {
    (
        prop::collection::vec(entry(), 0..10),
        compression(),
        damage(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(entries, compression, damage, no_trailer)| HostileCase {
            entries,
            compression,
            damage,
            no_trailer,
        })
}

fn check_hostile(c: HostileCase) -> Result<(), TestCaseError> {
    let s = Scene::new();
    let sentinel_abs = s.sentinel.as_os_str().as_bytes().to_vec();
    let mut raw = Raw::default();
    for e in &c.entries {
        raw.entry(e, &sentinel_abs);
    }
    if !c.no_trailer {
        raw.out.extend_from_slice(&[0u8; 1024]);
    }
    let blob = damaged(compress(&raw.out, c.compression), &c.damage);
    let before = s.outside();
    let outside_inodes = inodes(&s.sentinel);

    let r = extract_layer(&blob[..], &s.dest, &Expect::default(), &mut |_| Ok(()));

    prop_assert_eq!(&s.outside(), &before, "something outside the layer changed");
    prop_assert!(s.dest.is_dir(), "the layer directory itself is gone");
    // No hardlink into the sentinel (its link counts are in `outside` too).
    let inside = inodes(&s.dest);
    prop_assert!(
        inside.is_disjoint(&outside_inodes),
        "hardlink out of the layer"
    );
    if let Err(e) = &r {
        prop_assert!(is_typed_error(e), "untyped error for a bad stream: {e:?}");
    }
    // What the callers do on error: remove the staging directory. It must
    // go completely and take nothing else along.
    fs::remove_dir_all(&s.dest).map_err(|e| TestCaseError::fail(format!("cleanup: {e}")))?;
    let left: Vec<_> = fs::read_dir(s.tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    prop_assert_eq!(left, vec![std::ffi::OsString::from("sentinel")]);
    prop_assert_eq!(
        snapshot(&s.sentinel, None),
        before
            .into_iter()
            .filter(|(p, _)| p.starts_with(&s.sentinel))
            .collect::<BTreeMap<_, _>>()
    );
    Ok(())
}

#[test]
fn prop_extract_hostile_streams_stay_inside_the_layer() {
    require_root("device nodes, whiteouts and trusted xattrs");
    prop_check(
        "extract_hostile_streams_stay_inside_the_layer",
        400,
        hostile_case(),
        check_hostile,
    );
}

// ---- property 2: valid layers match their model ----

/// A valid layer's operations, over a small name space so that entries
/// meet (replace, whiteout, hardlink) often.
#[derive(Debug, Clone)]
enum Op {
    Dir(Vec<u8>, u32),
    File(Vec<u8>, Vec<u8>, u32, Option<Vec<u8>>),
    Symlink(Vec<u8>, Vec<u8>),
    /// Hardlink to the n-th regular file present when the op applies.
    Hardlink(Vec<u8>, Index),
    Whiteout(Vec<u8>),
    Opaque(Vec<u8>),
    Fifo(Vec<u8>),
    Char(Vec<u8>, u32, u32),
}

fn safe_path() -> impl Strategy<Value = Vec<u8>> {
    let comp = prop_oneof![
        10 => select(vec!["a", "b", "c", "d"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(vec![b'l'; 120]),
        1 => Just(vec![b'x', 0xff, 0xfe]),
        1 => Just("ünï".as_bytes().to_vec()),
    ];
    prop::collection::vec(comp, 1..4).prop_map(|c| c.join(&b'/'))
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(0o644u32),
        Just(0o755),
        Just(0o600),
        Just(0o4755),
        Just(0o1777)
    ];
    prop_oneof![
        3 => (safe_path(), mode.clone()).prop_map(|(p, m)| Op::Dir(p, m)),
        5 => (
            safe_path(),
            prop::collection::vec(any::<u8>(), 0..3000),
            mode,
            // No b'\n': the tar crate splits PAX records at newlines
            // instead of by their length, so such a value fails the layer.
            prop::option::weighted(
                0.2,
                prop::collection::vec(any::<u8>().prop_filter("newline", |b| *b != b'\n'), 0..16)
            ),
        )
            .prop_map(|(p, d, m, x)| Op::File(p, d, m, x)),
        2 => (safe_path(), prop_oneof![safe_path(), Just(b"/etc/passwd".to_vec()), Just(b"../../x".to_vec()), Just(vec![b't'; 150])])
            .prop_map(|(p, t)| Op::Symlink(p, t)),
        2 => (safe_path(), any::<Index>()).prop_map(|(p, i)| Op::Hardlink(p, i)),
        2 => safe_path().prop_map(Op::Whiteout),
        1 => prop::collection::vec(select(vec!["a", "b", "c"]), 0..3)
            .prop_map(|c| Op::Opaque(c.join("/").into_bytes())),
        1 => safe_path().prop_map(Op::Fifo),
        1 => (safe_path(), 1u32..10, 0u32..300).prop_map(|(p, a, b)| Op::Char(p, a, b)),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// A directory made only as some entry's parent (mode 0755, owner root).
    ImplicitDir {
        opaque: bool,
    },
    Dir {
        mode: u32,
        mtime: u64,
        opaque: bool,
    },
    File {
        ino: usize,
        mode: u32,
        mtime: u64,
    },
    Symlink {
        target: Vec<u8>,
        mtime: u64,
    },
    Whiteout {
        mtime: u64,
    },
    Fifo {
        mtime: u64,
    },
    Char {
        rdev: u64,
        mtime: u64,
    },
}

#[derive(Default)]
struct Model {
    nodes: BTreeMap<Vec<u8>, Node>,
    /// Content and user.x xattr of each inode.
    data: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    file_bytes: u64,
    charged: u64,
}

fn parent_of(p: &[u8]) -> Option<&[u8]> {
    p.iter().rposition(|&b| b == b'/').map(|i| &p[..i])
}

fn under(p: &[u8], dir: &[u8]) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
}

impl Model {
    /// Can `p`'s parents be (or become) directories? Records implicit
    /// ones. A non-directory parent makes the entry hostile: skipped.
    fn parents(&mut self, p: &[u8]) -> bool {
        let mut ancestors = Vec::new();
        let mut cur = parent_of(p);
        while let Some(a) = cur {
            ancestors.push(a.to_vec());
            cur = parent_of(a);
        }
        for a in ancestors.iter().rev() {
            match self.nodes.get(a) {
                None => {
                    self.nodes
                        .insert(a.clone(), Node::ImplicitDir { opaque: false });
                }
                Some(Node::ImplicitDir { .. } | Node::Dir { .. }) => {}
                Some(_) => return false,
            }
        }
        true
    }

    fn parents_ok(&self, p: &[u8]) -> bool {
        let mut cur = parent_of(p);
        while let Some(a) = cur {
            if !matches!(
                self.nodes.get(a),
                None | Some(Node::ImplicitDir { .. } | Node::Dir { .. })
            ) {
                return false;
            }
            cur = parent_of(a);
        }
        true
    }

    fn clear(&mut self, p: &[u8], new_is_dir: bool) {
        let is_dir = matches!(
            self.nodes.get(p),
            Some(Node::Dir { .. } | Node::ImplicitDir { .. })
        );
        if is_dir && new_is_dir {
            return;
        }
        self.nodes.remove(p);
        if is_dir {
            self.nodes.retain(|k, _| !under(k, p));
        }
    }

    /// Apply `op` and write its tar entry, or skip it (an entry the model
    /// knows extraction would reject).
    fn apply(&mut self, op: &Op, mtime: u64, b: &mut tar::Builder<Vec<u8>>) {
        let path = |p: &[u8]| PathBuf::from(OsStr::from_bytes(p));
        let header = |ty: EntryType, mode: u32, size: usize| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(ty);
            h.set_mode(mode);
            h.set_uid(1000 + u64::from(mode % 7));
            h.set_gid(2000);
            h.set_mtime(mtime);
            h.set_size(size as u64);
            h
        };
        match op {
            Op::Dir(p, mode) => {
                if !self.parents_ok(p) {
                    return;
                }
                self.parents(p);
                self.clear(p, true);
                let opaque = match self.nodes.get(p) {
                    Some(Node::Dir { opaque, .. } | Node::ImplicitDir { opaque }) => *opaque,
                    _ => false,
                };
                self.nodes.insert(
                    p.clone(),
                    Node::Dir {
                        mode: *mode,
                        mtime,
                        opaque,
                    },
                );
                let mut h = header(EntryType::Directory, *mode, 0);
                b.append_data(&mut h, path(p), &[][..]).expect("dir");
            }
            Op::File(p, data, mode, xattr) => {
                if !self.parents_ok(p) {
                    return;
                }
                self.parents(p);
                self.clear(p, false);
                self.data.push((data.clone(), xattr.clone()));
                self.nodes.insert(
                    p.clone(),
                    Node::File {
                        ino: self.data.len() - 1,
                        mode: *mode,
                        mtime,
                    },
                );
                self.file_bytes += data.len() as u64;
                self.charged += charged_bytes(data.len() as u64);
                if let Some(x) = xattr {
                    b.append_pax_extensions([("SCHILY.xattr.user.x", &x[..])])
                        .expect("pax");
                }
                let mut h = header(EntryType::Regular, *mode, data.len());
                b.append_data(&mut h, path(p), &data[..]).expect("file");
            }
            Op::Symlink(p, t) => {
                if !self.parents_ok(p) {
                    return;
                }
                self.parents(p);
                self.clear(p, false);
                self.nodes.insert(
                    p.clone(),
                    Node::Symlink {
                        target: t.clone(),
                        mtime,
                    },
                );
                let mut h = header(EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, path(p), path(t)).expect("symlink");
            }
            Op::Hardlink(p, i) => {
                let files: Vec<(Vec<u8>, Node)> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| matches!(n, Node::File { .. }))
                    .map(|(k, n)| (k.clone(), n.clone()))
                    .collect();
                if files.is_empty() || !self.parents_ok(p) {
                    return;
                }
                let (t, node) = &files[i.index(files.len())];
                if t == p || under(t, p) {
                    return;
                }
                self.parents(p);
                self.clear(p, false);
                self.nodes.insert(p.clone(), node.clone());
                let mut h = header(EntryType::Link, 0o644, 0);
                b.append_link(&mut h, path(p), path(t)).expect("hardlink");
            }
            Op::Whiteout(p) => {
                if !self.parents_ok(p) {
                    return;
                }
                self.parents(p);
                self.clear(p, false);
                self.nodes.insert(p.clone(), Node::Whiteout { mtime });
                let mut name = parent_of(p).map(|d| [d, b"/"].concat()).unwrap_or_default();
                let base = &p[parent_of(p).map_or(0, |d| d.len() + 1)..];
                name.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
                name.extend_from_slice(base);
                let mut h = header(EntryType::Regular, 0o600, 0);
                b.append_data(&mut h, path(&name), &[][..])
                    .expect("whiteout");
            }
            Op::Opaque(d) => {
                let marker = if d.is_empty() {
                    OPAQUE_MARKER.as_bytes().to_vec()
                } else {
                    [&d[..], b"/", OPAQUE_MARKER.as_bytes()].concat()
                };
                if !self.parents_ok(&marker) {
                    return;
                }
                self.parents(&marker);
                if !d.is_empty() {
                    match self.nodes.get_mut(d) {
                        Some(Node::Dir { opaque, .. } | Node::ImplicitDir { opaque }) => {
                            *opaque = true
                        }
                        _ => unreachable!("parents() made it a directory"),
                    }
                }
                let mut h = header(EntryType::Regular, 0o600, 0);
                b.append_data(&mut h, path(&marker), &[][..])
                    .expect("opaque");
            }
            Op::Fifo(p) | Op::Char(p, ..) => {
                if !self.parents_ok(p) {
                    return;
                }
                self.parents(p);
                self.clear(p, false);
                let mut h = match op {
                    Op::Char(_, major, minor) => {
                        self.nodes.insert(
                            p.clone(),
                            Node::Char {
                                rdev: libc::makedev(*major, *minor),
                                mtime,
                            },
                        );
                        let mut h = header(EntryType::Char, 0o620, 0);
                        h.set_device_major(*major).expect("major");
                        h.set_device_minor(*minor).expect("minor");
                        h
                    }
                    _ => {
                        self.nodes.insert(p.clone(), Node::Fifo { mtime });
                        header(EntryType::Fifo, 0o620, 0)
                    }
                };
                b.append_data(&mut h, path(p), &[][..]).expect("special");
            }
        }
    }

    /// The model as [`observe`] sees a tree.
    fn expected(&self) -> BTreeMap<Vec<u8>, String> {
        let mut groups: BTreeMap<usize, Vec<&[u8]>> = BTreeMap::new();
        for (p, n) in &self.nodes {
            if let Node::File { ino, .. } = n {
                groups.entry(*ino).or_default().push(p);
            }
        }
        self.nodes
            .iter()
            .map(|(p, n)| {
                let s = match n {
                    Node::ImplicitDir { opaque } => {
                        format!("dir 755 0:0 opaque={opaque}")
                    }
                    Node::Dir {
                        mode,
                        mtime,
                        opaque,
                    } => format!(
                        "dir {mode:o} {}:2000 mtime {mtime} opaque={opaque}",
                        1000 + mode % 7
                    ),
                    Node::File { ino, mode, mtime } => {
                        let (data, x) = &self.data[*ino];
                        format!(
                            "file {mode:o} {}:2000 mtime {mtime} {} x={x:?} links {:?}",
                            1000 + mode % 7,
                            hex::encode(Sha256::digest(data)),
                            groups[ino]
                        )
                    }
                    Node::Symlink { target, mtime } => {
                        // Owner 1000 + mode % 7, and a symlink's mode is 0o777.
                        format!("symlink 1000 mtime {mtime} -> {target:?}")
                    }
                    Node::Whiteout { mtime } => format!("whiteout mtime {mtime}"),
                    Node::Fifo { mtime } => format!("fifo 620 mtime {mtime}"),
                    Node::Char { rdev, mtime } => format!("char 620 {rdev} mtime {mtime}"),
                };
                (p.clone(), s)
            })
            .collect()
    }
}

/// A tree in the shape of [`Model::expected`].
fn observe(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut links: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("inside")
                .as_os_str()
                .as_bytes()
                .to_vec();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let ft = md.file_type();
            let mode = md.mode() & 0o7777;
            let owner = format!("{}:{}", md.uid(), md.gid());
            let s = if ft.is_dir() {
                stack.push(p.clone());
                let opaque =
                    lgetxattr(&p, OVERLAY_OPAQUE_XATTR).expect("xattr") == Some(b"y".to_vec());
                if mode == 0o755 && md.uid() == 0 {
                    // Made as a parent; its mtime is the extraction's.
                    format!("dir 755 0:0 opaque={opaque}")
                } else {
                    format!("dir {mode:o} {owner} mtime {} opaque={opaque}", md.mtime())
                }
            } else if ft.is_file() {
                links
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(rel.clone());
                files.push((rel.clone(), p.clone(), md.clone()));
                continue;
            } else if ft.is_symlink() {
                format!(
                    "symlink {} mtime {} -> {:?}",
                    md.uid(),
                    md.mtime(),
                    fs::read_link(&p).expect("readlink").as_os_str().as_bytes()
                )
            } else if ft.is_char_device() && md.rdev() == 0 {
                format!("whiteout mtime {}", md.mtime())
            } else if ft.is_char_device() {
                format!("char {mode:o} {} mtime {}", md.rdev(), md.mtime())
            } else if ft.is_fifo() {
                format!("fifo {mode:o} mtime {}", md.mtime())
            } else {
                format!("other {md:?}")
            };
            out.insert(rel, s);
        }
    }
    for (rel, p, md) in files {
        let mut group = links[&(md.dev(), md.ino())].clone();
        group.sort();
        let x = lgetxattr(&p, "user.x").expect("xattr");
        out.insert(
            rel,
            format!(
                "file {:o} {}:{} mtime {} {} x={x:?} links {group:?}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                md.mtime(),
                hex::encode(Sha256::digest(fs::read(&p).expect("read")))
            ),
        );
    }
    out
}

#[derive(Debug, Clone)]
struct ValidCase {
    ops: Vec<Op>,
    compression: Compression,
}

fn valid_case() -> impl Strategy<Value = ValidCase> {
    (prop::collection::vec(op(), 1..14), compression())
        .prop_map(|(ops, compression)| ValidCase { ops, compression })
}

/// The tar of a valid case, its model, and where the last entry's data
/// ends (before padding and the end-of-archive blocks).
fn build_valid(c: &ValidCase) -> (Vec<u8>, Model, usize) {
    let mut m = Model::default();
    let mut b = tar::Builder::new(Vec::new());
    let mut last_len = 0;
    for (i, op) in c.ops.iter().enumerate() {
        let before = b.get_ref().len();
        m.apply(op, 1_600_000_000 + i as u64 * 1000, &mut b);
        if b.get_ref().len() != before {
            last_len = match op {
                Op::File(_, d, ..) => d.len(),
                _ => 0,
            };
        }
    }
    let data_end = b.get_ref().len() - (512 - last_len % 512) % 512;
    (b.into_inner().expect("tar"), m, data_end)
}

fn check_valid(c: ValidCase) -> Result<(), TestCaseError> {
    let (tar, model, _) = build_valid(&c);
    let blob = compress(&tar, c.compression);
    let s = Scene::new();
    let before = s.outside();
    let stats = extract_layer(
        &blob[..],
        &s.dest,
        &Expect {
            blob_digest: Some(&sha(&blob)),
            diff_id: Some(&sha(&tar)),
        },
        &mut |_| Ok(()),
    )
    .map_err(|e| TestCaseError::fail(format!("valid layer rejected: {e}")))?;
    prop_assert_eq!(observe(&s.dest), model.expected());
    prop_assert_eq!(stats.diff_id, sha(&tar));
    prop_assert_eq!(stats.blob_digest, Some(sha(&blob)));
    prop_assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
    prop_assert_eq!(stats.compressed_bytes, blob.len() as u64);
    prop_assert_eq!(stats.file_bytes, model.file_bytes);
    prop_assert_eq!(stats.charged_bytes, model.charged);
    prop_assert_eq!(s.outside(), before);
    Ok(())
}

#[test]
fn prop_extract_valid_layers_match_their_model() {
    require_root("owners, device nodes, whiteouts and trusted xattrs");
    prop_check(
        "extract_valid_layers_match_their_model",
        200,
        valid_case(),
        check_valid,
    );
}

// ---- property 3: truncated or corrupted valid layers ----

fn check_damaged(c: ValidCase, d: Damage) -> Result<(), TestCaseError> {
    let (tar, _, data_end) = build_valid(&c);
    let blob = compress(&tar, c.compression);
    let bad = damaged(blob.clone(), &d);
    prop_assume!(bad != blob);
    // With the digests a pull knows: always an error, whatever the damage.
    let s = Scene::new();
    let before = s.outside();
    let r = extract_layer(
        &bad[..],
        &s.dest,
        &Expect {
            blob_digest: Some(&sha(&blob)),
            diff_id: Some(&sha(&tar)),
        },
        &mut |_| Ok(()),
    );
    match &r {
        Ok(_) => return Err(TestCaseError::fail("damaged stream accepted")),
        Err(e) => prop_assert!(is_typed_rejection(e), "{e:?}"),
    }
    prop_assert_eq!(s.outside(), before.clone());
    // Without them (Docker's ApplyDiff): a truncated compressed stream, or
    // a tar cut inside a header or inside file data, is still an error.
    if let Damage::Truncate(i) = &d {
        let cut = i.index(blob.len() + 1);
        let must_fail = match c.compression {
            Compression::Plain => cut % 512 != 0 && cut < data_end,
            _ => true,
        };
        let s = Scene::new();
        let r = extract_layer(&bad[..], &s.dest, &Expect::default(), &mut |_| Ok(()));
        if must_fail {
            prop_assert!(r.is_err(), "cut at {cut} of {} accepted", blob.len());
        }
        if let Err(e) = &r {
            prop_assert!(is_typed_rejection(e), "{e:?}");
        }
    }
    Ok(())
}

#[test]
fn prop_extract_damaged_layers_are_rejected() {
    require_root("owners, device nodes, whiteouts and trusted xattrs");
    prop_check(
        "extract_damaged_layers_are_rejected",
        200,
        (
            valid_case(),
            prop_oneof![
                3 => any::<Index>().prop_map(Damage::Truncate),
                1 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
            ],
        ),
        |(c, d)| check_damaged(c, d),
    );
}
