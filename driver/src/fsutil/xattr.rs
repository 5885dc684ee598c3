//! Extended attributes of a path, never following a final symlink
//! (`llistxattr`, `lgetxattr`, `lsetxattr`): a symlink's own xattrs are
//! read and written, not its target's.
//!
//! Every failure is an [`XattrError`] naming the operation, the path and
//! the attribute. The only errno values turned into a value are the ones
//! whose documented meaning *is* that value:
//! - `lgetxattr` → `ENODATA`: the attribute does not exist (`Ok(None)`).
//! - `llistxattr` → `ENOTSUP`: the filesystem does not support xattrs, so
//!   the path has none (`Ok(vec![])`).

pub use crate::error::{XattrError, XattrOp as Op};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub type Result<T> = std::result::Result<T, XattrError>;

fn cstr(op: Op, path: &Path, name: Option<&OsStr>, s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|e| XattrError::new(op, path, name, e.into()))
}

/// Call `f` with a buffer, first asking for the needed size (`f` with an
/// empty buffer), and retry when the value grew in between (`ERANGE`).
fn sized_read(mut f: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let need = f(&mut []);
        if need < 0 {
            return Err(io::Error::last_os_error());
        }
        if need == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; need.unsigned_abs()];
        let n = f(&mut buf);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(n.unsigned_abs());
        return Ok(buf);
    }
}

/// The xattr names of `path`.
pub fn list(path: &Path) -> Result<Vec<OsString>> {
    let p = cstr(Op::List, path, None, path.as_os_str())?;
    let r = sized_read(|buf| {
        let ptr = if buf.is_empty() {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        // SAFETY: `p` is a NUL-terminated string alive for the call; `ptr`
        // is null with length 0 (a size query) or points to `buf`, which is
        // valid for writes of `buf.len()` bytes.
        unsafe { libc::llistxattr(p.as_ptr(), ptr, buf.len()) }
    });
    let buf = match r {
        Ok(b) => b,
        // No xattr support on this filesystem: the path has none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(XattrError::new(Op::List, path, None, e)),
    };
    Ok(buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsStr::from_bytes(s).to_os_string())
        .collect())
}

/// The value of xattr `name` of `path`; `None` when it has no such
/// attribute.
pub fn get(path: &Path, name: impl AsRef<OsStr>) -> Result<Option<Vec<u8>>> {
    let name = name.as_ref();
    let p = cstr(Op::Get, path, Some(name), path.as_os_str())?;
    let n = cstr(Op::Get, path, Some(name), name)?;
    let r = sized_read(|buf| {
        let ptr = if buf.is_empty() {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        // SAFETY: `p` and `n` are NUL-terminated strings alive for the call;
        // `ptr` is null with length 0 (a size query) or points to `buf`,
        // which is valid for writes of `buf.len()` bytes.
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), ptr, buf.len()) }
    });
    match r {
        Ok(v) => Ok(Some(v)),
        // The attribute does not exist.
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(XattrError::new(Op::Get, path, Some(name), e)),
    }
}

/// Set xattr `name` of `path` to `value` (created or replaced).
pub fn set(path: &Path, name: impl AsRef<OsStr>, value: &[u8]) -> Result<()> {
    let name = name.as_ref();
    let p = cstr(Op::Set, path, Some(name), path.as_os_str())?;
    let n = cstr(Op::Set, path, Some(name), name)?;
    // SAFETY: `p` and `n` are NUL-terminated strings alive for the call;
    // `value` is valid for reads of `value.len()` bytes.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(XattrError::new(
            Op::Set,
            path,
            Some(name),
            io::Error::last_os_error(),
        ))
    }
}

