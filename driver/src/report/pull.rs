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
        )
    }
}
