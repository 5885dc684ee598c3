//! Statistics over the samples and the Markdown report.

use crate::pull_model::{ImageSpec, Machine, Sample, PLACEMENTS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Everything written to the results JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub benchmark: &'static str,
    pub date: String,
    pub machine: Machine,
    pub git_commit: String,
    pub rate: String,
    pub reps: usize,
    pub quick: bool,
    pub name: String,
    /// /proc/loadavg before and after the run (other work adds noise).
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// Other testbeds in /run/nvtier-testbed at the start.
    pub other_testbeds: Vec<String>,
    pub testbed: serde_json::Value,
    pub images: Vec<ImageSpec>,
    pub placements: Vec<String>,
    pub duration_s: f64,
    pub samples: Vec<Sample>,
    pub summary: Summary,
}

/// Goal: LASS deploy / all-pmem deploy at most this.
pub const GOAL_LASS_OVER_PMEM: f64 = 1.05;
/// Goal: all-disk deploy / LASS deploy at least this.
pub const GOAL_DISK_OVER_LASS: f64 = 1.2;
/// Goal: LASS deploy / wire time at most this (median over images).
pub const GOAL_LASS_OVER_WIRE: f64 = 1.10;
/// Goal: LASS store-after-download / all-disk's at most this.
pub const GOAL_AFTER_DL_LASS_OVER_DISK: f64 = 0.05;

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Median of the finite values (mean of the middle two for an even count);
/// None when there are none.
pub fn median(v: &[f64]) -> Option<f64> {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    nvtier_testbed::reports::median(&finite)
}

/// Geometric mean of positive finite values; None if any is not.
pub fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() || v.iter().any(|x| !x.is_finite() || *x <= 0.0) {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

/// Medians of one (image, placement).
#[derive(Debug, Clone, Serialize)]
pub struct PlacementStats {
    pub n: usize,
    pub deploy_ms_median: Option<f64>,
    pub deploy_ms_min: Option<f64>,
    pub deploy_ms_max: Option<f64>,
    pub download_done_ms_median: Option<f64>,
    pub stored_done_ms_median: Option<f64>,
    pub store_after_download_ms_median: Option<f64>,
    pub pmem_bytes_median: Option<f64>,
    pub disk_bytes_median: Option<f64>,
    pub ldl_mode: Option<usize>,
    pub ldl_mode_count: usize,
    pub ldl_values: Vec<Option<usize>>,
    /// The image's wire time (ms) and the median of deploy / wire.
    pub wire_ms: Option<f64>,
    pub deploy_over_wire_median: Option<f64>,
}

fn placement_stats(samples: &[&Sample]) -> PlacementStats {
    let col = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { samples.iter().map(|s| f(s)).collect() };
    let deploy = col(&|s| s.deploy_ms);
    let ldl_values: Vec<Option<usize>> = samples.iter().map(|s| s.ldl_index).collect();
    let mut counts: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    for l in &ldl_values {
        *counts.entry(*l).or_default() += 1;
    }
    // Most frequent; ties go to the lower index.
    let (ldl_mode, ldl_mode_count) =
        counts.iter().fold(
            (None, 0),
            |(bm, bc), (l, c)| if *c > bc { (*l, *c) } else { (bm, bc) },
        );
    PlacementStats {
        n: samples.len(),
        deploy_ms_median: median(&deploy),
        deploy_ms_min: deploy.iter().copied().reduce(f64::min),
        deploy_ms_max: deploy.iter().copied().reduce(f64::max),
        download_done_ms_median: median(&col(&|s| s.download_done_ms)),
        stored_done_ms_median: median(&col(&|s| s.stored_done_ms)),
        store_after_download_ms_median: median(&col(&|s| s.store_after_download_ms)),
        pmem_bytes_median: median(&col(&|s| s.pmem_bytes as f64)),
        disk_bytes_median: median(&col(&|s| s.disk_bytes as f64)),
        ldl_mode,
        ldl_mode_count,
        ldl_values,
        wire_ms: median(&col(&|s| {
            if s.wire_ms > 0.0 {
                s.wire_ms
            } else {
                f64::NAN
            }
        })),
        deploy_over_wire_median: median(&col(&|s| {
            if s.wire_ms > 0.0 {
                s.deploy_ms / s.wire_ms
            } else {
                f64::NAN
            }
        })),
    }
}

/// Per-image summary; ratios are ratios of this image's medians.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub image: String,
    pub layers: usize,
    pub placements: BTreeMap<String, PlacementStats>,
    pub lass_over_pmem_deploy: Option<f64>,
    pub disk_over_lass_deploy: Option<f64>,
    pub lass_over_disk_store_after_download: Option<f64>,
    pub lass_over_pmem_pmem_bytes: Option<f64>,
    pub lass_over_pmem_stored_done: Option<f64>,
    pub disk_over_lass_stored_done: Option<f64>,
    pub lass_deploy_over_wire: Option<f64>,
}