/// Every xattr of `path` with its value, sorted by name. An attribute
/// removed between the listing and the read is left out.
pub fn get_all(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in list(path)? {
        if let Some(v) = get(path, &name)? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

/// Is `name` one of overlayfs' own attributes (`trusted.overlay.*`)?
pub fn is_overlay(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"trusted.overlay.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn user_xattrs_supported(dir: &Path) -> bool {
        let p = dir.join(".probe");
        fs::write(&p, b"").expect("probe file");
        let ok = set(&p, "user.probe", b"1").is_ok();
        fs::remove_file(&p).expect("remove probe");
        ok
    }

    fn tempdir_with_user_xattrs() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(
            user_xattrs_supported(d.path()),
            "the filesystem of {} does not support user.* xattrs; set TMPDIR to one that does",
            d.path().display()
        );
        d
    }

    #[test]
    fn set_get_list_roundtrip() {
        let d = tempdir_with_user_xattrs();
        let f = d.path().join("f");
        fs::write(&f, b"data").expect("file");
        assert_eq!(list(&f).expect("list"), Vec::<OsString>::new());
        assert_eq!(get(&f, "user.a").expect("get missing"), None);
        set(&f, "user.a", b"1").expect("set a");
        set(&f, "user.b", b"").expect("set b");
        set(&f, "user.a", b"22").expect("replace a");
        let mut names = list(&f).expect("list");
        names.sort();
        assert_eq!(
            names,
            vec![OsString::from("user.a"), OsString::from("user.b")]
        );
        assert_eq!(get(&f, "user.a").expect("get a"), Some(b"22".to_vec()));
        // An empty value exists and is not "missing".
        assert_eq!(get(&f, "user.b").expect("get b"), Some(Vec::new()));
        assert_eq!(
            get_all(&f).expect("get_all"),
            vec![
                (OsString::from("user.a"), b"22".to_vec()),
                (OsString::from("user.b"), Vec::new())
            ]
        );
    }

    #[test]
    fn values_larger_than_a_page_are_read_whole() {
        // ext4 caps a value at one block; tmpfs takes up to 64 KiB.
        let d = tempfile::tempdir_in("/dev/shm").expect("a tempdir on the tmpfs /dev/shm");
        let f = d.path().join("f");
        fs::write(&f, b"").expect("file");
        let big = vec![0xabu8; 16 * 1024];
        set(&f, "user.big", &big).expect("set big");
        assert_eq!(get(&f, "user.big").expect("get big"), Some(big));
    }

    #[test]
    fn symlinks_are_not_followed() {
        crate::testutil::require_root("trusted xattrs");
        let d = tempdir_with_user_xattrs();
        let f = d.path().join("target");
        fs::write(&f, b"").expect("file");
        set(&f, "user.t", b"v").expect("set on target");
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&f, &l).expect("symlink");
        assert_eq!(get(&l, "user.t").expect("get on link"), None);
        assert!(list(&l).expect("list link").is_empty());
        // trusted.* works on a symlink itself (as root).
        set(&l, "trusted.nvtier", b"s").expect("set trusted on link");
        assert_eq!(
            get(&l, "trusted.nvtier").expect("get trusted on link"),
            Some(b"s".to_vec())
        );
        assert_eq!(get(&f, "trusted.nvtier").expect("get on target"), None);
    }

    #[test]
    fn errors_are_typed_and_name_path_and_attribute() {
        let d = tempfile::tempdir().expect("tempdir");
        let missing = d.path().join("missing");
        let e = get(&missing, "user.x").expect_err("missing path");
        assert_eq!(e.op, Op::Get);
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(e.to_string().contains("user.x"), "{e}");
        let e = list(&missing).expect_err("missing path");
        assert_eq!((e.op, e.errno()), (Op::List, Some(libc::ENOENT)));
        let e = set(&missing, "user.x", b"v").expect_err("missing path");
        assert_eq!((e.op, e.errno()), (Op::Set, Some(libc::ENOENT)));
        let f = d.path().join("f");
        fs::write(&f, b"").expect("file");
        let e = get(&f, "user.a\0b").expect_err("NUL in name");
        assert_eq!(e.source.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn overlay_names() {
        assert!(is_overlay(OsStr::new("trusted.overlay.opaque")));
        assert!(!is_overlay(OsStr::new("trusted.other")));
        assert!(!is_overlay(OsStr::new("user.overlay.x")));
    }
}
