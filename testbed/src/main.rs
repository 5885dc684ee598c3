//! `nvbench`: benchmarks of nvtier on the emulated testbed (see
//! testbed/README.md and testbed/bench-pull.sh).

mod attach_cost;
mod bench;
mod nvbench;
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
    /// private mount namespace). Interleaved rounds; medians. Root.
    AttachCost {
        /// Rounds (each runs every mode once, in rotating order).
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Iterations of openat + close + newfstatat per worker run.
        #[arg(long, default_value_t = 200_000)]
        iters: u64,
        /// Results JSON.
        #[arg(long, default_value = "testbed/results/attach-cost.json")]
        out: PathBuf,
        /// Markdown report.
        #[arg(long, default_value = "testbed/results/attach-cost.md")]
        markdown: PathBuf,
    },
    /// (internal) The syscall loop of attach-cost.
    #[command(hide = true)]
    AttachCostWorker {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        iters: u64,
    },
    /// Deployment (pull) time with placement disk, pmem and lass: brings up
    /// a testbed, builds and pushes the images, pulls each cold inside the
    /// HDD throttle cgroup, writes JSON + Markdown results, tears down.
    Pull {
        /// Repetitions of every (image, placement) [default: 5, 3 with --quick]
        #[arg(long)]
        reps: Option<usize>,
        /// Registry link rate (tbf), e.g. 1gbit, 100mbit, none.
        #[arg(long, default_value = "1gbit")]
        rate: String,
        /// Only the images `mid` and `top`, 3 reps by default; results go to
        /// pull-RATE-quick.{json,md} unless --out/--markdown say otherwise.
        #[arg(long)]
        quick: bool,
        /// Results JSON [default: testbed/results/pull-RATE.json]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Markdown report [default: testbed/results/pull-RATE.md]
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// nvtier binary [default: target/release/nvtier of the repository]
        #[arg(long)]
        nvtier: Option<PathBuf>,
        /// Testbed NAME (1-12 of [a-z0-9-]).
        #[arg(long, default_value = "bench")]
        name: String,
    },
    /// Report of a HelloBench-style run of testbed/nvbench.sh: reads its
    /// JSON-lines samples and writes results.json, nvbench.md and plots.
    #[command(long_about = REPORT_ABOUT)]
    Report {
        /// The JSON-lines samples file written by testbed/nvbench.sh.
        #[arg(long, value_name = "FILE")]
        samples: PathBuf,
        /// Output directory (created, with DIR/plots): results.json,
        /// nvbench.md, plots/<metric>-<rate>.{png,svg}.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// TrueType font for the plots [default: DejaVuSans.ttf of
        /// fonts-dejavu-core, or another found in /usr/share/fonts].
        #[arg(long, value_name = "FILE")]
        font: Option<PathBuf>,
        /// Write results.json and nvbench.md only.
        #[arg(long)]
        no_plots: bool,
    },
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
        Cmd::AttachCost {
            rounds,
            iters,
            out,
            markdown,
        } => attach_cost::run(attach_cost::AttachCostArgs {
            rounds,
            iters,
            out,
            markdown,
        }),
        Cmd::AttachCostWorker { cgroup, iters } => attach_cost::worker(cgroup.as_deref(), iters),
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
        Cmd::Pull {
            reps,
            rate,
            quick,
            out,
            markdown,
            nvtier,
            name,
        } => bench::run_pull(bench::PullArgs {
            reps: reps.unwrap_or(if quick { 3 } else { 5 }),
            rate,
            quick,
            out,
            markdown,
            nvtier,
            name,
        }),
        Cmd::Report {
            samples,
            out_dir,
            font,
            no_plots,
        } => nvbench::run_report(nvbench::ReportArgs {
            samples,
            out_dir,
            font,
            no_plots,
        }),
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
        Cmd::AttachCost { .. } | Cmd::AttachCostWorker { .. } => Ok(()),
    }
}