/// A ratio across images.
#[derive(Debug, Clone, Serialize)]
pub struct Agg {
    pub geomean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub per_image: Vec<Option<f64>>,
}

fn agg(v: Vec<Option<f64>>) -> Agg {
    let ok: Vec<f64> = v.iter().flatten().copied().collect();
    Agg {
        geomean: if ok.len() == v.len() {
            geomean(&ok)
        } else {
            None
        },
        min: ok.iter().copied().reduce(f64::min),
        max: ok.iter().copied().reduce(f64::max),
        per_image: v,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub method: &'static str,
    pub images: Vec<ImageSummary>,
    pub lass_over_pmem_deploy: Agg,
    pub disk_over_lass_deploy: Agg,
    pub lass_over_disk_store_after_download: Agg,
    pub lass_over_pmem_pmem_bytes: Agg,
    pub lass_over_pmem_stored_done: Agg,
    pub disk_over_lass_stored_done: Agg,
    /// Median over images of the per-image median store-after-download (ms).
    pub store_after_download_ms: BTreeMap<String, Option<f64>>,
    /// LASS samples where pmem_bytes == ldl_and_above_bytes (the rule
    /// before streamed storing; reference only).
    pub lass_pmem_equals_ldl_and_above: usize,
    /// LASS samples whose every layer follows the streamed LASS rule.
    pub lass_rule_ok: usize,
    pub lass_samples: usize,
    pub goal_lass_over_pmem_met: Option<bool>,
    pub goal_disk_over_lass_met: Option<bool>,
    /// LASS deploy / wire time per image (median over reps).
    pub lass_deploy_over_wire: Agg,
    /// Its median over the images.
    pub lass_deploy_over_wire_median: Option<f64>,
    pub goal_lass_over_wire_met: Option<bool>,
    pub goal_after_dl_met: Option<bool>,
}

pub fn summarize(images: &[ImageSpec], samples: &[Sample]) -> Summary {
    let mut per = Vec::new();
    for im in images {
        let mut placements = BTreeMap::new();
        for p in PLACEMENTS {
            let ss: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.image == im.name && s.placement == p)
                .collect();
            placements.insert(p.to_string(), placement_stats(&ss));
        }
        let get =
            |p: &str, f: &dyn Fn(&PlacementStats) -> Option<f64>| placements.get(p).and_then(f);
        let dep = |p: &str| get(p, &|s| s.deploy_ms_median);
        let sto = |p: &str| get(p, &|s| s.stored_done_ms_median);
        per.push(ImageSummary {
            image: im.name.clone(),
            layers: im.layers,
            lass_over_pmem_deploy: ratio(dep("lass"), dep("pmem")),
            disk_over_lass_deploy: ratio(dep("disk"), dep("lass")),
            lass_over_disk_store_after_download: ratio(
                get("lass", &|s| s.store_after_download_ms_median),
                get("disk", &|s| s.store_after_download_ms_median),
            ),
            lass_over_pmem_pmem_bytes: ratio(
                get("lass", &|s| s.pmem_bytes_median),
                get("pmem", &|s| s.pmem_bytes_median),
            ),
            lass_over_pmem_stored_done: ratio(sto("lass"), sto("pmem")),
            disk_over_lass_stored_done: ratio(sto("disk"), sto("lass")),
            lass_deploy_over_wire: get("lass", &|s| s.deploy_over_wire_median),
            placements,
        });
    }
    let collect = |f: &dyn Fn(&ImageSummary) -> Option<f64>| agg(per.iter().map(f).collect());
    let lass_over_pmem_deploy = collect(&|i| i.lass_over_pmem_deploy);
    let disk_over_lass_deploy = collect(&|i| i.disk_over_lass_deploy);
    let lass: Vec<&Sample> = samples.iter().filter(|s| s.placement == "lass").collect();
    let store_after_download_ms = PLACEMENTS
        .iter()
        .map(|p| {
            let v: Vec<f64> = per
                .iter()
                .filter_map(|i| i.placements.get(*p)?.store_after_download_ms_median)
                .collect();
            (p.to_string(), median(&v))
        })
        .collect();
    let lass_deploy_over_wire = collect(&|i| i.lass_deploy_over_wire);
    let lass_deploy_over_wire_median = {
        let v: Vec<f64> = lass_deploy_over_wire
            .per_image
            .iter()
            .flatten()
            .copied()
            .collect();
        median(&v)
    };
    let after_dl = collect(&|i| i.lass_over_disk_store_after_download);
    Summary {
        method: "per image: ratio of the medians over reps; overall: geometric mean of the per-image ratios",
        goal_lass_over_wire_met: lass_deploy_over_wire_median.map(|m| m <= GOAL_LASS_OVER_WIRE),
        goal_after_dl_met: after_dl.geomean.map(|g| g <= GOAL_AFTER_DL_LASS_OVER_DISK),
        lass_deploy_over_wire,
        lass_deploy_over_wire_median,
        lass_rule_ok: lass.iter().filter(|s| s.lass_rule_ok).count(),
        lass_over_disk_store_after_download: after_dl,
        lass_over_pmem_pmem_bytes: collect(&|i| i.lass_over_pmem_pmem_bytes),
        lass_over_pmem_stored_done: collect(&|i| i.lass_over_pmem_stored_done),
        disk_over_lass_stored_done: collect(&|i| i.disk_over_lass_stored_done),
        goal_lass_over_pmem_met: lass_over_pmem_deploy.geomean.map(|g| g <= GOAL_LASS_OVER_PMEM),
        goal_disk_over_lass_met: disk_over_lass_deploy.geomean.map(|g| g >= GOAL_DISK_OVER_LASS),
        lass_over_pmem_deploy,
        disk_over_lass_deploy,
        store_after_download_ms,
        lass_pmem_equals_ldl_and_above: lass
            .iter()
            .filter(|s| s.pmem_bytes == s.ldl_and_above_bytes)
            .count(),
        lass_samples: lass.len(),
        images: per,
    }
}

