//! What `nvbench pull` measures: the images, one measured pull, the
//! machine. Shared by the runner (`bench`) and its report (`report`).

use serde::{Deserialize, Serialize};
use std::process::Command;

/// The placements compared, in the order they run within an image.
pub const PLACEMENTS: [&str; 3] = ["disk", "pmem", "lass"];

/// One benchmark image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSpec {
    pub name: String,
    pub spec: String,
    pub layers: usize,
    /// REGISTRY/bench/NAME:v1 (filled in after the push).
    pub reference: String,
    pub manifest_digest: String,
}

const FULL: [(&str, &str); 5] = [
    ("mid", "busybox,8M,4M,30M,2M,1M"),
    ("bottom", "busybox,40M,4M,2M,1M"),
    ("top", "busybox,3M,2M,3M,40M"),
    ("even", "busybox,10M,10M,10M,10M,10M"),
    ("many", "busybox,2M,2M,2M,2M,16M,2M,2M,2M,2M,2M"),
];

pub fn image_set(quick: bool) -> Vec<ImageSpec> {
    FULL.iter()
        .filter(|(n, _)| !quick || *n == "mid" || *n == "top")
        .map(|(n, s)| ImageSpec {
            name: n.to_string(),
            spec: s.to_string(),
            layers: s.split(',').count(),
            reference: String::new(),
            manifest_digest: String::new(),
        })
        .collect()
}

pub use nvtier_testbed::pull_report::{LayerReport, PullReport};

/// One measured pull.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub rep: usize,
    pub image: String,
    pub placement: String,
    /// Harness wall clock around `nvtier pull` (spawned in the throttle cgroup).
    pub deploy_ms: f64,
    pub download_done_ms: f64,
    pub stored_done_ms: f64,
    /// stored_done_ms - download_done_ms.
    pub store_after_download_ms: f64,
    pub pmem_bytes: u64,
    pub disk_bytes: u64,
    pub ldl_index: Option<usize>,
    /// Sum of stored_bytes of layers with index >= ldl_index (0 if none).
    pub ldl_and_above_bytes: u64,
    /// The image's compressed bytes at the link rate: the time the wire
    /// needs (0 when the rate is unknown or unlimited).
    #[serde(default)]
    pub wire_ms: f64,
    /// Every layer follows the streamed LASS rule (see
    /// `LayerReport::follows_streamed_lass`; layers without its inputs
    /// are not counted).
    #[serde(default)]
    pub lass_rule_ok: bool,
    pub layers: Vec<LayerReport>,
}

/// Bits per second of a tbf rate label (`100mbit`, `1gbit`, `500kbit`).
pub fn rate_bits_per_s(label: &str) -> Option<f64> {
    let l = label.trim().to_ascii_lowercase();
    let (num, mult) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(u, m)| l.strip_suffix(u).map(|n| (n.to_string(), *m)))?;
    let n: f64 = num.parse().ok()?;
    (n > 0.0).then_some(n * mult)
}

impl Sample {
    pub fn from_report(
        rep: usize,
        image: &str,
        placement: &str,
        deploy_ms: f64,
        rate_bits: Option<f64>,
        r: PullReport,
    ) -> Sample {
        let wire_ms = rate_bits
            .map(|b| {
                r.layers
                    .iter()
                    .filter(|l| !l.reused)
                    .map(|l| l.size)
                    .sum::<u64>() as f64
                    * 8.0
                    / b
                    * 1e3
            })
            .unwrap_or(0.0);
        let lass_rule_ok = r
            .layers
            .iter()
            .all(|l| l.follows_streamed_lass() != Some(false));
        let ldl_and_above_bytes = match r.ldl_index {
            Some(l) => r
                .layers
                .iter()
                .filter(|x| x.index >= l)
                .map(|x| x.stored_bytes)
                .sum(),
            None => 0,
        };
        Sample {
            rep,
            image: image.to_string(),
            placement: placement.to_string(),
            deploy_ms,
            download_done_ms: r.download_done_ms,
            stored_done_ms: r.stored_done_ms,
            store_after_download_ms: r.stored_done_ms - r.download_done_ms,
            pmem_bytes: r.pmem_bytes,
            disk_bytes: r.disk_bytes,
            ldl_index: r.ldl_index,
            ldl_and_above_bytes,
            wire_ms,
            lass_rule_ok,
            layers: r.layers,
        }
    }
}

/// Facts about the machine, for the report header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub nproc: usize,
    pub mem_total_kib: u64,
    pub cpu_model: String,
    pub hostname: String,
}

pub fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = command_line("nproc", &[])
        .parse()
        .ok()
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(0);
    Machine {
        kernel: command_line("uname", &["-r"]),
        nproc,
        mem_total_kib,
        cpu_model,
        hostname: command_line("uname", &["-n"]),
    }
}

pub fn now_utc() -> String {
    command_line("date", &["-u", "+%FT%TZ"])
}
