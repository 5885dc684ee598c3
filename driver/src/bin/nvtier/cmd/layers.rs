//! `nvtier layers`.

use crate::output::{print_json, resolve_image};
use anyhow::Result;
use nvtier::report::LayerRow;
use nvtier::store::Store;

#[derive(clap::Args)]
pub struct Args {
    image: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let image = a.image.map(|i| resolve_image(store, &i)).transpose()?;
    let rows = LayerRow::gather(store, image.as_deref())?;
    if a.json {
        return print_json(&rows);
    }
    print!("{}", LayerRow::render_text(&rows));
    Ok(())
}