fn f0(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "n/a".into())
}
fn f1(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "n/a".into())
}
fn f3(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into())
}
fn range3(a: &Agg) -> String {
    match (a.min, a.max) {
        (Some(lo), Some(hi)) => format!("{lo:.3}–{hi:.3}"),
        _ => "n/a".into(),
    }
}
/// A row of the Overall table: the ratio's geomean and per-image range.
fn ratio_row(o: &mut String, metric: &str, a: &Agg, goal: &str, result: &str) {
    let _ = writeln!(
        o,
        "| {metric} | {} | {} | {goal} | {result} |",
        f3(a.geomean),
        range3(a)
    );
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "n/a",
    }
}

fn ldl_cell(s: &PlacementStats) -> String {
    let mode = s
        .ldl_mode
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    let mut seen: Vec<usize> = s.ldl_values.iter().flatten().copied().collect();
    seen.sort_unstable();
    seen.dedup();
    let vals: Vec<f64> = s.ldl_values.iter().flatten().map(|&l| l as f64).collect();
    let med = median(&vals);
    let mut c = format!("{mode} ({}/{})", s.ldl_mode_count, s.n);
    if seen.len() > 1 {
        let list: Vec<String> = seen.iter().map(|x| x.to_string()).collect();
        let _ = write!(c, "; seen {}; median {}", list.join(","), f1(med));
    }
    c
}

