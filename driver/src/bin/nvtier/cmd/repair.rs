//! `nvtier repair`.

use crate::output::{human, print_json, resolve_image};
use anyhow::{bail, Result};
use nvtier::pull::Credentials;
use nvtier::repair::{repair, RepairOptions};
use nvtier::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// Repair only this image (default: every damaged image).
    image: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let image = a
        .image
        .as_deref()
        .map(|i| resolve_image(store, i))
        .transpose()?;
    let opts = RepairOptions {
        image,
        include_missing: true,
        rebuild_hot: true,
        auth: Credentials::Node,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(repair(store, &opts))?;
    if a.json {
        print_json(&r)?;
    } else {
        println!("pmem tier: {}", r.pmem);
        println!("disk tier: {}", r.disk);
        let f = &r.forgotten;
        if f.hot_generations + f.meta_layers > 0 {
            println!(
                "lost pmem copies dropped: {} hot generation(s), {} metadata layer(s)",
                f.hot_generations, f.meta_layers
            );
        }
        for i in &r.images {
            match &i.error {
                None => println!(
                    "repaired {}: {} layer(s) stored again ({})",
                    i.image,
                    i.restored_layers,
                    human(i.restored_bytes)
                ),
                Some(e) => println!("FAILED {}: {e}", i.image),
            }
        }
        if let Some(b) = r.rebuilt_hot_bytes {
            println!("hot copies rebuilt: {}", human(b));
        }
        for k in &r.lost_snapshots {
            println!(
                "containerd snapshot {k:?} lost its content: remove its image in the engine and pull it again"
            );
        }
        if r.images.is_empty() && r.damaged_after.is_empty() {
            println!("nothing to repair");
        }
    }
    if !r.is_complete() {
        let names: Vec<&str> = r.damaged_after.keys().map(String::as_str).collect();
        bail!(
            "still damaged: {} (see the errors above; `nvtier status` lists the reasons)",
            names.join(", ")
        );
    }
    Ok(())
}
