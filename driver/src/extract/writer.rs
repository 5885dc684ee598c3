//! Tar entries into the layer directory, in overlay format.

use super::{
    charged_bytes, corrupt, safe_rel_path, ExtractStats, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR,
    WHITEOUT_PREFIX,
};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::xattr;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::{fs, io};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub(super) fn lchown(path: &Path, uid: u64, gid: u64) -> Result<()> {
    let r = nix::unistd::fchownat(
        None,
        path,
        Some(nix::unistd::Uid::from_raw(uid as u32)),
        Some(nix::unistd::Gid::from_raw(gid as u32)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    );
    match r {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) if !is_root() => Ok(()),
        Err(e) => Err(e).ctx("chown", path),
    }
}

/// `lchown` through an open file.
fn fchown(f: &fs::File, path: &Path, uid: u64, gid: u64) -> Result<()> {
    let r = nix::unistd::fchown(
        std::os::fd::AsRawFd::as_raw_fd(f),
        Some(nix::unistd::Uid::from_raw(uid as u32)),
        Some(nix::unistd::Gid::from_raw(gid as u32)),
    );
    match r {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) if !is_root() => Ok(()),
        Err(e) => Err(e).ctx("chown", path),
    }
}

pub(super) fn set_times(path: &Path, mtime: i64) -> Result<()> {
    let ts = nix::sys::time::TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .ctx("set mtime", path)
}

/// Copy an entry's data into its file. A failed read is the stream's fault
/// (truncated, corrupt: whatever error kind the decoder picked), a failed
/// write the tier's.
fn copy_data(
    from: &mut impl Read,
    to: &mut fs::File,
    buf: &mut [u8],
    rel: &Path,
    full: &Path,
) -> Result<u64> {
    let mut n = 0u64;
    loop {
        let k = match from.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Corrupt(format!("{}: {e}", rel.display()))),
        };
        to.write_all(&buf[..k]).ctx("write file", full)?;
        n += k as u64;
    }
}

/// The extraction state for one layer directory.
pub(super) struct Writer<'b> {
    pub(super) root: PathBuf,
    pub(super) budget: &'b mut (dyn FnMut(u64) -> Result<()> + Send),
    pub(super) dirs: Vec<(PathBuf, i64)>,
    pub(super) stats: ExtractStats,
    /// Directories already known to be real directories of this layer (a
    /// layer of 7 000 files otherwise stats every parent of every entry
    /// again). A path leaves the set when `clear` removes it.
    pub(super) verified: HashSet<PathBuf>,
    /// The buffer file data passes through (one per layer, not per file).
    pub(super) buf: Vec<u8>,
}

