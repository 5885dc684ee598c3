//! Overlay root filesystems.
//!
//! Lower directories are passed one by one with the new mount API
//! (`fsopen`/`fsconfig("lowerdir+")`/`fsmount`/`move_mount`, Linux 6.8+), so
//! images with hundreds of layers mount regardless of the one-page limit on
//! legacy mount options. Mounts are reference-counted per target directory.
//!
//! The system calls go through [`MountOps`] ([`LinuxMounts`] in production),
//! so the bookkeeping around them is testable without root.

mod ops;
#[cfg(test)]
mod tests;

pub use ops::{LinuxMounts, MountOps};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::store::{now_ms, MountRecord, Store};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// What goes into one overlay mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlaySpec {
    /// Top-most first.
    pub lower: Vec<PathBuf>,
    /// Data-only lower layers (`datadir+`, Linux 6.7+), top-most first:
    /// reachable only through metacopy redirects from `lower`.
    pub data: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

fn c(s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Other("NUL byte in mount argument".into()))
}

/// Drain the kernel's messages from an fs context fd (for error reports).
fn fs_messages(fd: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: buf is valid for writes of its length; fd is open.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.push(
            String::from_utf8_lossy(&buf[..n as usize])
                .trim()
                .to_string(),
        );
    }
    out.join("; ")
}

fn set_string(fd: &OwnedFd, key: &str, val: &Path, target: &Path) -> Result<()> {
    let k = c(key.as_bytes())?;
    let v = c(val.as_os_str().as_bytes())?;
    // SAFETY: fsconfig with valid fd and NUL-terminated strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd.as_raw_fd(),
            FSCONFIG_SET_STRING,
            k.as_ptr(),
            v.as_ptr(),
            0,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Mount {
            target: target.to_path_buf(),
            msg: format!(
                "overlay option {key}={}: {e} {}",
                val.display(),
                fs_messages(fd)
            ),
        });
    }
    Ok(())
}

/// Mount an overlay at `target`.
pub fn mount_overlay(spec: &OverlaySpec, target: &Path) -> Result<()> {
    if spec.lower.is_empty() {
        return Err(Error::Mount {
            target: target.into(),
            msg: "no lower layers".into(),
        });
    }
    let fstype = c(b"overlay")?;
    // SAFETY: fsopen with a valid NUL-terminated name.
    let raw = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    if raw < 0 {
        return Err(Error::Mount {
            target: target.into(),
            msg: format!(
                "fsopen(overlay): {} (is overlayfs available? `modprobe overlay`)",
                std::io::Error::last_os_error()
            ),
        });
    }
    // SAFETY: the kernel returned a fresh fd that we now own.
    let fsfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    for l in &spec.lower {
        set_string(&fsfd, "lowerdir+", l, target)?;
    }
    if !spec.data.is_empty() {
        // Metacopy stubs in `lower` redirect to file data in these layers.
        set_string(&fsfd, "metacopy", Path::new("on"), target)?;
        set_string(&fsfd, "redirect_dir", Path::new("on"), target)?;
        for d in &spec.data {
            set_string(&fsfd, "datadir+", d, target)?;
        }
    }
    if let (Some(u), Some(w)) = (&spec.upper, &spec.work) {
        set_string(&fsfd, "upperdir", u, target)?;
        set_string(&fsfd, "workdir", w, target)?;
    }
    // SAFETY: valid fd; null key/value are allowed for CMD_CREATE.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fsfd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Mount {
            target: target.into(),
            msg: format!("creating overlay: {e} {}", fs_messages(&fsfd)),
        });
    }
    // SAFETY: valid fs context fd.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fsfd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if m < 0 {
        return Err(Error::Mount {
            target: target.into(),
            msg: format!("fsmount: {}", std::io::Error::last_os_error()),
        });
    }
    // SAFETY: fresh fd from the kernel.
    let mfd = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let empty = c(b"")?;
    let t = c(target.as_os_str().as_bytes())?;
    // SAFETY: valid fds and NUL-terminated paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mfd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Error::Mount {
            target: target.into(),
            msg: format!("move_mount: {}", std::io::Error::last_os_error()),
        });
    }
    Ok(())
}

/// Is `p` a mount point (per /proc/self/mountinfo)?
pub fn is_mounted(p: &Path) -> bool {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            crate::tier::parse_mountinfo(&t)
                .iter()
                .any(|m| m.mount_point == p)
        })
        .unwrap_or(false)
}

/// The overlay spec of an image: its layers top-first, and a fresh
/// upper/work pair under `containers/<id>` on the `upper_tier`.
pub fn image_spec(store: &Store, chain_ids: &[String], container_id: &str) -> Result<OverlaySpec> {
    let mut lower = Vec::with_capacity(chain_ids.len());
    for c in chain_ids.iter().rev() {
        let m = store.layer(c)?.ok_or_else(|| {
            Error::Other(format!(
                "layer {c} is missing from the store; re-pull the image"
            ))
        })?;
        store.check_layer(&m)?;
        lower.push(store.layer_dir(&m)?);
    }
    let cdir = store.containers_dir().join(container_id);
    Ok(OverlaySpec {
        lower,
        upper: Some(cdir.join("upper")),
        work: Some(cdir.join("work")),
        ..Default::default()
    })
}

