//! Copying across tiers: file data (holes kept, `memmap2` onto a DAX
//! target) and whole layer trees with every attribute, rate-limited.

use crate::error::{Error, IoContext, Result};
use crate::fsutil::attr::{chown_chmod, mknod_like, set_mtime};
use crate::fsutil::xattr;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Copy I/O rate limit: sleeps so that the average rate since creation
/// stays at or below `rate` bytes/s (0 = unlimited).
#[derive(Debug)]
pub struct Limiter {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl Limiter {
    pub fn new(rate: u64) -> Limiter {
        Limiter {
            rate,
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// Bytes accounted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn account(&mut self, n: u64) {
        self.bytes += n;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

const CHUNK: usize = 1 << 20;

/// The data segments `[start, end)` of an open file (SEEK_DATA/SEEK_HOLE);
/// one segment for the whole file where the filesystem cannot tell.
fn data_segments(f: &File, len: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < len {
        let start = match lseek(fd, off, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return vec![(0, len)],
        };
        let end = lseek(fd, start, Whence::SeekHole).unwrap_or(len as i64);
        out.push((start as u64, (end as u64).min(len)));
        off = end;
    }
    out
}

/// Copy the data of regular file `src` into the new file `dst`, keeping
/// holes. With `mmap`, the target is written through a shared mapping
/// (`memmap2`) and flushed with msync: on a DAX filesystem that is a direct
/// store into persistent memory, skipping the page cache. Returns the data
/// bytes copied.
pub fn copy_data(src: &Path, dst: &Path, lim: &mut Limiter, mmap: bool) -> Result<u64> {
    let s = File::open(src).ctx("open for copy", src)?;
    let len = s.metadata().ctx("stat", src)?.len();
    let d = OpenOptions::new()
        .write(true)
        .read(mmap)
        .create_new(true)
        .open(dst)
        .ctx("create copy", dst)?;
    d.set_len(len).ctx("size copy", dst)?;
    let segs = data_segments(&s, len);
    let mut copied = 0u64;
    if mmap && len > 0 {
        // SAFETY: `d` is a file we just created and nobody else has open;
        // the mapping lives only in this function and the file length is
        // fixed above, so no other process can truncate it under us.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&d) }.ctx("mmap copy target", dst)?;
        for (start, end) in segs {
            let mut off = start;
            while off < end {
                let n = ((end - off) as usize).min(CHUNK);
                let (a, b) = (off as usize, off as usize + n);
                s.read_exact_at(&mut map[a..b], off).ctx("read", src)?;
                lim.account(n as u64);
                off += n as u64;
                copied += n as u64;
            }
        }
        map.flush().ctx("msync copy", dst)?;
    } else {
        let mut buf = vec![0u8; CHUNK];
        for (start, end) in segs {
            let mut off = start;
            while off < end {
                let n = ((end - off) as usize).min(CHUNK);
                s.read_exact_at(&mut buf[..n], off).ctx("read", src)?;
                d.write_all_at(&buf[..n], off).ctx("write", dst)?;
                lim.account(n as u64);
                off += n as u64;
                copied += n as u64;
            }
        }
    }
    Ok(copied)
}

/// Copy owner, mode and xattrs (all of them, overlay ones included) of
/// `src` onto `dst`. The mtime is set by the caller (directories last).
fn copy_attrs(src: &Path, m: &fs::Metadata, dst: &Path) -> Result<()> {
    chown_chmod(m, dst)?;
    for (name, v) in xattr::get_all(src).map_err(Error::Xattr)? {
        xattr::set(dst, &name, &v).map_err(Error::Xattr)?;
    }
    Ok(())
}

/// Copy the layer directory `src` into the empty directory `dst` with every
/// entry type and attribute: whiteouts (0/0 char devices), opaque and
/// other xattrs, hardlinks (kept as hardlinks), symlinks, devices, fifos,
/// holes, owners, modes and mtimes. Returns the data bytes copied.
pub fn copy_tree(src: &Path, dst: &Path, lim: &mut Limiter) -> Result<u64> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    let root_md = fs::symlink_metadata(src).ctx("stat", src)?;
    copy_attrs(src, &root_md, dst)?;
    dirs.push((dst.to_path_buf(), root_md));
    let mut bytes = 0;
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((s, d)) = stack.pop() {
        for e in fs::read_dir(&s).ctx("list", &s)? {
            let e = e.ctx("list", &s)?;
            let sp = e.path();
            let dp = d.join(e.file_name());
            let m = fs::symlink_metadata(&sp).ctx("stat", &sp)?;
            let ft = m.file_type();
            if ft.is_dir() {
                fs::create_dir(&dp).ctx("create directory", &dp)?;
                copy_attrs(&sp, &m, &dp)?;
                stack.push((sp, dp.clone()));
                dirs.push((dp, m));
                continue;
            }
            if !ft.is_symlink() && m.nlink() > 1 {
                if let Some(first) = links.get(&(m.dev(), m.ino())) {
                    fs::hard_link(first, &dp).ctx("hardlink", &dp)?;
                    continue;
                }
                links.insert((m.dev(), m.ino()), dp.clone());
            }
            if ft.is_file() {
                bytes += copy_data(&sp, &dp, lim, false)?;
            } else if ft.is_symlink() {
                let t = fs::read_link(&sp).ctx("readlink", &sp)?;
                std::os::unix::fs::symlink(&t, &dp).ctx("symlink", &dp)?;
            } else {
                mknod_like(&m, &dp)?;
            }
            copy_attrs(&sp, &m, &dp)?;
            set_mtime(&dp, &m)?;
        }
    }
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, m) in dirs {
        set_mtime(&p, &m)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    fn sparse_file(p: &Path) {
        let f = File::create(p).expect("create");
        f.set_len(8 << 20).expect("len");
        f.write_all_at(b"middle", 3 << 20).expect("write");
        f.write_all_at(b"end", (8 << 20) - 3).expect("write");
    }

    #[test]
    fn copy_data_keeps_content_and_holes_both_ways() {
        let t = tempfile::tempdir().expect("tmp");
        let src = t.path().join("src");
        sparse_file(&src);
        for mmap in [false, true] {
            let dst = t.path().join(format!("dst-{mmap}"));
            let mut lim = Limiter::new(0);
            let n = copy_data(&src, &dst, &mut lim, mmap).expect("copy");
            assert_eq!(fs::read(&src).expect("r"), fs::read(&dst).expect("r"));
            assert!(n < 8 << 20, "holes skipped: copied {n}");
            assert_eq!(lim.bytes(), n);
            // The target is new: copying over an existing file is refused.
            assert!(copy_data(&src, &dst, &mut lim, mmap).is_err());
        }
        let empty = t.path().join("empty");
        File::create(&empty).expect("create");
        for mmap in [false, true] {
            let dst = t.path().join(format!("empty-{mmap}"));
            copy_data(&empty, &dst, &mut Limiter::new(0), mmap).expect("copy empty");
            assert_eq!(fs::metadata(&dst).expect("md").len(), 0);
        }
    }

    #[test]
    fn limiter_holds_the_rate() {
        let mut l = Limiter::new(10 << 20);
        let t = Instant::now();
        for _ in 0..4 {
            l.account(1 << 20);
        }
        // 4 MiB at 10 MiB/s: at least 0.4 s.
        assert!(
            t.elapsed() >= Duration::from_millis(390),
            "{:?}",
            t.elapsed()
        );
        let mut u = Limiter::new(0);
        let t = Instant::now();
        u.account(1 << 40);
        assert!(t.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn copy_tree_keeps_types_links_and_attributes() {
        let t = tempfile::tempdir().expect("tmp");
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        fs::create_dir_all(s.join("dir/sub")).expect("mkdir");
        fs::write(s.join("dir/a"), b"a").expect("w");
        fs::hard_link(s.join("dir/a"), s.join("dir/sub/a2")).expect("link");
        std::os::unix::fs::symlink("../dir", s.join("dir/sub/up")).expect("symlink");
        sparse_file(&s.join("sparse"));
        fs::set_permissions(s.join("dir/a"), fs::Permissions::from_mode(0o4711)).expect("chmod");
        nix::unistd::mkfifo(
            &s.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("fifo");
        xattr::set(&s.join("dir"), "user.k", b"v").expect("user xattr");
        xattr::set(&s.join("dir/sub/up"), "trusted.k", b"l").expect("xattr on a symlink");
        fs::create_dir(&d).expect("mkdir");
        let n = copy_tree(&s, &d, &mut Limiter::new(0)).expect("copy");
        assert!(n > 0);
        let a = fs::metadata(d.join("dir/a")).expect("md");
        assert_eq!(a.mode() & 0o7777, 0o4711);
        assert_eq!(a.nlink(), 2);
        assert_eq!(
            a.ino(),
            fs::metadata(d.join("dir/sub/a2")).expect("md").ino()
        );
        assert_eq!(
            fs::read_link(d.join("dir/sub/up")).expect("link"),
            Path::new("../dir")
        );
        assert!(fs::symlink_metadata(d.join("fifo"))
            .expect("md")
            .file_type()
            .is_fifo());
        assert_eq!(
            fs::read(s.join("sparse")).expect("r"),
            fs::read(d.join("sparse")).expect("r")
        );
        assert_eq!(
            xattr::get(&d.join("dir"), "user.k").expect("x"),
            Some(b"v".to_vec())
        );
        assert_eq!(
            xattr::get(&d.join("dir/sub/up"), "trusted.k").expect("x"),
            Some(b"l".to_vec())
        );
        for p in ["dir", "dir/sub", "sparse", "dir/a"] {
            assert_eq!(
                fs::symlink_metadata(s.join(p)).expect("md").mtime(),
                fs::symlink_metadata(d.join(p)).expect("md").mtime(),
                "{p}"
            );
        }
    }
}
