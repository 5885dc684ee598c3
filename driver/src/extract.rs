//! Layer extraction: an OCI layer tar stream (gzip, zstd or plain) into a
//! layer directory in overlayfs format.
//!
//! - `.wh.NAME` becomes an overlay whiteout (char device 0:0) and
//!   `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory.
//! - Modes, owners, mtimes, xattrs, symlinks, in-layer hardlinks and device
//!   nodes are preserved.
//! - The blob digest (compressed bytes) and diffID (uncompressed bytes) are
//!   verified.
//! - Hostile input (absolute or `..` paths, writes through a symlink, links
//!   out of the layer, overlay xattrs smuggled in the tar, truncated or
//!   garbage streams) is rejected. The caller extracts into a staging
//!   directory and deletes it on error, so nothing is left behind.

use crate::error::{Error, IoContext, Result};
use crate::fsutil::xattr;
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Read an xattr of a path without following symlinks (the integration
/// tests use this path).
pub use crate::fsutil::xattr::get as lgetxattr;

/// Bytes a regular file of `size` bytes is charged against a tier budget:
/// its data rounded up to 4 KiB blocks.
pub fn charged_bytes(size: u64) -> u64 {
    size.div_ceil(4096) * 4096
}

/// What an extraction produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// `sha256:` digest of the compressed stream as read.
    pub blob_digest: String,
    /// `sha256:` digest of the uncompressed tar stream.
    pub diff_id: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    /// Sum of regular-file sizes.
    pub file_bytes: u64,
    /// Bytes charged to the tier (see [`charged_bytes`]).
    pub charged_bytes: u64,
    /// Entries created (files, dirs, links, whiteouts, devices).
    pub entries: u64,
}

/// What the caller expects, if known.
#[derive(Debug, Clone, Default)]
pub struct Expect<'a> {
    pub blob_digest: Option<&'a str>,
    pub diff_id: Option<&'a str>,
}

struct HashRead<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

impl<R> HashRead<R> {
    fn new(inner: R) -> Self {
        HashRead {
            inner,
            hasher: Sha256::new(),
            n: 0,
        }
    }
    fn finish(self) -> (R, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.n,
        )
    }
}

type Raw<R> = BufReader<HashRead<R>>;

enum Decoder<R: Read> {
    Gzip(flate2::bufread::MultiGzDecoder<Raw<R>>),
    Zstd(zstd::stream::read::Decoder<'static, Raw<R>>),
    Plain(Raw<R>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(d) => d.read(buf),
        }
    }
}

impl<R: Read> Decoder<R> {
    fn into_raw(self) -> Raw<R> {
        match self {
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::Plain(d) => d,
        }
    }
}

fn check_sha256(what: &str, expected: Option<&str>, actual: &str) -> Result<()> {
    if let Some(exp) = expected {
        if !exp.starts_with("sha256:") {
            return Err(Error::Digest {
                what: what.into(),
                expected: exp.into(),
                actual: "(only sha256 digests are supported)".into(),
            });
        }
        if exp != actual {
            return Err(Error::Digest {
                what: what.into(),
                expected: exp.into(),
                actual: actual.into(),
            });
        }
    }
    Ok(())
}

fn corrupt(e: io::Error) -> Error {
    Error::Corrupt(e.to_string())
}