impl Writer<'_> {
    /// Make sure every parent of `rel` is a real directory inside the layer;
    /// create missing ones. A symlink among the parents is rejected.
    pub(super) fn prepare_parents(&mut self, rel: &Path) -> Result<PathBuf> {
        let mut cur = self.root.clone();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            cur.push(c);
            if self.verified.contains(&cur) {
                continue;
            }
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::Hostile(format!(
                        "entry {:?} would be written through the symlink {:?}",
                        rel.display(),
                        cur.strip_prefix(&self.root).unwrap_or(&cur).display()
                    )))
                }
                Ok(m) if m.is_dir() => {
                    self.verified.insert(cur.clone());
                }
                Ok(_) => {
                    return Err(Error::Hostile(format!(
                        "entry {:?}: parent {:?} is not a directory",
                        rel.display(),
                        cur.strip_prefix(&self.root).unwrap_or(&cur).display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).ctx("create directory", &cur)?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                        .ctx("chmod", &cur)?;
                    self.verified.insert(cur.clone());
                }
                Err(e) => return Err(e).ctx("stat", &cur),
            }
        }
        Ok(self.root.join(rel))
    }

    /// Remove whatever is at `full` unless it is a directory and the new
    /// entry is a directory too (tar semantics: later entries win).
    pub(super) fn clear(&mut self, full: &Path, new_is_dir: bool) -> Result<()> {
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() && new_is_dir => Ok(()),
            Ok(m) if m.is_dir() => {
                // The mtimes recorded for it and its subdirectories go too,
                // and so does what was known about them.
                self.dirs.retain(|(p, _)| !p.starts_with(full));
                self.verified.retain(|p| !p.starts_with(full));
                fs::remove_dir_all(full).ctx("replace directory", full)
            }
            Ok(_) => fs::remove_file(full).ctx("replace file", full),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("stat", full),
        }
    }

    pub(super) fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<()> {
        let raw_path = e.path().map_err(corrupt)?.into_owned();
        let rel = safe_rel_path(&raw_path)?;
        let h = e.header().clone();
        let kind = h.entry_type();
        let mode = h.mode().map_err(corrupt)? & 0o7777;
        let uid = h.uid().map_err(corrupt)?;
        let gid = h.gid().map_err(corrupt)?;
        let mtime = h.mtime().map_err(corrupt)? as i64;
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = e.pax_extensions().map_err(corrupt)? {
            for ext in exts {
                let ext = ext.map_err(corrupt)?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if name.starts_with("trusted.overlay.") {
                        tracing::warn!(path = %raw_path.display(), xattr = name, "dropping overlay xattr from layer tar");
                        continue;
                    }
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }

        let Some(rel) = rel else {
            // The layer root itself ("./"): take its metadata.
            if kind.is_dir() {
                fs::set_permissions(&self.root, fs::Permissions::from_mode(mode))
                    .ctx("chmod", &self.root)?;
                lchown(&self.root, uid, gid)?;
                self.dirs.push((self.root.clone(), mtime));
            }
            return Ok(());
        };
        let name = rel.file_name().unwrap_or(OsStr::new("")).to_os_string();
        let name_b = name.as_bytes();

        // Whiteouts.
        if name_b == OPAQUE_MARKER.as_bytes() {
            let full = self.prepare_parents(&rel)?;
            let dir = full.parent().unwrap_or(&self.root).to_path_buf();
            xattr::set(&dir, OVERLAY_OPAQUE_XATTR, b"y").map_err(Error::Xattr)?;
            self.stats.entries += 1;
            return Ok(());
        }
        if let Some(target) = name_b.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if target.starts_with(WHITEOUT_PREFIX.as_bytes()) || target.is_empty() {
                // Other AUFS metadata (.wh..wh.plnk etc.): not content.
                return Ok(());
            }
            if target == b"." || target == b".." {
                // Replacing `.` or `..` would remove the directory itself
                // or its parent, above the layer root for a top-level entry.
                return Err(Error::Hostile(format!(
                    "whiteout {:?} names {:?}",
                    rel.display(),
                    OsStr::from_bytes(target)
                )));
            }
            let target_rel = rel.with_file_name(OsStr::from_bytes(target));
            let full = self.prepare_parents(&target_rel)?;
            self.clear(&full, false)?;
            nix::sys::stat::mknod(
                &full,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0),
                nix::sys::stat::makedev(0, 0),
            )
            .ctx("create whiteout", &full)?;
            lchown(&full, uid, gid)?;
            // The `.wh.` entry's mtime, so a layer's diff is reproducible.
            set_times(&full, mtime)?;
            self.stats.entries += 1;
            return Ok(());
        }

        let full = self.prepare_parents(&rel)?;
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                self.clear(&full, true)?;
                if !full.is_dir() {
                    fs::create_dir(&full).ctx("create directory", &full)?;
                }
                lchown(&full, uid, gid)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode)).ctx("chmod", &full)?;
                self.dirs.push((full.clone(), mtime));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let size = e.size();
                let charge = charged_bytes(size);
                (self.budget)(charge)?;
                let create = || {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&full)
                };
                // Most paths are new: try first, replace what is there only
                // if something is (one lookup per file instead of two).
                let mut f = match create() {
                    Ok(f) => f,
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                        self.clear(&full, false)?;
                        create().ctx("create file", &full)?
                    }
                    Err(err) => return Err(err).ctx("create file", &full),
                };
                let n = copy_data(&mut e, &mut f, &mut self.buf, &rel, &full)?;
                if n != size {
                    return Err(Error::Corrupt(format!(
                        "{}: expected {size} bytes, got {n}",
                        rel.display()
                    )));
                }
                // Sparse entries report the apparent size through the reader
                // (their holes are not written).
                if kind == T::GNUSparse {
                    f.set_len(n).ctx("set length", &full)?;
                }
                fchown(&f, &full, uid, gid)?;
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .ctx("chmod", &full)?;
                drop(f);
                self.stats.file_bytes += n;
                self.stats.charged_bytes += charge;
            }
            T::Symlink => {
                let target = e
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| Error::Corrupt(format!("symlink {:?} without target", rel)))?
                    .into_owned();
                if target.as_os_str().is_empty() {
                    return Err(Error::Corrupt(format!(
                        "symlink {:?} with an empty target",
                        rel.display()
                    )));
                }
                if target.as_os_str().as_bytes().contains(&0) {
                    return Err(Error::Hostile(format!(
                        "symlink {:?}: target contains a NUL byte",
                        rel.display()
                    )));
                }
                self.clear(&full, false)?;
                std::os::unix::fs::symlink(&target, &full).ctx("create symlink", &full)?;
                lchown(&full, uid, gid)?;
            }
            T::Link => {
                let target = e
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| Error::Corrupt(format!("hardlink {:?} without target", rel)))?
                    .into_owned();
                let trel = safe_rel_path(&target)?.ok_or_else(|| {
                    Error::Hostile(format!("hardlink {:?} to the layer root", rel))
                })?;
                let tfull = self.root.join(&trel);
                // The target's parents must be real directories of this layer.
                self.prepare_parents(&trel)?;
                match fs::symlink_metadata(&tfull) {
                    Ok(m) if m.is_dir() => {
                        return Err(Error::Hostile(format!(
                            "hardlink {:?} to a directory",
                            rel.display()
                        )))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(Error::Hostile(format!(
                            "hardlink {:?} points to {:?}, which is not in this layer",
                            rel.display(),
                            target.display()
                        )))
                    }
                }
                if tfull == full {
                    return Ok(());
                }
                self.clear(&full, false)?;
                fs::hard_link(&tfull, &full).ctx("create hardlink", &full)?;
                self.stats.entries += 1;
                return Ok(());
            }
            T::Char | T::Block | T::Fifo => {
                self.clear(&full, false)?;
                let sflag = match kind {
                    T::Char => nix::sys::stat::SFlag::S_IFCHR,
                    T::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let (major, minor) = if kind == T::Fifo {
                    (0, 0)
                } else {
                    (
                        h.device_major().map_err(corrupt)?.unwrap_or(0),
                        h.device_minor().map_err(corrupt)?.unwrap_or(0),
                    )
                };
                nix::sys::stat::mknod(
                    &full,
                    sflag,
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    nix::sys::stat::makedev(major.into(), minor.into()),
                )
                .ctx("create device node", &full)?;
                lchown(&full, uid, gid)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode)).ctx("chmod", &full)?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => {
                return Err(Error::Hostile(format!(
                    "entry {:?} has unsupported type {:?}",
                    rel.display(),
                    other
                )))
            }
        }
        let plain = matches!(
            kind,
            T::Directory | T::Regular | T::Continuous | T::GNUSparse
        );
        for (k, v) in &xattrs {
            if let Err(err) = xattr::set(&full, k, v) {
                // The kernel refuses user.* xattrs on symlinks and device
                // nodes (EPERM), and a filesystem may not support a
                // namespace at all (ENOTSUP): skipped with a warning, as
                // every other unpacker does. Anything else is an error.
                let user_on_special =
                    !plain && k.starts_with("user.") && err.errno() == Some(libc::EPERM);
                if user_on_special || err.errno() == Some(libc::ENOTSUP) {
                    tracing::warn!(path = %rel.display(), xattr = %k, %err, "cannot set xattr");
                } else {
                    return Err(Error::Xattr(err));
                }
            }
        }
        if !kind.is_dir() {
            set_times(&full, mtime)?;
        }
        self.stats.entries += 1;
        Ok(())
    }
}
