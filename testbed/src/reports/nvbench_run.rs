//! The bookkeeping of a testbed/nvbench.sh run that is computed from its
//! samples: the run's `meta` line (`nvbench meta`, merging a resumed run's
//! earlier meta), the moment of the registry's last byte from the network
//! counter's time series (`nvbench last-byte`) and the `--check` verdict
//! (`nvbench check-samples`).

use super::{host, parse_exact, read_jsonl_raw, utc_timestamp};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One image in the meta line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub name: String,
    #[serde(default)]
    pub category: Value,
    #[serde(default)]
    pub ready: Value,
    #[serde(default)]
    pub layers: Value,
    #[serde(default)]
    pub compressed_bytes: Value,
    #[serde(default)]
    pub unpacked_bytes: Value,
}

#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpu: String,
    nproc: usize,
    mem_total_kib: u64,
    kernel: String,
}

#[derive(Debug, Clone, Serialize)]
struct Hdd {
    read_iops: Value,
    read_bps: Value,
}

#[derive(Debug, Clone, Serialize)]
struct System {
    id: &'static str,
    label: &'static str,
    desc: &'static str,
}

const SYSTEMS: [System; 4] = [
    System {
        id: "docker",
        label: "Docker",
        desc: "overlayfs snapshotter; containerd and dockerd roots on the HDD",
    },
    System {
        id: "nvm",
        label: "NVM-Docker",
        desc: "overlayfs snapshotter; containerd and dockerd roots on pmem",
    },
    System {
        id: "lass",
        label: "nvtier LASS",
        desc: "nvtier pulls (LASS); engine metadata and writable layers on pmem",
    },
    System {
        id: "hot",
        label: "nvtier LASS+hot",
        desc:
            "LASS + static placement, one profiling run, migrate: hot files on pmem, bases on disk",
    },
];

#[derive(Debug, Clone, Serialize)]
struct Meta {
    kind: &'static str,
    date: String,
    started: Value,
    machine: Machine,
    reps: usize,
    quick: bool,
    rates: Vec<String>,
    engine: String,
    hdd: Hdd,
    pmem: &'static str,
    run_seconds: i64,
    runs: i64,
    cells_done: usize,
    cells_total: usize,
    images: Vec<ImageMeta>,
    systems: [System; 4],
}

#[derive(clap::Args)]
pub struct MetaArgs {
    // The samples file; its meta lines are replaced by the new one.
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// The run's corpus images (`corpus/build.sh --list --json`).
    #[arg(long, value_name = "FILE")]
    pub images: PathBuf,
    /// JSON lines {name, manifest}: each image's OCI manifest.
    #[arg(long, value_name = "FILE")]
    pub manifests: PathBuf,
    /// Repetitions per case (for the header).
    #[arg(long)]
    pub reps: usize,
    #[arg(long)]
    pub quick: bool,
    /// Comma-separated link rates of this run.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<String>,
    /// The engine versions.
    #[arg(long)]
    pub engine: String,
    /// HDD read IOPS rule.
    #[arg(long)]
    pub iops: String,
    /// HDD read bandwidth rule (B/s).
    #[arg(long)]
    pub bps: String,
    /// Seconds this run took.
    #[arg(long)]
    pub run_seconds: i64,
}

/// What the new meta line is computed from, apart from the machine.
pub struct MetaInputs<'a> {
    pub prev: &'a Value,
    pub samples: &'a [Value],
    pub images: &'a [Value],
    pub manifests: &'a [Value],
    pub rates: &'a [String],
}

