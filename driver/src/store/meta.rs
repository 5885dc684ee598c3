//! Persisted records (serde JSON, written atomically by the store).

use crate::error::{Error, IoContext, Result};
use crate::tier::TierKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One stored layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub chain_id: String,
    pub diff_id: String,
    /// Digest of the blob it was stored from (`None` when unpacked locally).
    pub blob_digest: Option<String>,
    pub media_type: Option<String>,
    pub parent: Option<String>,
    pub tier: TierKind,
    /// Compressed blob bytes.
    pub compressed_bytes: u64,
    /// Uncompressed tar bytes.
    pub uncompressed_bytes: u64,
    /// Sum of regular-file sizes.
    pub file_bytes: u64,
    /// Bytes charged to the tier (file data rounded up to 4 KiB).
    pub charged_bytes: u64,
    pub file_count: u64,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// How long storing took.
    pub store_ms: u64,
}

/// One pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Normalised reference, e.g. `10.77.3.2:5000/demo:latest`.
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// The image config JSON as pulled.
    pub config: serde_json::Value,
    /// Chain order, bottom first.
    pub chain_ids: Vec<String>,
    pub diff_ids: Vec<String>,
    pub blob_digests: Vec<String>,
    pub created_ms: u64,
    /// Who made the record. Records older than the field are `cli`.
    #[serde(default)]
    pub origin: ImageOrigin,
}

/// Who pulled an image, which decides who removes its record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageOrigin {
    /// `nvtier pull` (or a record from before origins): removed only by
    /// `nvtier rm`.
    #[default]
    Cli,
    /// The snapshotter's remote-snapshot pull for containerd: removed with
    /// the engine's last committed snapshot of the image's top layer.
    Engine,
}

/// One overlay mount made by nvtier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub target: PathBuf,
    pub image: String,
    pub chain_ids: Vec<String>,
    pub container_id: String,
    pub refcount: u32,
    pub created_ms: u64,
    /// Set for a tiered mount: the metadata layer and hot generations it
    /// uses (they are kept until this mount goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiering: Option<super::hot::MountTiering>,
}

/// Kind of a containerd snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    View,
    Active,
    Committed,
}

/// One containerd snapshot (`STATE/snapshots/<sha256(key)>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// containerd's key (or committed name); never used as a path.
    pub key: String,
    /// Short random id `[0-9a-z]{10}`: names the snapshot's directory
    /// (`<tier>/snapshots/<id>/`) and its short link `STATE/l/<id>`.
    pub id: String,
    pub kind: SnapshotKind,
    /// Key of the parent snapshot ("" = none).
    pub parent: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Tier holding the snapshot's own directory (upper/work, or the
    /// committed tree when `layer` is `None`).
    pub tier: TierKind,
    /// Committed snapshots backed by an nvtier store layer: its chainID.
    /// Such a snapshot references the layer (see `Store::refcounts`).
    pub layer: Option<String>,
    /// An active snapshot of an image with a metadata layer mounts tiered:
    /// what its mounts use (the metadata layer, hot generations). Held until
    /// Remove, so GC keeps them while containerd may have them mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiering: Option<super::hot::MountTiering>,
}

pub fn read_json<T: DeserializeOwned>(p: &Path) -> Result<Option<T>> {
    match std::fs::read(p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::Other(format!(
                "corrupt record {}: {e} (move it away and re-pull the image)",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("read", p),
    }
}

pub fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).ctx("list", dir)? {
        let e = e.ctx("list", dir)?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        if let Some(x) = read_json(&e.path())? {
            v.push(x);
        }
    }
    Ok(v)
}
