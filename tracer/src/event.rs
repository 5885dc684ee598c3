//! Raw events as the tracers deliver them.

use serde::{Deserialize, Serialize};

/// An access kind. The BPF program uses the same bit values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Open,
    Exec,
    Mmap,
    Stat,
    /// Data read into the page cache by the kernel on the container's
    /// behalf (ELF interpreter, readahead, mmap faults).
    Read,
    /// Not observed: read by the container engine before the container
    /// starts (see `Profile::add_engine_reads`). No BPF bit.
    Engine,
}

impl Kind {
    pub fn from_bits(b: u32) -> Option<Kind> {
        Some(match b {
            1 => Kind::Open,
            2 => Kind::Exec,
            4 => Kind::Mmap,
            8 => Kind::Stat,
            16 => Kind::Read,
            _ => return None,
        })
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// A file identified by its real inode (device in user-space encoding).
    Inode {
        kind: Kind,
        ts_ns: u64,
        dev: u64,
        ino: u64,
        pid: u32,
    },
    /// A path as the process gave it (stat family), resolved later.
    Path {
        kind: Kind,
        ts_ns: u64,
        dfd: i32,
        pid: u32,
        path: String,
        /// The process's cwd inside the image, if it could be read.
        cwd: Option<String>,
    },
    /// A path inside the image (fanotify: already resolved through the mount).
    ImagePath {
        kind: Kind,
        ts_ns: u64,
        path: String,
    },
}

impl RawEvent {
    pub fn ts_ns(&self) -> u64 {
        match self {
            RawEvent::Inode { ts_ns, .. }
            | RawEvent::Path { ts_ns, .. }
            | RawEvent::ImagePath { ts_ns, .. } => *ts_ns,
        }
    }
}

/// Monotonic clock in ns (the clock `bpf_ktime_get_ns` uses).
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64);
    t.unwrap_or(0)
}

/// Kernel `dev_t` (major << 20 | minor) to the user-space encoding.
pub fn kdev_to_user(kdev: u32) -> u64 {
    let major = kdev >> 20;
    let minor = kdev & 0xfffff;
    libc::makedev(major, minor)
}
