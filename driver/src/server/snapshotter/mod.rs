//! containerd proxy snapshotter (`containerd.services.snapshots.v1`).
//!
//! Semantics follow containerd's overlay snapshotter:
//! - `Prepare` makes an *active* snapshot: an upper + work dir, mounted as an
//!   overlay over the parent chain (a read-write bind of the empty upper when
//!   there is no parent). `View` makes a read-only one (a read-only bind of
//!   the single parent, or an overlay with lowerdirs only).
//! - `Commit` turns an active snapshot into an immutable *committed* one.
//!   When the snapshot is an unpacked image layer (label
//!   `containerd.io/snapshot.ref=<chainID>`, set by containerd's unpacker),
//!   its upper dir is published as an nvtier store layer by a rename: the
//!   committed snapshot IS that layer, and its record references it, so
//!   `nvtier rm`/GC never frees a layer containerd still uses.
//! - `Remove` of a snapshot with children fails with FailedPrecondition;
//!   unknown keys give NotFound; existing keys give AlreadyExists.
//!
//! Placement on the engine's unpack path (LASS approximation, see
//! `nvtier_policy::unpack`): the tier of an unpacked layer is fixed when its
//! `Prepare` arrives (the moment its storing begins): pmem exactly when no
//! download is running in containerd's content ingest area. The upper dir is
//! created on that tier, so `Commit` is a rename, never a copy.
//!
//! Remote-snapshotter pull: a `Prepare` with `containerd.io/snapshot.ref` and
//! the CRI labels (`containerd.io/snapshot/cri.image-ref`, …) makes nvtier
//! pull the whole image itself with LASS ([`crate::pull::pull`], deduplicated
//! per image), create the committed snapshot for the chainID, and answer
//! AlreadyExists: containerd then skips fetching and unpacking the layer.
//! The image's blobs are then written into containerd's content store in
//! the background ([`crate::server::content`]), so the engine sees a
//! complete image.
//!
//! Keys are never used as paths: records live in
//! `STATE/snapshots/<sha256(key)>.json`, directories are named by a random
//! short id. Overlay lowerdirs are short links `STATE/l/<id>` so that a mount
//! spec with many layers stays below the one-page limit of mount(2) options
//! (containerd performs the mount itself, with the legacy API).

use crate::store::Store;
use errors::SResult;
use pull::PullCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

mod cleanup;
mod errors;
mod filters;
mod mounts;
#[cfg(test)]
mod proptests;
mod pull;
mod records;
mod service;
#[cfg(test)]
mod tests;
mod tiered;
mod unpack;
mod validate;

pub use errors::SnapError;
pub use filters::filter_matches;
pub use mounts::build_mounts;
use records::{info_of, new_id, tree_charge, Busy, Claim, Snaps};
pub use tiered::build_tiered_mount;
pub use unpack::unpack_chain;
pub use validate::{validate_key, validate_labels, MAX_KEY_BYTES, MAX_LABELS, MAX_LABEL_BYTES};

pub const LABEL_REF: &str = "containerd.io/snapshot.ref";
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const LABEL_CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const LABEL_CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

/// The snapshotter state shared by all requests.
///
/// `snaps` is held only for in-memory work: never across disk I/O or a
/// store lock (flock) wait, so Stat, List and Mounts never queue behind a
/// slow writer. A writer claims the keys it writes (see [`Snaps::busy`]),
/// does its disk work without the lock, and then updates the table; other
/// writers of the same keys wait on `idle`.
pub struct Inner {
    store: Store,
    snaps: Mutex<Snaps>,
    idle: Condvar,
    pulls: tokio::sync::Mutex<HashMap<String, PullCell>>,
    /// Images whose failed pull was logged as a warning (once each).
    fallbacks_logged: Mutex<std::collections::HashSet<String>>,
    ingest_dir: PathBuf,
    /// Writes the blobs of images nvtier pulls for the engine into
    /// containerd's content store (`content_store_blobs`).
    content: Option<crate::server::content::ContentFeeder>,
    /// Whether the next cleanup must look for orphans on the disk tier:
    /// set at start-up (and consumed by the cleanup `open` runs) and
    /// whenever removing a snapshot directory there failed. containerd asks
    /// for a cleanup after every container it removes, and after
    /// `drop_caches` reading the disk tier's directory costs seeks on the
    /// HDD while other containers cold-start.
    disk_scan: std::sync::atomic::AtomicBool,
}

/// The containerd snapshotter over an nvtier store.
#[derive(Clone)]
pub struct NvSnapshotter {
    inner: Arc<Inner>,
}
