//! nvtier: a two-tier (pmem + disk) container layer store.
//!
//! - [`fsutil`]: filesystem helpers (atomic writes, fsync, xattrs, walks).
//! - [`config`]: the TOML configuration.
//! - [`tier`]: tier directories and DAX detection.
//! - [`extract`]: OCI layer tar → overlay layer directory.
//! - [`store`]: the layer/image store (chainIDs, metadata, refcounts, GC).
//! - [`pull`]: registry pull with LASS placement.
//! - [`mount`]: overlay root filesystems.
//! - [`tiering`]: file-granular hot-file tiering: metadata layers, hot
//!   generations, the migration engine.
//! - [`run`]: the cold-start probe.
//! - [`server`]: `nvtier serve`: the containerd proxy snapshotter and the legacy
//!   Docker graph driver plugin.

pub mod config;
pub mod error;
pub mod extract;
pub mod flatten;
pub mod fsutil;
pub mod mount;
pub mod pull;
pub mod run;
pub mod server;
pub mod store;
pub mod tier;
pub mod tiering;
pub mod trace;

pub use error::{Error, Result};
