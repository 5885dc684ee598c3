//! Tiered mounts of containers' layers: the image's metadata layer and hot
//! data layers under the container's writable layer (and its init layer),
//! as the snapshotter mounts them for containerd. Only images nvtier has a
//! record and a metadata layer of mount this way (after a recording and
//! its migration); the others mount whole layers.

use super::{Graph, GraphLayer};
use crate::error::Result;
use crate::store::hot::MountTiering;
use crate::store::ImageRecord;
use std::path::PathBuf;

/// What a tiered mount of a read-write layer uses.
pub(super) struct TieredSpec {
    /// Lower layers: the read-write parents above the image (the init
    /// layer), then the metadata layer.
    pub lower: Vec<PathBuf>,
    pub data: Vec<PathBuf>,
    pub tiering: MountTiering,
    pub manifest: String,
}

/// The image below a read-write layer.
pub(super) struct Below {
    /// Read-write parents above the image (the init layer), top-most first.
    pub above: Vec<PathBuf>,
    pub image: ImageRecord,
    /// The image's layer directories, top-most first.
    pub dirs: Vec<PathBuf>,
}

impl Graph {
    /// The image below the read-write layer `rec`. `None` when a parent
    /// below the image is not an applied layer, or nvtier has no record of
    /// the image.
    pub(super) fn image_below(&self, rec: &GraphLayer) -> Result<Option<Below>> {
        let (mut above, mut chain, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = rec.parent.clone();
        while let Some(p) = next {
            if above.len() + chain.len() > 1000 {
                return Ok(None);
            }
            let pr = self.must_load(&p)?;
            match &pr.chain_id {
                Some(c) => {
                    chain.push(c.clone());
                    dirs.push(self.data_dir(&pr)?);
                }
                None if chain.is_empty() => above.push(self.data_dir(&pr)?),
                None => return Ok(None),
            }
            next = pr.parent;
        }
        chain.reverse();
        if chain.is_empty() {
            return Ok(None);
        }
        let img = self
            .store
            .images()?
            .into_iter()
            .find(|i| i.chain_ids == chain);
        Ok(img.map(|image| Below { above, image, dirs }))
    }

    /// The tiered mount of the read-write layer `rec`, if its image has a
    /// metadata layer. Planned without the store lock: the caller checks
    /// [`crate::store::hot::tiering_present`] under it before mounting.
    pub(super) fn tiered_spec(&self, rec: &GraphLayer) -> Option<TieredSpec> {
        let below = match self.image_below(rec) {
            Ok(b) => b?,
            Err(e) => {
                tracing::warn!(layer = %rec.id, error = %e, "tiered mount not possible; mounting whole layers");
                return None;
            }
        };
        let Below {
            above,
            image: img,
            dirs,
        } = below;
        match crate::tiering::mount_layers(&self.store, &img, &dirs, false) {
            Ok(Some((meta, data, tiering))) => {
                let mut lower = above;
                lower.push(meta);
                Some(TieredSpec {
                    lower,
                    data,
                    tiering,
                    manifest: img.manifest_digest,
                })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(layer = %rec.id, error = %e, "tiered mount not possible; mounting whole layers");
                None
            }
        }
    }
}
