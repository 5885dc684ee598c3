//! `nvtier pull`.

use crate::output::print_json;
use anyhow::{Context, Result};
use nvtier::config::Config;
use nvtier::pull::auth::read_creds_file;
use nvtier::pull::{pull, Credentials, PullOptions};
use nvtier::store::Store;
use nvtier_policy::Placement;
use oci_client::secrets::RegistryAuth;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Image reference, e.g. 10.77.3.2:5000/demo:latest
    reference: String,
    /// Override the configured placement: lass, pmem (all NVM) or disk (all HDD).
    #[arg(long)]
    placement: Option<Placement>,
    /// Registry credentials as USER:PASSWORD. Visible to every user in
    /// `ps`: prefer --creds-file, or `docker login` (nvtier reads Docker's
    /// config.json and containerd's registry config when no credentials
    /// are given).
    #[arg(long, env = "NVTIER_REGISTRY_AUTH", hide_env_values = true)]
    creds: Option<String>,
    /// Read the credentials (one line USER:PASSWORD) from FILE, or from
    /// stdin with `-`.
    #[arg(long, value_name = "FILE", conflicts_with = "creds")]
    creds_file: Option<PathBuf>,
    /// Pull anonymously: do not look for the node's credentials.
    #[arg(long, conflicts_with_all = ["creds", "creds_file"])]
    anonymous: bool,
    /// Print one JSON object (the timeline and placement) instead of text.
    #[arg(long)]
    json: bool,
    /// Return as soon as the layers are published. Layers on the disk
    /// tier are then still being written back (their blobs are kept
    /// until that is done, so a crash loses nothing); `nvtier sync`
    /// waits for it. With a hot profile from the registry, the layer
    /// bases on pmem then move to disk at the next `nvtier migrate` (or
    /// in `nvtier serve`). Without this flag, pull does both before it
    /// exits.
    #[arg(long)]
    no_wait: bool,
}

impl Args {
    /// The image reference as given.
    pub fn reference(&self) -> &str {
        &self.reference
    }
}

pub fn run(cfg: &Config, store: &Store, a: Args) -> Result<()> {
    let auth = match (a.creds, a.creds_file) {
        (Some(c), _) => {
            let (u, p) = c.split_once(':').context("--creds must be USER:PASSWORD")?;
            Credentials::Given(RegistryAuth::Basic(u.to_string(), p.to_string()))
        }
        (None, Some(f)) => Credentials::Given(read_creds_file(&f)?),
        (None, None) if a.anonymous => Credentials::Anonymous,
        (None, None) => Credentials::Node,
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
    if !a.no_wait
        && rep
            .profile
            .as_ref()
            .is_some_and(|p| p.tiered && p.error.is_none())
    {
        // The deploy is over: pmem keeps only the hot data and metadata.
        let t = std::time::Instant::now();
        match nvtier::pull::relocate_bases(store, &rep.image) {
            Ok(b) if b > 0 && !a.json => eprintln!(
                "moved {} of layer bases from pmem to disk in {:.1} s (not part of the pull time)",
                crate::output::human(b),
                t.elapsed().as_secs_f64()
            ),
            Ok(_) => {}
            Err(e) => eprintln!(
                "warning: could not move the layer bases to disk yet ({e}); `nvtier migrate` or `nvtier serve` will"
            ),
        }
    }
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
