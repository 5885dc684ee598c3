//! `nvtier sync`.

use crate::output::{human, print_json};
use anyhow::Result;
use nvtier::store::Store;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let r = store.sync_layers()?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "{} layer(s) written back in {:.1} s, {} kept blob bytes freed{}{}",
        r.synced,
        r.sync_ms as f64 / 1000.0,
        human(r.blob_bytes_freed),
        if r.orphans > 0 {
            format!("; {} record(s) of removed layers dropped", r.orphans)
        } else {
            String::new()
        },
        if r.pending > 0 {
            format!("; {} still being stored (run again)", r.pending)
        } else {
            String::new()
        }
    );
    Ok(())
}