fn validate_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::Other(format!("invalid container id {id:?}")));
    }
    Ok(())
}

/// Mount `image` at `target` (refcounted: mounting the same image at the
/// same target again only bumps the count).
pub fn mount_image(store: &Store, image: &str, target: &Path) -> Result<MountRecord> {
    mount_image_opts(store, image, target, false)
}

/// [`mount_image`]. An image with a metadata layer (built by `nvtier
/// migrate`, or here when `flat` asks for it) mounts tiered: its directory
/// tree from the metadata layer on pmem, file data from each layer's
/// current hot generation and base as data-only lower layers (see
/// [`crate::tiering`]). Otherwise, or with tiering off, a plain overlay of
/// the layers.
pub fn mount_image_opts(
    store: &Store,
    image: &str,
    target: &Path,
    flat: bool,
) -> Result<MountRecord> {
    mount_image_with(&LinuxMounts, store, image, target, flat)
}

/// [`mount_image_opts`] through `ops`.
pub(crate) fn mount_image_with(
    ops: &dyn MountOps,
    store: &Store,
    image: &str,
    target: &Path,
    flat: bool,
) -> Result<MountRecord> {
    let target = std::fs::canonicalize(target).ctx("mount target", target)?;
    let _l = store.lock_store()?;
    let rec_path = store.mount_record_path(&target);
    if let Some(mut rec) = crate::store::meta_read::<MountRecord>(&rec_path)? {
        if rec.image != image {
            return Err(Error::Mount {
                target,
                msg: format!("already holds image {} (umount it first)", rec.image),
            });
        }
        if ops.is_mounted(&target) {
            rec.refcount += 1;
            write_record(&rec_path, &rec)?;
            return Ok(rec);
        }
        // Stale record (e.g. reboot): remount below with a fresh upper.
        remove_container(store, &rec.container_id)?;
    }
    let img = store
        .image(image)?
        .ok_or_else(|| Error::ImageNotFound(image.to_string()))?;
    let id = format!("{:016x}", rand::random::<u64>());
    validate_id(&id)?;
    let mut spec = image_spec(store, &img.chain_ids, &id)?;
    let mut tiering = None;
    if let Some((meta, data, t)) = crate::tiering::mount_layers(store, &img, &spec.lower, flat)? {
        spec.lower = vec![meta];
        spec.data = data;
        tiering = Some(t);
    } else if flat {
        if let Err(why) = crate::tiering::enabled(store) {
            return Err(Error::Mount { target, msg: why });
        }
    }
    for d in [&spec.upper, &spec.work].into_iter().flatten() {
        std::fs::create_dir_all(d).ctx("create", d)?;
    }
    if let Err(e) = ops.mount_overlay(&spec, &target) {
        let _ = remove_container(store, &id);
        return Err(e);
    }
    let rec = MountRecord {
        target: target.clone(),
        image: image.to_string(),
        chain_ids: img.chain_ids.clone(),
        container_id: id,
        refcount: 1,
        created_ms: now_ms(),
        tiering,
    };
    crate::store::hot::note_start(store, &img.manifest_digest);
    if let Err(e) = write_record(&rec_path, &rec) {
        let _ = ops.umount(&target, true);
        let _ = remove_container(store, &rec.container_id);
        return Err(e);
    }
    Ok(rec)
}

fn write_record(p: &Path, rec: &MountRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(rec).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(p, &json)
}

fn remove_container(store: &Store, id: &str) -> Result<()> {
    validate_id(id)?;
    let d = store.containers_dir().join(id);
    match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("remove container directory", d),
    }
}

/// Drop one reference to the mount at `target`; unmount at zero. Returns
/// the remaining count.
pub fn umount_image(store: &Store, target: &Path) -> Result<u32> {
    umount_image_with(&LinuxMounts, store, target)
}

/// [`umount_image`] through `ops`.
pub(crate) fn umount_image_with(ops: &dyn MountOps, store: &Store, target: &Path) -> Result<u32> {
    let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let remaining = {
        let _l = store.lock_store()?;
        let rec_path = store.mount_record_path(&target);
        let mut rec =
            crate::store::meta_read::<MountRecord>(&rec_path)?.ok_or_else(|| Error::Mount {
                target: target.clone(),
                msg: "not mounted by nvtier (see `nvtier status`)".into(),
            })?;
        rec.refcount = rec.refcount.saturating_sub(1);
        if rec.refcount > 0 {
            write_record(&rec_path, &rec)?;
            return Ok(rec.refcount);
        }
        if ops.is_mounted(&target) {
            if let Err(e) = ops.umount(&target, false) {
                if ops::is_errno(&e, libc::EBUSY) {
                    tracing::warn!(target = %target.display(), "busy; detaching lazily");
                    ops.umount(&target, true)?;
                } else {
                    return Err(e);
                }
            }
        }
        remove_container(store, &rec.container_id)?;
        std::fs::remove_file(&rec_path).ctx("remove mount record", &rec_path)?;
        0
    };
    // Layers of images removed while mounted can go now.
    store.gc()?;
    Ok(remaining)
}
