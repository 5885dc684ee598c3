//! Which containerd image a chain of layers belongs to, for layers that
//! containerd unpacked itself (nvtier saw only chainIDs then).
//!
//! containerd's unpacker labels the image config blob with
//! `containerd.io/gc.ref.snapshot.<snapshotter>` = the top layer's chainID.
//! That finds the config (read from containerd's content directory), whose
//! `rootfs.diff_ids` must give the same chainIDs; the manifest is the blob
//! labelled `containerd.io/gc.ref.content.config` = the config, and the
//! image name the one whose target is that manifest.

use super::client::Containerd;
use super::error::ContentError;
use crate::record::EngineImage;
use crate::store::{chain_ids, digest_hex};
use std::path::Path;

/// The largest image config read (bytes).
const MAX_CONFIG: u64 = 4 << 20;

/// The image whose layers' chainIDs are `chain` (bottom first), from
/// containerd at `socket` (content directory under `root`). `None` when
/// containerd knows no such image.
pub async fn unpacked_image(
    socket: &Path,
    root: &Path,
    snapshotter: &str,
    chain: &[String],
) -> Result<Option<EngineImage>, ContentError> {
    let Some(top) = chain.last() else {
        return Ok(None);
    };
    let ctd = Containerd::connect(socket, "default").await?;
    let key = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
    for ns in ctd.namespaces().await? {
        let c = ctd.in_namespace(&ns);
        for config_digest in c.blobs_labelled(&key, top).await? {
            let Ok(hex) = digest_hex(&config_digest) else {
                continue;
            };
            let path = root
                .join("io.containerd.content.v1.content/blobs/sha256")
                .join(hex);
            let text = match std::fs::metadata(&path) {
                Ok(m) if m.len() <= MAX_CONFIG => std::fs::read(&path),
                Ok(_) => continue,
                Err(e) => Err(e),
            }
            .map_err(|source| ContentError::Io {
                what: "read image config",
                path: path.clone(),
                source,
            })?;
            let Ok(config) = serde_json::from_slice::<serde_json::Value>(&text) else {
                continue;
            };
            let diff_ids = crate::store::config_diff_ids(&config).unwrap_or_default();
            if chain_ids(&diff_ids) != chain {
                continue;
            }
            let manifest = c
                .blobs_labelled("containerd.io/gc.ref.content.config", &config_digest)
                .await?
                .into_iter()
                .next();
            let name = match &manifest {
                Some(m) => c.images_of(m).await?.into_iter().next(),
                None => None,
            };
            return Ok(Some(EngineImage {
                name,
                manifest_digest: manifest,
                config_digest,
                config,
                diff_ids,
            }));
        }
    }
    Ok(None)
}
