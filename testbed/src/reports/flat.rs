//! `nvbench report-flat`: cold start over the flattened metadata layer vs a
//! plain overlay (testbed/bench-flat.sh) → flat.md.

use super::{host, max, median, min, read_jsonl, utc_timestamp};
use anyhow::Result;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// JSON lines: {kind: run, placement, mode, ms, exit} and
    /// {kind: pmem, placement, pmem_layer_bytes | meta_bytes}.
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// Repetitions per case (for the header).
    #[arg(long)]
    pub reps: usize,
    /// Markdown report.
    #[arg(long, value_name = "FILE", default_value = "testbed/results/flat.md")]
    pub out_md: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sample {
    Run {
        placement: String,
        mode: String,
        ms: f64,
        exit: i64,
    },
    Pmem {
        placement: String,
        #[serde(default)]
        pmem_layer_bytes: u64,
        #[serde(default)]
        meta_bytes: u64,
    },
}

const MIB: f64 = 1024.0 * 1024.0;

/// The table rows, one per placement with successful plain and flat runs.
pub fn rows(samples: &[Sample]) -> Vec<String> {
    let mut placements: Vec<&str> = Vec::new();
    for s in samples {
        if let Sample::Run { placement, .. } = s {
            if !placements.contains(&placement.as_str()) {
                placements.push(placement);
            }
        }
    }
    let mut out = Vec::new();
    for p in placements {
        let times = |m: &str| -> Vec<f64> {
            samples
                .iter()
                .filter_map(|s| match s {
                    Sample::Run {
                        placement,
                        mode,
                        ms,
                        exit: 0,
                    } if placement == p && mode == m => Some(*ms),
                    _ => None,
                })
                .collect()
        };
        let (a, b) = (times("plain"), times("flat"));
        let (Some(ma), Some(mb)) = (median(&a), median(&b)) else {
            continue;
        };
        let (pl, meta) = samples
            .iter()
            .filter_map(|s| match s {
                Sample::Pmem {
                    placement,
                    pmem_layer_bytes,
                    meta_bytes,
                } if placement == p => Some((*pmem_layer_bytes, *meta_bytes)),
                _ => None,
            })
            .fold((0, 0), |acc, x| (acc.0.max(x.0), acc.1.max(x.1)));
        out.push(format!(
            "| {p} | {:.1} MiB | {ma:.0} ({:.0}–{:.0}) | {mb:.0} ({:.0}–{:.0}) | {:.2} | {:.1} MiB |",
            pl as f64 / MIB,
            min(&a),
            max(&a),
            min(&b),
            max(&b),
            mb / ma,
            meta as f64 / MIB
        ));
    }
    out
}

pub fn run(a: Args) -> Result<()> {
    let samples: Vec<Sample> = read_jsonl(&a.samples)?;
    let h = host();
    let date = utc_timestamp(super::unix_now());
    let mut md: Vec<String> = vec![
        "# Cold start over the flattened metadata layer".into(),
        String::new(),
        format!(
            "**{date}** · {} ({} CPUs, Linux {}) · {} reps per case, alternating",
            h.cpu, h.nproc, h.kernel, a.reps
        ),
        String::new(),
        "Debian bookworm + python3 image (3 layers), `python3 /app/main.py` importing a dozen stdlib packages; caches dropped; HDD tier throttled (150 IOPS, 150 MiB/s); `nvtier run` probe. *plain* = overlay of the layer directories; *flat* = metadata layer on pmem over data-only layers. Medians (min–max) of the command's wall time.".into(),
        String::new(),
        "| placement | pmem layer bytes | plain ms | flat ms | flat / plain | metadata layer bytes allocated on pmem |".into(),
        "|---|--:|--:|--:|--:|--:|".into(),
    ];
    md.extend(rows(&samples));
    super::write_markdown(&a.out_md, &md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(l: &str) -> Vec<Sample> {
        l.lines()
            .map(|x| serde_json::from_str(x).unwrap())
            .collect()
    }

    #[test]
    fn table() {
        let s = parse(
            r#"{"kind":"pmem","placement":"lass","pmem_layer_bytes":260046848}
{"kind":"pmem","placement":"lass","meta_bytes":1048576}
{"kind":"run","placement":"lass","mode":"plain","ms":90.4,"exit":0}
{"kind":"run","placement":"lass","mode":"flat","ms":88.0,"exit":0}
{"kind":"run","placement":"lass","mode":"plain","ms":84.0,"exit":0}
{"kind":"run","placement":"lass","mode":"flat","ms":999.0,"exit":1}
{"kind":"run","placement":"disk","mode":"plain","ms":4000,"exit":0}"#,
        );
        let r = rows(&s);
        assert_eq!(
            r,
            vec!["| lass | 248.0 MiB | 87 (84–90) | 88 (88–88) | 1.01 | 1.0 MiB |"]
        );
    }
}
