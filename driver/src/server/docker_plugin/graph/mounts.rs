//! Layer lifecycle: create, remove, and the refcounted overlay mounts of
//! `Get`/`Put`.

use super::{other, validate_id, validate_parent, Graph, GraphLayer};
use crate::error::{IoContext, Result};
use crate::fsutil::fsync_dir;
use crate::mount::{is_mounted, mount_overlay, OverlaySpec};
use crate::store::now_ms;
use std::fs;
use std::path::{Path, PathBuf};

impl Graph {
    /// `Create` / `CreateReadWrite`.
    pub fn create(&self, id: &str, parent: &str, rw: bool) -> Result<()> {
        validate_id(id)?;
        let parent = validate_parent(parent)?;
        let _g = self.guard()?;
        if self.load(id)?.is_some() {
            return Err(other(format!("layer {id} already exists")));
        }
        if let Some(p) = parent {
            if self.load(p)?.is_none() {
                return Err(other(format!("parent layer {p} does not exist")));
            }
        }
        let home = self.layer_home(id);
        // Leftover of a crash between mkdir and the record write.
        if home.exists() && !is_mounted(&self.merged_dir(id)) {
            fs::remove_dir_all(&home).ctx("remove stale layer directory", &home)?;
        }
        let r = (|| {
            for d in [self.diff_dir(id), self.work_dir(id), self.merged_dir(id)] {
                fs::create_dir_all(&d).ctx("create", &d)?;
            }
            self.save(&GraphLayer {
                id: id.to_string(),
                parent: parent.map(str::to_string),
                rw,
                chain_id: None,
                mount_count: 0,
                size: 0,
                created_ms: now_ms(),
                placement: None,
                tiering: None,
            })
        })();
        if r.is_err() {
            let _ = fs::remove_dir_all(&home);
        }
        r
    }

    /// `Remove`: unmounts if needed, deletes the layer's own files and
    /// record, and lets the store collect its content if nothing else uses it.
    pub fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let rec = {
            let _g = self.guard()?;
            let Some(rec) = self.load(id)? else {
                return Ok(());
            };
            let merged = self.merged_dir(id);
            if is_mounted(&merged) {
                unmount(&merged)?;
            }
            let p = self.record_path(id);
            fs::remove_file(&p).ctx("remove layer record", &p)?;
            fsync_dir(&self.records_dir())?;
            let home = self.layer_home(id);
            if home.exists() {
                fs::remove_dir_all(&home).ctx("remove layer directory", &home)?;
            }
            rec
        };
        if let Ok(mut m) = self.applied_at.lock() {
            m.remove(id);
        }
        if let Some(c) = &rec.chain_id {
            // The engine's last layer with this content is gone: so is the
            // image whose top it was (a record the daemon's recording made).
            let snapshots = self.store.snapshots()?;
            if !self.store.graph_driver_refs()?.contains(c)
                && !snapshots.iter().any(|s| s.layer.as_ref() == Some(c))
            {
                for image in self.store.remove_engine_images_on(c)? {
                    tracing::info!(%image, "Docker removed the image; its nvtier record goes too");
                }
            }
            self.store.gc()?;
        }
        Ok(())
    }

    /// `Get`: the root filesystem path of the layer chain (refcounted).
    pub fn get(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        let _g = self.guard()?;
        let mut rec = self.must_load(id)?;
        let own = self.data_dir(&rec)?;
        let parents = self.parent_dirs(&rec)?;
        let path = if parents.is_empty() {
            own
        } else {
            let merged = self.merged_dir(id);
            if !is_mounted(&merged) {
                fs::create_dir_all(&merged).ctx("create", &merged)?;
                let spec = if rec.chain_id.is_none() {
                    fs::create_dir_all(self.work_dir(id)).ctx("create", self.work_dir(id))?;
                    let whole = OverlaySpec {
                        lower: parents,
                        upper: Some(own.clone()),
                        work: Some(self.work_dir(id)),
                        ..Default::default()
                    };
                    // A container's layer over an image with a metadata
                    // layer mounts tiered; the store lock is held from the
                    // check that what the plan names exists until the record
                    // naming it is saved, so GC cannot free it in between.
                    if let Some(t) = self.tiered_spec(&rec) {
                        let _s = self.store.lock_store()?;
                        if crate::store::hot::tiering_present(&self.store, &t.tiering)? {
                            let spec = OverlaySpec {
                                lower: t.lower,
                                data: t.data,
                                upper: Some(own),
                                work: Some(self.work_dir(id)),
                            };
                            mount_overlay(&spec, &merged)?;
                            rec.tiering = Some(t.tiering);
                            rec.mount_count = 1;
                            if let Err(e) = self.save(&rec) {
                                let _ = unmount(&merged);
                                return Err(e);
                            }
                            crate::store::hot::note_start(&self.store, &t.manifest);
                            return Ok(merged);
                        }
                    }
                    whole
                } else {
                    let mut lower = vec![own];
                    lower.extend(parents);
                    OverlaySpec {
                        lower,
                        upper: None,
                        work: None,
                        ..Default::default()
                    }
                };
                mount_overlay(&spec, &merged)?;
                rec.mount_count = 0;
            }
            merged
        };
        rec.mount_count += 1;
        if let Err(e) = self.save(&rec) {
            if rec.mount_count == 1 && path == self.merged_dir(id) {
                let _ = unmount(&path);
            }
            return Err(e);
        }
        Ok(path)
    }

    /// `Put`: drop one reference; unmount at zero.
    pub fn put(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _g = self.guard()?;
        let mut rec = self.must_load(id)?;
        rec.mount_count = rec.mount_count.saturating_sub(1);
        if rec.mount_count == 0 {
            let merged = self.merged_dir(id);
            if is_mounted(&merged) {
                unmount(&merged)?;
            }
            rec.tiering = None;
        }
        self.save(&rec)
    }

    /// `Cleanup` (dockerd shutting down): unmount layers nobody holds.
    pub fn cleanup(&self) -> Result<()> {
        let _g = self.guard()?;
        for rec in self.list()? {
            let merged = self.merged_dir(&rec.id);
            if rec.mount_count == 0 && is_mounted(&merged) {
                unmount(&merged)?;
            }
        }
        Ok(())
    }
}

fn unmount(p: &Path) -> Result<()> {
    match nix::mount::umount2(p, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!(target = %p.display(), "busy; detaching lazily");
            nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).ctx("umount", p)
        }
        Err(nix::errno::Errno::EINVAL) => Ok(()), // not mounted
        Err(e) => Err(e).ctx("umount", p),
    }
}
