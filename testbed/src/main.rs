//! `nvbench`: benchmarks of nvtier on the emulated testbed (see
//! testbed/README.md and testbed/bench-pull.sh).

mod bench;
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
}

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
    };
    if let Err(e) = r {
        eprintln!("nvbench: error: {e:#}");
        std::process::exit(1);
    }
}
