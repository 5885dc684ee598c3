//! `nvtier profile list|show|export|import`.

use crate::output::{human, print_json, resolve_image, short};
use anyhow::{Context, Result};
use nvtier::store::Store;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ProfileCmd {
    /// List every image with its hot profile: files, bytes, runs, the
    /// tracer and when it was last recorded (`stale` once older than
    /// `profile_max_age_s`; `never` for images without one).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Push the image's profile to the registry as an OCI artifact that
    /// refers to the image's manifest (artifactType
    /// application/vnd.nvtier.profile.v1+json), so pulls on other nodes
    /// place its hot files on pmem at once. Uses the referrers API, or the
    /// referrers tag schema (`sha256-<hex>` index) where the registry lacks
    /// it. Only the portable profile is pushed: layer diffIDs, paths,
    /// bytes, first-access order and run count.
    Push {
        image: String,
        /// HOST/REPOSITORY to push to (default: `profiles_repo`, else the
        /// image's own repository).
        #[arg(long)]
        repo: Option<String>,
        /// Credentials (one line USER:PASSWORD) from FILE, or stdin with
        /// `-`; default: the node's (Docker config.json, containerd config).
        #[arg(long, value_name = "FILE")]
        creds_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
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

pub fn run(store: &Store, c: ProfileCmd) -> Result<()> {
    match c {
        ProfileCmd::List { json } => list(store, json),
        ProfileCmd::Push {
            image,
            repo,
            creds_file,
            json,
        } => push(store, &image, repo, creds_file, json),
        ProfileCmd::Show { image, json } => show(store, &image, json),
        ProfileCmd::Export { image, output } => export(store, &image, output),
        ProfileCmd::Import { file, image, json } => import(store, file, image, json),
    }
}

fn push(
    store: &Store,
    image: &str,
    repo: Option<String>,
    creds_file: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    use nvtier::pull::profile_artifact::{push_profile, PushOptions};
    let name = resolve_image(store, image)?;
    let auth = match creds_file {
        Some(f) => nvtier::pull::Credentials::Given(nvtier::pull::auth::read_creds_file(&f)?),
        None => nvtier::pull::Credentials::Node,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rep = rt.block_on(push_profile(store, &name, &PushOptions { repo, auth }))?;
    if json {
        return print_json(&rep);
    }
    println!(
        "pushed the profile of {} ({} files, {}) to {} as {} ({})",
        rep.image,
        rep.files,
        human(rep.bytes),
        rep.repository,
        rep.artifact_digest,
        if rep.method == "referrers" {
            "listed by the referrers API"
        } else {
            "referrers tag schema"
        }
    );
    Ok(())
}

fn list(store: &Store, json: bool) -> Result<()> {
    let now = nvtier::store::now_ms();
    let rows = nvtier::report::ProfileRow::gather(store, now)?;
    if json {
        return print_json(&rows);
    }
    print!("{}", nvtier::report::ProfileRow::render_text(&rows, now));
    Ok(())
}

fn show(store: &Store, image: &str, json: bool) -> Result<()> {
    let name = resolve_image(store, image)?;
    let p = nvtier::trace::load_profile(store, &name)?.with_context(|| {
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
    Ok(())
}

fn export(store: &Store, image: &str, output: Option<PathBuf>) -> Result<()> {
    let name = resolve_image(store, image)?;
    let p = nvtier::trace::load_profile(store, &name)?
        .with_context(|| format!("no profile for {name}"))?;
    let text = p.to_json()?;
    match output {
        Some(f) => std::fs::write(&f, text).with_context(|| format!("write {}", f.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

fn import(store: &Store, file: PathBuf, image: Option<String>, json: bool) -> Result<()> {
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    let target = image.map(|i| resolve_image(store, &i)).transpose()?;
    let p = nvtier::trace::import(store, &text, target.as_deref())?;
    if json {
        return print_json(&p);
    }
    println!("imported {} files for {}", p.files.len(), p.image);
    Ok(())
}