/// The sample of (image, placement) whose deploy time is the median (the
/// lower middle one for an even count).
fn median_sample<'a>(samples: &'a [Sample], image: &str, placement: &str) -> Option<&'a Sample> {
    let mut ss: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.image == image && s.placement == placement)
        .collect();
    ss.sort_by(|a, b| a.deploy_ms.total_cmp(&b.deploy_ms));
    let n = ss.len();
    if n == 0 {
        None
    } else {
        Some(ss[(n - 1) / 2])
    }
}

/// Where a LASS pull's deploy time goes, per image (medians over the
/// reps of each part; the parts of one pull add up to its deploy).
fn deploy_breakdown(o: &mut String, r: &Results) {
    let _ = writeln!(o, "## Where the LASS deploy goes\n");
    let _ = writeln!(
        o,
        "Per LASS pull: *outside* = deploy − `stored_done_ms` (process start, store open, exit: outside nvtier's pull clock); *to first byte* = the first layer's download start (registry round trips before it); *transfer* = first download start → last byte, and that over the wire time; *after-dl* = storing after the last byte. Medians over the reps.\n"
    );
    let _ = writeln!(
        o,
        "| image | deploy ms | outside ms | to first byte ms | transfer ms | transfer / wire | after-dl ms | wire ms |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for im in &r.images {
        let mine: Vec<&Sample> = r
            .samples
            .iter()
            .filter(|x| x.image == im.name && x.placement == "lass")
            .collect();
        let col = |f: &dyn Fn(&Sample) -> Option<f64>| {
            median(&mine.iter().filter_map(|x| f(x)).collect::<Vec<_>>())
        };
        let first = |x: &Sample| {
            x.layers
                .iter()
                .filter_map(|l| l.download_start_ms)
                .reduce(f64::min)
        };
        let wire = col(&|x| (x.wire_ms > 0.0).then_some(x.wire_ms));
        let transfer = col(&|x| first(x).map(|f| x.download_done_ms - f));
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            im.name,
            f0(col(&|x| Some(x.deploy_ms))),
            f0(col(&|x| Some(x.deploy_ms - x.stored_done_ms))),
            f0(col(&first)),
            f0(transfer),
            f3(col(&|x| first(x)
                .filter(|_| x.wire_ms > 0.0)
                .map(|f| (x.download_done_ms - f) / x.wire_ms))),
            f0(col(&|x| Some(x.store_after_download_ms))),
            f0(wire)
        );
    }
    let _ = writeln!(o);
}

