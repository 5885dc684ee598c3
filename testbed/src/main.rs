//! `nvbench`: benchmarks of nvtier on the emulated testbed (see
//! testbed/README.md and testbed/bench-pull.sh).

mod attach_cost;
mod bench;
mod nvbench;
mod pull_model;
mod report;

use nvtier_testbed::{proc, reports, testbed};

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "nvbench",
    version,
    about = "Benchmarks of nvtier on the emulated pmem/HDD/registry testbed (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cost of the eBPF tracer per syscall when its programs attach to the
    /// raw syscall tracepoints (btf, the default: no tracefs needed) or to
    /// per-syscall tracepoints (tracepoint: needs tracefs, mounted here in a
    /// private mount namespace), and of `nvtier serve`'s root watcher (root:
    /// a recorded and an ignored container root). Interleaved rounds;
    /// medians. Root.
    AttachCost(attach_cost::AttachCostArgs),
    /// (internal) The syscall loop of attach-cost.
    #[command(hide = true)]
    AttachCostWorker {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// chroot here first (a container-like root).
        #[arg(long)]
        chroot: Option<PathBuf>,
        #[arg(long)]
        iters: u64,
    },
    /// Deployment (pull) time with placement disk, pmem and lass: brings up
    /// a testbed, builds and pushes the images, pulls each cold inside the
    /// HDD throttle cgroup, writes JSON + Markdown results, tears down.
    Pull(bench::PullArgs),
    /// Report of a HelloBench-style run of testbed/nvbench.sh: reads its
    /// JSON-lines samples and writes results.json, nvbench.md and plots.
    #[command(long_about = REPORT_ABOUT)]
    Report(nvbench::ReportArgs),
    /// Report of testbed/bench-trace.sh: tracer overhead per placement and
    /// the open storm → trace.json, trace.md.
    ReportTrace(reports::trace::Args),
    /// Report of testbed/bench-coldstart.sh: cold starts through containerd
    /// with Docker, NVM-Docker and nvtier → coldstart.json, coldstart.md.
    ReportColdstart(reports::coldstart::Args),
    /// Report of testbed/bench-tiering.sh: cold starts with all-disk,
    /// all-pmem, LASS and LASS+hot → DIR/tiering.json, DIR/tiering.md.
    ReportTiering(reports::tiering::Args),
    /// Report of testbed/bench-flat.sh: cold start over the flattened
    /// metadata layer vs a plain overlay → flat.md.
    ReportFlat(reports::flat::Args),
    /// Summary of testbed/bench-docker.sh: median `docker pull` and
    /// pull + sync times per storage driver, printed.
    ReportDocker(reports::docker::Args),
    /// Summary of testbed/bench-docker-plugin.sh: one line per `docker
    /// pull` (and, with nvtier, where each layer went) and the medians.
    ReportDockerPlugin {
        /// JSON lines: {driver, rep, pull_ns, layers: `nvtier layers --json` or null}.
        #[arg(long, value_name = "FILE")]
        samples: PathBuf,
    },
    /// Table (or JSON array) of testbed/corpus/check.sh: per image the
    /// median and minimum of the warm runs' readiness times.
    ReportCorpus {
        /// JSON lines, one per image: {name, category, ready, layers,
        /// compressed_bytes, unpacked_bytes, ok, error | runs_ms}.
        #[arg(long, value_name = "FILE")]
        samples: PathBuf,
        /// Print the results as a JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// (testbed/nvbench.sh) Replace the meta line of a samples file by one
    /// covering this run and, with --resume, the earlier runs in the file:
    /// machine, settings, rates and images of every run, cells measured.
    Meta(reports::nvbench_run::MetaArgs),
    /// (testbed/nvbench.sh) The registry's last byte in [T0, T1] from the
    /// network counter samples ("TIME_NS BYTES" lines): prints "TIME_NS
    /// BYTES" (bytes since the first sample), or "0 0".
    LastByte {
        #[arg(long, value_name = "FILE")]
        netstat: PathBuf,
        #[arg(long, value_name = "NS")]
        t0: u64,
        #[arg(long, value_name = "NS")]
        t1: u64,
    },
    /// (testbed/nvbench.sh --check) Fail unless every check, deploy and
    /// cold start sample is ok and there is no error sample.
    CheckSamples {
        #[arg(long, value_name = "FILE")]
        samples: PathBuf,
    },
}

const REPORT_ABOUT: &str = "\
Report of a HelloBench-style run of testbed/nvbench.sh (4 storage systems x
images x network rates). Reads the JSON-lines samples file (one object per
line with a \"kind\": meta, deploy, pmem, coldstart, startup_read, check,
error; see testbed/README.md) and writes into --out-dir:

  results.json   per rate x system x image: median, min, max, n over ok reps;
                 per category and overall: mean of the per-image medians
                 (times) or their sum (pmem bytes), ratios between systems,
                 and N-Docker's published figures beside ours
  nvbench.md     the Markdown report: checks, errors and failed samples,
                 per rate a table per category and overall, per-image
                 tables, disk-tier I/O per cold start, bytes read at startup
  plots/         <metric>-<rate>.png and .svg for deploy,
                 store_after_download, coldstart, pmem_after_deploy,
                 pmem_after_migration

A malformed line stops the report with FILE:LINE and the reason; unknown
kinds are skipped with a warning. Needs no root and no testbed.";

fn main() {
    let cli = Cli::parse();
    // attach-cost unshares its mount namespace, which needs a process
    // with one thread: before the signal handlers or anything else.
    let r = match cli.cmd {
        Cmd::AttachCost(a) => attach_cost::run(a),
        Cmd::AttachCostWorker {
            cgroup,
            chroot,
            iters,
        } => attach_cost::worker(cgroup.as_deref(), chroot.as_deref(), iters),
        cmd => run(cmd),
    };
    if let Err(e) = r {
        eprintln!("nvbench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    proc::install_signal_handlers();
    match cmd {
        Cmd::Pull(a) => bench::run_pull(a),
        Cmd::Report(a) => nvbench::run_report(a),
        Cmd::ReportTrace(a) => reports::trace::run(a),
        Cmd::ReportColdstart(a) => reports::coldstart::run(a),
        Cmd::ReportTiering(a) => reports::tiering::run(a),
        Cmd::ReportFlat(a) => reports::flat::run(a),
        Cmd::ReportDocker(a) => reports::docker::run(a),
        Cmd::ReportDockerPlugin { samples } => {
            reports::docker_plugin::run(reports::docker_plugin::Args { samples })
        }
        Cmd::ReportCorpus { samples, json } => {
            reports::corpus::run(reports::corpus::Args { samples, json })
        }
        Cmd::Meta(a) => reports::nvbench_run::meta(a),
        Cmd::LastByte { netstat, t0, t1 } => reports::nvbench_run::last_byte_cmd(&netstat, t0, t1),
        Cmd::CheckSamples { samples } => reports::nvbench_run::check_samples(&samples),
        Cmd::AttachCost(_) | Cmd::AttachCostWorker { .. } => Ok(()),
    }
}
