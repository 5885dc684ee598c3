//! `nvtier layers`: one row per layer, with its tier use.

use super::{human, short};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::tier::TierKind;
use serde::Serialize;
use std::fmt::Write as _;

/// One layer (`nvtier layers [IMAGE] [--json]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerRow {
    pub blob_digest: Option<String>,
    pub chain_id: String,
    /// Compressed blob bytes.
    pub compressed_bytes: u64,
    /// Why the layer cannot be mounted (lost from its tier, or on the
    /// missing pmem tier); `None`: intact.
    pub damaged: Option<String>,
    pub diff_id: String,
    /// Bytes charged to the disk tier (the base, when it is there).
    pub disk_bytes: u64,
    /// Sum of regular-file sizes.
    pub file_bytes: u64,
    /// Number of files.
    pub files: u64,
    pub hot_bytes: u64,
    pub hot_files: u64,
    pub hot_generation: u64,
    /// Position in the listing (chain order for one image's layers).
    pub index: usize,
    pub parent: Option<String>,
    /// Bytes charged to the pmem tier (the base and hot copies).
    pub pmem_bytes: u64,
    /// Files readable from pmem.
    pub pmem_files: u64,
    /// Images and mounts using the layer.
    pub refs: u32,
    /// How long storing the layer took.
    pub store_ms: u64,
    /// Tier of the layer's base.
    pub tier: TierKind,
}

impl LayerRow {
    /// Every layer in the store, or (with `image`, a full image name in the
    /// store) that image's layers in chain order.
    pub fn gather(store: &Store, image: Option<&str>) -> Result<Vec<LayerRow>> {
        let refs = store.refcounts()?;
        let all = store.layers()?;
        let chosen: Vec<_> = match image {
            Some(name) => {
                let rec = store
                    .image(name)?
                    .ok_or_else(|| Error::Other("image vanished".into()))?;
                rec.chain_ids
                    .iter()
                    .filter_map(|c| all.iter().find(|l| &l.chain_id == c).cloned())
                    .collect()
            }
            None => all,
        };
        chosen
            .into_iter()
            .enumerate()
            .map(|(index, l)| {
                let damaged = store.check_layer(&l).err().map(|e| match e {
                    Error::Damaged { what, .. } => what,
                    e => e.to_string(),
                });
                let u = match damaged {
                    None => crate::tiering::layer_usage(store, &l)?,
                    Some(_) => crate::tiering::LayerUsage {
                        chain_id: l.chain_id.clone(),
                        base_tier: l.tier,
                        pmem_bytes: 0,
                        disk_bytes: 0,
                        pmem_files: 0,
                        hot_files: 0,
                        hot_bytes: 0,
                        hot_generation: 0,
                    },
                };
                Ok(LayerRow {
                    damaged,
                    refs: refs.get(&l.chain_id).copied().unwrap_or(0),
                    blob_digest: l.blob_digest,
                    chain_id: l.chain_id,
                    compressed_bytes: l.compressed_bytes,
                    diff_id: l.diff_id,
                    disk_bytes: u.disk_bytes,
                    file_bytes: l.file_bytes,
                    files: l.file_count,
                    hot_bytes: u.hot_bytes,
                    hot_files: u.hot_files,
                    hot_generation: u.hot_generation,
                    index,
                    parent: l.parent,
                    pmem_bytes: u.pmem_bytes,
                    pmem_files: u.pmem_files,
                    store_ms: l.store_ms,
                    tier: l.tier,
                })
            })
            .collect()
    }

    /// The text of `nvtier layers`: a header line, then one line per row.
    pub fn render_text(rows: &[LayerRow]) -> String {
        let mut out = format!(
            "{:>3}  {:<12}  {:<5} {:>10} {:>10} {:>7} {:>9} {:>4}\n",
            "#", "CHAIN", "BASE", "PMEM", "DISK", "FILES", "PMEMFILES", "REFS"
        );
        for r in rows {
            let _ = write!(
                out,
                "{:>3}  {:<12}  {:<5} {:>10} {:>10} {:>7} {:>9} {:>4}",
                r.index,
                short(&r.chain_id),
                r.tier.to_string(),
                human(r.pmem_bytes),
                human(r.disk_bytes),
                r.files,
                r.pmem_files,
                r.refs
            );
            match &r.damaged {
                None => out.push('\n'),
                Some(why) => {
                    let _ = writeln!(out, "  damaged: {why}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(index: usize, chain_id: &str, tier: TierKind) -> LayerRow {
        LayerRow {
            blob_digest: Some("sha256:b".into()),
            chain_id: chain_id.into(),
            compressed_bytes: 1,
            damaged: None,
            diff_id: "sha256:d".into(),
            disk_bytes: 0,
            file_bytes: 2,
            files: 37,
            hot_bytes: 0,
            hot_files: 0,
            hot_generation: 0,
            index,
            parent: None,
            pmem_bytes: 0,
            pmem_files: 0,
            refs: 2,
            store_ms: 3,
            tier,
        }
    }

    #[test]
    fn text() {
        let rows = [
            LayerRow {
                pmem_bytes: 2 << 20,
                pmem_files: 37,
                ..row(
                    0,
                    "sha256:a0fc9bb23657aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    TierKind::Pmem,
                )
            },
            LayerRow {
                disk_bytes: 6 << 20,
                pmem_bytes: 100,
                pmem_files: 3,
                refs: 0,
                damaged: Some("layer cda071a68b4f was lost from the disk tier (/d)".into()),
                ..row(11, "sha256:cda071a68b4f", TierKind::Disk)
            },
        ];
        let text = LayerRow::render_text(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "  #  CHAIN         BASE        PMEM       DISK   FILES PMEMFILES REFS",
                "  0  a0fc9bb23657  pmem     2.0 MiB        0 B      37        37    2",
                " 11  cda071a68b4f  disk       100 B    6.0 MiB      37         3    0  damaged: \
                 layer cda071a68b4f was lost from the disk tier (/d)",
            ]
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn json_keys() {
        let v = serde_json::to_value(row(0, "sha256:c", TierKind::Disk)).expect("json");
        let keys = crate::testutil::object_keys(&v);
        assert_eq!(
            keys,
            [
                "blob_digest",
                "chain_id",
                "compressed_bytes",
                "damaged",
                "diff_id",
                "disk_bytes",
                "file_bytes",
                "files",
                "hot_bytes",
                "hot_files",
                "hot_generation",
                "index",
                "parent",
                "pmem_bytes",
                "pmem_files",
                "refs",
                "store_ms",
                "tier",
            ]
        );
        assert_eq!(v["tier"], "disk");
        assert!(v["parent"].is_null());
    }
}
