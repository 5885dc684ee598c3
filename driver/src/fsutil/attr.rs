//! Inode attributes: owner, mode, mtime, and device nodes made like an
//! existing one.

use crate::error::{Error, IoContext, Result};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Create `dst` as a device node, fifo or socket of the same type, mode
/// and device number as `m` describes.
pub fn mknod_like(m: &fs::Metadata, dst: &Path) -> Result<()> {
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
pub fn chown_chmod(m: &fs::Metadata, dst: &Path) -> Result<()> {
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

/// Give `dst` (not following a symlink) the mtime and atime of `m`'s mtime.
pub fn set_mtime(dst: &Path, m: &fs::Metadata) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_and_mtime_are_copied_without_following_symlinks() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("src");
        fs::write(&src, b"").expect("src");
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).expect("chmod");
        let t = nix::sys::time::TimeSpec::new(1_000_000, 5);
        nix::sys::stat::utimensat(
            None,
            &src,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .expect("utimensat");
        let m = fs::symlink_metadata(&src).expect("stat");
        let dst = d.path().join("dst");
        fs::write(&dst, b"").expect("dst");
        chown_chmod(&m, &dst).expect("chown_chmod");
        set_mtime(&dst, &m).expect("set_mtime");
        let dm = fs::symlink_metadata(&dst).expect("stat dst");
        assert_eq!(dm.mode() & 0o7777, 0o640);
        assert_eq!((dm.mtime(), dm.mtime_nsec()), (1_000_000, 5));

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dst, &link).expect("symlink");
        set_mtime(&link, &fs::symlink_metadata(&link).expect("l")).expect("set_mtime on link");
        let after = fs::symlink_metadata(&dst).expect("stat dst");
        assert_eq!(after.mtime(), 1_000_000, "the target was touched");
    }

    #[test]
    fn mknod_like_makes_a_fifo_and_rejects_regular_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let copy = d.path().join("copy");
        mknod_like(&fs::symlink_metadata(&fifo).expect("stat"), &copy).expect("mknod_like");
        assert!(fs::symlink_metadata(&copy)
            .expect("stat")
            .file_type()
            .is_fifo());
        let file = d.path().join("file");
        fs::write(&file, b"").expect("file");
        let e = mknod_like(
            &fs::symlink_metadata(&file).expect("stat"),
            &d.path().join("x"),
        )
        .expect_err("a regular file is not a node");
        assert!(e.to_string().contains("unsupported file type"), "{e}");
    }
}
