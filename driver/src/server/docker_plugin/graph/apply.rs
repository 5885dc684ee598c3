//! `ApplyDiff`: a layer tar into an nvtier store layer.

use super::{
    choose_tier, other, validate_id, validate_parent, Applying, Graph, GraphLayer, Placement,
};
use crate::error::{Error, IoContext, Result};
use crate::extract::{extract_layer, Expect};
use crate::fsutil::fsync_dir;
use crate::store::{now_ms, LayerMeta};
use crate::tier::TierKind;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;
use std::{fs, io};

impl Graph {
    /// Checks done before an `ApplyDiff` reads its body.
    pub fn apply_precheck(&self, id: &str, parent: &str) -> Result<GraphLayer> {
        validate_id(id)?;
        let parent = validate_parent(parent)?;
        let rec = self.must_load(id)?;
        if rec.chain_id.is_some() {
            return Err(other(format!("layer {id} already has content")));
        }
        if parent != rec.parent.as_deref() {
            return Err(other(format!(
                "layer {id}: ApplyDiff with parent {parent:?}, but its parent is {:?}",
                rec.parent
            )));
        }
        let diff = self.diff_dir(id);
        if fs::read_dir(&diff).ctx("list", &diff)?.next().is_some() {
            return Err(other(format!(
                "layer {id} already has files; ApplyDiff needs an empty layer"
            )));
        }
        Ok(rec)
    }

