//! The text of `nvtier pull`: the per-layer timeline and placement of a
//! [`PullReport`] (its JSON is the report itself).

use super::{human, short};
use crate::pull::PullReport;
use std::fmt;

/// One line of header, one per layer, one summary line.
impl fmt::Display for PullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}  {}", self.image, self.manifest_digest)?;
        writeln!(
            f,
            "{:>3}  {:<12}  {:>10}  {:>9}  {:>9}  {:>9}  {:>9}  {:<5}  note",
            "#", "blob", "size", "dl start", "dl end", "st start", "st end", "tier"
        )?;
        let ms = |x: Option<f64>| x.map(|v| format!("{v:.0}ms")).unwrap_or_else(|| "-".into());
        for l in &self.layers {
            let note = if l.reused {
                "already present".to_string()
            } else if Some(l.index) == self.ldl_index {
                "LDL".to_string()
            } else {
                l.disk_reason.map(|r| r.to_string()).unwrap_or_default()
            };
            writeln!(
                f,
                "{:>3}  {:<12}  {:>10}  {:>9}  {:>9}  {:>9}  {:>9}  {:<5}  {}",
                l.index,
                short(&l.digest),
                human(l.size),
                ms(l.download_start_ms),
                ms(l.download_end_ms),
                ms(l.store_start_ms),
                ms(l.store_end_ms),
                l.tier.to_string(),
                note
            )?;
        }
        writeln!(
            f,
            "downloads done {:.0} ms, stored {:.0} ms ({:.0} ms after the last byte); pmem {}, disk {}",
            self.download_done_ms,
            self.stored_done_ms,
            self.stored_done_ms - self.download_done_ms,
            human(self.pmem_bytes),
            human(self.disk_bytes)
        )?;
        if let Some(p) = &self.profile {
            write!(
                f,
                "hot profile {} from {}: {} files, {}",
                short(&p.artifact_digest),
                p.repository,
                p.files,
                human(p.bytes)
            )?;
            match (&p.error, p.tiered, p.tiered_done_ms) {
                (Some(e), _, _) => writeln!(f, "; not tiered at pull time: {e}")?,
                (None, true, Some(t)) => writeln!(
                    f,
                    "; hot data {} on pmem{} at {t:.0} ms",
                    human(p.hot_bytes),
                    if p.meta_built {
                        " with the metadata layer"
                    } else {
                        ""
                    }
                )?,
                _ => writeln!(f, "; kept for the next migration (tiering is off here)")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::pull::{LayerReport, PullReport};
    use crate::tier::TierKind;
    use nvtier_policy::{DiskReason, Placement};

    fn layer(index: usize, tier: TierKind) -> LayerReport {
        LayerReport {
            index,
            digest: format!("sha256:{index}123456789abcdef"),
            diff_id: "sha256:d".into(),
            chain_id: "sha256:c".into(),
            size: 1 << 20,
            download_start_ms: Some(10.0),
            download_end_ms: Some(900.4),
            store_start_ms: Some(900.6),
            extracted_ms: Some(1400.0),
            store_end_ms: Some(1500.0),
            lass: None,
            tier,
            reused: false,
            stored_bytes: 1 << 20,
            disk_reason: None,
            class: None,
            pmem_reason: None,
        }
    }

    #[test]
    fn text() {
        let rep = PullReport {
            image: "10.77.3.2:5000/demo:latest".into(),
            manifest_digest: "sha256:m".into(),
            config_digest: "sha256:c".into(),
            placement: Placement::Lass,
            layers: vec![
                LayerReport {
                    disk_reason: Some(DiskReason::BelowLdl),
                    ..layer(0, TierKind::Disk)
                },
                layer(1, TierKind::Pmem),
                LayerReport {
                    reused: true,
                    download_start_ms: None,
                    download_end_ms: None,
                    store_start_ms: None,
                    store_end_ms: None,
                    ..layer(2, TierKind::Pmem)
                },
            ],
            ldl_index: Some(1),
            download_done_ms: 900.4,
            stored_done_ms: 1500.0,
            pmem_bytes: 2 << 20,
            disk_bytes: 1 << 20,
            credentials: None,
            profile: None,
            kept_blobs: Vec::new(),
        };
        let text = rep.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "10.77.3.2:5000/demo:latest  sha256:m",
                "  #  blob                size   dl start     dl end   st start     st end  tier   note",
                "  0  0123456789ab     1.0 MiB       10ms      900ms      901ms     1500ms  disk   \
                 below the last-downloading layer",
                "  1  1123456789ab     1.0 MiB       10ms      900ms      901ms     1500ms  pmem   LDL",
                "  2  2123456789ab     1.0 MiB          -          -          -          -  pmem   \
                 already present",
                "downloads done 900 ms, stored 1500 ms (600 ms after the last byte); \
                 pmem 2.0 MiB, disk 1.0 MiB",
            ]
        );
    }
}
