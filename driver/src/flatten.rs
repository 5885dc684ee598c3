//! The flattened metadata layer of an image (the directory tree that
//! hot-file tiering mounts on pmem).
//!
//! Path lookups walk every lower layer's directories, and on a disk tier each
//! cold directory block costs a seek. So the whole directory tree of an image
//! goes into one metadata layer on pmem. It holds directories, symlinks,
//! device nodes, and, for every regular file, a *metacopy stub*: an empty
//! sparse file with the original size, mode, owner, mtime and xattrs, plus
//! `trusted.overlay.metacopy` and `trusted.overlay.redirect=/path`. The file
//! data stays in the layer directories, which are mounted as overlayfs
//! **data-only** lower layers (`datadir+`, Linux 6.7+). Path walks then never
//! touch the disk tier; only reading file data does.
//!
//! The merged view of `meta::data...` is identical to the plain overlay of
//! the same layers (tested in `tests/flatten_e2e.rs`).

use crate::error::{Error, IoContext, Result};
use crate::fsutil::attr::{chown_chmod, mknod_like, set_mtime};
use crate::fsutil::xattr;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const OPAQUE: &str = "trusted.overlay.opaque";
const METACOPY: &str = "trusted.overlay.metacopy";
const REDIRECT: &str = "trusted.overlay.redirect";

/// What a metadata layer holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetaStats {
    pub dirs: u64,
    pub stubs: u64,
    pub hardlinks: u64,
    pub symlinks: u64,
    pub other: u64,
    /// Apparent bytes of the files the stubs stand for.
    pub file_bytes: u64,
    /// Data path (a stub's redirect) -> its owner, the index (bottom first)
    /// of the top-most layer holding it, for every stub whose owner is not
    /// the top layer. Decides whether a tiered mount may put every hot data
    /// layer before the bases (`nvtier_policy::datalayers`).
    #[serde(skip)]
    pub owners: HashMap<String, usize>,
}

/// Copy owner, mode, non-overlay xattrs (and, for non-dirs, mtime) of
/// `src` onto `dst`.
fn copy_meta(src: &Path, m: &fs::Metadata, dst: &Path, times: bool) -> Result<()> {
    chown_chmod(m, dst)?;
    for name in xattr::list(src).map_err(Error::Xattr)? {
        if xattr::is_overlay(&name) {
            continue;
        }
        if let Some(v) = xattr::get(src, &name).map_err(Error::Xattr)? {
            xattr::set(dst, &name, &v).map_err(Error::Xattr)?;
        }
    }
    if times {
        set_mtime(dst, m)?;
    }
    Ok(())
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn opaque(p: &Path) -> Result<bool> {
    Ok(xattr::get(p, OPAQUE)
        .map_err(Error::Xattr)?
        .is_some_and(|v| v == b"y"))
}

struct Builder<'a> {
    /// Layer directories, top-most first.
    layers: &'a [PathBuf],
    out: &'a Path,
    links: HashMap<(u64, u64), PathBuf>,
    dirs: Vec<(PathBuf, fs::Metadata)>,
    stats: MetaStats,
}

impl Builder<'_> {
    /// Build directory `rel` of the merged view from the layers in
    /// `contrib` (indices into `layers`, top-most first).
    fn dir(&mut self, rel: &Path, contrib: &[usize]) -> Result<()> {
        // name -> (layer, metadata) of the top-most occurrence; whiteouts
        // hide the name in every lower layer.
        let mut top: std::collections::BTreeMap<OsString, Option<(usize, fs::Metadata)>> =
            Default::default();
        for &l in contrib {
            let d = self.layers[l].join(rel);
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx("read layer directory", d),
            };
            for e in rd {
                let e = e.ctx("read layer directory", &d)?;
                let name = e.file_name();
                if top.contains_key(&name) {
                    continue;
                }
                let m = fs::symlink_metadata(e.path()).ctx("stat", e.path())?;
                top.insert(name, if is_whiteout(&m) { None } else { Some((l, m)) });
            }
        }
        for (name, v) in top {
            let Some((l, m)) = v else { continue };
            let child = rel.join(&name);
            let src = self.layers[l].join(&child);
            let dst = self.out.join(&child);
            let ft = m.file_type();
            if ft.is_dir() {
                fs::create_dir(&dst).ctx("create directory", &dst)?;
                copy_meta(&src, &m, &dst, false)?;
                // Layers below contribute while the name stays a directory
                // and no layer above makes it opaque.
                let mut sub = Vec::new();
                for &k in contrib.iter().filter(|&&k| k >= l) {
                    let p = self.layers[k].join(&child);
                    match fs::symlink_metadata(&p) {
                        Ok(pm) if pm.is_dir() => {
                            sub.push(k);
                            if opaque(&p)? {
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(_) => continue,
                    }
                }
                self.stats.dirs += 1;
                self.dir(&child, &sub)?;
                self.dirs.push((dst, m));
            } else if ft.is_file() {
                if let Some(first) = self.links.get(&(m.dev(), m.ino())) {
                    fs::hard_link(first, &dst).ctx("hardlink stub", &dst)?;
                    self.stats.hardlinks += 1;
                    continue;
                }
                let f = fs::File::create(&dst).ctx("create stub", &dst)?;
                f.set_len(m.len()).ctx("size stub", &dst)?;
                drop(f);
                copy_meta(&src, &m, &dst, false)?;
                xattr::set(&dst, METACOPY, b"").map_err(Error::Xattr)?;
                let redirect = format!("/{}", child.display());
                xattr::set(&dst, REDIRECT, redirect.as_bytes()).map_err(Error::Xattr)?;
                set_mtime(&dst, &m)?;
                self.links.insert((m.dev(), m.ino()), dst);
                if l > 0 {
                    // `l` counts from the top; owners count from the bottom.
                    let owner = self.layers.len() - 1 - l;
                    self.stats.owners.insert(redirect, owner);
                }
                self.stats.stubs += 1;
                self.stats.file_bytes += m.len();
            } else if ft.is_symlink() {
                let t = fs::read_link(&src).ctx("readlink", &src)?;
                std::os::unix::fs::symlink(&t, &dst).ctx("symlink", &dst)?;
                copy_meta(&src, &m, &dst, true)?;
                self.stats.symlinks += 1;
            } else {
                mknod_like(&m, &dst)?;
                copy_meta(&src, &m, &dst, true)?;
                self.stats.other += 1;
            }
        }
        Ok(())
    }
}

/// Build the flattened metadata layer of `layers` (layer directories in
/// chain order, bottom first) into the empty directory `out`.
pub fn build_meta_layer(layers: &[PathBuf], out: &Path) -> Result<MetaStats> {
    let top_first: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    let mut b = Builder {
        layers: &top_first,
        out,
        links: HashMap::new(),
        dirs: Vec::new(),
        stats: MetaStats::default(),
    };
    // The root: attributes of the top-most layer root.
    let contrib: Vec<usize> = {
        let mut v = Vec::new();
        for (i, l) in top_first.iter().enumerate() {
            v.push(i);
            if opaque(l)? {
                break;
            }
        }
        v
    };
    if let Some(&t) = contrib.first() {
        let m = fs::symlink_metadata(&top_first[t]).ctx("stat", &top_first[t])?;
        copy_meta(&top_first[t], &m, out, false)?;
        b.dirs.push((out.to_path_buf(), m));
    }
    b.dir(Path::new(""), &contrib)?;
    // Directory mtimes last, deepest first.
    let mut dirs = std::mem::take(&mut b.dirs);
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, m) in dirs {
        set_mtime(&p, &m)?;
    }
    Ok(b.stats)
}
