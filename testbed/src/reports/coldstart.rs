//! `nvbench report-coldstart`: cold starts through containerd + runc with
//! Docker, NVM-Docker and nvtier (testbed/bench-coldstart.sh) →
//! coldstart.json and coldstart.md.

use super::{host, median, read_jsonl_raw, thousands, utc_timestamp, Splice};
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;

/// (id, label, set-up) of the systems, in table order.
pub const SYSTEMS: [(&str, &str, &str); 3] = [
    ("docker", "Docker", "overlayfs; containerd root on HDD"),
    ("nvm", "NVM-Docker", "overlayfs; containerd root on pmem"),
    (
        "nvtier",
        "nvtier",
        "`nvtier serve` (lass); containerd root and nvtier state on HDD",
    ),
];

#[derive(clap::Args)]
pub struct Args {
    /// JSON lines with a kind: pull, pmem, verify,
    /// control_unthrottled_container, coldstart.
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// Repetitions per case (for the header).
    #[arg(long)]
    pub reps: usize,
    /// Unix time the benchmark started.
    #[arg(long, value_name = "SECONDS")]
    pub started: i64,
    /// Registry link rate.
    #[arg(long)]
    pub rate: String,
    /// The HDD read IOPS rule (blkio.throttle.read_iops_device line).
    #[arg(long)]
    pub iops_rule: String,
    /// The HDD read bandwidth rule (blkio.throttle.read_bps_device line).
    #[arg(long)]
    pub bps_rule: String,
    /// Results JSON.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "testbed/results/coldstart.json"
    )]
    pub out_json: PathBuf,
    /// Markdown report.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "testbed/results/coldstart.md"
    )]
    pub out_md: PathBuf,
}

#[derive(Serialize)]
struct Machine {
    cpu: String,
    nproc: usize,
    mem_total_kib: u64,
    kernel: String,
}

#[derive(Serialize)]
struct Throttle<'a> {
    read_iops: &'a str,
    read_bps: &'a str,
}

#[derive(Serialize)]
struct Results<'a> {
    date: &'a str,
    machine: Machine,
    reps: usize,
    rate: &'a str,
    hdd_throttle: Throttle<'a>,
    run_seconds: i64,
    samples: Value,
}

fn label(s: &str) -> &str {
    SYSTEMS.iter().find(|x| x.0 == s).map(|x| x.1).unwrap_or(s)
}

fn mib(b: Option<f64>) -> String {
    b.map(|b| format!("{:.1} MiB", b / 1048576.0))
        .unwrap_or_else(|| "–".into())
}

fn kib(b: Option<f64>) -> String {
    b.map(|b| format!("{:.0} KiB", b / 1024.0))
        .unwrap_or_else(|| "–".into())
}

