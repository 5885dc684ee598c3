//! Layer directory (overlay format) → OCI/Docker layer tar, and the change
//! list of a layer against its parent chain.
//!
//! - An overlay whiteout (char device 0:0) becomes an empty regular file
//!   `.wh.NAME` (mode 0600, owner and mtime kept), as Docker's overlay2
//!   driver writes it.
//! - A directory with `trusted.overlay.opaque=y` is followed by an empty
//!   `DIR/.wh..wh..opq` entry.
//! - Modes, owners, mtimes (seconds), xattrs (PAX `SCHILY.xattr.*`, except
//!   overlayfs' own `trusted.overlay.*`), symlinks, hardlinks inside the
//!   layer, FIFOs and device nodes are kept. Entries are written in
//!   byte-wise name order, so the same directory always gives the same tar.

use crate::error::{Error, IoContext, Result};
use crate::extract::{OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};
use crate::fsutil::xattr;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Is this an overlay whiteout (char device 0:0)?
pub fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Is this directory overlay-opaque?
pub fn is_opaque(path: &Path) -> Result<bool> {
    Ok(xattr::get(path, OVERLAY_OPAQUE_XATTR)
        .map_err(Error::Xattr)?
        .is_some_and(|v| v == b"y"))
}

/// All xattrs of `path` (not following symlinks), overlayfs' own excluded,
/// sorted by name.
fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for (name, v) in xattr::get_all(path).map_err(Error::Xattr)? {
        if xattr::is_overlay(&name) {
            continue;
        }
        let name = name.into_string().map_err(|n| {
            Error::Other(format!(
                "{}: xattr name {n:?} is not UTF-8 and cannot go into a PAX header",
                path.display()
            ))
        })?;
        out.push((name, v));
    }
    // Sorted by name: `get_all` sorts (listxattr's order is the file
    // system's storage order, which differs between copies of a tree).
    Ok(out)
}

fn sorted_children(dir: &Path) -> io::Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let mut v: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| (e.file_name(), e.path())))
        .collect::<io::Result<_>>()?;
    v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(v)
}

fn base_header(md: &fs::Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid() as u64);
    h.set_gid(md.gid() as u64);
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_size(0);
    h
}

struct TarWriter<W: Write> {
    b: tar::Builder<W>,
    root: PathBuf,
    /// (dev, ino) of regular files with several links → first tar name.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> TarWriter<W> {
    fn io(&self, e: io::Error, rel: &Path) -> Error {
        Error::Io {
            what: "write layer tar entry",
            path: self.root.join(rel),
            source: e,
        }
    }

    fn pax(&mut self, full: &Path, rel: &Path) -> Result<()> {
        let xs = xattrs(full)?;
        if xs.is_empty() {
            return Ok(());
        }
        let keyed: Vec<(String, Vec<u8>)> = xs
            .into_iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v))
            .collect();
        self.b
            .append_pax_extensions(keyed.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(|e| self.io(e, rel))
    }

    fn walk(&mut self, rel: &Path) -> Result<()> {
        let dir = self.root.join(rel);
        for (name, full) in sorted_children(&dir).ctx("list", &dir)? {
            let rel = rel.join(&name);
            let md = fs::symlink_metadata(&full).ctx("lstat", &full)?;
            let ft = md.file_type();
            if is_whiteout(&md) {
                let mut wname = std::ffi::OsString::from(WHITEOUT_PREFIX);
                wname.push(&name);
                let wrel = rel.with_file_name(wname);
                let mut h = base_header(&md);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o600);
                self.b
                    .append_data(&mut h, &wrel, io::empty())
                    .map_err(|e| self.io(e, &wrel))?;
                continue;
            }
            let mut h = base_header(&md);
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                self.pax(&full, &rel)?;
                self.b
                    .append_data(&mut h, &rel, io::empty())
                    .map_err(|e| self.io(e, &rel))?;
                if is_opaque(&full)? {
                    let orel = rel.join(OPAQUE_MARKER);
                    let mut o = base_header(&md);
                    o.set_entry_type(tar::EntryType::Regular);
                    o.set_mode(md.mode() & 0o777);
                    self.b
                        .append_data(&mut o, &orel, io::empty())
                        .map_err(|e| self.io(e, &orel))?;
                }
                self.walk(&rel)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&full).ctx("readlink", &full)?;
                h.set_entry_type(tar::EntryType::Symlink);
                self.pax(&full, &rel)?;
                self.b
                    .append_link(&mut h, &rel, &target)
                    .map_err(|e| self.io(e, &rel))?;
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    if let Some(first) = self.links.get(&(md.dev(), md.ino())).cloned() {
                        h.set_entry_type(tar::EntryType::Link);
                        self.b
                            .append_link(&mut h, &rel, &first)
                            .map_err(|e| self.io(e, &rel))?;
                        continue;
                    }
                    self.links.insert((md.dev(), md.ino()), rel.clone());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(md.len());
                self.pax(&full, &rel)?;
                let f = fs::File::open(&full).ctx("open", &full)?;
                // A file that changes size while being archived would make
                // a corrupt tar; take exactly the header's size.
                let mut r = io::Read::take(f, md.len());
                self.b
                    .append_data(&mut h, &rel, &mut r)
                    .map_err(|e| self.io(e, &rel))?;
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                let et = if ft.is_char_device() {
                    tar::EntryType::Char
                } else if ft.is_block_device() {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Fifo
                };
                h.set_entry_type(et);
                if !ft.is_fifo() {
                    let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
                    h.set_device_major(maj).map_err(|e| self.io(e, &rel))?;
                    h.set_device_minor(min).map_err(|e| self.io(e, &rel))?;
                }
                self.pax(&full, &rel)?;
                self.b
                    .append_data(&mut h, &rel, io::empty())
                    .map_err(|e| self.io(e, &rel))?;
            } else {
                tracing::debug!(path = %full.display(), "skipping socket in layer diff");
            }
        }
        Ok(())
    }
}

