//! nvtier-tracer: learn which image files a container touches while it
//! cold-starts.
//!
//! - [`bpf`]: the eBPF tracer (tracepoints + ring buffer, filtered by cgroup).
//! - [`fanotify`]: the fallback when eBPF cannot load.
//! - [`index`]: maps real inodes and image paths to (layer, path).
//! - [`profile`]: aggregation into a hot-file profile, merging, export.
//! - [`watch`]: every container on the host, for the daemon's recordings.

pub mod bpf;
mod collector;
pub mod event;
pub mod fanotify;
pub mod index;
pub mod inotify;
pub mod profile;
pub mod watch;

pub use event::{Kind, RawEvent};
pub use index::{LayerIndex, LayerRef};
pub use profile::{Profile, ProfileFile};

/// Errors of the tracer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("eBPF tracer unavailable: {0}")]
    BpfUnavailable(String),
    #[error("fanotify tracer unavailable: {0}")]
    FanotifyUnavailable(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("profile {0}")]
    Profile(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A running tracer of either kind.
pub trait Tracer: Send {
    /// Stop and return every event seen, plus the number of events lost.
    fn stop(self: Box<Self>) -> Result<(Vec<RawEvent>, u64)>;
    /// `"ebpf"` or `"fanotify"`.
    fn name(&self) -> &'static str;
}
