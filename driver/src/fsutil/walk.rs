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

/// The regular file at `rel` under `root`, with its metadata, reached
/// without following any symlink and without `..`; `None` otherwise. For
/// paths that come from outside (profiles): a symlink in the image, even an
/// absolute one, never leads out of `root`.
pub fn regular_file_beneath(root: &Path, rel: &str) -> Option<(std::path::PathBuf, fs::Metadata)> {
    let comps: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.is_empty() || comps.contains(&"..") {
        return None;
    }
    let mut p = root.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        p.push(c);
        let md = fs::symlink_metadata(&p).ok()?;
        if i + 1 == comps.len() {
            return md.is_file().then_some((p, md));
        }
        if !md.is_dir() {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_beneath_never_follows_symlinks_or_dotdot() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("root");
        fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        fs::write(root.join("usr/lib/libc.so"), b"image").expect("file");
        let host = d.path().join("host");
        fs::create_dir_all(&host).expect("mkdir");
        fs::write(host.join("secret"), b"host").expect("file");
        // An absolute symlink in the image, and a relative one.
        std::os::unix::fs::symlink(&host, root.join("abs")).expect("symlink");
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).expect("symlink");
        std::os::unix::fs::symlink("/etc/hostname", root.join("f")).expect("symlink");
        let (p, md) = regular_file_beneath(&root, "/usr/lib/libc.so").expect("found");
        assert_eq!(p, root.join("usr/lib/libc.so"));
        assert_eq!(md.len(), 5);
        assert!(regular_file_beneath(&root, "usr//./lib/libc.so").is_some());
        for bad in [
            "/abs/secret",
            "/lib/libc.so",
            "/f",
            "/usr/../usr/lib/libc.so",
            "/",
            "",
            "/usr/lib",
            "/nope",
        ] {
            assert!(regular_file_beneath(&root, bad).is_none(), "{bad}");
        }
    }

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
