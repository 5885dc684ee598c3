//! `nvtier umount`.

use crate::output::print_json;
use anyhow::Result;
use nvtier::store::Store;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    dir: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let dir = a.dir;
    let left = nvtier::mount::umount_image(store, &dir)?;
    if a.json {
        return print_json(&json!({"target": dir, "refcount": left, "unmounted": left == 0}));
    }
    if left == 0 {
        println!("unmounted {}", dir.display());
    } else {
        println!("{} still has {left} reference(s)", dir.display());
    }
    Ok(())
}
