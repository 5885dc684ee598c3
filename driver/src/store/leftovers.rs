//! Start-up removal of what killed processes left: staging directories,
//! layer directories without metadata, partial downloads, temp files of
//! record writes and reservations; then crash recovery.

use super::{budget, pid_alive, recover, Store};
use crate::error::{IoContext, Result};
use crate::tier::TierKind;
use std::fs;
use std::path::{Path, PathBuf};

impl Store {
    /// Remove staging directories, orphaned layer directories, partial
    /// downloads and reservations left by killed processes.
    pub(super) fn cleanup_leftovers(&self) -> Result<()> {
        let pmem_ok = self.pmem_available();
        for t in [&self.pmem, &self.disk] {
            if t.kind == TierKind::Pmem && !pmem_ok {
                continue;
            }
            // Staging: `<hex>.<rand>`; free if nobody holds the chain lock.
            for e in fs::read_dir(t.staging_dir()).ctx("list", t.staging_dir())? {
                let e = e.ctx("list", t.staging_dir())?;
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.split('.').next().unwrap_or("").to_string();
                if hex.len() != 64 {
                    continue;
                }
                if let Some(_l) = self.try_lock_chain_hex(&hex)? {
                    tracing::info!(path = %e.path().display(), "removing staging leftover");
                    fs::remove_dir_all(e.path()).ctx("remove staging leftover", e.path())?;
                }
            }
            // Layer directories without metadata (crash between rename and
            // metadata write, or during deletion).
            for e in fs::read_dir(t.layers_dir()).ctx("list", t.layers_dir())? {
                let e = e.ctx("list", t.layers_dir())?;
                let hex = e.file_name().to_string_lossy().into_owned();
                if hex.len() != 64 || self.layers_meta_dir().join(format!("{hex}.json")).exists() {
                    continue;
                }
                if let Some(_l) = self.try_lock_chain_hex(&hex)? {
                    if !self.layers_meta_dir().join(format!("{hex}.json")).exists() {
                        tracing::info!(path = %e.path().display(), "removing orphaned layer directory");
                        fs::remove_dir_all(e.path()).ctx("remove orphaned layer", e.path())?;
                    }
                }
            }
        }
        for e in fs::read_dir(self.downloads_dir()).ctx("list", self.downloads_dir())? {
            let e = e.ctx("list", self.downloads_dir())?;
            let name = e.file_name().to_string_lossy().into_owned();
            // `<hex>.<pid>.partial`
            let pid: u32 = name
                .split('.')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if !pid_alive(pid) {
                let _ = fs::remove_file(e.path());
            }
        }
        self.remove_stale_temps();
        budget::cleanup_dead(self)?;
        if pmem_ok {
            recover::recover(self)?;
        }
        self.recover_unsynced()?;
        Ok(())
    }

    /// Temp files of atomic record writes whose writer was killed before
    /// its rename: in every record directory of the state dir (and one
    /// level below, e.g. `graph/layers/`).
    fn remove_stale_temps(&self) {
        let subdirs = |d: &Path| -> Vec<PathBuf> {
            fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        };
        for d in subdirs(self.state()) {
            for dir in std::iter::once(d.clone()).chain(subdirs(&d)) {
                let n = crate::fsutil::atomic::remove_stale_temps(&dir, pid_alive);
                if n > 0 {
                    tracing::info!(dir = %dir.display(), files = n, "removed temp files of interrupted record writes");
                }
            }
        }
    }
}
