//! The `nvtier` command.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nvtier::config::Config;
use nvtier::pull::{normalize, pull, PullOptions};
use nvtier::store::Store;
use nvtier::tier::{detect_dax, TierKind};
use nvtier_policy::Placement;
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "nvtier",
    version,
    about = "Two-tier (pmem + disk) container image store with layer-aware placement",
    long_about = "nvtier stores container image layers on a small persistent-memory tier (pmem) \
and a large disk tier. At pull time it places the last-downloading layer and every layer above \
it on pmem (LASS), because storing those is the whole critical path of a deployment; the layers \
below go to disk.\n\nConfiguration: /etc/nvtier/config.toml, or --config / NVTIER_CONFIG. \
Logs: -v/-vv or NVTIER_LOG=debug."
)]
struct Cli {
    /// Configuration file [default: /etc/nvtier/config.toml]
    #[arg(long, global = true, env = "NVTIER_CONFIG")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); NVTIER_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pull an image from a registry into the store, placing layers by LASS.
    Pull {
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
    },
    /// Wait until every disk-tier layer published before its write-back is
    /// on disk, then drop the blobs kept for it (`nvtier serve` does this
    /// every 2 s on its own).
    Sync {
        #[arg(long)]
        json: bool,
    },
    /// List images in the store.
    Images {
        #[arg(long)]
        json: bool,
    },
    /// List layers with their tier and bytes (all layers, or one image's).
    Layers {
        image: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show tiers, DAX state, budget and counts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Mount an image's root filesystem (overlay) at DIR. Refcounted.
    Mount {
        image: String,
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Drop one reference to the mount at DIR; unmount at zero (the
    /// writable layer is discarded).
    Umount {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove an image; layers no other image or mount uses are freed.
    Rm {
        image: String,
        #[arg(long)]
        json: bool,
    },
    /// Cold-start probe: mount IMAGE, run CMD chrooted in new
    /// mount/pid/uts/ipc namespaces, print exit status and wall time, unmount.
    Run {
        image: String,
        /// Drop the page cache first (a cold start).
        #[arg(long)]
        drop_caches: bool,
        /// Mount tiered even before `nvtier migrate`: build the image's
        /// flattened metadata layer on pmem now (file data from the layers
        /// as data-only lower layers). Migrated images mount tiered anyway.
        #[arg(long)]
        flat: bool,
        /// A server: the run ends (and counts as ready) when
        /// 127.0.0.1:PORT accepts a connection; the container is killed.
        #[arg(long, value_name = "PORT")]
        ready_port: Option<u16>,
        #[arg(long)]
        json: bool,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Plan and apply hot-file tiering: from the hot profiles of all images
    /// and the pmem budget, copy hot files into new generations of the
    /// layers' hot data layers on pmem and move layer bases to disk.
    /// Running containers keep the generation they mounted.
    Migrate {
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
    },
    /// Cold-start IMAGE under the file-access tracer (eBPF, or fanotify as
    /// a fallback) and save the files it touched as the image's hot profile.
    Trace {
        image: String,
        /// End the trace window after SECS even if CMD still runs.
        #[arg(long, value_name = "SECS")]
        window: Option<f64>,
        /// Trace until CMD exits (the default without --window).
        #[arg(long, conflicts_with = "window")]
        until_exit: bool,
        /// End the window when 127.0.0.1:PORT accepts a connection.
        #[arg(long, value_name = "PORT")]
        ready_port: Option<u16>,
        /// End the window when PATH (inside the image) exists.
        #[arg(long, value_name = "PATH")]
        ready_file: Option<String>,
        /// With --ready-port/--ready-file: keep tracing SECS after ready,
        /// for what a server still loads once it listens. The reported
        /// elapsed time includes it.
        #[arg(long, value_name = "SECS", default_value_t = 1.0)]
        after_ready: f64,
        /// Do not drop the page cache first.
        #[arg(long)]
        warm: bool,
        /// auto (eBPF, else fanotify, else inotify), ebpf, fanotify or
        /// inotify. NVTIER_TRACER overrides.
        #[arg(long, default_value = "auto")]
        tracer: nvtier::trace::TracerChoice,
        /// Miss mode: list every image file read from the disk tier.
        #[arg(long)]
        misses: bool,
        #[arg(long)]
        json: bool,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show, export or import hot profiles.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Run the daemon: the containerd proxy snapshotter on
    /// `snapshotter_socket` (plugin name `nvtier`) and the Docker graph
    /// driver plugin on `docker_plugin_socket`. Stops on SIGTERM/SIGINT.
    Serve,
    /// Remove layers no image or mount references.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Internal: serve only the legacy Docker graph driver plugin API on a
    /// unix socket (until `nvtier serve` hosts it). Stops on SIGTERM/SIGINT.
    #[command(hide = true)]
    DockerPlugin {
        /// Socket path (its parent directories are created; mode 0600).
        #[arg(long, default_value = "/run/docker/plugins/nvtier.sock")]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProfileCmd {
    /// Show an image's hot profile, in first-access order.
    Show {
        image: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a portable profile (keyed by layer diffID + path) to FILE or stdout.
    Export {
        image: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Import a profile exported on another node.
    Import {
        file: PathBuf,
        /// Attach it to this image instead of the one named in the file.
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NVTIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn short(d: &str) -> &str {
    d.strip_prefix("sha256:")
        .unwrap_or(d)
        .get(..12)
        .unwrap_or(d)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn resolve_image(store: &Store, name: &str) -> Result<String> {
    if store.image(name)?.is_some() {
        return Ok(name.to_string());
    }
    let n = normalize(name)?;
    if store.image(&n)?.is_some() {
        return Ok(n);
    }
    // A short name ("demo", "demo:latest") that matches exactly one image.
    let want = if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    };
    let hits: Vec<String> = store
        .images()?
        .into_iter()
        .map(|i| i.name)
        .filter(|n| n.ends_with(&format!("/{want}")))
        .collect();
    match hits.len() {
        1 => Ok(hits[0].clone()),
        0 => bail!("image {name} is not in the store (see `nvtier images`; pull it with `nvtier pull REGISTRY/{name}`)"),
        _ => bail!("image {name} is ambiguous: {} (use the full name)", hits.join(", ")),
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = real_main(cli) {
        eprintln!("nvtier: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let store = Store::open(&cfg)?;
    if let Cmd::DockerPlugin { socket } = &cli.cmd {
        return docker_plugin(store, socket);
    }
    match cli.cmd {
        Cmd::Pull {
            reference,
            placement,
            creds,
            json,
            no_wait,
        } => {
            let auth = match creds {
                None => RegistryAuth::Anonymous,
                Some(c) => {
                    let (u, p) = c.split_once(':').context("--creds must be USER:PASSWORD")?;
                    RegistryAuth::Basic(u.to_string(), p.to_string())
                }
            };
            let opts = PullOptions {
                placement: placement.unwrap_or(cfg.placement),
                progress: !json && std::io::stderr().is_terminal(),
                auth,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let rep = rt.block_on(pull(&store, &reference, &opts))?;
            if !no_wait {
                let w = store.sync_layers()?;
                if w.synced > 0 && !json {
                    eprintln!(
                        "wrote back {} disk-tier layer(s) in {:.1} s (not part of the pull time)",
                        w.synced,
                        w.sync_ms as f64 / 1000.0
                    );
                }
            }
            if json {
                return print_json(&rep);
            }
            println!("{}  {}", rep.image, rep.manifest_digest);
            println!(
                "{:>3}  {:<12}  {:>10}  {:>9}  {:>9}  {:>9}  {:>9}  {:<5}  note",
                "#", "blob", "size", "dl start", "dl end", "st start", "st end", "tier"
            );
            let f = |x: Option<f64>| {
                x.map(|v| format!("{:.0}ms", v))
                    .unwrap_or_else(|| "-".into())
            };
            for l in &rep.layers {
                let note = if l.reused {
                    "already present".to_string()
                } else if Some(l.index) == rep.ldl_index {
                    "LDL".to_string()
                } else {
                    l.disk_reason.map(|r| r.to_string()).unwrap_or_default()
                };
                println!(
                    "{:>3}  {:<12}  {:>10}  {:>9}  {:>9}  {:>9}  {:>9}  {:<5}  {}",
                    l.index,
                    short(&l.digest),
                    human(l.size),
                    f(l.download_start_ms),
                    f(l.download_end_ms),
                    f(l.store_start_ms),
                    f(l.store_end_ms),
                    l.tier.to_string(),
                    note
                );
            }
            println!(
                "downloads done {:.0} ms, stored {:.0} ms ({:.0} ms after the last byte); pmem {}, disk {}",
                rep.download_done_ms,
                rep.stored_done_ms,
                rep.stored_done_ms - rep.download_done_ms,
                human(rep.pmem_bytes),
                human(rep.disk_bytes)
            );
        }
        Cmd::Images { json } => {
            let layers = store.layers()?;
            let mut out = Vec::new();
            for i in store.images()? {
                let (mut p, mut d) = (0, 0);
                for c in &i.chain_ids {
                    if let Some(l) = layers.iter().find(|l| &l.chain_id == c) {
                        match l.tier {
                            TierKind::Pmem => p += l.charged_bytes,
                            TierKind::Disk => d += l.charged_bytes,
                        }
                    }
                }
                out.push(json!({
                    "name": i.name, "manifest_digest": i.manifest_digest,
                    "layers": i.chain_ids.len(), "pmem_bytes": p, "disk_bytes": d,
                    "created_ms": i.created_ms,
                }));
            }
            if json {
                return print_json(&out);
            }
            println!(
                "{:<50} {:>6} {:>10} {:>10}",
                "IMAGE", "LAYERS", "PMEM", "DISK"
            );
            for o in out {
                println!(
                    "{:<50} {:>6} {:>10} {:>10}",
                    o["name"].as_str().unwrap_or(""),
                    o["layers"].to_string(),
                    human(o["pmem_bytes"].as_u64().unwrap_or(0)),
                    human(o["disk_bytes"].as_u64().unwrap_or(0))
                );
            }
        }
        Cmd::Layers { image, json } => {
            let refs = store.refcounts()?;
            let all = store.layers()?;
            let chosen: Vec<_> = match image {
                Some(name) => {
                    let name = resolve_image(&store, &name)?;
                    let rec = store.image(&name)?.context("image vanished")?;
                    rec.chain_ids
                        .iter()
                        .filter_map(|c| all.iter().find(|l| &l.chain_id == c).cloned())
                        .collect()
                }
                None => all,
            };
            let rows: Vec<_> = chosen
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let u = nvtier::tiering::layer_usage(&store, l)?;
                    Ok(json!({
                        "index": i, "chain_id": l.chain_id, "diff_id": l.diff_id,
                        "blob_digest": l.blob_digest, "parent": l.parent, "tier": l.tier,
                        "pmem_bytes": u.pmem_bytes, "disk_bytes": u.disk_bytes,
                        "pmem_files": u.pmem_files, "hot_files": u.hot_files,
                        "hot_bytes": u.hot_bytes, "hot_generation": u.hot_generation,
                        "file_bytes": l.file_bytes,
                        "compressed_bytes": l.compressed_bytes, "files": l.file_count,
                        "refs": refs.get(&l.chain_id).copied().unwrap_or(0),
                        "store_ms": l.store_ms,
                    }))
                })
                .collect::<Result<_>>()?;
            if json {
                return print_json(&rows);
            }
            println!(
                "{:>3}  {:<12}  {:<5} {:>10} {:>10} {:>7} {:>9} {:>4}",
                "#", "CHAIN", "BASE", "PMEM", "DISK", "FILES", "PMEMFILES", "REFS"
            );
            for r in rows {
                println!(
                    "{:>3}  {:<12}  {:<5} {:>10} {:>10} {:>7} {:>9} {:>4}",
                    r["index"].to_string(),
                    short(r["chain_id"].as_str().unwrap_or("")),
                    r["tier"].as_str().unwrap_or(""),
                    human(r["pmem_bytes"].as_u64().unwrap_or(0)),
                    human(r["disk_bytes"].as_u64().unwrap_or(0)),
                    r["files"].to_string(),
                    r["pmem_files"].to_string(),
                    r["refs"].to_string()
                );
            }
        }
        Cmd::Status { json } => {
            let dax = detect_dax(&cfg.pmem_dir);
            let tier_use = nvtier::tiering::pmem_use(&store)?;
            let tiering = nvtier::tiering::enabled(&store);
            let layers = store.layers()?;
            let used = store.pmem_used()?;
            let mounts = store.mounts()?;
            let snapshots = store.snapshots()?;
            // Tiered mounts (nvtier's own and containerd's active snapshots)
            // and those whose hot data layers had to be interleaved with the
            // bases: those may read the disk tier for a lower layer's hot file.
            let tierings: Vec<&nvtier::tiering::MountTiering> = mounts
                .iter()
                .filter_map(|m| m.tiering.as_ref())
                .chain(snapshots.iter().filter_map(|s| s.tiering.as_ref()))
                .collect();
            let interleaved = tierings
                .iter()
                .filter(|t| !t.hot_first && !t.hot.is_empty())
                .count();
            let unsynced = store.unsynced()?;
            let unsynced_bytes: u64 = unsynced.iter().map(|(_, u)| u.blob_bytes).sum();
            let disk_bytes: u64 = layers
                .iter()
                .filter(|l| l.tier == TierKind::Disk)
                .map(|l| l.charged_bytes)
                .sum();
            let tracer = nvtier::trace::probe_tracer();
            let v = json!({
                "tracer": tracer.tracer, "tracer_reason": tracer.reason,
                "config": cfg.file, "state_dir": cfg.state_dir,
                "pmem_dir": cfg.pmem_dir, "disk_dir": cfg.disk_dir,
                "dax": dax, "placement": cfg.placement,
                "pmem_used_bytes": used, "pmem_budget_bytes": cfg.pmem_budget,
                "disk_used_bytes": disk_bytes,
                "pmem_layer_bytes": store.pmem_layer_bytes()?,
                "pmem_meta_bytes": tier_use.meta_bytes,
                "pmem_hot_bytes": tier_use.hot_bytes,
                "pmem_retired_bytes": tier_use.retired_bytes,
                "tiering": match &tiering { Ok(()) => "file-granular".to_string(), Err(_) => "whole-layer".to_string() },
                "tiering_reason": tiering.as_ref().err(),
                "pmem_fs": store.pmem.fs_space().map(|(f, t)| json!({"free": f, "total": t})),
                "disk_fs": store.disk.fs_space().map(|(f, t)| json!({"free": f, "total": t})),
                "images": store.images()?.len(), "layers": layers.len(),
                "pmem_layers": layers.iter().filter(|l| l.tier == TierKind::Pmem).count(),
                "disk_layers": layers.iter().filter(|l| l.tier == TierKind::Disk).count(),
                "mounts": mounts.len(),
                "tiered_mounts": tierings.len(),
                "interleaved_mounts": interleaved,
                "disk_layer_sync": cfg.disk_layer_sync,
                "unsynced_layers": unsynced.len(),
                "unsynced_blob_bytes": unsynced_bytes,
                "snapshots": snapshots.len(),
                "snapshotter_socket": cfg.snapshotter_socket,
                "max_concurrent_downloads": cfg.max_concurrent_downloads,
            });
            if json {
                return print_json(&v);
            }
            println!("config     {}", cfg.file.display());
            println!("pmem tier  {} (DAX: {dax})", cfg.pmem_dir.display());
            println!("disk tier  {}", cfg.disk_dir.display());
            println!(
                "budget     {} of {} pmem used ({:.1}%)",
                human(used),
                human(cfg.pmem_budget),
                if cfg.pmem_budget > 0 {
                    used as f64 * 100.0 / cfg.pmem_budget as f64
                } else {
                    0.0
                }
            );
            println!(
                "  of which  layers {}, metadata layers {}, hot copies {}, retired (still mounted) {}",
                human(store.pmem_layer_bytes()?),
                human(tier_use.meta_bytes),
                human(tier_use.hot_bytes),
                human(tier_use.retired_bytes)
            );
            println!("disk used  {}", human(disk_bytes));
            println!("tracer     {} ({})", tracer.tracer, tracer.reason);
            if !unsynced.is_empty() {
                println!(
                    "  write-back pending for {} layer(s); {} of blobs kept in {} until it is done",
                    unsynced.len(),
                    human(unsynced_bytes),
                    store.unsynced_dir().display()
                );
            }
            match &tiering {
                Ok(()) => {
                    println!("tiering    file-granular (metadata layers + hot data layers)");
                    println!(
                        "  mounts    {} tiered, {interleaved} with hot data layers interleaved \
                         (a lower layer's hot file is shadowed above; those may read the disk tier)",
                        tierings.len()
                    );
                }
                Err(why) => println!("tiering    whole-layer: {why}"),
            }
            println!(
                "store      {} images, {} layers ({} pmem, {} disk), {} mounts; placement {}",
                v["images"],
                v["layers"],
                v["pmem_layers"],
                v["disk_layers"],
                v["mounts"],
                cfg.placement
            );
            println!(
                "containerd {} snapshots; socket {}",
                v["snapshots"],
                cfg.snapshotter_socket
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "disabled".into())
            );
        }
        Cmd::Mount { image, dir, json } => {
            let name = resolve_image(&store, &image)?;
            let rec = nvtier::mount::mount_image(&store, &name, &dir)?;
            if json {
                return print_json(&rec);
            }
            println!(
                "mounted {} at {} (refcount {})",
                rec.image,
                rec.target.display(),
                rec.refcount
            );
        }
        Cmd::Umount { dir, json } => {
            let left = nvtier::mount::umount_image(&store, &dir)?;
            if json {
                return print_json(
                    &json!({"target": dir, "refcount": left, "unmounted": left == 0}),
                );
            }
            if left == 0 {
                println!("unmounted {}", dir.display());
            } else {
                println!("{} still has {left} reference(s)", dir.display());
            }
        }
        Cmd::Rm { image, json } => {
            let name = resolve_image(&store, &image)?;
            let r = store.remove_image(&name)?;
            if json {
                return print_json(&json!({"image": name, "gc": r}));
            }
            println!(
                "removed {name}; freed {} layers ({} pmem, {} disk)",
                r.removed.len(),
                human(r.pmem_bytes_freed),
                human(r.disk_bytes_freed)
            );
        }
        Cmd::Run {
            image,
            drop_caches,
            flat,
            ready_port,
            json,
            cmd,
        } => {
            let name = resolve_image(&store, &image)?;
            if drop_caches {
                nvtier::run::drop_caches()?;
            }
            let r = nvtier::run::run(&store, &name, &cmd, json, flat, ready_port)?;
            if json {
                print_json(&r)?;
            } else {
                eprintln!(
                    "exit {} in {:.1} ms (mount {:.1} ms)",
                    r.exit_code, r.elapsed_ms, r.mount_ms
                );
            }
            if r.exit_code != 0 {
                std::process::exit(r.exit_code);
            }
        }
        Cmd::Migrate {
            image,
            dry_run,
            rate,
            keep_bases,
            json,
        } => {
            let image = image.map(|i| resolve_image(&store, &i)).transpose()?;
            let rate = rate
                .map(|r| {
                    nvtier::config::parse_size(&r)
                        .with_context(|| format!("--rate {r:?}: use bytes/s, e.g. 100M"))
                })
                .transpose()?;
            let r = nvtier::tiering::migrate(
                &store,
                &nvtier::tiering::MigrateOptions {
                    image,
                    dry_run,
                    rate,
                    keep_bases,
                },
            )?;
            if json {
                return print_json(&r);
            }
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
        Cmd::Trace {
            image,
            window,
            until_exit: _,
            ready_port,
            ready_file,
            after_ready,
            warm,
            tracer,
            misses,
            json,
            cmd,
        } => {
            let name = resolve_image(&store, &image)?;
            let opts = nvtier::trace::TraceOptions {
                tracer,
                warm,
                window: nvtier::trace::Window {
                    max: window.map(std::time::Duration::from_secs_f64),
                    ready_port,
                    ready_file,
                    after_ready: std::time::Duration::try_from_secs_f64(after_ready)
                        .context("--after-ready must be a number of seconds >= 0")?,
                },
                quiet_stdout: json,
            };
            let r = nvtier::trace::trace(&store, &name, &cmd, &opts)?;
            if json {
                return print_json(&r);
            }
            eprintln!("tracer: {} ({})", r.tracer, r.tracer_reason);
            println!(
                "{}: exit {} in {:.1} ms; {} image files, {} ({:.1}% of {} image bytes){}",
                r.image,
                r.exit_code,
                r.elapsed_ms,
                r.files,
                human(r.bytes),
                r.hot_share * 100.0,
                human(r.image_bytes),
                if r.lost_events > 0 {
                    format!("; {} events LOST", r.lost_events)
                } else {
                    String::new()
                }
            );
            for (i, (c, n, b)) in r.per_layer.iter().enumerate() {
                println!("  layer {i} {}: {n} files, {}", short(c), human(*b));
            }
            match (&r.misses, r.miss_bytes) {
                (Some(m), Some(b)) => {
                    println!("disk-tier misses: {} files, {}", m.len(), human(b));
                    if misses {
                        for f in m {
                            println!(
                                "  miss {:>9.1} ms  {:<12}  {:>10}  {}",
                                f.first_access_ms,
                                short(&f.layer_chain_id),
                                f.bytes.map(human).unwrap_or_else(|| "-".into()),
                                f.path
                            );
                        }
                    }
                }
                _ => println!(
                    "disk-tier misses: unknown: {}",
                    r.misses_unknown_reason
                        .as_deref()
                        .unwrap_or("the tracer cannot tell")
                ),
            }
        }
        Cmd::Profile(ProfileCmd::Show { image, json }) => {
            let name = resolve_image(&store, &image)?;
            let p = nvtier::trace::load_profile(&store, &name)?.with_context(|| {
                format!("no profile for {name}: run `nvtier trace {image} -- CMD` first")
            })?;
            if json {
                return print_json(&p);
            }
            println!(
                "{} — {} runs, tracer {}, {} files",
                p.image,
                p.runs,
                p.tracer,
                p.files.len()
            );
            for f in &p.files {
                let kinds: Vec<String> = f
                    .kinds
                    .iter()
                    .map(|k| {
                        serde_json::to_value(k)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    })
                    .collect();
                println!(
                    "{:>9.1} ms  {:<12}  {:>10}  {:>4}x  {:<16}  {}",
                    f.first_access_ms,
                    short(&f.layer_chain_id),
                    f.bytes.map(human).unwrap_or_else(|| "-".into()),
                    f.count,
                    kinds.join(","),
                    f.path
                );
            }
        }
        Cmd::Profile(ProfileCmd::Export { image, output }) => {
            let name = resolve_image(&store, &image)?;
            let p = nvtier::trace::load_profile(&store, &name)?
                .with_context(|| format!("no profile for {name}"))?;
            let text = p.to_json()?;
            match output {
                Some(f) => {
                    std::fs::write(&f, text).with_context(|| format!("write {}", f.display()))?
                }
                None => println!("{text}"),
            }
        }
        Cmd::Profile(ProfileCmd::Import { file, image, json }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let target = match image {
                Some(i) => Some(resolve_image(&store, &i)?),
                None => None,
            };
            let p = nvtier::trace::import(&store, &text, target.as_deref())?;
            if json {
                return print_json(&p);
            }
            println!("imported {} files for {}", p.files.len(), p.image);
        }
        Cmd::Serve => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(nvtier::server::serve(store))?;
        }
        Cmd::Sync { json } => {
            let r = store.sync_layers()?;
            if json {
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
        }
        Cmd::Gc { json } => {
            let r = store.gc()?;
            if json {
                return print_json(&r);
            }
            println!(
                "freed {} layers ({} pmem, {} disk)",
                r.removed.len(),
                human(r.pmem_bytes_freed),
                human(r.disk_bytes_freed)
            );
        }
        Cmd::DockerPlugin { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Bind the plugin socket (removing a stale one, refusing a live one) and
/// serve until SIGTERM/SIGINT; the socket is removed on the way out.
fn docker_plugin(store: Store, socket: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                bail!(
                    "{} is in use by a running plugin (stop it first)",
                    socket.display()
                );
            }
            std::fs::remove_file(socket)
                .with_context(|| format!("remove stale socket {}", socket.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", socket.display()),
        Err(_) => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let res = rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket)
            .with_context(|| format!("bind {}", socket.display()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", socket.display()))?;
        eprintln!("nvtier: docker graph driver plugin listening on {}", socket.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = nvtier::server::docker_plugin::serve(listener, store) => r.map_err(anyhow::Error::from),
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); Ok(()) }
        }
    });
    let _ = std::fs::remove_file(socket);
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    res
}
