//! `nvbench report-tiering`: cold starts with all-disk, all-pmem, LASS and
//! LASS + hot-file tiering (testbed/bench-tiering.sh) → tiering.json and
//! tiering.md.

use super::{
    distinct, host, median, median_value, members_raw, object_raw, read_jsonl_raw, utc_date,
    Ordered, Splice,
};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;

/// The systems compared, in table order.
pub const SYSTEMS: [&str; 4] = ["disk", "pmem", "lass", "hot"];

#[derive(clap::Args)]
pub struct Args {
    /// JSON lines: {system, image, rep, ms, disk_read_bytes, disk_read_ios, ...}.
    // In full: {system, image, rep, mount_ms, elapsed_ms, tiered,
    // disk_read_bytes, disk_read_ios}; a run's time is mount_ms +
    // elapsed_ms (or ms, if recorded).
    #[arg(long, value_name = "FILE")]
    pub runs: PathBuf,
    /// JSON lines: {system, image, image_bytes, pmem_used, ...}.
    // In full: {system, image, layer_file_bytes: [..] (or image_bytes),
    // pmem_used, pmem_meta, pmem_hot, pmem_layers, du_pmem}.
    #[arg(long, value_name = "FILE")]
    pub usage: PathBuf,
    /// JSON lines: {image, step, r} of the migrations.
    // In full: {image, step, r: `nvtier migrate --json`} and, after a
    // miss-mode run, misses: {misses: [..] (or their count), miss_bytes}.
    #[arg(long, value_name = "FILE")]
    pub migrate: PathBuf,
    /// Repetitions per case (for the header).
    #[arg(long)]
    pub reps: usize,
    /// Registry link rate (for the header).
    #[arg(long)]
    pub rate: String,
    /// Directory for tiering.json and tiering.md.
    #[arg(long, value_name = "DIR", default_value = "testbed/results")]
    pub out_dir: PathBuf,
}

#[derive(Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

#[derive(Serialize)]
struct ImageResult {
    cold_start_ms: Ordered<Stat>,
    disk_read_bytes_median: Ordered<Value>,
    disk_read_ios_median: Ordered<Value>,
    usage: Ordered<Value>,
    speedup_vs_disk: f64,
    ratio_to_pmem: f64,
    hot_pmem_pct: f64,
    migrate: Value,
}

#[derive(Serialize)]
struct Overall {
    speedup_vs_disk: f64,
    ratio_to_pmem: f64,
    hot_pmem_pct: f64,
}

