//! `nvtier migrate`.

use crate::output::{human, print_json, resolve_image, short};
use anyhow::{Context, Result};
use nvtier::store::Store;
use nvtier::tiering::{MigrateOptions, MigrateReport};

#[derive(clap::Args)]
pub struct Args {
    /// Only the layers of this image (default: every profiled image).
    image: Option<String>,
    /// Show the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Copy rate limit, e.g. 100M (bytes/s; 0 = unlimited). Default:
    /// the config's migrate_rate.
    #[arg(long, value_name = "SIZE")]
    rate: Option<String>,
    /// Leave layer bases on their tier (only add/drop hot copies).
    #[arg(long)]
    keep_bases: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let image = a.image.map(|i| resolve_image(store, &i)).transpose()?;
    let rate = a
        .rate
        .map(|r| {
            nvtier::config::parse_size(&r)
                .with_context(|| format!("--rate {r:?}: use bytes/s, e.g. 100M"))
        })
        .transpose()?;
    let r = nvtier::tiering::migrate(
        store,
        &MigrateOptions {
            image,
            dry_run: a.dry_run,
            rate,
            keep_bases: a.keep_bases,
            skip_pmem_bases: false,
            no_wait: false,
        },
    )?;
    if a.json {
        return print_json(&r);
    }
    print_text(&r);
    Ok(())
}

fn print_text(r: &MigrateReport) {
    if r.layers.is_empty() {
        println!("nothing to do: placement already matches the plan");
    }
    for l in &r.layers {
        println!(
            "{} gen {} -> {}: +{} -{} ={} files, hot {}{}{}",
            short(&l.chain_id),
            l.generation_from,
            l.generation_to,
            l.promote.len(),
            l.demote.len(),
            l.keep,
            human(l.hot_bytes),
            if l.relocate_base {
                ", base pmem -> disk"
            } else {
                ""
            },
            l.skipped
                .as_deref()
                .map(|s| format!(" (skipped: {s})"))
                .unwrap_or_default()
        );
    }
    for (i, why) in &r.untiered {
        println!("{i}: not tiered: {why}");
    }
    println!(
        "{}pmem {} -> {} of {}; copied {}, relocated {} in {:.0} ms",
        if r.dry_run { "dry run: " } else { "" },
        human(r.pmem_used_before),
        human(r.pmem_used_after),
        human(r.pmem_budget_bytes),
        human(r.copied_bytes),
        human(r.relocated_bytes),
        r.elapsed_ms
    );
}
