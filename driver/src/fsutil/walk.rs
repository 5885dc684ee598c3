//! Walks over a directory tree that never follow symlinks.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Count (entries, regular-file bytes) under a directory without following
/// symlinks; hardlinked inodes are counted once.
pub fn tree_usage(dir: &Path) -> io::Result<(u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let mut entries = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            entries += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                bytes += m.len();
            }
        }
    }
    Ok((entries, bytes))
}

/// Allocated bytes under `dir` (itself included), each inode once, and the
/// inode count. Best effort, like `du`: what cannot be read is skipped.
pub fn du(dir: &Path) -> (u64, u64) {
    du_many(std::slice::from_ref(&dir.to_path_buf()))
}

/// [`du`] of several trees together: an inode linked into more than one
/// of them counts once.
pub fn du_many(dirs: &[std::path::PathBuf]) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = Vec::new();
    for dir in dirs {
        if let Ok(m) = fs::symlink_metadata(dir) {
            if seen.insert((m.dev(), m.ino())) {
                bytes += m.blocks() * 512;
                inodes += 1;
                stack.push(dir.clone());
            }
        }
    }
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            }
            if seen.insert((m.dev(), m.ino())) {
                bytes += m.blocks() * 512;
                inodes += 1;
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_count_once_and_symlinks_are_not_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("root");
        fs::create_dir_all(root.join("sub")).expect("mkdir");
        fs::write(root.join("a"), vec![1u8; 5000]).expect("a");
        fs::hard_link(root.join("a"), root.join("sub/a2")).expect("hardlink");
        let outside = d.path().join("outside");
        fs::write(&outside, vec![1u8; 100_000]).expect("outside");
        std::os::unix::fs::symlink(&outside, root.join("sub/l")).expect("symlink");
        // a, sub, sub/a2, sub/l
        assert_eq!(tree_usage(&root).expect("usage"), (4, 5000));
        let (bytes, inodes) = du(&root);
        // root, a (= sub/a2), sub, sub/l
        assert_eq!(inodes, 4);
        assert!((8192..100_000).contains(&bytes), "{bytes}");
        // Two trees sharing an inode: counted once.
        let other = d.path().join("other");
        fs::create_dir_all(&other).expect("mkdir");
        fs::hard_link(root.join("a"), other.join("a3")).expect("hardlink");
        let (b2, i2) = du_many(&[root.clone(), other.clone()]);
        assert_eq!(i2, 5, "the shared inode once, plus the new directory");
        assert!(b2 >= bytes && b2 < bytes + 8192, "{b2} vs {bytes}");
    }
}