#[derive(Serialize)]
struct Results {
    date: String,
    machine: String,
    reps: usize,
    rate: String,
    images: Ordered<ImageResult>,
    overall: Overall,
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A run's time: ms if recorded, else mount_ms + elapsed_ms.
pub fn run_ms(r: &Value) -> Value {
    match r.get("ms") {
        Some(ms) if !ms.is_null() => ms.clone(),
        _ => Value::from(f(&r["mount_ms"]) + f(&r["elapsed_ms"])),
    }
}

const USAGE_KEYS: [&str; 8] = [
    "system",
    "image",
    "image_bytes",
    "pmem_used",
    "pmem_meta",
    "pmem_hot",
    "pmem_layers",
    "du_pmem",
];

/// A usage row as it goes into the results: image_bytes (the sum of
/// layer_file_bytes unless recorded) after system and image; the recorded
/// numbers as recorded.
pub fn usage_row(line: &str, v: &Value) -> Result<(String, Value)> {
    let mut members = members_raw(line)?;
    let mut v = v.clone();
    if v.get("image_bytes").is_none() {
        let sum: u64 = v["layer_file_bytes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        v["image_bytes"] = Value::from(sum);
        members.push(("image_bytes".into(), sum.to_string()));
    }
    members.retain(|(k, _)| k != "layer_file_bytes");
    if let Some(o) = v.as_object_mut() {
        o.remove("layer_file_bytes");
    }
    let rank = |k: &str| {
        USAGE_KEYS
            .iter()
            .position(|x| *x == k)
            .unwrap_or(USAGE_KEYS.len())
    };
    members.sort_by_key(|(k, _)| rank(k));
    Ok((object_raw(&members), v))
}

/// A migrate row as it goes into the results: a recorded list of misses
/// becomes its count.
pub fn migrate_row(line: &str) -> Result<String> {
    let mut members = members_raw(line)?;
    for (k, raw) in members.iter_mut() {
        if k != "misses" {
            continue;
        }
        let m = members_raw(raw)?;
        let count = m
            .iter()
            .find(|(k, _)| k == "misses")
            .map(|(_, r)| super::parse_exact(r))
            .transpose()?;
        if let Some(Value::Array(a)) = count {
            let m: Vec<(String, String)> = m
                .into_iter()
                .map(|(k, r)| {
                    if k == "misses" {
                        (k, a.len().to_string())
                    } else {
                        (k, r)
                    }
                })
                .collect();
            *raw = object_raw(&m);
        }
    }
    Ok(object_raw(&members))
}

/// The results and the Markdown table lines.
/// Usage and migration rows are (recorded line, value) pairs: they go into
/// the results as recorded, through `splice`.
fn compute(
    runs: &[Value],
    usage: &[(String, Value)],
    mig: &[(String, Value)],
    head: (String, String, usize, String),
    splice: &mut Splice,
) -> Result<(Results, Vec<String>)> {
    let (date, machine, reps, rate) = head;
    let mut images = Ordered::default();
    let mut rows = Vec::new();
    let mut tot = [0.0f64; 4];
    let (mut ib, mut hp) = (0.0, 0.0);
    for img in distinct(runs, "image") {
        let of = |s: &str, key: &str| -> Vec<Value> {
            runs.iter()
                .filter(|r| r["image"] == img && r["system"] == s)
                .map(|r| r[key].clone())
                .collect()
        };
        let mut cold = Ordered::default();
        let mut reads = Ordered::default();
        let mut ios = Ordered::default();
        let mut usage_of = Ordered::default();
        let mut usage_raw = Ordered::default();
        let mut med = [0.0f64; 4];
        for (i, s) in SYSTEMS.iter().enumerate() {
            let ms: Vec<f64> = runs
                .iter()
                .filter(|r| r["image"] == img && r["system"] == *s)
                .map(|r| f(&run_ms(r)))
                .collect();
            let m = median(&ms).with_context(|| format!("no runs of {img} on {s}"))?;
            med[i] = m;
            tot[i] += m;
            cold.0.push((
                s.to_string(),
                Stat {
                    median: m,
                    min: super::min(&ms),
                    max: super::max(&ms),
                },
            ));
            reads.0.push((
                s.to_string(),
                median_value(&of(s, "disk_read_bytes")).unwrap_or(Value::Null),
            ));
            ios.0.push((
                s.to_string(),
                median_value(&of(s, "disk_read_ios")).unwrap_or(Value::Null),
            ));
            // The last usage row of (image, system) wins.
            if let Some((l, u)) = usage
                .iter()
                .rev()
                .find(|(_, u)| u["image"] == img && u["system"] == *s)
            {
                let (raw, u) = usage_row(l, u)?;
                usage_of.0.push((s.to_string(), u));
                usage_raw.0.push((s.to_string(), splice.put(&raw)));
            }
        }
        let u = |s: &str| -> Result<&Value> {
            usage_of
                .0
                .iter()
                .find(|(k, _)| k == s)
                .map(|(_, v)| v)
                .with_context(|| format!("no usage of {img} on {s}"))
        };
        let (hot, lass) = (u("hot")?, u("lass")?);
        let hot_pct = 100.0 * f(&hot["pmem_used"]) / f(&hot["image_bytes"]);
        ib += f(&hot["image_bytes"]);
        hp += f(&hot["pmem_used"]);
        let get = |o: &Ordered<Value>, s: &str| {
            o.0.iter()
                .find(|(k, _)| k == s)
                .map(|(_, v)| f(v))
                .unwrap_or(f64::NAN)
        };
        rows.push(format!(
            "| {img} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2} | {:.1}% | {hot_pct:.1}% | {:.0} KiB / {:.0} | {:.0} KiB / {:.0} |",
            med[0],
            med[1],
            med[2],
            med[3],
            med[0] / med[3],
            med[3] / med[1],
            100.0 * f(&lass["pmem_used"]) / f(&lass["image_bytes"]),
            get(&reads, "lass") / 1024.0,
            get(&ios, "lass"),
            get(&reads, "hot") / 1024.0,
            get(&ios, "hot"),
        ));
        images.0.push((
            img.to_string(),
            ImageResult {
                cold_start_ms: cold,
                disk_read_bytes_median: reads,
                disk_read_ios_median: ios,
                usage: usage_raw,
                speedup_vs_disk: med[0] / med[3],
                ratio_to_pmem: med[3] / med[1],
                hot_pmem_pct: hot_pct,
                migrate: {
                    let rows = mig
                        .iter()
                        .filter(|(_, m)| m["image"] == img)
                        .map(|(l, _)| migrate_row(l))
                        .collect::<Result<Vec<_>>>()?;
                    splice.put_all(rows.iter().map(String::as_str))
                },
            },
        ));
    }
    if images.0.is_empty() {
        bail!("no runs");
    }
    let overall = Overall {
        speedup_vs_disk: tot[0] / tot[3],
        ratio_to_pmem: tot[3] / tot[1],
        hot_pmem_pct: 100.0 * hp / ib,
    };
    rows.push(format!(
        "| **sum** | {:.0} | {:.0} | {:.0} | {:.0} | **{:.2}×** | **{:.2}** | | **{:.1}%** | | |",
        tot[0],
        tot[1],
        tot[2],
        tot[3],
        overall.speedup_vs_disk,
        overall.ratio_to_pmem,
        overall.hot_pmem_pct
    ));
    Ok((
        Results {
            date,
            machine,
            reps,
            rate,
            images,
            overall,
        },
        rows,
    ))
}

fn markdown(res: &Results, rows: Vec<String>) -> Vec<String> {
    let mut md = vec![
        format!(
            "Cold start, caches dropped, {}, {}; emulated HDD (loop device, blkio 150 IOPS / 150 MiB/s) and tmpfs pmem; {} reps, medians (ms, mount + command to exit/ready); registry at {}.",
            res.date, res.machine, res.reps, res.rate
        ),
        String::new(),
        "| image | all-disk | all-pmem | LASS | LASS+hot | disk/hot | hot/pmem | pmem % LASS | pmem % hot | disk reads LASS | disk reads hot |".into(),
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|".into(),
    ];
    md.extend(rows);
    md.push(String::new());
    md.push("Goals: ≥ 3× faster than all-disk, within 5% of all-pmem (ratio ≤ 1.05), pmem ≤ 12% of image bytes including metadata. N-Docker: 2.96×, 2%, 11.78%. pmem % = `nvtier status` pmem_used_bytes / the image's file bytes; disk reads = median bytes / IOs on the HDD's loop device during the cold start (blkio counters).".into());
    md
}

pub fn run(a: Args) -> Result<()> {
    let runs: Vec<Value> = read_jsonl_raw(&a.runs)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let usage = read_jsonl_raw(&a.usage)?;
    let mig = read_jsonl_raw(&a.migrate)?;
    let mut splice = Splice::default();
    let h = host();
    let machine = format!("{} {} cores, {}", h.hostname, h.nproc, h.kernel);
    let (res, rows) = compute(
        &runs,
        &usage,
        &mig,
        (utc_date(super::unix_now()), machine, a.reps, a.rate.clone()),
        &mut splice,
    )?;
    super::write(&a.out_dir.join("tiering.json"), &splice.render(&res)?)?;
    super::write_markdown(&a.out_dir.join("tiering.md"), &markdown(&res, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recorded_rows() {
        let l = r#"{"system":"hot","image":"a","layer_file_bytes":[10,32],"pmem_used":5,"pmem_meta":1,"pmem_hot":4,"pmem_layers":0,"du_pmem":4}"#;
        let (raw, v) = usage_row(l, &super::super::parse_exact(l).unwrap()).unwrap();
        assert_eq!(
            raw,
            r#"{"system":"hot","image":"a","image_bytes":42,"pmem_used":5,"pmem_meta":1,"pmem_hot":4,"pmem_layers":0,"du_pmem":4}"#
        );
        assert_eq!(v["image_bytes"], json!(42));
        assert!(v.get("layer_file_bytes").is_none());
        let m = r#"{"image":"a","step":"migrate-after-misses","misses":{"misses":[{"path":"/x"},{"path":"/y"}],"miss_bytes":7},"r":{"copied_bytes":1.50}}"#;
        assert_eq!(
            migrate_row(m).unwrap(),
            r#"{"image":"a","step":"migrate-after-misses","misses":{"misses":2,"miss_bytes":7},"r":{"copied_bytes":1.50}}"#
        );
        let done = r#"{"image":"a","step":"migrate","misses":{"misses":2,"miss_bytes":7},"r":{}}"#;
        assert_eq!(migrate_row(done).unwrap(), done);
        assert_eq!(
            run_ms(&json!({"mount_ms": 1.5, "elapsed_ms": 2.25})),
            json!(3.75)
        );
        assert_eq!(
            run_ms(&json!({"ms": 9, "mount_ms": 1.5, "elapsed_ms": 2.25})),
            json!(9)
        );
    }

    #[test]
    fn table_and_json() {
        let mut runs = Vec::new();
        for (s, ms) in [
            ("disk", [300.0, 330.0]),
            ("pmem", [10.0, 12.0]),
            ("lass", [11.0, 11.0]),
            ("hot", [20.0, 30.0]),
        ] {
            for (rep, m) in ms.iter().enumerate() {
                runs.push(json!({"system": s, "image": "a", "rep": rep + 1, "ms": m,
                    "disk_read_bytes": 2048 * (rep + 1), "disk_read_ios": 5}));
            }
        }
        let raw = |v: Value| (v.to_string(), v);
        let usage: Vec<(String, Value)> = SYSTEMS
            .iter()
            .map(|s| {
                raw(json!({"system": s, "image": "a", "image_bytes": 1000,
                "pmem_used": if *s == "hot" { 100 } else { 1100 }}))
            })
            .collect();
        let mig = vec![raw(json!({"image": "a", "step": "migrate", "r": {}}))];
        let mut sp = Splice::default();
        let (res, rows) = compute(
            &runs,
            &usage,
            &mig,
            ("d".into(), "m".into(), 2, "1gbit".into()),
            &mut sp,
        )
        .unwrap();
        assert_eq!(
            rows[0],
            "| a | 315 | 11 | 11 | 25 | 12.60× | 2.27 | 110.0% | 10.0% | 3 KiB / 5 | 3 KiB / 5 |"
        );
        assert_eq!(
            rows[1],
            "| **sum** | 315 | 11 | 11 | 25 | **12.60×** | **2.27** | | **10.0%** | | |"
        );
        let j: Value = serde_json::from_str(&sp.render(&res).unwrap()).unwrap();
        assert_eq!(
            j["images"]["a"]["cold_start_ms"]["hot"]["median"],
            json!(25.0)
        );
        assert_eq!(
            j["images"]["a"]["disk_read_bytes_median"]["lass"],
            json!(3072.0)
        );
        assert_eq!(j["images"]["a"]["disk_read_ios_median"]["lass"], json!(5.0));
        assert_eq!(j["images"]["a"]["migrate"].as_array().unwrap().len(), 1);
        assert_eq!(j["overall"]["hot_pmem_pct"], json!(10.0));
        assert_eq!(j["images"]["a"]["usage"]["hot"]["pmem_used"], json!(100));
        let md = markdown(&res, rows);
        assert!(md[0].starts_with("Cold start, caches dropped, d, m;"));
    }
}
