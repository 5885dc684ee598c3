//! Cleanup: snapshot directories without a record.

use super::Inner;
use crate::error::{IoContext, Result};
use std::fs;

/// The id that owns an entry of the links directory: `<id>`, or a link
/// being written, `.<id>.<random>` (see `ensure_link`).
fn link_owner(name: &str) -> &str {
    name.strip_prefix('.')
        .and_then(|rest| rest.split_once('.'))
        .map_or(name, |(id, _)| id)
}

impl Inner {
    /// Remove snapshot directories and links no record owns.
    ///
    /// The directories are listed without the table's lock. An entry is
    /// removed only if, under the lock, no record and no claimed key owns
    /// its id: a call claims its id before it creates a directory or link,
    /// and releases it only after removing them.
    pub(super) fn cleanup(&self) -> Result<()> {
        let ids: std::collections::HashSet<String> =
            self.lock().ids().map(str::to_string).collect();
        let disk = self
            .disk_scan
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let tiers = [Some(&self.store.pmem), disk.then_some(&self.store.disk)];
        for t in tiers.into_iter().flatten() {
            let dir = t.root.join("snapshots");
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if ids.contains(&n) {
                    continue;
                }
                let snaps = self.lock();
                if snaps.ids().any(|i| i == n) {
                    continue;
                }
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
        for e in fs::read_dir(self.store.links_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            let owner = link_owner(&n);
            if ids.contains(owner) {
                continue;
            }
            let snaps = self.lock();
            if !snaps.ids().any(|i| i == owner) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_owner() {
        assert_eq!(super::link_owner("abc0123456"), "abc0123456");
        assert_eq!(super::link_owner(".abc0123456.1f2e3d4c"), "abc0123456");
        assert_eq!(super::link_owner(".odd"), ".odd");
    }
}
