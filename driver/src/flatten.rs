//! The flattened metadata layer of an image (groundwork for hot-file
//! tiering, issue 4).
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
use crate::extract::lgetxattr;
use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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

pub(crate) fn xattr_names(p: &Path) -> Vec<OsString> {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf.truncate(n as usize);
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| std::ffi::OsStr::from_bytes(s).to_os_string())
        .collect()
}

pub(crate) fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<()> {
    let (Ok(c), Ok(n)) = (CString::new(p.as_os_str().as_bytes()), CString::new(name)) else {
        return Err(Error::Other(format!("NUL in {}", p.display())));
    };
    // SAFETY: valid strings; value pointer and length match.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).ctx("set xattr on", p);
    }
    Ok(())
}

/// Create `dst` as a device node, fifo or socket of the same type, mode
/// and device number as `m` describes.
pub(crate) fn mknod_like(m: &fs::Metadata, dst: &Path) -> Result<()> {
    use nix::sys::stat::SFlag;
    let ft = m.file_type();
    let kind = if ft.is_char_device() {
        SFlag::S_IFCHR
    } else if ft.is_block_device() {
        SFlag::S_IFBLK
    } else if ft.is_fifo() {
        SFlag::S_IFIFO
    } else if ft.is_socket() {
        SFlag::S_IFSOCK
    } else {
        return Err(Error::Other(format!(
            "{}: unsupported file type",
            dst.display()
        )));
    };
    nix::sys::stat::mknod(
        dst,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o7777),
        m.rdev(),
    )
    .ctx("mknod", dst)
}

/// Give `dst` the owner and then (chown clears setuid) the mode of `m`.
pub(crate) fn chown_chmod(m: &fs::Metadata, dst: &Path) -> Result<()> {
    nix::unistd::fchownat(
        None,
        dst,
        Some(nix::unistd::Uid::from_raw(m.uid())),
        Some(nix::unistd::Gid::from_raw(m.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx("chown", dst)?;
    if !m.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))
            .ctx("chmod", dst)?;
    }
    Ok(())
}

/// Copy owner, mode, non-overlay xattrs (and, for non-dirs, mtime) of
/// `src` onto `dst`.
fn copy_meta(src: &Path, m: &fs::Metadata, dst: &Path, times: bool) -> Result<()> {
    chown_chmod(m, dst)?;
    for name in xattr_names(src) {
        let n = name.to_string_lossy();
        if n.starts_with("trusted.overlay.") {
            continue;
        }
        if let Ok(Some(v)) = lgetxattr(src, &n) {
            let _ = set_xattr(dst, &n, &v);
        }
    }
    if times {
        set_mtime(dst, m)?;
    }
    Ok(())
}

pub(crate) fn set_mtime(dst: &Path, m: &fs::Metadata) -> Result<()> {
    let t = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
    nix::sys::stat::utimensat(
        None,
        dst,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .ctx("set mtime", dst)
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn opaque(p: &Path) -> bool {
    matches!(lgetxattr(p, OPAQUE), Ok(Some(v)) if v == b"y")
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
                            if opaque(&p) {
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
                set_xattr(&dst, METACOPY, b"")?;
                let redirect = format!("/{}", child.display());
                set_xattr(&dst, REDIRECT, redirect.as_bytes())?;
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
            if opaque(l) {
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
