//! Durability: fsync of directories and whole filesystems.

use crate::error::{IoContext, Result};
use std::fs::File;
use std::path::Path;

/// fsync a directory.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("fsync directory", dir)
}

/// Flush the whole filesystem holding `dir` (one call instead of an fsync
/// per file).
pub fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).ctx("open for syncfs", dir)?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)).ctx("syncfs", dir)
}

/// Start writing back `len` bytes of `file` from `offset` without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a later fsync of a file
/// written over a long time then has little left to do. Advisory: an error
/// only means the later fsync does all the work.
pub fn start_writeback(file: &impl std::os::fd::AsRawFd, offset: u64, len: u64) {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; an invalid
    // descriptor or range is reported through the return value (ignored:
    // the call is advisory).
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_an_existing_directory_and_fail_on_a_missing_one() {
        let d = tempfile::tempdir().expect("tempdir");
        fsync_dir(d.path()).expect("fsync_dir");
        syncfs(d.path()).expect("syncfs");
        assert!(fsync_dir(&d.path().join("missing")).is_err());
        assert!(syncfs(&d.path().join("missing")).is_err());
        let f = File::create(d.path().join("f")).expect("create");
        std::io::Write::write_all(&mut &f, &[7u8; 8192]).expect("write");
        start_writeback(&f, 0, 8192);
        start_writeback(&f, u64::MAX, 1);
        f.sync_all().expect("fsync");
    }
}