    /// `ApplyDiff`: extract an uncompressed layer tar read from `body`
    /// (blocking) into a store layer and make it the content of `id`.
    /// Returns the layer's size in bytes.
    pub fn apply_diff(&self, id: &str, parent: &str, body: &mut (dyn Read + Send)) -> Result<u64> {
        let rec = self.apply_precheck(id, parent)?;
        let _applying = {
            let mut s = self
                .applying
                .lock()
                .map_err(|_| other("graph driver lock poisoned"))?;
            if !s.insert(id.to_string()) {
                return Err(other(format!("layer {id}: ApplyDiff already in progress")));
            }
            Applying(self, id.to_string())
        };
        let parent_rec = match &rec.parent {
            Some(p) => Some(self.must_load(p)?),
            None => None,
        };
        let parent_end = rec
            .parent
            .as_ref()
            .and_then(|p| self.applied_at.lock().ok().and_then(|m| m.get(p).copied()));
        let placement = choose_tier(parent_end, Instant::now());
        // Held shared until our record references the new store layer, so a
        // concurrent `nvtier gc` cannot collect it in between.
        let _pull = self.store.lock_pull()?;
        let t0 = Instant::now();
        let (staging, tier, stats, reservation, why) = self.extract(body, placement)?;
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // chainID: from the parent's, or (parent without store content) a
        // private namespace so it never collides with a real chainID.
        let chain = match parent_rec.as_ref() {
            None => stats.diff_id.clone(),
            Some(p) => {
                let base = match &p.chain_id {
                    Some(c) => c.clone(),
                    None => format!("graph:{}", p.id),
                };
                format!(
                    "sha256:{}",
                    hex::encode(Sha256::digest(
                        format!("{base} {}", stats.diff_id).as_bytes()
                    ))
                )
            }
        };
        let r = (|| -> Result<()> {
            let _cl = self.store.lock_chain(&chain)?;
            if self.store.layer(&chain)?.is_some() {
                tracing::info!(id, %chain, "layer content already in the store; reusing it");
                fs::remove_dir_all(&staging).ctx("remove staging", &staging)?;
                drop(reservation);
                return Ok(());
            }
            let meta = LayerMeta {
                chain_id: chain.clone(),
                diff_id: stats.diff_id.clone(),
                blob_digest: None,
                media_type: Some("application/vnd.docker.image.rootfs.diff.tar".into()),
                parent: parent_rec.as_ref().and_then(|p| p.chain_id.clone()),
                tier,
                compressed_bytes: stats.uncompressed_bytes,
                uncompressed_bytes: stats.uncompressed_bytes,
                file_bytes: stats.file_bytes,
                charged_bytes: stats.charged_bytes,
                file_count: stats.entries,
                created_ms: now_ms(),
                store_ms: t0.elapsed().as_millis() as u64,
            };
            self.store.commit_layer(&staging, &meta, reservation)
        })();
        if let Err(e) = r {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        {
            let _g = self.guard()?;
            let mut rec = self.must_load(id)?;
            rec.chain_id = Some(chain.clone());
            rec.size = stats.file_bytes;
            rec.placement = Some(why.clone());
            self.save(&rec)?;
            let home = self.layer_home(id);
            for d in [self.diff_dir(id), self.work_dir(id)] {
                let _ = fs::remove_dir_all(&d);
            }
            let _ = fsync_dir(&home);
        }
        if let Ok(mut m) = self.applied_at.lock() {
            m.insert(id.to_string(), Instant::now());
        }
        tracing::info!(id, %chain, tier = %tier, reason = %why, bytes = stats.file_bytes,
            ms = t0.elapsed().as_millis() as u64, "applied layer");
        Ok(stats.file_bytes)
    }

    /// Extract onto the chosen tier. On pmem, the stream is also spooled
    /// (unsynced) so that a layer that turns out not to fit the budget can
    /// be re-extracted onto disk without asking Docker to send it again.
    #[allow(clippy::type_complexity)]
    pub(super) fn extract(
        &self,
        body: &mut (dyn Read + Send),
        placement: Placement,
    ) -> Result<(
        PathBuf,
        TierKind,
        Result<crate::extract::ExtractStats>,
        Option<crate::store::Reservation>,
        String,
    )> {
        // Staging key: a random placeholder chain, locked so that another
        // process's start-up cleanup leaves it alone.
        let key = format!("sha256:{}", hex::encode(rand::random::<[u8; 32]>()));
        let _kl = self.store.lock_chain(&key)?;
        if placement == Placement::Gated {
            let staging = self.store.new_staging(TierKind::Disk, &key)?;
            let stats = extract_layer(body, &staging, &Expect::default(), &mut |_| Ok(()));
            return Ok((
                staging,
                TierKind::Disk,
                stats,
                None,
                "gated: its ApplyDiff did not start right after its parent's (storing overlapped the download)".into(),
            ));
        }
        let spool_path = self.spool_dir().join(format!(
            "{}.{:08x}.tar",
            std::process::id(),
            rand::random::<u32>()
        ));
        let spool = fs::File::create(&spool_path).ctx("create spool", &spool_path)?;
        let _rm = RemoveOnDrop(spool_path.clone());
        let mut tee = Tee {
            inner: body,
            copy: spool,
        };
        let staging = self.store.new_staging(TierKind::Pmem, &key)?;
        let mut res = self.store.reserve();
        let stats = extract_layer(&mut tee, &staging, &Expect::default(), &mut |n| {
            res.charge(n)
        });
        match stats {
            Err(Error::BudgetExhausted(msg)) => {
                tracing::info!(%msg, "pmem budget exhausted; storing the layer on disk");
                let _ = fs::remove_dir_all(&staging);
                drop(res);
                // The rest of the stream goes to the spool too.
                io::copy(&mut tee, &mut io::sink())
                    .map_err(|e| Error::Corrupt(format!("reading layer stream: {e}")))?;
                tee.copy.flush().ctx("write spool", &spool_path)?;
                let f = fs::File::open(&spool_path).ctx("open spool", &spool_path)?;
                let staging = self.store.new_staging(TierKind::Disk, &key)?;
                let stats = extract_layer(f, &staging, &Expect::default(), &mut |_| Ok(()));
                Ok((
                    staging,
                    TierKind::Disk,
                    stats,
                    None,
                    "back-to-back, but the pmem budget is exhausted".into(),
                ))
            }
            stats => Ok((
                staging,
                TierKind::Pmem,
                stats,
                Some(res),
                "back-to-back: its ApplyDiff started right after its parent's (storing is on the critical path)".into(),
            )),
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

struct Tee<'a> {
    inner: &'a mut (dyn Read + Send),
    copy: fs::File,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
