//! Maps what the tracers see to image files: a real inode (device, inode
//! number) of a layer directory, or a path inside the image resolved
//! through the layer stack like overlayfs does (whiteouts, opaque
//! directories, symlinks).

use crate::{Error, Result};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One layer of the traced image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub chain_id: String,
    pub diff_id: String,
    /// The layer directory (overlay lowerdir).
    pub dir: PathBuf,
}

/// A file of the image: layer index (chain order) and absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub layer: usize,
    pub path: String,
    pub bytes: u64,
}

/// The index of one image's layers.
#[derive(Debug, Clone)]
pub struct LayerIndex {
    pub layers: Vec<LayerRef>,
    by_inode: HashMap<(u64, u64), Vec<FileRef>>,
}

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Is `dir` an opaque overlay directory? A missing attribute (or a file
/// system without xattrs) means no; any other failure is logged, and the
/// directory is treated as not opaque (the lower layers are then searched
/// too, which can only add names to the index, never lose one).
fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(dir.as_os_str().as_bytes()),
        std::ffi::CString::new(OPAQUE_XATTR),
    ) else {
        return false;
    };
    let mut v = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read {OPAQUE_XATTR}");
        }
        return false;
    }
    n == 1 && v[0] == b'y'
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// What one layer holds at a path.
enum Entry {
    Missing,
    Whiteout,
    Dir { opaque: bool },
    Symlink(PathBuf),
    File(u64),
}

fn entry(layer_dir: &Path, rel: &str) -> Entry {
    let p = layer_dir.join(rel.trim_start_matches('/'));
    match std::fs::symlink_metadata(&p) {
        Err(_) => Entry::Missing,
        Ok(m) if is_whiteout(&m) => Entry::Whiteout,
        Ok(m) if m.is_dir() => Entry::Dir {
            opaque: is_opaque(&p),
        },
        Ok(m) if m.file_type().is_symlink() => {
            Entry::Symlink(std::fs::read_link(&p).unwrap_or_default())
        }
        Ok(m) => Entry::File(m.len()),
    }
}

impl LayerIndex {
    /// Index the regular files of every layer (chain order, bottom first).
    pub fn build(layers: Vec<LayerRef>) -> Result<LayerIndex> {
        let mut by_inode: HashMap<(u64, u64), Vec<FileRef>> = HashMap::new();
        for (i, l) in layers.iter().enumerate() {
            let mut stack = vec![l.dir.clone()];
            while let Some(d) = stack.pop() {
                let rd = std::fs::read_dir(&d).map_err(|source| Error::Io {
                    what: "index layer",
                    path: d.clone(),
                    source,
                })?;
                for e in rd.flatten() {
                    let Ok(m) = e.metadata() else { continue };
                    let p = e.path();
                    if m.is_dir() {
                        stack.push(p);
                    } else if m.is_file() {
                        let rel = p.strip_prefix(&l.dir).unwrap_or(&p);
                        by_inode
                            .entry((m.dev(), m.ino()))
                            .or_default()
                            .push(FileRef {
                                layer: i,
                                path: format!("/{}", rel.display()),
                                bytes: m.len(),
                            });
                    }
                }
            }
        }
        Ok(LayerIndex { layers, by_inode })
    }

