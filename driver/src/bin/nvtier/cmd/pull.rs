//! `nvtier pull`.

use crate::output::print_json;
use anyhow::{Context, Result};
use nvtier::config::Config;
use nvtier::pull::{pull, PullOptions};
use nvtier::store::Store;
use nvtier_policy::Placement;
use oci_client::secrets::RegistryAuth;
use std::io::IsTerminal;

#[derive(clap::Args)]
pub struct Args {
    /// Image reference, e.g. 10.77.3.2:5000/demo:latest
    reference: String,
    /// Override the configured placement: lass, pmem (all NVM) or disk (all HDD).
    #[arg(long)]
    placement: Option<Placement>,
    /// Registry credentials USER:PASSWORD (bearer-token auth is negotiated).
    #[arg(long, env = "NVTIER_REGISTRY_AUTH", hide_env_values = true)]
    creds: Option<String>,
    /// Print one JSON object (the timeline and placement) instead of text.
    #[arg(long)]
    json: bool,
    /// Return as soon as the layers are published. Layers on the disk
    /// tier are then still being written back (their blobs are kept
    /// until that is done, so a crash loses nothing); `nvtier sync`
    /// waits for it. Without this flag, pull waits before it exits.
    #[arg(long)]
    no_wait: bool,
}

pub fn run(cfg: &Config, store: &Store, a: Args) -> Result<()> {
    let auth = match a.creds {
        None => RegistryAuth::Anonymous,
        Some(c) => {
            let (u, p) = c.split_once(':').context("--creds must be USER:PASSWORD")?;
            RegistryAuth::Basic(u.to_string(), p.to_string())
        }
    };
    let opts = PullOptions {
        placement: a.placement.unwrap_or(cfg.placement),
        progress: !a.json && std::io::stderr().is_terminal(),
        auth,
        pin_digest: None,
        origin: nvtier::store::ImageOrigin::Cli,
        keep_blobs: false,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rep = rt.block_on(pull(store, &a.reference, &opts))?;
    if !a.no_wait {
        let w = store.sync_layers()?;
        if w.synced > 0 && !a.json {
            eprintln!(
                "wrote back {} disk-tier layer(s) in {:.1} s (not part of the pull time)",
                w.synced,
                w.sync_ms as f64 / 1000.0
            );
        }
    }
    if a.json {
        return print_json(&rep);
    }
    print!("{rep}");
    Ok(())
}
