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
    }
}