/// (images, rates, cells_done, cells_total) of the merged meta.
pub fn merge(inp: &MetaInputs<'_>) -> (Vec<ImageMeta>, Vec<String>, usize, usize) {
    let mut images: Vec<ImageMeta> = inp
        .images
        .iter()
        .filter_map(|i| {
            let name = i["name"].as_str()?.to_string();
            let manifest = inp
                .manifests
                .iter()
                .find(|m| m["name"] == name.as_str())
                .map(|m| &m["manifest"]);
            let layers = manifest.and_then(|m| m["layers"].as_array());
            Some(ImageMeta {
                category: i["category"].clone(),
                ready: i["ready"].clone(),
                layers: layers.map(|l| Value::from(l.len())).unwrap_or(Value::Null),
                compressed_bytes: layers
                    .map(|l| Value::from(l.iter().filter_map(|x| x["size"].as_u64()).sum::<u64>()))
                    .unwrap_or(Value::Null),
                unpacked_bytes: inp
                    .samples
                    .iter()
                    .find(|s| s["kind"] == "startup_read" && s["image"] == name.as_str())
                    .map(|s| s["image_bytes"].clone())
                    .unwrap_or(Value::Null),
                name,
            })
        })
        .collect();
    let prev_images: Vec<ImageMeta> = inp.prev["images"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| ImageMeta::deserialize(v).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut all: Vec<ImageMeta> = prev_images
        .into_iter()
        .filter(|p| images.iter().all(|i| i.name != p.name))
        .collect();
    all.append(&mut images);
    let mut rates: Vec<String> = Vec::new();
    let prev_rates: Vec<String> = inp.prev["rates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for r in prev_rates.into_iter().chain(inp.rates.iter().cloned()) {
        if !rates.contains(&r) {
            rates.push(r);
        }
    }
    let cells_done = inp.samples.iter().filter(|s| s["kind"] == "cell").count();
    let cells_total = rates.len() * all.len();
    (all, rates, cells_done, cells_total)
}

pub fn meta(a: MetaArgs) -> Result<()> {
    let rows = read_jsonl_raw(&a.samples)?;
    let values: Vec<Value> = rows.iter().map(|(_, v)| v.clone()).collect();
    let prev = values
        .iter()
        .rev()
        .find(|v| v["kind"] == "meta")
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    let images_text = std::fs::read_to_string(&a.images)
        .with_context(|| format!("cannot read {}", a.images.display()))?;
    let images = parse_exact(&images_text)
        .with_context(|| format!("cannot parse {}", a.images.display()))?;
    let manifests: Vec<Value> = read_jsonl_raw(&a.manifests)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let (images, rates, cells_done, cells_total) = merge(&MetaInputs {
        prev: &prev,
        samples: &values,
        images: images.as_array().map(Vec::as_slice).unwrap_or(&[]),
        manifests: &manifests,
        rates: &a.rates,
    });
    let date = utc_timestamp(super::unix_now());
    let started = [&prev["started"], &prev["date"]]
        .into_iter()
        .find(|v| !v.is_null())
        .cloned()
        .unwrap_or_else(|| Value::from(date.clone()));
    let h = host();
    let num = |s: &str| parse_exact(s).unwrap_or_else(|_| Value::from(s));
    let m = Meta {
        kind: "meta",
        date,
        started,
        machine: Machine {
            cpu: h.cpu,
            nproc: h.nproc,
            mem_total_kib: h.mem_kib,
            kernel: h.kernel,
        },
        reps: a.reps,
        quick: a.quick,
        rates,
        engine: a.engine,
        hdd: Hdd {
            read_iops: num(&a.iops),
            read_bps: num(&a.bps),
        },
        pmem: "tmpfs",
        run_seconds: prev["run_seconds"].as_i64().unwrap_or(0) + a.run_seconds,
        runs: prev["runs"].as_i64().unwrap_or(0) + 1,
        cells_done,
        cells_total,
        images,
        systems: SYSTEMS,
    };
    let mut out = String::new();
    for (l, v) in &rows {
        if v["kind"] != "meta" {
            out.push_str(l.trim_end());
            out.push('\n');
        }
    }
    out.push_str(&serde_json::to_string(&m)?);
    out.push('\n');
    let tmp = a.samples.with_extension("jsonl.tmp");
    std::fs::write(&tmp, out).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.samples)
        .with_context(|| format!("cannot replace {}", a.samples.display()))
}

