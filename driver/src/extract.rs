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
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Read an xattr of a path without following symlinks (the integration
/// tests use this path).
pub use crate::fsutil::xattr::get as lgetxattr;

use stream::{check_sha256, corrupt};
use writer::{set_times, Writer};

/// Bytes a regular file of `size` bytes is charged against a tier budget:
/// its data rounded up to 4 KiB blocks (saturating: a PAX header can claim
/// any 64-bit size).
pub fn charged_bytes(size: u64) -> u64 {
    size.div_ceil(4096).saturating_mul(4096)
}

/// What an extraction produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// `sha256:` digest of the compressed stream as read: computed only
    /// when the caller expected one ([`Expect::blob_digest`]).
    pub blob_digest: Option<String>,
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
    /// The compressed stream's digest. `None` also means it is not hashed:
    /// a caller that reads a download as it arrives leaves the check to the
    /// download, which hashes the same bytes.
    pub blob_digest: Option<&'a str>,
    pub diff_id: Option<&'a str>,
}

/// The CPU priority of an extraction's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    #[default]
    Normal,
    /// Yield the CPU to the normal extractions running beside it (a
    /// pull's smaller layers, while its largest one is on the critical
    /// path): [`BACKGROUND_NICE`] nice levels lower.
    Background,
}

/// How far below normal a background extraction runs, in nice levels
/// (about a tenth of a normal thread's CPU share when they compete).
pub const BACKGROUND_NICE: i32 = 10;

/// Normalise a tar path to a relative path inside the layer, rejecting
/// absolute paths and `..`. Returns `None` for the layer root itself.
pub fn safe_rel_path(p: &Path) -> Result<Option<PathBuf>> {
    if p.as_os_str().as_bytes().contains(&0) {
        return Err(Error::Hostile(format!(
            "path {:?} contains a NUL byte",
            p.display()
        )));
    }
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

/// Extract a layer blob into `dest` (an existing, empty staging directory).
///
/// `budget` is called before each regular file's data is written with the
/// bytes it will be charged; returning an error aborts the extraction.
///
/// Three threads share the work: this one parses the tar stream and writes
/// the files; a decoding thread reads the blob and inflates it (and hashes
/// it when `expect` has its digest); a hashing thread computes the diffID
/// between them, a bounded number of chunks ahead (see [`pipe`]). On the
/// testbed's 2 CPUs a large layer of many small files extracts about twice
/// as fast as on one thread, which is what a streamed pull waits for after
/// the last byte.
pub fn extract_layer<R: Read + Send>(
    blob: R,
    dest: &Path,
    expect: &Expect<'_>,
    budget: &mut (dyn FnMut(u64) -> Result<()> + Send),
) -> Result<ExtractStats> {
    extract_layer_at(blob, dest, expect, budget, Priority::Normal)
}

/// [`extract_layer`] with its threads at `priority` (a background
/// extraction also writes on a thread of its own, so that the caller's
/// thread keeps its priority).
pub fn extract_layer_at<R: Read + Send>(
    blob: R,
    dest: &Path,
    expect: &Expect<'_>,
    budget: &mut (dyn FnMut(u64) -> Result<()> + Send),
    priority: Priority,
) -> Result<ExtractStats> {
    let nice = match priority {
        Priority::Normal => 0,
        Priority::Background => BACKGROUND_NICE,
    };
    std::thread::scope(|scope| {
        let (reader, decoding) = pipe::spawn(scope, blob, expect.blob_digest.is_some(), nice);
        let written = if nice == 0 {
            write_entries(reader, dest, budget)
        } else {
            scope
                .spawn(|| {
                    crate::fsutil::sched::lower_thread_priority(nice);
                    write_entries(reader, dest, budget)
                })
                .join()
                .unwrap_or_else(|_| Err(Error::Other("the layer writing thread panicked".into())))
        };
        if written.is_err() {
            decoding.stop();
        }
        let decoded = decoding.join();
        let (mut w, saw_entry) = written?;
        let d = decoded?;
        if !saw_entry && d.uncompressed_bytes < 1024 {
            return Err(Error::Corrupt(format!(
                "not a tar stream ({} bytes, no entries)",
                d.uncompressed_bytes
            )));
        }
        check_sha256("layer blob", expect.blob_digest, d.blob_digest.as_deref())?;
        check_sha256("layer diffID", expect.diff_id, Some(&d.diff_id))?;
        // Directory mtimes last, deepest first, so children do not bump them.
        let mut dirs = std::mem::take(&mut w.dirs);
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (p, t) in dirs {
            set_times(&p, t)?;
        }
        let mut stats = w.stats;
        stats.blob_digest = d.blob_digest;
        stats.diff_id = d.diff_id;
        stats.compressed_bytes = d.compressed_bytes;
        stats.uncompressed_bytes = d.uncompressed_bytes;
        Ok(stats)
    })
}

/// Parse the uncompressed tar stream and write its entries under `dest`.
/// Returns the writer (its stats and deferred directory times) and whether
/// the stream had any entry.
fn write_entries<'b>(
    tar_in: pipe::ChunkReader,
    dest: &Path,
    budget: &'b mut (dyn FnMut(u64) -> Result<()> + Send),
) -> Result<(Writer<'b>, bool)> {
    let mut archive = tar::Archive::new(tar_in);
    let mut w = Writer {
        root: dest.to_path_buf(),
        budget,
        dirs: Vec::new(),
        stats: ExtractStats::default(),
        verified: Default::default(),
        buf: vec![0u8; 64 << 10],
    };
    let mut saw_entry = false;
    for e in archive.entries().map_err(corrupt)? {
        let e = e.map_err(|err| Error::Corrupt(format!("bad tar header: {err}")))?;
        saw_entry = true;
        w.entry(e)?;
    }
    Ok((w, saw_entry))
}

/// Extract a layer blob file.
pub fn extract_file(
    blob: &Path,
    dest: &Path,
    expect: &Expect<'_>,
    budget: &mut (dyn FnMut(u64) -> Result<()> + Send),
) -> Result<ExtractStats> {
    let f = File::open(blob).ctx("open blob", blob)?;
    extract_layer(f, dest, expect, budget)
}

mod pipe;
mod stream;
mod writer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
