//! The JSON shape of `nvtier pull --json`, as the testbed reads it.
//!
//! The driver declares the report it writes (`nvtier::pull::PullReport`,
//! `Serialize` only, with the driver's own enums). This crate cannot depend
//! on the driver: the driver's tests depend on this crate, and a testbed →
//! driver dependency would make that a cycle (Cargo would build a second copy
//! of the driver for the tests, with distinct types). So the reading side is
//! declared once, here, and used by `nvbench` and by the driver's tests; the
//! driver's tests serialize a driver `PullReport` and every real
//! `nvtier pull --json` output through these types, so a drift of the
//! driver's shape fails a test. Fields the testbed does not need are ignored
//! on reading (no `deny_unknown_fields`), so adding a field to the driver's
//! report is not a break; renaming or retyping one that is read here is.

use serde::{Deserialize, Serialize};

/// Per-layer part of `nvtier pull --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub index: usize,
    pub digest: String,
    #[serde(default)]
    pub chain_id: String,
    pub size: u64,
    pub download_start_ms: Option<f64>,
    pub download_end_ms: Option<f64>,
    pub store_start_ms: Option<f64>,
    /// When the streamed extraction ended (older reports: absent).
    #[serde(default)]
    pub extracted_ms: Option<f64>,
    pub store_end_ms: Option<f64>,
    /// `pmem` or `disk`.
    pub tier: String,
    pub reused: bool,
    pub stored_bytes: u64,
    /// `below_ldl`, `ends_before_last_byte`, `budget_exhausted`,
    /// `placement_disk` or null.
    pub disk_reason: Option<String>,
    /// The streamed LASS rule's inputs (older reports: absent).
    #[serde(default)]
    pub lass: Option<LassInputs>,
}

/// What the streamed LASS rule saw when a layer's storing started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LassInputs {
    pub all_downloaded: bool,
    pub wire_left_ms: u64,
    pub disk_store_ms: u64,
}

impl LayerReport {
    /// Does the layer's tier follow the streamed LASS rule (pmem exactly
    /// when storing it on disk was predicted to end after the last byte;
    /// a refusal of the pmem budget may keep it on disk)? `None` without
    /// the rule's inputs (reused layers, older reports).
    pub fn follows_streamed_lass(&self) -> Option<bool> {
        let l = self.lass?;
        let late = l.all_downloaded || l.disk_store_ms > l.wire_left_ms;
        Some(match (late, self.tier.as_str()) {
            (true, "pmem") | (false, "disk") => true,
            (true, "disk") => self.disk_reason.as_deref() == Some("budget_exhausted"),
            _ => false,
        })
    }
}

/// `nvtier pull --json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PullReport {
    pub layers: Vec<LayerReport>,
    pub ldl_index: Option<usize>,
    pub download_done_ms: f64,
    pub stored_done_ms: f64,
    pub pmem_bytes: u64,
    pub disk_bytes: u64,
}

/// The report in `stdout` (anything before its first `{` is skipped).
pub fn parse(stdout: &str) -> anyhow::Result<PullReport> {
    use anyhow::Context;
    let start = stdout
        .find('{')
        .context("`nvtier pull --json` printed no JSON object")?;
    serde_json::from_str(&stdout[start..]).context("cannot parse `nvtier pull --json` output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_unknown_fields_and_skips_noise() {
        let j = r#"noise {"image":"x","layers":[{"index":0,"digest":"sha256:1","diff_id":"d",
          "size":10,"download_start_ms":1.0,"download_end_ms":5.0,"store_start_ms":null,
          "store_end_ms":null,"tier":"disk","reused":true,"stored_bytes":0,"disk_reason":null,
          "class":"base_distro"}],"ldl_index":null,"download_done_ms":5.0,"stored_done_ms":6.0,
          "pmem_bytes":0,"disk_bytes":0}"#;
        let r = parse(j).expect("parses");
        assert_eq!(r.layers[0].chain_id, "");
        assert!(r.layers[0].reused);
        assert!(parse("nothing").is_err());
    }
}
