//! Output helpers shared by the commands.

use anyhow::{bail, Result};
use nvtier::pull::normalize;
use nvtier::store::Store;

pub use nvtier::report::{human, short};

/// Print `v` as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The store's name of the image NAME: a full name, a reference that
/// normalises to one, or a short name ("demo", "demo:latest") that matches
/// exactly one image.
pub fn resolve_image(store: &Store, name: &str) -> Result<String> {
    if store.image(name)?.is_some() {
        return Ok(name.to_string());
    }
    let n = normalize(name)?;
    if store.image(&n)?.is_some() {
        return Ok(n);
    }
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
