//! Blob downloads into `STATE/downloads/`, digest-checked.

use super::{ms, registry_err};
use crate::error::{Error, IoContext, Result};
use futures_util::StreamExt;
use indicatif::ProgressBar;
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::AsyncWriteExt;

pub(super) struct Downloaded {
    pub(super) path: PathBuf,
    pub(super) start_ms: f64,
    pub(super) end_ms: f64,
}

pub(super) async fn download(
    client: Arc<Client>,
    reference: Reference,
    desc: OciDescriptor,
    path: PathBuf,
    t0: Instant,
    bar: Option<ProgressBar>,
    done: Arc<Mutex<usize>>,
) -> Result<Downloaded> {
    let start_ms = ms(t0);
    let r = async {
        let mut stream = client
            .pull_blob_stream(&reference, &desc)
            .await
            .map_err(|e| {
                registry_err(
                    "fetching blob of",
                    &reference,
                    format!("{}: {e}", desc.digest),
                )
            })?;
        let mut f = tokio::fs::File::create(&path)
            .await
            .ctx("create download", &path)?;
        let mut h = Sha256::new();
        let mut n: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let msg = e.to_string();
                if msg.to_ascii_lowercase().contains("digest") {
                    Error::Digest {
                        what: format!("blob {} of {}", desc.digest, reference.whole()),
                        expected: desc.digest.clone(),
                        actual: msg,
                    }
                } else {
                    registry_err(
                        "downloading blob of",
                        &reference,
                        format!("{}: {msg}", desc.digest),
                    )
                }
            })?;
            h.update(&chunk);
            n += chunk.len() as u64;
            if let Some(b) = &bar {
                b.set_position(n);
            }
            f.write_all(&chunk).await.ctx("write download", &path)?;
        }
        f.flush().await.ctx("write download", &path)?;
        drop(f);
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != desc.digest {
            return Err(Error::Digest {
                what: format!("blob {} of {}", desc.digest, reference.whole()),
                expected: desc.digest.clone(),
                actual,
            });
        }
        if desc.size >= 0 && n != desc.size as u64 {
            return Err(Error::Corrupt(format!(
                "blob {}: manifest says {} bytes, registry sent {n}",
                desc.digest, desc.size
            )));
        }
        Ok(())
    }
    .await;
    match r {
        Ok(()) => {
            // End time and the done count change together, under the lock
            // the store side reads them with: the LASS decision and the
            // recorded timeline can never disagree.
            let end_ms = {
                let mut g = done.lock().unwrap_or_else(|p| p.into_inner());
                *g += 1;
                ms(t0)
            };
            Ok(Downloaded {
                path,
                start_ms,
                end_ms,
            })
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(e)
        }
    }
}
