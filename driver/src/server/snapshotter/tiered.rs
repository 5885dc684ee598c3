//! Tiered mounts of active snapshots: the image's metadata layer and hot
//! data layers instead of the plain parent chain.

use super::Inner;
use crate::error::{Error, Result};
use crate::store::hot::MountTiering;
use crate::store::{SnapshotKind, SnapshotRecord};
use containerd_snapshots::api::types::Mount;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The mount of an active snapshot of a tiered image: the committed
/// snapshots above the image (`above`, e.g. dockerd's init layer) and the
/// image's metadata layer as the regular lower layers, then the data-only
/// layers after `::` (overlayfs legacy syntax, Linux 6.5+), top-most first. `None` when
/// the options would not fit the one page mount(2) takes (containerd mounts
/// with the legacy API) or a path cannot be written in the option.
pub fn build_tiered_mount(
    above: &[PathBuf],
    meta: &Path,
    data: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Option<Mount> {
    let mut lower = String::new();
    for a in above {
        lower.push_str(a.to_str()?);
        lower.push(':');
    }
    lower.push_str(meta.to_str()?);
    for d in data {
        lower.push_str("::");
        lower.push_str(d.to_str()?);
    }
    let options = vec![
        format!("workdir={}", work.to_str()?),
        format!("upperdir={}", upper.to_str()?),
        format!("lowerdir={lower}"),
        "metacopy=on".to_string(),
        "redirect_dir=on".to_string(),
    ];
    let bad = |o: &String| {
        let v = o.split_once('=').map_or("", |(_, v)| v);
        v.contains(',') || v.contains('\\') || (o.starts_with("lowerdir=") && v.contains(":::"))
    };
    if options.iter().any(bad) || options.iter().map(|o| o.len() + 1).sum::<usize>() > 4000 {
        return None;
    }
    Some(Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    })
}

impl Inner {
    /// The tiered mount recorded for an active snapshot: metadata layer,
    /// then per parent layer (top-most first) its hot generation and its
    /// base (short link).
    pub(super) fn tiered_mount(
        &self,
        snaps: &BTreeMap<String, SnapshotRecord>,
        r: &SnapshotRecord,
        t: &MountTiering,
        d: &Path,
    ) -> Result<Option<Mount>> {
        let meta = crate::store::hot::meta_dir(&self.store, &format!("sha256:{}", t.meta))?;
        let mut above = Vec::new();
        // Top-most first: (hot generation dir, base link) per layer.
        let mut layers: Vec<(Option<PathBuf>, PathBuf)> = Vec::new();
        let mut p = r.parent.clone();
        while !p.is_empty() {
            let pr = snaps
                .get(&p)
                .ok_or_else(|| Error::Other(format!("parent snapshot {p:?} is gone")))?;
            let Some(c) = pr.layer.as_deref() else {
                if !layers.is_empty() {
                    return Err(Error::Other(format!(
                        "parent snapshot {p:?} below the image is not an nvtier layer"
                    )));
                }
                above.push(self.ensure_link(pr)?);
                p = pr.parent.clone();
                continue;
            };
            let hot = match t.hot.iter().find(|(hc, _)| hc == c) {
                Some((_, g)) => Some(crate::store::hot::gen_dir(&self.store, c, *g)?),
                None => None,
            };
            layers.push((hot, self.ensure_link(pr)?));
            if layers.len() > 4096 {
                return Err(Error::Other("parent chain too long (cycle?)".into()));
            }
            p = pr.parent.clone();
        }
        // The order chosen when the snapshot was prepared (policy indices
        // count from the bottom).
        let policy: Vec<nvtier_policy::datalayers::DataLayer<'_>> = layers
            .iter()
            .rev()
            .map(|(h, _)| nvtier_policy::datalayers::DataLayer {
                has_hot: h.is_some(),
                hot_paths: Vec::new(),
            })
            .collect();
        let n = layers.len();
        let data: Vec<PathBuf> = nvtier_policy::datalayers::order(&policy, t.hot_first)
            .into_iter()
            .filter_map(|d| match d {
                nvtier_policy::datalayers::Data::Hot(i) => layers[n - 1 - i].0.clone(),
                nvtier_policy::datalayers::Data::Base(i) => Some(layers[n - 1 - i].1.clone()),
            })
            .collect();
        Ok(build_tiered_mount(
            &above,
            &meta,
            &data,
            &d.join("fs"),
            &d.join("work"),
        ))
    }

    /// An active snapshot on top of an image nvtier pulled (possibly with
    /// committed snapshots in between), with a metadata layer: what its
    /// tiered mount uses. Sets `started` to the image's manifest digest:
    /// the caller counts the start for the migration policy. Without the
    /// store lock, the caller checks [`Inner::tiering_present`] under it
    /// before saving the record.
    pub(super) fn tiering_for(
        &self,
        snaps: &BTreeMap<String, SnapshotRecord>,
        parent: &str,
        started: &mut Option<String>,
    ) -> Result<Option<MountTiering>> {
        let mut chain = Vec::new();
        let mut links = Vec::new();
        let mut p = parent.to_string();
        while !p.is_empty() {
            let Some(r) = snaps.get(&p) else {
                return Ok(None);
            };
            // Committed snapshots above the image's layers (dockerd's init
            // layer) stay regular lower layers.
            let Some(c) = &r.layer else {
                if chain.is_empty() && r.kind == SnapshotKind::Committed {
                    p = r.parent.clone();
                    continue;
                }
                return Ok(None);
            };
            chain.push(c.clone());
            links.push(self.ensure_link(r)?);
            if chain.len() > 4096 {
                return Ok(None);
            }
            p = r.parent.clone();
        }
        chain.reverse();
        let images: Vec<_> = self
            .store
            .images()?
            .into_iter()
            .filter(|i| i.chain_ids == chain)
            .collect();
        let mut chosen = None;
        for i in &images {
            if crate::store::hot::meta_record(&self.store, &i.manifest_digest)?.is_some() {
                chosen = Some(i);
                break;
            }
        }
        let Some(img) = chosen.or(images.first()) else {
            return Ok(None);
        };
        *started = Some(img.manifest_digest.clone());
        Ok(crate::tiering::mount_layers(&self.store, img, &links, false)?.map(|(_, _, t)| t))
    }

    /// Whether the metadata layer and hot generations `t` names still
    /// exist (see [`crate::store::hot::tiering_present`]).
    pub(super) fn tiering_present(&self, t: &MountTiering) -> Result<bool> {
        crate::store::hot::tiering_present(&self.store, t)
    }
}
