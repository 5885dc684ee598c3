//! `nvbench report-trace`: overhead of the eBPF tracer on a cold start
//! (testbed/bench-trace.sh) → trace.json and trace.md.

use super::{host, max, median, min, read_json, read_jsonl_raw, utc_timestamp, Splice};
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;

/// Opens in the open-storm run.
pub const STORM_OPENS: u64 = 200_000;

#[derive(clap::Args)]
pub struct Args {
    /// JSON lines: {placement, what: base|traced, ms, exit, lost, files, hot_share, tracer}.
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// `nvtier trace --json` of the open storm.
    #[arg(long, value_name = "FILE")]
    pub storm: PathBuf,
    /// `nvtier run --json` of the same loop, untraced.
    #[arg(long, value_name = "FILE")]
    pub storm_base: PathBuf,
    /// Repetitions per case (for the header).
    #[arg(long)]
    pub reps: usize,
    /// Unix time the benchmark started (for the run time in the header).
    #[arg(long, value_name = "SECONDS")]
    pub started: i64,
    /// Results JSON.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "testbed/results/trace.json"
    )]
    pub out_json: PathBuf,
    /// Markdown report.
    #[arg(long, value_name = "FILE", default_value = "testbed/results/trace.md")]
    pub out_md: PathBuf,
}

#[derive(Serialize)]
struct Machine {
    cpu: String,
    nproc: usize,
    mem_kib: u64,
    kernel: String,
}

#[derive(Serialize)]
struct Storm {
    opens_requested: u64,
    opens_recorded: u64,
    lost_events: Value,
    traced_ms: Value,
    base_ms: Value,
}

#[derive(Serialize)]
struct Results<'a> {
    date: &'a str,
    machine: Machine,
    reps: usize,
    samples: Value,
    storm: Storm,
}

/// What the report says, apart from the header.
pub struct Inputs<'a> {
    pub rows: &'a [Value],
    pub storm: &'a Value,
    pub storm_base: &'a Value,
}

/// Opens of /etc/hostname recorded in the storm's profile.
fn storm_opens(storm: &Value) -> u64 {
    storm["profile"]["files"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["path"] == "/etc/hostname"))
        .and_then(|f| f["count"].as_u64())
        .unwrap_or(0)
}

