//! `nvbench report-docker`: medians of `docker pull` times with the
//! overlayfs snapshotter and with nvtier (testbed/bench-docker.sh).

use super::{median, read_jsonl};
use anyhow::Result;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// JSON lines: {driver, rep, pull_ms, pull_sync_ms}.
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// The image's layer spec (for the heading).
    #[arg(long)]
    pub layers: String,
    /// The registry link rate (for the heading).
    #[arg(long)]
    pub rate: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub driver: String,
    pub pull_ms: f64,
    pub pull_sync_ms: f64,
}

/// A number as `awk` prints it: integers without a fraction.
pub fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

pub fn summary(samples: &[Sample], layers: &str, rate: &str) -> Vec<String> {
    let mut drivers: Vec<&str> = Vec::new();
    for s in samples {
        if !drivers.contains(&s.driver.as_str()) {
            drivers.push(&s.driver);
        }
    }
    let reps = samples
        .iter()
        .filter(|s| Some(s.driver.as_str()) == drivers.first().copied())
        .count();
    let mut out = vec![format!(
        "medians over {reps} pulls (ms), image {layers}, link {rate}:"
    )];
    for d in drivers {
        let of = |f: fn(&Sample) -> f64| -> Vec<f64> {
            samples.iter().filter(|s| s.driver == d).map(f).collect()
        };
        let p = median(&of(|s| s.pull_ms)).map(num).unwrap_or_default();
        let ps = median(&of(|s| s.pull_sync_ms)).map(num).unwrap_or_default();
        out.push(format!("  {d:<9} pull {p}  pull+sync {ps}"));
    }
    out
}

pub fn run(a: Args) -> Result<()> {
    let samples: Vec<Sample> = read_jsonl(&a.samples)?;
    for l in summary(&samples, &a.layers, &a.rate) {
        println!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let s = |driver: &str, pull_ms: f64, pull_sync_ms: f64| Sample {
            driver: driver.into(),
            pull_ms,
            pull_sync_ms,
        };
        let v = vec![
            s("overlayfs", 3000.0, 9000.0),
            s("overlayfs", 1000.0, 8000.0),
            s("nvtier", 900.0, 950.0),
            s("nvtier", 1001.0, 1100.0),
        ];
        assert_eq!(
            summary(&v, "busybox,8M", "1gbit"),
            vec![
                "medians over 2 pulls (ms), image busybox,8M, link 1gbit:",
                "  overlayfs pull 2000  pull+sync 8500",
                "  nvtier    pull 950.5  pull+sync 1025",
            ]
        );
    }
}
