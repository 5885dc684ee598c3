//! The `nvtier` command: its flags and the dispatch to one module per
//! command (`cmd/`).

mod cmd;
mod output;

use anyhow::Result;
use clap::{Parser, Subcommand};
use nvtier::config::Config;
use nvtier::store::Store;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "nvtier",
    version,
    about = "Two-tier (pmem + disk) container image store with layer-aware placement",
    long_about = "nvtier stores container image layers on a small persistent-memory tier (pmem) \
and a large disk tier. At pull time it places the last-downloading layer and every layer above \
it on pmem (LASS), because storing those is the whole critical path of a deployment; the layers \
below go to disk.\n\nConfiguration: /etc/nvtier/config.toml, or --config / NVTIER_CONFIG. \
Logs: -v/-vv or NVTIER_LOG=debug."
)]
struct Cli {
    /// Configuration file [default: /etc/nvtier/config.toml]
    #[arg(long, global = true, env = "NVTIER_CONFIG")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); NVTIER_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pull an image from a registry into the store, placing layers by LASS.
    Pull(cmd::pull::Args),
    /// Wait until every disk-tier layer published before its write-back is
    /// on disk, then drop the blobs kept for it (`nvtier serve` does this
    /// every 2 s on its own).
    Sync(cmd::sync::Args),
    /// List images in the store.
    Images(cmd::images::Args),
    /// List layers with their tier and bytes (all layers, or one image's).
    Layers(cmd::layers::Args),
    /// Show tiers, DAX state, budget and counts.
    Status(cmd::status::Args),
    /// Mount an image's root filesystem (overlay) at DIR. Refcounted.
    Mount(cmd::mount::Args),
    /// Drop one reference to the mount at DIR; unmount at zero (the
    /// writable layer is discarded).
    Umount(cmd::umount::Args),
    /// Remove an image; layers no other image or mount uses are freed.
    Rm(cmd::rm::Args),
    /// Cold-start probe: mount IMAGE, run CMD chrooted in new
    /// mount/pid/uts/ipc namespaces, print exit status and wall time, unmount.
    Run(cmd::run::Args),
    /// Plan and apply hot-file tiering: from the hot profiles of all images
    /// and the pmem budget, copy hot files into new generations of the
    /// layers' hot data layers on pmem and move layer bases to disk.
    /// Running containers keep the generation they mounted.
    Migrate(cmd::migrate::Args),
    /// Cold-start IMAGE under the file-access tracer (eBPF, or fanotify as
    /// a fallback) and save the files it touched as the image's hot profile.
    Trace(cmd::trace::Args),
    /// List, push, show, export or import hot profiles.
    #[command(subcommand)]
    Profile(cmd::profile::ProfileCmd),
    /// Run the daemon: the containerd proxy snapshotter on
    /// `snapshotter_socket` (plugin name `nvtier`) and the Docker graph
    /// driver plugin on `docker_plugin_socket`. Stops on SIGTERM/SIGINT.
    Serve,
    /// Remove layers no image or mount references.
    Gc(cmd::gc::Args),
    /// Check that each tier is still the filesystem nvtier filled and holds
    /// every layer, hot copy and metadata layer the records place on it;
    /// restore what was lost: layers are fetched again from the registry
    /// (pinned to the pulled manifest), hot copies and metadata layers are
    /// rebuilt from the layer bases. Images whose layers are on a missing
    /// pmem tier are stored again on the disk tier. `nvtier serve` does this
    /// in the background (`repair_interval_s`).
    Repair(cmd::repair::Args),
    /// Internal: serve only the legacy Docker graph driver plugin API on a
    /// unix socket of its own. Stops on SIGTERM/SIGINT.
    #[command(hide = true)]
    DockerPlugin(cmd::docker_plugin::Args),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NVTIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = real_main(cli) {
        eprintln!("nvtier: error: {}", render_error(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, joined by ": ", each said once: a cause that
/// the message before it already ends with (an I/O error that names its
/// OS error, then returns it as its source) is not repeated.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.ends_with(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

fn real_main(cli: Cli) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    if let Cmd::Pull(a) = &cli.cmd {
        nvtier::pull::warm_up(&cfg, a.reference());
    }
    let store = Store::open(&cfg)?;
    match cli.cmd {
        Cmd::Pull(a) => cmd::pull::run(&cfg, &store, a),
        Cmd::Sync(a) => cmd::sync::run(&store, a),
        Cmd::Images(a) => cmd::images::run(&store, a),
        Cmd::Layers(a) => cmd::layers::run(&store, a),
        Cmd::Status(a) => cmd::status::run(&cfg, &store, a),
        Cmd::Mount(a) => cmd::mount::run(&store, a),
        Cmd::Umount(a) => cmd::umount::run(&store, a),
        Cmd::Rm(a) => cmd::rm::run(&store, a),
        Cmd::Run(a) => cmd::run::run(&store, a),
        Cmd::Migrate(a) => cmd::migrate::run(&store, a),
        Cmd::Trace(a) => cmd::trace::run(&store, a),
        Cmd::Profile(c) => cmd::profile::run(&store, c),
        Cmd::Serve => cmd::serve::run(store),
        Cmd::Gc(a) => cmd::gc::run(&store, a),
        Cmd::Repair(a) => cmd::repair::run(&store, a),
        Cmd::DockerPlugin(a) => cmd::docker_plugin::run(store, a),
    }
}

#[cfg(test)]
mod tests {
    use super::render_error;
    use nvtier::error::IoContext;

    #[test]
    fn an_io_error_is_said_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e: nvtier::error::Result<()> = Err(io).ctx("write file", "/d/x");
        let e = anyhow::Error::from(e.expect_err("an error")).context("pulling r/x:1");
        let s = render_error(&e);
        assert_eq!(s.matches("No space left on device").count(), 1, "{s}");
        assert!(
            s.starts_with("pulling r/x:1: write file /d/x: No space"),
            "{s}"
        );
    }
}
