//! Fetching one blob of an image by digest, outside a pull.

use super::auth::{self, Credentials};
use super::download::download;
use super::registry::{access_err, client_for, parse_ref};
use crate::error::{IoContext, Result};
use crate::store::{digest_hex, Store};
use oci_client::manifest::OciDescriptor;
use oci_client::RegistryOperation;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Download the blob `digest` of `image` (a reference; the blob is fetched
/// from its repository) into `dest`, digest-checked. Returns its size.
/// A failed fetch leaves no file at `dest`.
pub async fn fetch_blob(
    store: &Store,
    image: &str,
    digest: &str,
    media_type: &str,
    creds: &Credentials,
    dest: &Path,
) -> Result<u64> {
    digest_hex(digest)?;
    let reference = parse_ref(image)?;
    let creds = auth::resolve(&store.cfg, creds, reference.resolve_registry())?;
    let client = Arc::new(client_for(store, &reference, &creds.auth)?);
    client
        .auth(&reference, &creds.auth, RegistryOperation::Pull)
        .await
        .map_err(|e| access_err("authenticating", &reference, &creds, e))?;
    let desc = OciDescriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size: -1,
        ..Default::default()
    };
    let dl = download(
        client,
        reference,
        desc,
        PathBuf::from(dest),
        Instant::now(),
        None,
        Arc::new(Mutex::new(0)),
        None,
    )
    .await?;
    let size = tokio::fs::metadata(&dl.path)
        .await
        .map(|m| m.len())
        .ctx("stat", &dl.path);
    if size.is_err() {
        let _ = tokio::fs::remove_file(&dl.path).await;
    }
    size
}
