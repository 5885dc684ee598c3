//! Hot profiles: `STATE/profiles/<sha256(image)>.json`, one per image, as
//! `nvtier trace` records and merges them and the migration reads them.

use super::Store;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use nvtier_tracer::Profile;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

pub fn profile_path(store: &Store, image: &str) -> PathBuf {
    store.state().join("profiles").join(format!(
        "{}.json",
        hex::encode(Sha256::digest(image.as_bytes()))
    ))
}

pub fn load_profile(store: &Store, image: &str) -> Result<Option<Profile>> {
    let p = profile_path(store, image);
    match std::fs::read_to_string(&p) {
        Ok(t) => Profile::from_json(&t)
            .map(Some)
            .map_err(|e| Error::Other(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("read profile", p),
    }
}

pub fn save_profile(store: &Store, p: &Profile) -> Result<()> {
    let path = profile_path(store, &p.image);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).ctx("create", d)?;
    }
    let json = p.to_json().map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&path, json.as_bytes())
}
