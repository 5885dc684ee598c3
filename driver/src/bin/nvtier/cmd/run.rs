//! `nvtier run`.

use crate::output::{print_json, resolve_image};
use anyhow::Result;
use nvtier::store::Store;

#[derive(clap::Args)]
pub struct Args {
    image: String,
    /// Drop the page cache first (a cold start).
    #[arg(long)]
    drop_caches: bool,
    /// Mount tiered even before `nvtier migrate`: build the image's
    /// flattened metadata layer on pmem now (file data from the layers
    /// as data-only lower layers). Migrated images mount tiered anyway.
    #[arg(long)]
    flat: bool,
    /// A server: the run ends (and counts as ready) when
    /// 127.0.0.1:PORT accepts a connection; the container is killed.
    #[arg(long, value_name = "PORT")]
    ready_port: Option<u16>,
    #[arg(long)]
    json: bool,
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// Exits with the command's exit code when it is not 0.
pub fn run(store: &Store, a: Args) -> Result<()> {
    let name = resolve_image(store, &a.image)?;
    if a.drop_caches {
        nvtier::run::drop_caches()?;
    }
    let r = nvtier::run::run(store, &name, &a.cmd, a.json, a.flat, a.ready_port)?;
    if a.json {
        print_json(&r)?;
    } else {
        eprintln!(
            "exit {} in {:.1} ms (mount {:.1} ms)",
            r.exit_code, r.elapsed_ms, r.mount_ms
        );
    }
    if r.exit_code != 0 {
        std::process::exit(r.exit_code);
    }
    Ok(())
}