/// A sample's value as text, the way it was recorded (integers stay so).
fn t(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn n(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Everything after the header paragraphs: the two tables and the notes.
pub fn body(rows: &[Value]) -> Vec<String> {
    let sel = |kind: &str, s: Option<&str>| -> Vec<&Value> {
        rows.iter()
            .filter(|r| r["kind"] == kind && s.is_none_or(|s| r["system"] == s))
            .collect()
    };
    let medk =
        |rs: &[&Value], k: &str| median(&rs.iter().filter_map(|r| n(&r[k])).collect::<Vec<_>>());
    let cold: Vec<Vec<&Value>> = SYSTEMS
        .iter()
        .map(|(s, _, _)| {
            sel("coldstart", Some(s))
                .into_iter()
                .filter(|r| r["ok"] == true)
                .collect()
        })
        .collect();
    let med: Vec<Option<f64>> = cold.iter().map(|c| medk(c, "ms")).collect();
    let med_of = |s: &str| SYSTEMS.iter().position(|x| x.0 == s).and_then(|i| med[i]);
    let pmem_after_pull = |s: &str| -> Option<&Value> {
        sel("pmem", Some(s))
            .into_iter()
            .find(|r| r["when"] == "after_pull")
    };
    let mut md = vec![
        "| system | set-up | cold start ms, median (min–max) | speed-up vs Docker | ratio to NVM-Docker | pmem bytes | HDD read per cold start (median) | `ctr pull` ms (+ `sync` after) |".to_string(),
        "|---|---|--:|--:|--:|--:|--:|--:|".to_string(),
    ];
    for (i, (s, l, desc)) in SYSTEMS.iter().enumerate() {
        let v: Vec<f64> = cold[i].iter().filter_map(|r| n(&r["ms"])).collect();
        let pull = sel("pull", Some(s)).into_iter().next();
        let pt = pull
            .map(|p| format!("{} (+{})", t(&p["ms"]), t(&p["sync_after_ms"])))
            .unwrap_or_else(|| "–".into());
        let pb = pmem_after_pull(s).and_then(|r| r["bytes"].as_i64());
        let pm = match pb {
            Some(b) if b != 0 => format!("{} ({})", thousands(b), mib(Some(b as f64))),
            _ => "0".into(),
        };
        let Some(m) = med[i] else {
            md.push(format!(
                "| {l} | {desc} | no successful run | – | – | {pm} | – | {pt} |"
            ));
            continue;
        };
        let sp = med_of("docker")
            .filter(|d| *d != 0.0)
            .map(|d| format!("{:.2}×", d / m))
            .unwrap_or_else(|| "–".into());
        let ra = med_of("nvm")
            .filter(|d| *d != 0.0)
            .map(|d| format!("{:.2}×", m / d))
            .unwrap_or_else(|| "–".into());
        md.push(format!(
            "| {l} | {desc} | {m:.0} ({:.0}–{:.0}) | {sp} | {ra} | {pm} | {} | {pt} |",
            super::min(&v),
            super::max(&v),
            kib(medk(&cold[i], "hdd_read_bytes"))
        ));
    }
    md.push(String::new());
    md.push("pmem bytes: NVM-Docker = `du -sb` of its containerd root on the tmpfs (content store + snapshots + metadata); nvtier = `nvtier status --json` `pmem_used_bytes` (its layers); Docker uses none. HDD read = sectors read on the loop device (`/sys/block/loopN/stat`) during the cold start, by anyone.\n".into());
    md.push("HDD I/O per cold start, medians. Device columns: loop device counters (requests after merging). Per-cgroup columns: `blkio.throttle.io_serviced`/`io_service_bytes` reads of the loop device, which count bios as the throttle sees them (before merging, so they can exceed the device's count). *containerd* = the testbed's own cgroup (containerd, shim, runc before it joins the container's cgroup); *nvtier serve* = its own child cgroup; the container's reads are in a third cgroup (removed with the container; see the throttle check below).\n".into());
    md.push("| system | device read IOs | device read | containerd's reads | nvtier serve's reads | device write IOs | written |".into());
    md.push("|---|--:|--:|--:|--:|--:|--:|".into());
    let f0 = |x: Option<f64>| x.map(|x| format!("{x:.0}")).unwrap_or_else(|| "–".into());
    for (i, (s, l, _)) in SYSTEMS.iter().enumerate() {
        let c = &cold[i];
        if c.is_empty() {
            continue;
        }
        let sv = if *s == "nvtier" {
            format!(
                "{} ({} bios)",
                kib(medk(c, "serve_read_bytes")),
                f0(medk(c, "serve_read_ios"))
            )
        } else {
            "–".into()
        };
        md.push(format!(
            "| {l} | {} | {} | {} ({} bios) | {sv} | {} | {} |",
            f0(medk(c, "hdd_read_ios")),
            kib(medk(c, "hdd_read_bytes")),
            kib(medk(c, "containerd_read_bytes")),
            f0(medk(c, "containerd_read_ios")),
            f0(medk(c, "hdd_write_ios")),
            kib(medk(c, "hdd_write_bytes"))
        ));
    }
    md.push(String::new());

    let mut notes: Vec<String> = Vec::new();
    let fails: Vec<&Value> = sel("coldstart", None)
        .into_iter()
        .filter(|r| r["ok"] != true)
        .collect();
    if !fails.is_empty() {
        notes.push(format!(
            "{} cold start(s) failed and are left out: {}",
            fails.len(),
            fails
                .iter()
                .map(|r| format!(
                    "{} rep {} (exit {})",
                    label(r["system"].as_str().unwrap_or("?")),
                    t(&r["rep"]),
                    t(&r["exit"])
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for r in sel("verify", None) {
        let sys = r["system"].as_str().unwrap_or("?");
        notes.push(format!(
            "Throttle check, {} (one untimed cold start; the container stays 3 s after python3 exits and the host reads its cgroup): the container was in blkio cgroup `{}`, whose read rule was `{}` IOPS and which counted {} reads ({}) on the loop device, of {} device reads ({}) in that run (bios vs merged requests); containerd's cgroup counted {}{}.",
            label(sys),
            t(&r["container_cgroup"]),
            t(&r["container_read_iops_rule"]),
            t(&r["container_cgroup_loop_read_ios"]),
            mib(n(&r["container_cgroup_loop_read_bytes"])),
            t(&r["hdd_read_ios"]),
            mib(n(&r["hdd_read_bytes"])),
            t(&r["containerd_read_ios"]),
            if sys == "nvtier" {
                format!(" and nvtier serve's {}", t(&r["serve_read_ios"]))
            } else {
                String::new()
            }
        ));
    }
    if let Some(d) = sel("verify", Some("docker")).first() {
        if n(&d["container_cgroup_loop_read_ios"]) == Some(0.0) {
            notes.push("**The Docker container's reads were NOT counted in its throttled cgroup: the HDD emulation did not apply to the container.**".into());
        }
    }
    for r in sel("control_unthrottled_container", None) {
        if let Some(d) = med_of("docker").filter(|d| *d != 0.0) {
            notes.push(format!(
                "Control: one Docker cold start with the container in a child cgroup of the testbed's cgroup without rules of its own took {} ms (HDD read {}) vs the median {d:.0} ms with the rules: v1 rules are not inherited, so without the per-container rules the container would escape the HDD throttle.",
                t(&r["ms"]),
                mib(n(&r["hdd_read_bytes"]))
            ));
        }
    }
    if let Some(layers) = pmem_after_pull("nvtier").and_then(|r| r["layers"].as_array()) {
        let count = |tier: &str| layers.iter().filter(|x| x["tier"] == tier).count();
        let sum = |k: &str| layers.iter().filter_map(|x| n(&x[k])).sum::<f64>();
        notes.push(format!(
            "nvtier placement after `ctr images pull`: {} layer(s) on pmem, {} on disk ({} pmem, {} disk). `ctr` downloads every blob before it unpacks any layer, so nvtier's unpack rule (no download running when the unpack begins) puts every layer that fits the budget on pmem; the LDL split only shows with Docker/CRI pulls, where nvtier pulls itself. So nvtier's image data is on pmem just like NVM-Docker's; what remains on the HDD is containerd's root (bolt metadata, content store), nvtier's state dir (snapshot records, lowerdir links) and the container's upper/work dirs, the likely source of the gap to NVM-Docker (see the I/O table).",
            count("pmem"),
            count("disk"),
            mib(Some(sum("pmem_bytes"))),
            mib(Some(sum("disk_bytes")))
        ));
    }
    if let Some(nv) = pmem_after_pull("nvm").filter(|r| r.get("snapshots_bytes").is_some()) {
        notes.push(format!(
            "NVM-Docker's pmem bytes include containerd's content store (the compressed blobs, {}) besides the unpacked snapshots ({}); nvtier keeps only the unpacked layers on pmem, and containerd's content store of the nvtier system is on the HDD.",
            mib(n(&nv["content_bytes"])),
            mib(n(&nv["snapshots_bytes"]))
        ));
    }
    for (i, (_, l, _)) in SYSTEMS.iter().enumerate() {
        let v: Vec<f64> = cold[i].iter().filter_map(|r| n(&r["ms"])).collect();
        if !v.is_empty() && super::max(&v) > 1.5 * super::min(&v) {
            notes.push(format!(
                "{l}: large spread (max/min = {:.2}).",
                super::max(&v) / super::min(&v)
            ));
        }
    }
    let mut busy: Vec<i64> = sel("coldstart", None)
        .into_iter()
        .filter(|r| r["other_heavy_job"] == true)
        .filter_map(|r| r["rep"].as_i64())
        .collect();
    busy.sort();
    busy.dedup();
    if busy.is_empty() {
        notes.push(
            "No other heavy job (cargo/rustc/run-tests/benchmark) was seen during the cold starts."
                .into(),
        );
    } else {
        notes.push(format!(
            "Another heavy job (cargo/rustc/run-tests/benchmark) was running at the end of some cold start(s) in rep(s) {}: those samples may be slowed by CPU contention.",
            busy.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        ));
    }
    for (s, l, _) in SYSTEMS {
        let Some(p) = sel("pull", Some(s)).into_iter().next() else {
            continue;
        };
        let (ms, sync, w) = (
            n(&p["ms"]).unwrap_or(0.0),
            n(&p["sync_after_ms"]).unwrap_or(0.0),
            n(&p["hdd_write_ios"]).unwrap_or(0.0),
        );
        if sync > ms {
            notes.push(format!(
                "{l}: `ctr images pull` returned after {} ms, but the `sync` right after it took another {} ms ({} write IOs on the HDD for pull + sync): the unpacked files were still dirty in the page cache and had to be written back to the emulated HDD.",
                t(&p["ms"]),
                t(&p["sync_after_ms"]),
                t(&p["hdd_write_ios"])
            ));
            if (sync - 60000.0).abs() < 200.0 {
                notes.push(format!(
                    "{l}: that `sync` took almost exactly 60 s ({} ms) at about {} write IOs/s, well under the 150 IOPS rule: it looks like a 60 s timer somewhere in writeback/journalling rather than the throttle; not investigated.",
                    t(&p["sync_after_ms"]),
                    (w * 1000.0 / (ms + sync)).floor()
                ));
            }
        }
    }
    for r in sel("pmem", None) {
        if r["when"] != "after_runs" {
            continue;
        }
        let sys = r["system"].as_str().unwrap_or("?");
        let b = pmem_after_pull(sys).and_then(|x| x["bytes"].as_i64());
        if let (Some(b), Some(now)) = (b, r["bytes"].as_i64()) {
            if now != b {
                notes.push(format!(
                    "{}: pmem bytes changed from {} after the pull to {} after the runs.",
                    label(sys),
                    thousands(b),
                    thousands(now)
                ));
            }
        }
    }
    md.push("Notes:\n".into());
    md.extend(notes.into_iter().map(|x| format!("- {x}")));
    md
}

pub fn run(a: Args) -> Result<()> {
    let raw = read_jsonl_raw(&a.samples)?;
    let rows: Vec<Value> = raw.iter().map(|(_, v)| v.clone()).collect();
    let mut splice = Splice::default();
    let h = host();
    let now = super::unix_now();
    let date = utc_timestamp(now);
    let run_s = now - a.started;
    let results = Results {
        date: &date,
        machine: Machine {
            cpu: h.cpu.clone(),
            nproc: h.nproc,
            mem_total_kib: h.mem_kib,
            kernel: h.kernel.clone(),
        },
        reps: a.reps,
        rate: &a.rate,
        hdd_throttle: Throttle {
            read_iops: &a.iops_rule,
            read_bps: &a.bps_rule,
        },
        run_seconds: run_s,
        samples: splice.put_all(raw.iter().map(|(l, _)| l.as_str())),
    };
    super::write(&a.out_json, &splice.render(&results)?)?;
    let mut md = vec![
        "# Cold start through containerd + runc\n".to_string(),
        format!(
            "**{date}** · {} ({} CPUs, {} GiB, Linux {}) · {} reps per system, interleaved (order rotated each rep) · run took {:.1} min including set-up\n",
            h.cpu, h.nproc, h.mem_kib / 1024 / 1024, h.kernel, a.reps, run_s as f64 / 60.0
        ),
        format!(
            "Engine: Debian bookworm containerd 1.6.20 + runc 1.1.5, one private containerd per system, driven by `ctr`. Image: Debian bookworm minbase + python3 + `/app/main.py` importing a dozen stdlib packages (as in `bench-trace.sh`; 3 layers), pulled once per system with `ctr images pull` from the testbed registry at {}. Each cold start: `sync; echo 3 > /proc/sys/vm/drop_caches`, then the wall time of `ctr run --rm --cgroup … --snapshotter S REF cN python3 /app/main.py` (must print `ready`; includes snapshot prepare, mount, runc, the task and the removal). HDD = ext4 on the throttled loop device (per-cgroup read rules `{}` IOPS and `{}` B/s); containerd, its shims and `nvtier serve` run in the testbed's blkio cgroup, and every container in its own child blkio cgroup that is given the same rules before `ctr run`.\n",
            a.rate, a.iops_rule, a.bps_rule
        ),
    ];
    md.extend(body(&rows));
    super::write_markdown(&a.out_md, &md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_and_notes() {
        let mut rows = vec![
            json!({"kind": "pull", "system": "docker", "ms": 4940, "sync_after_ms": 60007, "hdd_write_ios": 1843}),
            json!({"kind": "pmem", "when": "after_pull", "system": "docker", "bytes": 0}),
            json!({"kind": "pmem", "when": "after_pull", "system": "nvm", "bytes": 356444318}),
            json!({"kind": "pmem", "when": "after_runs", "system": "nvm", "bytes": 356444378}),
        ];
        for (rep, (d, v)) in [(4000, 200), (4200, 220), (4100, 210)].iter().enumerate() {
            for (s, ms) in [("docker", d), ("nvm", v)] {
                rows.push(json!({"kind": "coldstart", "system": s, "rep": rep + 1, "ms": ms, "exit": 0, "ok": true,
                    "other_heavy_job": false, "hdd_read_ios": 3, "hdd_read_bytes": 4096, "hdd_write_ios": 1,
                    "hdd_write_bytes": 4096, "containerd_read_ios": 0, "containerd_read_bytes": 0}));
            }
        }
        rows.push(json!({"kind": "coldstart", "system": "nvtier", "rep": 1, "ms": 9, "exit": 1, "ok": false}));
        let md = body(&rows);
        assert_eq!(md[2], "| Docker | overlayfs; containerd root on HDD | 4100 (4000–4200) | 1.00× | 19.52× | 0 | 4 KiB | 4940 (+60007) |");
        assert_eq!(md[3], "| NVM-Docker | overlayfs; containerd root on pmem | 210 (200–220) | 19.52× | 1.00× | 356,444,318 (339.9 MiB) | 4 KiB | – |");
        assert_eq!(md[4], "| nvtier | `nvtier serve` (lass); containerd root and nvtier state on HDD | no successful run | – | – | 0 | – | – |");
        assert_eq!(
            md[10],
            "| Docker | 3 | 4 KiB | 0 KiB (0 bios) | – | 1 | 4 KiB |"
        );
        let notes: Vec<&String> = md.iter().filter(|l| l.starts_with("- ")).collect();
        assert_eq!(
            notes[0],
            "- 1 cold start(s) failed and are left out: nvtier rep 1 (exit 1)"
        );
        assert!(notes.iter().any(|l| l.contains("at about 28 write IOs/s")));
        assert!(notes.iter().any(|l| *l == "- NVM-Docker: pmem bytes changed from 356,444,318 after the pull to 356,444,378 after the runs."));
    }
}
