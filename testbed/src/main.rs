//! `nvbench`: benchmarks of nvtier on the emulated testbed (see
//! testbed/README.md and testbed/bench-pull.sh).

mod bench;
mod nvbench;
mod proc;
mod report;
mod testbed;

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
    proc::install_signal_handlers();
    let r = match cli.cmd {
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
    };
    if let Err(e) = r {
        eprintln!("nvbench: error: {e:#}");
        std::process::exit(1);
    }
}