/// The registry's last byte within [t0, t1] from the counter samples
/// ("TIME_NS BYTES" lines, the first line being the baseline): the first
/// moment in the window at which the counter came within 4 KiB of its
/// final value in the window (stray packets ignored), and the bytes since
/// the baseline. (0, 0) if the window has no samples.
pub fn last_byte(text: &str, t0: u64, t1: u64) -> (u64, u64) {
    let pts: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect();
    let Some(&(_, base)) = pts.first() else {
        return (0, 0);
    };
    let win: Vec<(u64, u64)> = pts
        .into_iter()
        .filter(|(t, _)| (t0..=t1).contains(t))
        .collect();
    let Some(&(_, last)) = win.last() else {
        return (0, 0);
    };
    win.iter()
        .find(|(_, v)| *v + 4096 >= last)
        .map(|(t, _)| (*t, last.saturating_sub(base)))
        .unwrap_or((0, 0))
}

pub fn last_byte_cmd(netstat: &Path, t0: u64, t1: u64) -> Result<()> {
    let text = std::fs::read_to_string(netstat).unwrap_or_default();
    let (t, b) = last_byte(&text, t0, t1);
    println!("{t} {b}");
    Ok(())
}

/// (failed check/deploy/coldstart samples, error samples).
pub fn failures(samples: &[Value]) -> (usize, usize) {
    let bad = samples
        .iter()
        .filter(|s| {
            matches!(s["kind"].as_str(), Some("check" | "deploy" | "coldstart")) && s["ok"] == false
        })
        .count();
    let errs = samples.iter().filter(|s| s["kind"] == "error").count();
    (bad, errs)
}

pub fn check_samples(samples: &Path) -> Result<()> {
    let rows: Vec<Value> = read_jsonl_raw(samples)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let (bad, errs) = failures(&rows);
    if bad != 0 || errs != 0 {
        bail!(
            "{bad} failed samples/checks and {errs} errors (see {})",
            samples.display()
        );
    }
    println!("every check and sample ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_a_resumed_run() {
        let prev = json!({"kind": "meta", "rates": ["100mbit"], "runs": 1,
            "images": [{"name": "old", "category": "x", "ready": "exit", "layers": 1,
                        "compressed_bytes": 5, "unpacked_bytes": null},
                       {"name": "py", "category": "language", "ready": "exit", "layers": 9,
                        "compressed_bytes": 9, "unpacked_bytes": 9}]});
        let samples = vec![
            json!({"kind": "cell", "rate": "100mbit", "image": "old"}),
            json!({"kind": "startup_read", "image": "py", "image_bytes": 1000}),
            json!({"kind": "startup_read", "image": "py", "image_bytes": 2000}),
            json!({"kind": "cell", "rate": "1gbit", "image": "py"}),
        ];
        let images = vec![json!({"name": "py", "category": "language", "ready": "exit:ready"})];
        let manifests =
            vec![json!({"name": "py", "manifest": {"layers": [{"size": 10}, {"size": 32}]}})];
        let rates = vec!["1gbit".to_string(), "100mbit".to_string()];
        let (imgs, rates, done, total) = merge(&MetaInputs {
            prev: &prev,
            samples: &samples,
            images: &images,
            manifests: &manifests,
            rates: &rates,
        });
        assert_eq!(rates, vec!["100mbit", "1gbit"]);
        assert_eq!((done, total), (2, 4));
        assert_eq!(imgs.len(), 2);
        assert_eq!(imgs[0].name, "old");
        assert_eq!(
            serde_json::to_string(&imgs[1]).unwrap(),
            r#"{"name":"py","category":"language","ready":"exit:ready","layers":2,"compressed_bytes":42,"unpacked_bytes":1000}"#
        );
    }

    #[test]
    fn last_byte_window() {
        let t = "100 5000\n200 6000\n300 100000\n310 102000\n400 102100\n900 300000\n";
        // Final value in [150, 450] is 102100: 100000 is within 4 KiB of it.
        assert_eq!(last_byte(t, 150, 450), (300, 97100));
        assert_eq!(last_byte(t, 1000, 2000), (0, 0));
        assert_eq!(last_byte("", 0, 10), (0, 0));
    }

    #[test]
    fn failures_count() {
        let s = vec![
            json!({"kind": "check", "ok": false}),
            json!({"kind": "deploy", "ok": true}),
            json!({"kind": "coldstart", "ok": false}),
            json!({"kind": "pmem", "ok": false}),
            json!({"kind": "error"}),
        ];
        assert_eq!(failures(&s), (2, 1));
    }
}
