//! Tiers: a directory on a filesystem. The pmem tier's DAX state is detected
//! so operators (and researchers on emulated pmem) know what they run on.

use crate::error::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub use nvtier_policy::Tier as TierKind;

/// What backs the pmem tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DaxState {
    /// Real DAX: STATX_ATTR_DAX on a probe file, or a pmem block device
    /// mounted with a dax option.
    Dax,
    /// Memory-backed emulation: tmpfs/ramfs, a ramdisk, or a loop device
    /// whose backing file lives in memory.
    Emulated,
    /// A plain filesystem on a block device.
    None,
}

impl std::fmt::Display for DaxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DaxState::Dax => "dax",
            DaxState::Emulated => "emulated",
            DaxState::None => "none",
        })
    }
}

/// One mount from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut v = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let lf: Vec<&str> = left.split(' ').collect();
        let rf: Vec<&str> = right.split(' ').collect();
        if lf.len() < 6 || rf.len() < 3 {
            continue;
        }
        v.push(MountEntry {
            mount_point: PathBuf::from(unescape_mountinfo(lf[4])),
            fstype: rf[0].to_string(),
            source: unescape_mountinfo(rf[1]),
            options: format!("{},{}", lf[5], rf[2]),
        });
    }
    v
}

/// The mount that holds `path` (longest mount-point prefix; last one wins).
pub fn mount_of(path: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<MountEntry> = None;
    for m in parse_mountinfo(&text) {
        if path.starts_with(&m.mount_point) {
            let better = match &best {
                None => true,
                Some(b) => m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len(),
            };
            if better {
                best = Some(m);
            }
        }
    }
    best
}

const STATX_ATTR_DAX: u64 = 0x0020_0000;

fn statx_dax(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statx is a plain zero-initialisable C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `stx` a valid out pointer
    // for the duration of the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    rc == 0
        && stx.stx_attributes_mask & STATX_ATTR_DAX != 0
        && stx.stx_attributes & STATX_ATTR_DAX != 0
}

fn has_dax_option(options: &str) -> bool {
    options
        .split(',')
        .any(|o| o == "dax" || o == "dax=always" || o == "dax=inode")
}

/// Classify a mount's backing without a probe file.
pub fn classify_mount(
    m: &MountEntry,
    loop_backing: Option<&str>,
    backing_fs: Option<&str>,
) -> DaxState {
    match m.fstype.as_str() {
        "tmpfs" | "ramfs" => return DaxState::Emulated,
        _ => {}
    }
    let dev = m.source.trim_start_matches("/dev/");
    if dev.starts_with("pmem") && has_dax_option(&m.options) {
        return DaxState::Dax;
    }
    if dev.starts_with("ram") {
        return DaxState::Emulated;
    }
    if dev.starts_with("loop") {
        let in_memory = loop_backing.is_some_and(|b| b.starts_with("/dev/shm/"))
            || matches!(backing_fs, Some("tmpfs") | Some("ramfs"));
        if in_memory {
            return DaxState::Emulated;
        }
    }
    DaxState::None
}

/// Detect the DAX state of the filesystem holding `dir`.
pub fn detect_dax(dir: &Path) -> DaxState {
    let probe = dir.join(format!(".nvtier-dax-probe.{}", std::process::id()));
    let wrote = std::fs::write(&probe, b"nvtier").is_ok();
    let dax = wrote && statx_dax(&probe);
    if wrote {
        let _ = std::fs::remove_file(&probe);
    }
    if dax {
        return DaxState::Dax;
    }
    let Some(m) = mount_of(dir) else {
        return DaxState::None;
    };
    let dev = m.source.trim_start_matches("/dev/").to_string();
    let (backing, backing_fs) = if dev.starts_with("loop") {
        let b = std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file"))
            .ok()
            .map(|s| s.trim().to_string());
        let fs = b
            .as_deref()
            .and_then(|p| mount_of(Path::new(p)))
            .map(|bm| bm.fstype);
        (b, fs)
    } else {
        (None, None)
    };
    classify_mount(&m, backing.as_deref(), backing_fs.as_deref())
}