/// Normalise a tar path to a relative path inside the layer, rejecting
/// absolute paths and `..`. Returns `None` for the layer root itself.
pub fn safe_rel_path(p: &Path) -> Result<Option<PathBuf>> {
    if p.as_os_str().as_bytes().first() == Some(&b'/') {
        return Err(Error::Hostile(format!(
            "absolute path {:?} in layer tar",
            p.display()
        )));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::Hostile(format!(
                    "path {:?} contains `..`",
                    p.display()
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::Hostile(format!(
                    "absolute path {:?} in layer tar",
                    p.display()
                )))
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn lchown(path: &Path, uid: u64, gid: u64) -> Result<()> {
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

fn set_times(path: &Path, mtime: i64) -> Result<()> {
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

/// The extraction state for one layer directory.
struct Writer<'b> {
    root: PathBuf,
    budget: &'b mut dyn FnMut(u64) -> Result<()>,
    dirs: Vec<(PathBuf, i64)>,
    stats: ExtractStats,
}

impl Writer<'_> {
    /// Make sure every parent of `rel` is a real directory inside the layer;
    /// create missing ones. A symlink among the parents is rejected.
    fn prepare_parents(&mut self, rel: &Path) -> Result<PathBuf> {
        let mut cur = self.root.clone();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::Hostile(format!(
                        "entry {:?} would be written through the symlink {:?}",
                        rel.display(),
                        cur.strip_prefix(&self.root).unwrap_or(&cur).display()
                    )))
                }
                Ok(m) if m.is_dir() => {}
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
                }
                Err(e) => return Err(e).ctx("stat", &cur),
            }
        }
        Ok(self.root.join(rel))
    }

    /// Remove whatever is at `full` unless it is a directory and the new
    /// entry is a directory too (tar semantics: later entries win).
    fn clear(&mut self, full: &Path, new_is_dir: bool) -> Result<()> {
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() && new_is_dir => Ok(()),
            Ok(m) if m.is_dir() => fs::remove_dir_all(full).ctx("replace directory", full),
            Ok(_) => fs::remove_file(full).ctx("replace file", full),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("stat", full),
        }
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<()> {
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
                self.clear(&full, false)?;
                let size = e.size();
                let charge = charged_bytes(size);
                (self.budget)(charge)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&full)
                    .ctx("create file", &full)?;
                let n = io::copy(&mut e, &mut f).map_err(|err| {
                    if err.kind() == io::ErrorKind::UnexpectedEof
                        || err.kind() == io::ErrorKind::InvalidData
                        || err.kind() == io::ErrorKind::Other
                    {
                        Error::Corrupt(format!("{}: {err}", rel.display()))
                    } else {
                        Error::Io {
                            what: "write file",
                            path: full.clone(),
                            source: err,
                        }
                    }
                })?;
                if n != size {
                    return Err(Error::Corrupt(format!(
                        "{}: expected {size} bytes, got {n}",
                        rel.display()
                    )));
                }
                // Sparse entries report the apparent size through the reader.
                f.set_len(n).ctx("set length", &full)?;
                drop(f);
                lchown(&full, uid, gid)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode)).ctx("chmod", &full)?;
                self.stats.file_bytes += n;
                self.stats.charged_bytes += charge;
            }
            T::Symlink => {
                let target = e
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| Error::Corrupt(format!("symlink {:?} without target", rel)))?
                    .into_owned();
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

/// Extract a layer blob into `dest` (an existing, empty staging directory).
///
/// `budget` is called before each regular file's data is written with the
/// bytes it will be charged; returning an error aborts the extraction.
pub fn extract_layer<R: Read>(
    blob: R,
    dest: &Path,
    expect: &Expect<'_>,
    budget: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<ExtractStats> {
    let mut raw = BufReader::with_capacity(1 << 20, HashRead::new(blob));
    let magic = raw.fill_buf().map_err(corrupt)?.to_vec();
    if magic.is_empty() {
        return Err(Error::Corrupt("empty layer blob".into()));
    }
    let decoder = if magic.starts_with(&[0x1f, 0x8b]) {
        Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(raw))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(raw).map_err(corrupt)?)
    } else {
        Decoder::Plain(raw)
    };
    let mut archive = tar::Archive::new(HashRead::new(decoder));
    let mut w = Writer {
        root: dest.to_path_buf(),
        budget,
        dirs: Vec::new(),
        stats: ExtractStats::default(),
    };
    let mut saw_entry = false;
    for e in archive.entries().map_err(corrupt)? {
        let e = e.map_err(|err| Error::Corrupt(format!("bad tar header: {err}")))?;
        saw_entry = true;
        w.entry(e)?;
    }
    // Hash what follows the end-of-archive marker too: the diffID covers the
    // whole uncompressed stream.
    let mut tar_in = archive.into_inner();
    io::copy(&mut tar_in, &mut io::sink()).map_err(corrupt)?;
    let (decoder, diff_id, uncompressed) = tar_in.finish();
    let mut raw = decoder.into_raw();
    io::copy(&mut raw, &mut io::sink()).map_err(corrupt)?;
    let (_, blob_digest, compressed) = raw.into_inner().finish();
    if !saw_entry && uncompressed < 1024 {
        return Err(Error::Corrupt(format!(
            "not a tar stream ({uncompressed} bytes, no entries)"
        )));
    }
    check_sha256("layer blob", expect.blob_digest, &blob_digest)?;
    check_sha256("layer diffID", expect.diff_id, &diff_id)?;
    // Directory mtimes last, deepest first, so children do not bump them.
    let mut dirs = std::mem::take(&mut w.dirs);
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, t) in dirs {
        set_times(&p, t)?;
    }
    let mut stats = w.stats;
    stats.blob_digest = blob_digest;
    stats.diff_id = diff_id;
    stats.compressed_bytes = compressed;
    stats.uncompressed_bytes = uncompressed;
    Ok(stats)
}

/// Extract a layer blob file.
pub fn extract_file(
    blob: &Path,
    dest: &Path,
    expect: &Expect<'_>,
    budget: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<ExtractStats> {
    let f = File::open(blob).ctx("open blob", blob)?;
    extract_layer(f, dest, expect, budget)
}

#[cfg(test)]
mod tests;
