//! Cleanup: snapshot directories without a record.

use super::Inner;
use crate::error::{IoContext, Result};
use std::fs;

impl Inner {
    /// Remove snapshot directories and links no record owns.
    pub(super) fn cleanup(&self) -> Result<()> {
        let snaps = self.lock();
        // The lock is held over the scan (the pmem tier and the links
        // directory; the disk tier only after a failure): a directory or
        // link is an orphan only if no record and no claimed key (a record
        // being written) owns its id.
        let ids: std::collections::HashSet<&str> = snaps.ids().collect();
        let disk = self
            .disk_scan
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let tiers = [Some(&self.store.pmem), disk.then_some(&self.store.disk)];
        for t in tiers.into_iter().flatten() {
            let dir = t.root.join("snapshots");
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !ids.contains(n.as_str()) {
                    tracing::info!(path = %e.path().display(), "removing orphaned snapshot directory");
                    if let Err(err) = fs::remove_dir_all(e.path()) {
                        if disk {
                            self.disk_scan
                                .store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        return Err(err).ctx("remove orphan", e.path());
                    }
                }
            }
        }
        for e in fs::read_dir(self.store.links_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if !ids.contains(n.as_str()) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}