/// A tier directory with its layout.
#[derive(Debug, Clone)]
pub struct Tier {
    pub kind: TierKind,
    pub root: PathBuf,
}

impl Tier {
    /// Open a tier: the directory must exist (nvtier does not create mount
    /// points); its sub-directories are created.
    pub fn open(kind: TierKind, root: &Path) -> Result<Tier> {
        let name = match kind {
            TierKind::Pmem => "pmem",
            TierKind::Disk => "disk",
        };
        let md = std::fs::metadata(root).map_err(|e| Error::Tier {
            tier: name,
            path: root.to_path_buf(),
            msg: format!(
                "{e}; create it (for pmem, mount the DAX filesystem or a tmpfs there) or fix `{name}_dir` in the config"
            ),
        })?;
        if !md.is_dir() {
            return Err(Error::Tier {
                tier: name,
                path: root.to_path_buf(),
                msg: "is not a directory".into(),
            });
        }
        let t = Tier {
            kind,
            root: root.to_path_buf(),
        };
        for d in [t.layers_dir(), t.staging_dir()] {
            std::fs::create_dir_all(&d).map_err(|e| Error::Tier {
                tier: name,
                path: d.clone(),
                msg: format!("cannot create: {e} (is the tier writable?)"),
            })?;
        }
        Ok(t)
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn layer_dir(&self, chain_hex: &str) -> PathBuf {
        self.layers_dir().join(chain_hex)
    }

    /// Free and total bytes of the filesystem.
    pub fn fs_space(&self) -> Option<(u64, u64)> {
        let s = nix::sys::statvfs::statvfs(&self.root).ok()?;
        let f = s.fragment_size();
        Some((s.blocks_available() * f, s.blocks() * f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(fstype: &str, source: &str, options: &str) -> MountEntry {
        MountEntry {
            mount_point: PathBuf::from("/mnt"),
            fstype: fstype.into(),
            source: source.into(),
            options: options.into(),
        }
    }

    #[test]
    fn classify() {
        assert_eq!(
            classify_mount(&me("tmpfs", "tmpfs", "rw"), None, None),
            DaxState::Emulated
        );
        assert_eq!(
            classify_mount(&me("ext4", "/dev/pmem0", "rw,dax=always"), None, None),
            DaxState::Dax
        );
        assert_eq!(
            classify_mount(&me("ext4", "/dev/pmem0", "rw"), None, None),
            DaxState::None
        );
        assert_eq!(
            classify_mount(&me("ext4", "/dev/ram0", "rw"), None, None),
            DaxState::Emulated
        );
        assert_eq!(
            classify_mount(
                &me("ext4", "/dev/loop3", "rw"),
                Some("/dev/shm/pmem.img"),
                Some("tmpfs")
            ),
            DaxState::Emulated
        );
        assert_eq!(
            classify_mount(
                &me("ext4", "/dev/loop3", "rw"),
                Some("/var/tmp/hdd.img"),
                Some("ext4")
            ),
            DaxState::None
        );
        assert_eq!(
            classify_mount(&me("ext4", "/dev/vda", "rw"), None, None),
            DaxState::None
        );
    }

    #[test]
    fn mountinfo() {
        let t = "36 35 98:0 / /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 35 0:33 / /run rw,nosuid - tmpfs tmpfs rw,size=10G\n";
        let v = parse_mountinfo(t);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].mount_point, PathBuf::from("/mnt/my dir"));
        assert_eq!(v[0].fstype, "ext3");
        assert_eq!(v[1].fstype, "tmpfs");
        assert!(v[1].options.contains("size=10G"));
    }

    #[test]
    fn tmp_dir_detects() {
        // /dev/shm is tmpfs on every Linux we support.
        if Path::new("/dev/shm").is_dir() {
            assert_eq!(detect_dax(Path::new("/dev/shm")), DaxState::Emulated);
        }
    }
}
