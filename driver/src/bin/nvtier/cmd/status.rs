//! `nvtier status`.

use crate::output::print_json;
use anyhow::Result;
use nvtier::config::Config;
use nvtier::report::Status;
use nvtier::store::Store;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(cfg: &Config, store: &Store, a: Args) -> Result<()> {
    let s = Status::gather(cfg, store)?;
    if a.json {
        return print_json(&s);
    }
    print!("{s}");
    Ok(())
}