pub fn markdown(r: &Results) -> String {
    let s = &r.summary;
    let m = &r.machine;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# nvtier pull benchmark — {} at {}, {} reps{}\n",
        r.images
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        r.rate,
        r.reps,
        if r.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        o,
        "**{}** · machine: {} ({} CPUs, {:.1} GiB, Linux {}) · rate {} · reps {} · nvtier {} · run took {:.1} min\n",
        r.date,
        m.cpu_model,
        m.nproc,
        m.mem_total_kib as f64 / (1024.0 * 1024.0),
        m.kernel,
        r.rate,
        r.reps,
        r.git_commit,
        r.duration_s / 60.0
    );
    let _ = writeln!(
        o,
        "Testbed: pmem = tmpfs (2G, budget 2G); disk = ext4 on a direct-I/O loop device throttled to \
150 IOPS / 150 MiB/s (blkio v1, reads and writes); registry in a network namespace behind tbf at {}. \
Every pull is cold: the store is emptied (`nvtier rm`, verified with `nvtier status --json`), then \
`sync; echo 3 > /proc/sys/vm/drop_caches`, then `nvtier pull --json --no-wait --placement P`, \
started by the harness directly inside the HDD throttle cgroup of testbed `{}` (`--no-wait`: the pull returns when its layers are published; the \
write-back of disk-tier layers, crash-safe through their kept blobs, goes on after it, as under \
`nvtier serve` and the engines, and the `sync` before the next pull waits for it). Order: for each \
rep, for each image, disk → pmem → lass.\n",
        r.rate,
        r.name
    );
    let _ = writeln!(
        o,
        "Load average (1/5/15 min) at start {}, at end {}; other testbeds running at start: {}.\n",
        r.loadavg_start,
        r.loadavg_end,
        if r.other_testbeds.is_empty() {
            "none".to_string()
        } else {
            r.other_testbeds.join(", ")
        }
    );
    let _ = writeln!(
        o,
        "*deploy* = wall clock measured by the harness around that command (includes process start); \
*after-dl* = `stored_done_ms − download_done_ms` from nvtier's report (how long storing lasts after \
the last byte arrived); *pmem* = MiB charged to pmem; *LDL* = `ldl_index` of the LASS pulls \
(mode (count/reps), other values if any). All values are medians over the reps; deploy also min–max.\n"
    );

    let _ = writeln!(o, "## Per image\n");
    let _ = writeln!(
        o,
        "| image | layers | LDL (lass) | disk deploy ms | disk after-dl ms | disk pmem MiB | pmem deploy ms | pmem after-dl ms | pmem pmem MiB | lass deploy ms | lass after-dl ms | lass pmem MiB | lass/pmem | disk/lass | wire ms | lass/wire |"
    );
    let _ = writeln!(
        o,
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for im in &s.images {
        let mut row = format!("| {} | {} | ", im.image, im.layers);
        row.push_str(
            &im.placements
                .get("lass")
                .map(ldl_cell)
                .unwrap_or_else(|| "n/a".into()),
        );
        for p in PLACEMENTS {
            match im.placements.get(p) {
                Some(st) => {
                    let _ = write!(
                        row,
                        " | {} ({}–{}) | {} | {}",
                        f0(st.deploy_ms_median),
                        f0(st.deploy_ms_min),
                        f0(st.deploy_ms_max),
                        f0(st.store_after_download_ms_median),
                        f1(st.pmem_bytes_median.map(|b| b / (1024.0 * 1024.0)))
                    );
                }
                None => row.push_str(" | n/a | n/a | n/a"),
            }
        }
        let _ = writeln!(
            o,
            "{row} | {} | {} | {} | {} |",
            f3(im.lass_over_pmem_deploy),
            f3(im.disk_over_lass_deploy),
            f0(im.placements.get("lass").and_then(|p| p.wire_ms)),
            f3(im.lass_deploy_over_wire)
        );
    }

    let _ = writeln!(o, "\n## Overall\n");
    let _ = writeln!(
        o,
        "Each per-image ratio is a ratio of that image's medians (all measured in this run); the overall \
value is the **geometric mean of the per-image ratios** (range over images alongside).\n"
    );
    let _ = writeln!(
        o,
        "| metric | overall (geomean) | per-image range | goal | result |"
    );
    let _ = writeln!(o, "|---|--:|--:|---|---|");
    ratio_row(
        &mut o,
        "LASS deploy / all-pmem deploy",
        &s.lass_over_pmem_deploy,
        &format!("≤ {GOAL_LASS_OVER_PMEM}"),
        met(s.goal_lass_over_pmem_met),
    );
    ratio_row(
        &mut o,
        "all-disk deploy / LASS deploy",
        &s.disk_over_lass_deploy,
        &format!("≥ {GOAL_DISK_OVER_LASS}"),
        met(s.goal_disk_over_lass_met),
    );
    let sad = |p: &str| s.store_after_download_ms.get(p).copied().flatten();
    ratio_row(
        &mut o,
        &format!(
            "store-after-download LASS / all-disk (median ms: lass {}, disk {}, pmem {})",
            f0(sad("lass")),
            f0(sad("disk")),
            f0(sad("pmem"))
        ),
        &s.lass_over_disk_store_after_download,
        "lower is better",
        "–",
    );
    let _ = writeln!(
        o,
        "| LASS deploy / wire time (**median** over images; geomean {}) | {} | {} | ≤ {GOAL_LASS_OVER_WIRE} | {} |",
        f3(s.lass_deploy_over_wire.geomean),
        f3(s.lass_deploy_over_wire_median),
        range3(&s.lass_deploy_over_wire),
        met(s.goal_lass_over_wire_met)
    );
    let _ = writeln!(
        o,
        "| store-after-download goal: LASS / all-disk | {} | {} | ≤ {GOAL_AFTER_DL_LASS_OVER_DISK} | {} |",
        f3(s.lass_over_disk_store_after_download.geomean),
        range3(&s.lass_over_disk_store_after_download),
        met(s.goal_after_dl_met)
    );
    let _ = writeln!(
        o,
        "| LASS tiers follow the streamed rule (pmem ⇔ disk storing predicted to end after the last byte) | {}/{} samples | – | every sample | {} |",
        s.lass_rule_ok,
        s.lass_samples,
        met(Some(s.lass_samples > 0 && s.lass_rule_ok == s.lass_samples))
    );
    ratio_row(
        &mut o,
        "pmem bytes LASS / all-pmem",
        &s.lass_over_pmem_pmem_bytes,
        "< 1 (pmem saved)",
        "–",
    );
    let inv_ok = s.lass_samples > 0 && s.lass_pmem_equals_ldl_and_above == s.lass_samples;
    let _ = writeln!(
        o,
        "| (reference, the rule before streaming) LASS pmem bytes == LDL-and-above bytes | {}/{} samples | – | – | {} |",
        s.lass_pmem_equals_ldl_and_above,
        s.lass_samples,
        if inv_ok { "yes" } else { "no" }
    );
    ratio_row(
        &mut o,
        "(reference) nvtier-internal stored_done: LASS / all-pmem",
        &s.lass_over_pmem_stored_done,
        "–",
        "–",
    );
    ratio_row(
        &mut o,
        "(reference) nvtier-internal stored_done: all-disk / LASS",
        &s.disk_over_lass_stored_done,
        "–",
        "–",
    );

    let verdict = |name: &str, v: Option<f64>, ok: Option<bool>, goal: &str| match ok {
        Some(true) => format!("{name} {goal}: MET ({}).", f3(v)),
        Some(false) => format!("{name} {goal}: MISSED ({}).", f3(v)),
        None => format!("{name} {goal}: not measurable."),
    };
    let _ = writeln!(
        o,
        "\n**Goals.** {} {} LASS pmem bytes equal the LDL-and-above bytes (the rule before streaming) in {}/{} LASS samples{}.\n",
        verdict(
            "LASS deploy / all-pmem deploy",
            s.lass_over_pmem_deploy.geomean,
            s.goal_lass_over_pmem_met,
            "≤ 1.05"
        ),
        verdict(
            "All-disk deploy / LASS deploy",
            s.disk_over_lass_deploy.geomean,
            s.goal_disk_over_lass_met,
            "≥ 1.2"
        ),
        s.lass_pmem_equals_ldl_and_above,
        s.lass_samples,
        if inv_ok { "" } else { " (expected with streamed storing)" }
    );
    let per_image_misses: Vec<String> = s
        .images
        .iter()
        .filter_map(|i| {
            let lp = i.lass_over_pmem_deploy?;
            let dl = i.disk_over_lass_deploy?;
            let mut why = Vec::new();
            if lp > GOAL_LASS_OVER_PMEM {
                why.push(format!("lass/pmem {lp:.3}"));
            }
            if dl < GOAL_DISK_OVER_LASS {
                why.push(format!("disk/lass {dl:.3}"));
            }
            (!why.is_empty()).then(|| format!("{} ({})", i.image, why.join(", ")))
        })
        .collect();
    if !per_image_misses.is_empty() {
        let _ = writeln!(
            o,
            "Per image, the goals are missed by: {}.\n",
            per_image_misses.join("; ")
        );
    }

    deploy_breakdown(&mut o, r);

    let _ = writeln!(o, "## Timelines of the median-deploy pull per placement\n");
    let _ = writeln!(
        o,
        "ms since the pull started (nvtier's clock); `dl` = download end, `store` = store start–end and tier (with streamed storing: start–extraction end→published).\n"
    );
    for im in &r.images {
        let picks: Vec<Option<&Sample>> = ["lass", "pmem", "disk"]
            .iter()
            .map(|p| median_sample(&r.samples, &im.name, p))
            .collect();
        let deploys: Vec<String> = picks
            .iter()
            .zip(["lass", "pmem", "disk"])
            .map(|(s, p)| match s {
                Some(s) => format!(
                    "{p} rep {} deploy {:.0} ms, downloads done {:.0}, stored {:.0}",
                    s.rep, s.deploy_ms, s.download_done_ms, s.stored_done_ms
                ),
                None => format!("{p} n/a"),
            })
            .collect();
        let _ = writeln!(o, "**{}** ({}): {}\n", im.name, im.spec, deploys.join("; "));
        let _ = writeln!(
            o,
            "| # | blob MiB | lass dl | lass store | pmem dl | pmem store | disk dl | disk store |"
        );
        let _ = writeln!(o, "|--:|--:|--:|---|--:|---|--:|---|");
        for idx in 0..im.layers {
            let mut row = String::new();
            let size = picks
                .iter()
                .flatten()
                .find_map(|s| s.layers.iter().find(|l| l.index == idx))
                .map(|l| mib(l.size));
            let _ = write!(row, "| {idx} | {}", f1(size));
            for s in &picks {
                let l = s.and_then(|s| s.layers.iter().find(|l| l.index == idx));
                match l {
                    Some(l) => {
                        let ldl = s.and_then(|s| s.ldl_index) == Some(idx);
                        let end = match l.extracted_ms {
                            Some(x) => format!("{}→{}", f0(Some(x)), f0(l.store_end_ms)),
                            None => f0(l.store_end_ms),
                        };
                        let _ = write!(
                            row,
                            " | {} | {}–{} {}{}",
                            f0(l.download_end_ms),
                            f0(l.store_start_ms),
                            end,
                            l.tier,
                            if ldl { " (LDL)" } else { "" }
                        );
                    }
                    None => row.push_str(" | n/a | n/a"),
                }
            }
            let _ = writeln!(o, "{row} |");
        }
        o.push('\n');
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn geomeans() {
        let g = geomean(&[2.0, 8.0]).expect("positive");
        assert!((g - 4.0).abs() < 1e-9);
        assert_eq!(geomean(&[1.0, 0.0]), None);
        assert_eq!(geomean(&[]), None);
    }

    fn sample(image: &str, placement: &str, deploy: f64, pmem: u64, ldl: Option<usize>) -> Sample {
        Sample {
            rep: 1,
            image: image.into(),
            placement: placement.into(),
            deploy_ms: deploy,
            download_done_ms: deploy / 2.0,
            stored_done_ms: deploy * 0.9,
            store_after_download_ms: deploy * 0.4,
            pmem_bytes: pmem,
            disk_bytes: 0,
            ldl_index: ldl,
            ldl_and_above_bytes: pmem,
            wire_ms: deploy / 2.0,
            lass_rule_ok: true,
            layers: Vec::new(),
        }
    }

    #[test]
    fn summary_ratios() {
        let images = crate::pull_model::image_set(true);
        let mut v = Vec::new();
        for (im, k) in [("mid", 1.0), ("top", 2.0)] {
            for rep in 0..3 {
                let j = rep as f64;
                v.push(sample(im, "disk", k * 1300.0 + j, 0, Some(3)));
                v.push(sample(im, "pmem", k * 1000.0 + j, 100, Some(3)));
                v.push(sample(im, "lass", k * 1020.0 + j, 40, Some(3)));
            }
        }
        let s = summarize(&images, &v);
        let lp = s.lass_over_pmem_deploy.geomean.expect("ratio");
        assert!((lp - 1.02).abs() < 0.01, "{lp}");
        assert_eq!(s.goal_lass_over_pmem_met, Some(true));
        assert_eq!(s.goal_disk_over_lass_met, Some(true));
        assert_eq!(s.lass_pmem_equals_ldl_and_above, 6);
        assert_eq!(s.images[0].placements["lass"].ldl_mode, Some(3));
        assert!((s.lass_over_pmem_pmem_bytes.geomean.expect("ratio") - 0.4).abs() < 1e-9);
    }
}
