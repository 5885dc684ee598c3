//! `nvbench report-docker-plugin`: `docker pull` times with the nvtier
//! graph driver plugin vs overlay2, and where nvtier put each layer
//! (testbed/bench-docker-plugin.sh). Printed.

use super::{median, read_jsonl_raw};
use anyhow::Result;
use serde_json::{json, Value};
use std::path::PathBuf;

pub struct Args {
    /// JSON lines: {driver, rep, pull_ns, layers: `nvtier layers --json` or null}.
    pub samples: PathBuf,
}

/// Bytes as MiB rounded down to 0.1, as a JSON number (integral values
/// without a fraction).
fn mib_tenths(bytes: f64) -> Value {
    let tenths = (bytes / 104_857.6).floor();
    if tenths % 10.0 == 0.0 {
        json!((tenths / 10.0) as i64)
    } else {
        json!(tenths / 10.0)
    }
}

/// One line per pull (and per nvtier pull the layers' placement), then the
/// medians per driver.
pub fn summary(rows: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut drivers: Vec<&str> = Vec::new();
    for r in rows {
        let d = r["driver"].as_str().unwrap_or("?");
        if !drivers.contains(&d) {
            drivers.push(d);
        }
        let s = r["pull_ns"].as_f64().unwrap_or(f64::NAN) / 1e9;
        out.push(format!("{d:<10} rep {}  pull {s:.2} s", r["rep"]));
        if let Some(layers) = r["layers"].as_array() {
            // Keys in the order tier, mib, store_ms.
            let l: Vec<String> = layers
                .iter()
                .map(|x| {
                    format!(
                        r#"{{"tier":{},"mib":{},"store_ms":{}}}"#,
                        x["tier"],
                        mib_tenths(x["file_bytes"].as_f64().unwrap_or(0.0)),
                        x["store_ms"]
                    )
                })
                .collect();
            out.push(format!("[{}]", l.join(",")));
        }
    }
    let med: Vec<String> = drivers
        .iter()
        .map(|d| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r["driver"] == *d)
                .filter_map(|r| r["pull_ns"].as_f64())
                .map(|ns| ns / 1e9)
                .collect();
            format!("{d} {:.2} s", median(&v).unwrap_or(f64::NAN))
        })
        .collect();
    out.push(format!("median pull: {}", med.join(", ")));
    out
}

pub fn run(a: Args) -> Result<()> {
    let rows: Vec<Value> = read_jsonl_raw(&a.samples)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    for l in summary(&rows) {
        println!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let rows = vec![
            json!({"driver": "nvtier", "rep": 1, "pull_ns": 2_345_000_000u64, "layers": [
                {"tier": "pmem", "file_bytes": 8_388_608, "store_ms": 12.5, "files": 3},
                {"tier": "disk", "file_bytes": 1_100_000, "store_ms": null},
                {"tier": "disk", "file_bytes": 1_300_000, "store_ms": 1}]}),
            json!({"driver": "nvtier", "rep": 2, "pull_ns": 2_000_000_000u64, "layers": []}),
            json!({"driver": "overlay2", "rep": 1, "pull_ns": 3_000_000_000u64, "layers": null}),
        ];
        assert_eq!(
            summary(&rows),
            vec![
                "nvtier     rep 1  pull 2.35 s",
                r#"[{"tier":"pmem","mib":8,"store_ms":12.5},{"tier":"disk","mib":1,"store_ms":null},{"tier":"disk","mib":1.2,"store_ms":1}]"#,
                "nvtier     rep 2  pull 2.00 s",
                "[]",
                "overlay2   rep 1  pull 3.00 s",
                "median pull: nvtier 2.17 s, overlay2 3.00 s",
            ]
        );
    }
}
