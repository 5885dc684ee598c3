//! `nvtier gc`.

use crate::output::{human, print_json};
use anyhow::Result;
use nvtier::store::Store;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let r = store.gc()?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "freed {} layers ({} pmem, {} disk)",
        r.removed.len(),
        human(r.pmem_bytes_freed),
        human(r.disk_bytes_freed)
    );
    Ok(())
}