    /// Image files behind a real inode (several names for hardlinks).
    pub fn by_inode(&self, dev: u64, ino: u64) -> &[FileRef] {
        self.by_inode
            .get(&(dev, ino))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Resolve an absolute path in the merged image view to the layer file
    /// that provides it, following symlinks (at most 40). Directories and
    /// missing paths give `None`.
    pub fn resolve(&self, path: &str) -> Option<FileRef> {
        let mut todo: Vec<String> = split(path);
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        while !todo.is_empty() {
            let c = todo.remove(0);
            match c.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            done.push(c);
            let rel = done.join("/");
            let last = todo.is_empty();
            // Top-most layer first, stopping at whiteouts and opaque dirs.
            let mut found: Option<(usize, Entry)> = None;
            for i in (0..self.layers.len()).rev() {
                match entry(&self.layers[i].dir, &rel) {
                    Entry::Missing => {
                        if self.hidden_below(i, &done) {
                            break;
                        }
                        continue;
                    }
                    Entry::Whiteout => break,
                    e => {
                        found = Some((i, e));
                        break;
                    }
                }
            }
            match found? {
                (_, Entry::Dir { .. }) => {
                    if last {
                        return None;
                    }
                }
                (_, Entry::Symlink(target)) => {
                    links += 1;
                    if links > 40 {
                        return None;
                    }
                    done.pop();
                    let mut t = split(&target.to_string_lossy());
                    if target.is_absolute() {
                        done.clear();
                    }
                    t.append(&mut todo);
                    todo = t;
                }
                (i, Entry::File(bytes)) => {
                    if !last {
                        return None;
                    }
                    return Some(FileRef {
                        layer: i,
                        path: format!("/{rel}"),
                        bytes,
                    });
                }
                (_, Entry::Missing | Entry::Whiteout) => return None,
            }
        }
        None
    }

    /// [`resolve`](Self::resolve), plus every other name of the same inode
    /// in that layer (hardlinks), as the inode-based tracer reports them.
    pub fn resolve_all(&self, path: &str) -> Vec<FileRef> {
        let Some(f) = self.resolve(path) else {
            return Vec::new();
        };
        let p = self.layers[f.layer]
            .dir
            .join(f.path.trim_start_matches('/'));
        match std::fs::metadata(&p) {
            Ok(m) if !self.by_inode(m.dev(), m.ino()).is_empty() => {
                self.by_inode(m.dev(), m.ino()).to_vec()
            }
            _ => vec![f],
        }
    }

    /// Does layer `i` hide everything below it at `parts` (an opaque
    /// ancestor directory, or a whiteout of an ancestor)?
    fn hidden_below(&self, i: usize, parts: &[String]) -> bool {
        for k in 1..parts.len() {
            let anc = parts[..k].join("/");
            match entry(&self.layers[i].dir, &anc) {
                Entry::Dir { opaque: true } | Entry::Whiteout => return true,
                Entry::File(_) | Entry::Symlink(_) => return true,
                _ => {}
            }
        }
        false
    }
}

fn split(p: &str) -> Vec<String> {
    p.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn layer(root: &Path, name: &str) -> LayerRef {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        LayerRef {
            chain_id: format!("chain-{name}"),
            diff_id: format!("diff-{name}"),
            dir,
        }
    }

    #[test]
    fn resolves_like_overlay() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = layer(t.path(), "l0");
        let l1 = layer(t.path(), "l1");
        fs::create_dir_all(l0.dir.join("usr/lib")).expect("mkdir");
        fs::write(l0.dir.join("usr/lib/a.so"), b"aaaa").expect("w");
        fs::write(l0.dir.join("usr/lib/b.so"), b"b").expect("w");
        std::os::unix::fs::symlink("usr/lib", l0.dir.join("lib")).expect("ln");
        fs::create_dir_all(l1.dir.join("usr/lib")).expect("mkdir");
        fs::write(l1.dir.join("usr/lib/b.so"), b"bb").expect("w");
        fs::hard_link(l1.dir.join("usr/lib/b.so"), l1.dir.join("usr/lib/b2.so")).expect("ln");
        let idx = LayerIndex::build(vec![l0.clone(), l1.clone()]).expect("index");
        assert_eq!(
            idx.resolve("/usr/lib/a.so"),
            Some(FileRef {
                layer: 0,
                path: "/usr/lib/a.so".into(),
                bytes: 4
            })
        );
        assert_eq!(
            idx.resolve("/usr/lib/b.so").map(|f| f.layer),
            Some(1),
            "upper layer wins"
        );
        assert_eq!(
            idx.resolve("/lib/a.so").map(|f| f.path),
            Some("/usr/lib/a.so".into())
        );
        assert_eq!(
            idx.resolve("/usr/./lib/../lib/a.so").map(|f| f.layer),
            Some(0)
        );
        assert_eq!(idx.resolve("/usr/lib"), None, "directories are not files");
        assert_eq!(idx.resolve("/nope"), None);
        let m = fs::metadata(l1.dir.join("usr/lib/b.so")).expect("stat");
        let names: Vec<_> = idx
            .by_inode(m.dev(), m.ino())
            .iter()
            .map(|f| f.path.clone())
            .collect();
        assert_eq!(names.len(), 2, "both hardlinked names: {names:?}");
        assert!(idx.by_inode(0, 0).is_empty());
    }
}
