//! What a pull is asked to do and what it reports.

use super::auth::Credentials;
use crate::store::ImageOrigin;
use crate::tier::TierKind;
use nvtier_policy::{DiskReason, Placement};
use serde::Serialize;

/// Options of one pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub placement: Placement,
    pub progress: bool,
    /// Credentials: given, the node's (Docker/containerd config) or none.
    pub auth: Credentials,
    /// Fetch this manifest digest instead of what the tag names now, and
    /// keep the image's name (a repair restores what was pulled).
    pub pin_digest: Option<String>,
    /// Who asks. An engine's pull never takes over the record of an image
    /// that `nvtier pull` made (see [`ImageOrigin`]).
    pub origin: ImageOrigin,
    /// Keep each layer blob this pull downloads (a hard link in
    /// [`crate::store::Store::kept_blobs_dir`]) and list it in
    /// [`PullReport::kept_blobs`]; the caller owns and removes the files.
    pub keep_blobs: bool,
}

/// A downloaded, digest-checked layer blob kept after its layer was stored
/// (see [`PullOptions::keep_blobs`]).
#[derive(Debug, Clone)]
pub struct KeptBlob {
    pub digest: String,
    pub media_type: String,
    pub path: std::path::PathBuf,
}

/// Per-layer outcome, in chain order. Times are ms since the pull started.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub index: usize,
    pub digest: String,
    pub diff_id: String,
    pub chain_id: String,
    /// Compressed blob size from the manifest.
    pub size: u64,
    pub download_start_ms: Option<f64>,
    pub download_end_ms: Option<f64>,
    /// When storing started (the tier was chosen): with streamed storing,
    /// soon after the download started.
    pub store_start_ms: Option<f64>,
    /// When the extraction ended (digest and diffID verified).
    pub extracted_ms: Option<f64>,
    /// When the layer was published (after its parent).
    pub store_end_ms: Option<f64>,
    /// What the streamed LASS rule saw when storing started.
    pub lass: Option<LassInputs>,
    pub tier: TierKind,
    pub reused: bool,
    /// Bytes charged to the tier.
    pub stored_bytes: u64,
    /// Why the layer is on disk, when it is.
    pub disk_reason: Option<DiskReason>,
    /// Static classification from the image history (`None`: the command
    /// says nothing certain).
    pub class: Option<nvtier_policy::classify::LayerClass>,
    /// Set when the static rule, not LASS, put the layer on pmem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pmem_reason: Option<String>,
}

/// The inputs of the streamed LASS rule for one layer
/// (`nvtier_policy::lass::streamed`): pmem when `all_downloaded` or
/// `disk_store_ms > wire_left_ms`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LassInputs {
    /// Every download had ended when storing started.
    pub all_downloaded: bool,
    /// Predicted ms until the image's last byte (`u64::MAX`: no rate yet).
    pub wire_left_ms: u64,
    /// Predicted ms to store the layer on disk.
    pub disk_store_ms: u64,
}

/// The outcome of a pull (`nvtier pull --json`).
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub image: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub placement: Placement,
    pub layers: Vec<LayerReport>,
    pub ldl_index: Option<usize>,
    pub download_done_ms: f64,
    pub stored_done_ms: f64,
    pub pmem_bytes: u64,
    pub disk_bytes: u64,
    /// Where the credentials came from (`None`: anonymous).
    pub credentials: Option<String>,
    /// The hot profile found in the registry, and what the pull did with it.
    pub profile: Option<ProfileUse>,
    /// The kept layer blobs (only with [`PullOptions::keep_blobs`]; not
    /// part of the JSON report).
    #[serde(skip)]
    pub kept_blobs: Vec<KeptBlob>,
}

/// A registry profile used by a pull.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileUse {
    pub artifact_digest: String,
    pub repository: String,
    /// Files and bytes of the image's profile after the merge with the
    /// local one.
    pub files: usize,
    pub bytes: u64,
    /// The hot data and metadata layers were built before the pull
    /// returned (false: tiering is off or pmem is missing; the profile is
    /// kept for later). LASS placed the bases either way; pmem bases move
    /// to disk after the deploy.
    pub tiered: bool,
    /// When the hot data and metadata layers were in place, ms since the
    /// pull started (the deploy's end for a profiled pull).
    pub tiered_done_ms: Option<f64>,
    /// Hot bytes copied to pmem at pull time (of the layers whose base is
    /// on disk; those on pmem get theirs when the base moves), and the
    /// image's metadata layer built.
    pub hot_bytes: u64,
    pub meta_built: bool,
    /// Why the hot copies could not be made (the pull still succeeded;
    /// the daemon's migration retries).
    pub error: Option<String>,
}