/// The table, the storm line and the verdicts.
pub fn body(inp: &Inputs<'_>) -> Result<Vec<String>> {
    let mut md = vec![
        "| placement | baseline ms | traced ms | overhead | files in profile | hot share of image bytes | lost events |".to_string(),
        "|---|--:|--:|--:|--:|--:|--:|".to_string(),
    ];
    let mut placements: Vec<&str> = Vec::new();
    for r in inp.rows {
        let p = r["placement"]
            .as_str()
            .context("a sample without placement")?;
        if !placements.contains(&p) {
            placements.push(p);
        }
    }
    let mut verdicts = Vec::new();
    for p in placements {
        let of = |what: &str| -> Vec<&Value> {
            inp.rows
                .iter()
                .filter(|r| r["placement"] == p && r["what"] == what)
                .collect()
        };
        let ms = |rs: &[&Value]| {
            rs.iter()
                .filter_map(|r| r["ms"].as_f64())
                .collect::<Vec<_>>()
        };
        let tr = of("traced");
        let (b, t) = (ms(&of("base")), ms(&tr));
        let mb = median(&b).with_context(|| format!("no baseline samples for {p}"))?;
        let mt = median(&t).with_context(|| format!("no traced samples for {p}"))?;
        let ov = (mt / mb - 1.0) * 100.0;
        verdicts.push((p, ov));
        let files: Vec<f64> = tr.iter().filter_map(|r| r["files"].as_f64()).collect();
        let hot: Vec<f64> = tr.iter().filter_map(|r| r["hot_share"].as_f64()).collect();
        let lost: i64 = tr.iter().filter_map(|r| r["lost"].as_i64()).sum();
        md.push(format!(
            "| {p} | {mb:.1} ({:.1}–{:.1}) | {mt:.1} ({:.1}–{:.1}) | {ov:+.1}% | {:.0} | {:.1}% | {lost} |",
            min(&b),
            max(&b),
            min(&t),
            max(&t),
            median(&files).unwrap_or(f64::NAN),
            median(&hot).unwrap_or(f64::NAN) * 100.0
        ));
    }
    md.push(String::new());
    let opens = storm_opens(inp.storm);
    let lost = inp.storm["lost_events"].as_u64().unwrap_or(u64::MAX);
    let traced_ms = inp.storm["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
    let base_ms = inp.storm_base["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
    md.push(format!(
        "Open storm: {STORM_OPENS} `open`+`close` of one file in a tight Python loop, traced: **{opens} opens recorded, {} events lost**; {traced_ms:.0} ms traced vs {base_ms:.0} ms untraced ({:.0} opens/s).",
        inp.storm["lost_events"],
        STORM_OPENS as f64 / (traced_ms / 1000.0)
    ));
    md.push(String::new());
    for (p, ov) in verdicts {
        md.push(format!(
            "- {p}: overhead {ov:+.1}% — goal < 3%: **{}**",
            if ov < 3.0 { "met" } else { "missed" }
        ));
    }
    md.push(format!(
        "- zero lost events at the highest open rate: **{}**",
        if lost == 0 && opens >= STORM_OPENS {
            "met"
        } else {
            "missed"
        }
    ));
    Ok(md)
}

pub fn run(a: Args) -> Result<()> {
    let raw = read_jsonl_raw(&a.samples)?;
    let rows: Vec<Value> = raw.iter().map(|(_, v)| v.clone()).collect();
    let mut splice = Splice::default();
    let storm: Value = read_json(&a.storm)?;
    let storm_base: Value = read_json(&a.storm_base)?;
    let h = host();
    let date = utc_timestamp(super::unix_now());
    let results = Results {
        date: &date,
        machine: Machine {
            cpu: h.cpu.clone(),
            nproc: h.nproc,
            mem_kib: h.mem_kib,
            kernel: h.kernel.clone(),
        },
        reps: a.reps,
        samples: splice.put_all(raw.iter().map(|(l, _)| l.as_str())),
        storm: Storm {
            opens_requested: STORM_OPENS,
            opens_recorded: storm_opens(&storm),
            lost_events: storm["lost_events"].clone(),
            traced_ms: storm["elapsed_ms"].clone(),
            base_ms: storm_base["elapsed_ms"].clone(),
        },
    };
    super::write(&a.out_json, &splice.render(&results)?)?;
    let mut md = vec![
        "# nvtier tracer benchmark\n".to_string(),
        format!(
            "**{date}** · {} ({} CPUs, {} GiB, Linux {}) · {} reps per placement, alternating order · run took {:.1} min including build\n",
            h.cpu,
            h.nproc,
            h.mem_kib / 1024 / 1024,
            h.kernel,
            a.reps,
            (super::unix_now() - a.started) as f64 / 60.0
        ),
        "Workload: Debian bookworm + python3, `python3 /app/main.py` importing json, email.parser, http.client, sqlite3, asyncio, decimal, argparse, logging, xml.dom.minidom, csv, unittest, urllib.request. Caches dropped before every run; the HDD tier throttled (150 IOPS, 150 MiB/s). Baseline = `nvtier run --drop-caches`; traced = `nvtier trace --tracer ebpf` (same probe, plus the eBPF tracer). Wall time of the command, medians (min–max).\n".to_string(),
    ];
    md.extend(body(&Inputs {
        rows: &rows,
        storm: &storm,
        storm_base: &storm_base,
    })?);
    super::write_markdown(&a.out_md, &md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(p: &str, what: &str, ms: f64) -> Value {
        if what == "base" {
            json!({"placement": p, "what": what, "ms": ms, "exit": 0, "lost": 0, "files": null})
        } else {
            json!({"placement": p, "what": what, "ms": ms, "exit": 0, "lost": 1, "files": 300, "hot_share": 0.125, "tracer": "ebpf"})
        }
    }

    #[test]
    fn table_and_verdicts() {
        let rows = vec![
            s("lass", "base", 100.0),
            s("lass", "traced", 101.0),
            s("lass", "base", 110.0),
            s("lass", "traced", 103.0),
            s("pmem", "base", 100.0),
            s("pmem", "traced", 150.0),
        ];
        let storm = json!({"lost_events": 0, "elapsed_ms": 500.0,
            "profile": {"files": [{"path": "/etc/hostname", "count": 200000}]}});
        let base = json!({"elapsed_ms": 250.0});
        let md = body(&Inputs {
            rows: &rows,
            storm: &storm,
            storm_base: &base,
        })
        .unwrap();
        assert_eq!(
            md[2],
            "| lass | 105.0 (100.0–110.0) | 102.0 (101.0–103.0) | -2.9% | 300 | 12.5% | 2 |"
        );
        assert_eq!(
            md[3],
            "| pmem | 100.0 (100.0–100.0) | 150.0 (150.0–150.0) | +50.0% | 300 | 12.5% | 1 |"
        );
        assert!(md[5].contains("**200000 opens recorded, 0 events lost**; 500 ms traced vs 250 ms untraced (400000 opens/s)"));
        assert_eq!(md[7], "- lass: overhead -2.9% — goal < 3%: **met**");
        assert_eq!(md[8], "- pmem: overhead +50.0% — goal < 3%: **missed**");
        assert_eq!(
            md[9],
            "- zero lost events at the highest open rate: **met**"
        );
    }
}
