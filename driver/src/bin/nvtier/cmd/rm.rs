//! `nvtier rm`.

use crate::output::{human, print_json, resolve_image};
use anyhow::Result;
use nvtier::store::Store;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    image: String,
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let name = resolve_image(store, &a.image)?;
    let r = store.remove_image(&name)?;
    if a.json {
        return print_json(&json!({"image": name, "gc": r}));
    }
    println!(
        "removed {name}; freed {} layers ({} pmem, {} disk)",
        r.removed.len(),
        human(r.pmem_bytes_freed),
        human(r.disk_bytes_freed)
    );
    Ok(())
}
