//! `nvtier images`.

use crate::output::print_json;
use anyhow::Result;
use nvtier::report::ImageRow;
use nvtier::store::Store;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let rows = ImageRow::gather(store)?;
    if a.json {
        return print_json(&rows);
    }
    print!("{}", ImageRow::render_text(&rows));
    Ok(())
}
