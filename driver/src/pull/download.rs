//! Blob downloads into `STATE/downloads/`, digest-checked. With a
//! [`Tap`], the extraction reads the file while it grows (see `feed`).
//!
//! The digest is checked once, by the registry client's blob stream
//! (`oci_client::Client::pull_blob_stream` hashes every chunk and ends in an
//! error on a mismatch): hashing the same bytes again here, and a third time
//! in the extraction, cost a 2-CPU node about 0.1 s of CPU per 100 MB while
//! a pull is CPU-bound. The pull tests corrupt a blob in its middle and in
//! its last bytes and check that the pull fails with a digest error.

use super::feed::Feed;
use super::{ms, registry_err};
use crate::error::{Error, IoContext, Result};
use futures_util::StreamExt;
use indicatif::ProgressBar;
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, Reference};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::AsyncWriteExt;

pub(super) struct Downloaded {
    pub(super) path: PathBuf,
    pub(super) start_ms: f64,
    pub(super) end_ms: f64,
}

/// Bytes are published to the reader in steps of this size (each step
/// flushes the file).
const STEP: u64 = 256 << 10;
/// Write-back of the blob file starts every this many bytes, so that the
/// fsync before a disk-tier layer is published (see `store::durable`) has
/// little left to write after the last byte.
const WRITEBACK_STEP: u64 = 8 << 20;

/// A blob transfer that sends nothing for this long has stalled: the pull
/// fails (the registry client's own read timeout is longer).
pub(super) const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a streamed download reports its bytes.
pub(super) struct Tap {
    pub(super) feed: Feed,
    /// Bytes received by every download of the pull.
    pub(super) received: Arc<AtomicU64>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn download(
    client: Arc<Client>,
    reference: Reference,
    desc: OciDescriptor,
    path: PathBuf,
    t0: Instant,
    bar: Option<ProgressBar>,
    done: Arc<Mutex<usize>>,
    tap_in: Option<Tap>,
) -> Result<Downloaded> {
    let start_ms = ms(t0);
    let tap = tap_in.as_ref();
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
        let mut n: u64 = 0;
        let mut unflushed: u64 = 0;
        let mut written_back: u64 = 0;
        loop {
            let next = tokio::time::timeout(STALL, stream.next())
                .await
                .map_err(|_| {
                    Error::Registry(format!(
                        "downloading blob of {}: {}: the registry sent no data for {} s after {n} of {} bytes (stalled)",
                        reference.whole(),
                        desc.digest,
                        STALL.as_secs(),
                        desc.size
                    ))
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| {
                let msg = e.to_string();
                // The registry client's digest check fails the stream's end.
                let typed = match e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<oci_client::errors::DigestError>())
                {
                    Some(oci_client::errors::DigestError::VerificationError { actual, .. }) => {
                        Some(actual.clone())
                    }
                    _ => None,
                };
                let mismatch = typed.or_else(|| {
                    msg.to_ascii_lowercase()
                        .contains("digest")
                        .then(|| msg.clone())
                });
                match mismatch {
                    Some(actual) => Error::Digest {
                        what: format!("blob {} of {}", desc.digest, reference.whole()),
                        expected: desc.digest.clone(),
                        actual,
                    },
                    None => registry_err(
                        "downloading blob of",
                        &reference,
                        format!("{}: {msg}", desc.digest),
                    ),
                }
            })?;
            n += chunk.len() as u64;
            if let Some(b) = &bar {
                b.set_position(n);
            }
            f.write_all(&chunk).await.ctx("write download", &path)?;
            if let Some(t) = tap {
                t.received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                unflushed += chunk.len() as u64;
                if unflushed >= STEP {
                    f.flush().await.ctx("write download", &path)?;
                    t.feed.advance(unflushed);
                    unflushed = 0;
                    if n - written_back >= WRITEBACK_STEP {
                        crate::fsutil::start_writeback(&f, written_back, n - written_back);
                        written_back = n;
                    }
                }
            }
        }
        f.flush().await.ctx("write download", &path)?;
        drop(f);
        if let Some(t) = tap {
            t.feed.advance(unflushed);
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
            if let Some(t) = tap_in {
                t.feed.finish(Ok(()));
            }
            Ok(Downloaded {
                path,
                start_ms,
                end_ms,
            })
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            if let Some(t) = tap_in {
                t.feed.finish(Err(e.to_string()));
            }
            Err(e)
        }
    }
}
