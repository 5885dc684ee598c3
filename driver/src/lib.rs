//! nvtier: a two-tier (pmem + disk) container layer store.
//!
//! - [`fsutil`]: filesystem helpers (atomic writes, fsync, xattrs, walks).
//! - [`config`]: the TOML configuration.
//! - [`reference`]: the image reference grammar.
//! - [`tier`]: tier directories and DAX detection.
//! - [`extract`]: OCI layer tar → overlay layer directory.
//! - [`store`]: the layer/image store (chainIDs, metadata, refcounts, GC).
//! - [`flatten`]: an image's flattened metadata layer.
//! - [`pull`]: registry pull with LASS placement.
//! - [`mount`]: overlay root filesystems.
//! - [`tiering`]: file-granular hot-file tiering: metadata layers, hot
//!   generations, the migration engine.
//! - [`run`]: the cold-start probe.
//! - [`repair`]: restore what a lost or replaced tier held.
//! - [`trace`]: `nvtier trace`, a traced cold start of one image.
//! - [`record`]: the daemon's recordings of real container cold starts.
//! - [`server`]: `nvtier serve`: the containerd proxy snapshotter and the legacy
//!   Docker graph driver plugin.
//! - [`report`]: typed reports of the store's state (status, images, layers,
//!   pull) with their text rendering, for the CLI.
//!
//! # Layers
//! Each module uses only modules of the layers below its own (within a
//! layer, without cycles):
//! 1. [`error`], [`fsutil`], [`tier`], [`config`], [`reference`], [`extract`],
//!    [`flatten`]: errors, filesystem helpers, formats and grammars.
//! 2. [`store`]: every persisted record (layers, images, mounts, snapshots,
//!    hot-file tiering records, profiles) and its crash recovery and GC.
//! 3. [`tiering`], [`pull`]: the engines that fill the store.
//! 4. [`mount`], [`run`], [`repair`].
//! 5. [`trace`], [`record`].
//! 6. [`server`], [`report`].
//! 7. The CLI (`bin/nvtier/`).

pub mod config;
pub mod error;
pub mod extract;
pub mod flatten;
pub mod fsutil;
pub mod mount;
pub mod pull;
pub mod record;
pub mod reference;
pub mod repair;
pub mod report;
pub mod run;
pub mod server;
pub mod store;
pub mod tier;
pub mod tiering;
pub mod trace;

#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
