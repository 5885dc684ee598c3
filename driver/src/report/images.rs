//! `nvtier images`: one row per image.

use super::human;
use crate::error::Result;
use crate::store::Store;
use crate::tier::TierKind;
use serde::Serialize;
use std::fmt::Write as _;

/// One image (`nvtier images [--json]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRow {
    /// Unix milliseconds of the pull.
    pub created_ms: u64,
    /// Why the image cannot be mounted until it is repaired (`None`:
    /// intact).
    pub damaged: Option<Vec<String>>,
    /// Bytes charged to the disk tier by the image's disk-tier layers.
    pub disk_bytes: u64,
    /// Number of layers.
    pub layers: usize,
    pub manifest_digest: String,
    pub name: String,
    /// Who pulled it: `cli` (`nvtier pull`; removed by `nvtier rm`) or
    /// `engine` (the snapshotter's remote-snapshot pull; removed with the
    /// engine's image).
    pub origin: crate::store::ImageOrigin,
    /// Bytes charged to the pmem tier by the image's pmem-tier layers.
    pub pmem_bytes: u64,
}

impl ImageRow {
    /// Every image in the store, in the store's order.
    pub fn gather(store: &Store) -> Result<Vec<ImageRow>> {
        let layers = store.layers()?;
        let mut health = crate::store::health::scan(store)?;
        let lost: std::collections::HashSet<&String> = health
            .pmem
            .lost
            .layers
            .iter()
            .chain(&health.disk.lost.layers)
            .collect();
        let mut rows = Vec::new();
        for i in store.images()? {
            let (mut pmem_bytes, mut disk_bytes) = (0, 0);
            for c in &i.chain_ids {
                if lost.contains(c) {
                    continue;
                }
                if let Some(l) = layers.iter().find(|l| &l.chain_id == c) {
                    match l.tier {
                        TierKind::Pmem => pmem_bytes += l.charged_bytes,
                        TierKind::Disk => disk_bytes += l.charged_bytes,
                    }
                }
            }
            rows.push(ImageRow {
                created_ms: i.created_ms,
                damaged: health.damaged.remove(&i.name),
                disk_bytes,
                layers: i.chain_ids.len(),
                manifest_digest: i.manifest_digest,
                name: i.name,
                origin: i.origin,
                pmem_bytes,
            });
        }
        Ok(rows)
    }

    /// The text of `nvtier images`: a header line, then one line per row.
    pub fn render_text(rows: &[ImageRow]) -> String {
        let mut out = format!(
            "{:<50} {:>6} {:>10} {:>10}\n",
            "IMAGE", "LAYERS", "PMEM", "DISK"
        );
        for r in rows {
            let _ = write!(
                out,
                "{:<50} {:>6} {:>10} {:>10}",
                r.name,
                r.layers,
                human(r.pmem_bytes),
                human(r.disk_bytes)
            );
            match &r.damaged {
                None => out.push('\n'),
                Some(why) => {
                    let _ = writeln!(out, "  damaged: {}", why.join(", "));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text() {
        let rows = [
            ImageRow {
                created_ms: 1,
                damaged: None,
                disk_bytes: 10 << 20,
                layers: 4,
                manifest_digest: "sha256:aa".into(),
                name: "10.77.3.2:5000/demo:latest".into(),
                origin: crate::store::ImageOrigin::Cli,
                pmem_bytes: 0,
            },
            ImageRow {
                created_ms: 2,
                damaged: Some(vec!["layer 0123 lost from the pmem tier".into()]),
                disk_bytes: 0,
                layers: 12,
                manifest_digest: "sha256:bb".into(),
                name: "registry.example/app:1".into(),
                origin: crate::store::ImageOrigin::Engine,
                pmem_bytes: 1536,
            },
        ];
        let text = ImageRow::render_text(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "IMAGE                                              LAYERS       PMEM       DISK",
                "10.77.3.2:5000/demo:latest                              4        0 B   10.0 MiB",
                "registry.example/app:1                                 12    1.5 KiB        0 B  damaged: layer 0123 lost from the pmem tier",
            ]
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn text_empty() {
        assert_eq!(
            ImageRow::render_text(&[]).trim_end(),
            "IMAGE                                              LAYERS       PMEM       DISK"
        );
    }

    #[test]
    fn json_keys() {
        let v = serde_json::to_value(ImageRow {
            created_ms: 1,
            damaged: None,
            disk_bytes: 2,
            layers: 3,
            manifest_digest: "sha256:aa".into(),
            name: "n".into(),
            origin: crate::store::ImageOrigin::Engine,
            pmem_bytes: 4,
        })
        .expect("json");
        assert_eq!(
            v,
            serde_json::json!({"created_ms": 1, "damaged": null, "disk_bytes": 2, "layers": 3,
                "manifest_digest": "sha256:aa", "name": "n", "origin": "engine", "pmem_bytes": 4})
        );
    }
}