/// Write the OCI layer tar of the layer directory `root` to `out`.
pub fn write_layer_tar<W: Write>(root: &Path, out: W) -> Result<W> {
    let mut w = TarWriter {
        b: tar::Builder::new(out),
        root: root.to_path_buf(),
        links: HashMap::new(),
    };
    w.b.mode(tar::HeaderMode::Complete);
    w.b.follow_symlinks(false);
    w.walk(Path::new(""))?;
    w.b.into_inner().map_err(|e| Error::Io {
        what: "finish layer tar",
        path: root.to_path_buf(),
        source: e,
    })
}

/// Docker's change kinds (`archive.ChangeType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "u8")]
pub enum ChangeKind {
    Modify,
    Add,
    Delete,
}

impl From<ChangeKind> for u8 {
    fn from(k: ChangeKind) -> u8 {
        match k {
            ChangeKind::Modify => 0,
            ChangeKind::Add => 1,
            ChangeKind::Delete => 2,
        }
    }
}

/// One entry of `GraphDriver.Changes` (`archive.Change`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    #[serde(rename = "Path")]
    pub path: String,
    #[serde(rename = "Kind")]
    pub kind: ChangeKind,
}

/// What the merged view of `lowers` (top-most first) has at `rel`:
/// `Some(metadata)` of the visible entry, or `None` when absent or hidden
/// by a whiteout or an opaque directory.
fn lookup_lower(lowers: &[PathBuf], rel: &Path) -> Result<Option<fs::Metadata>> {
    let comps: Vec<_> = rel.components().collect();
    for l in lowers {
        // A whiteout of `rel` or of an ancestor, or an opaque ancestor, in
        // this layer hides everything below it.
        let mut cur = l.clone();
        let mut hidden = false;
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(md) if is_whiteout(&md) => return Ok(None),
                Ok(md) if i + 1 == comps.len() => return Ok(Some(md)),
                Ok(md) if md.is_dir() => {
                    if is_opaque(&cur)? {
                        hidden = true;
                    }
                }
                Ok(_) => return Ok(None), // a non-directory ancestor hides the rest
                Err(_) => break,
            }
        }
        if hidden {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Names visible in the merged view of `lowers` in directory `rel`.
fn lower_children(lowers: &[PathBuf], rel: &Path) -> Result<BTreeSet<std::ffi::OsString>> {
    let mut seen = BTreeSet::new();
    let mut gone = BTreeSet::new();
    for l in lowers {
        let d = l.join(rel);
        let Ok(md) = fs::symlink_metadata(&d) else {
            continue;
        };
        if is_whiteout(&md) || !md.is_dir() {
            break;
        }
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let n = e.file_name();
                if seen.contains(&n) || gone.contains(&n) {
                    continue;
                }
                match e.metadata() {
                    Ok(m) if is_whiteout(&m) => {
                        gone.insert(n);
                    }
                    _ => {
                        seen.insert(n);
                    }
                }
            }
        }
        if is_opaque(&d)? {
            break;
        }
    }
    Ok(seen)
}

fn abs(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// The changes of layer directory `upper` against the merged view of its
/// parent chain `lowers` (top-most first), sorted by path.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let children = sorted_children(&dir).ctx("list", &dir)?;
        let here: BTreeSet<_> = children.iter().map(|(n, _)| n.clone()).collect();
        if !rel.as_os_str().is_empty() && is_opaque(&dir)? {
            // Everything the lower view had here and the layer does not
            // re-create is deleted.
            for n in lower_children(lowers, &rel)? {
                if !here.contains(&n) {
                    out.push(Change {
                        path: abs(&rel.join(&n)),
                        kind: ChangeKind::Delete,
                    });
                }
            }
        }
        for (name, full) in children {
            let r = rel.join(&name);
            let md = fs::symlink_metadata(&full).ctx("lstat", &full)?;
            if is_whiteout(&md) {
                if lookup_lower(lowers, &r)?.is_some() {
                    out.push(Change {
                        path: abs(&r),
                        kind: ChangeKind::Delete,
                    });
                }
                continue;
            }
            let kind = if lookup_lower(lowers, &r)?.is_some() {
                ChangeKind::Modify
            } else {
                ChangeKind::Add
            };
            out.push(Change {
                path: abs(&r),
                kind,
            });
            if md.is_dir() {
                stack.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes of the regular files a change list adds or modifies (hardlinked
/// inodes counted once), as Docker's `archive.ChangesSize`.
pub fn changes_size(upper: &Path, changes: &[Change]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut sum = 0;
    for c in changes {
        if c.kind == ChangeKind::Delete {
            continue;
        }
        let p = upper.join(c.path.trim_start_matches('/'));
        if let Ok(md) = fs::symlink_metadata(&p) {
            if md.is_file() && seen.insert((md.dev(), md.ino())) {
                sum += md.len();
            }
        }
    }
    sum
}
