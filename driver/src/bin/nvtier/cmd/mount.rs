//! `nvtier mount`.

use crate::output::{print_json, resolve_image};
use anyhow::Result;
use nvtier::store::Store;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    image: String,
    dir: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let name = resolve_image(store, &a.image)?;
    let rec = nvtier::mount::mount_image(store, &name, &a.dir)?;
    if a.json {
        return print_json(&rec);
    }
    println!(
        "mounted {} at {} (refcount {})",
        rec.image,
        rec.target.display(),
        rec.refcount
    );
    Ok(())
}
