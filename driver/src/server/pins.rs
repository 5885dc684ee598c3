//! Keep the directories that tiered mounts name resident in memory.
//!
//! A tiered container mount names, for every layer of its image, the
//! layer's base directory (a data-only lower layer, on the disk tier after
//! migration), its hot-generation directory and the image's metadata
//! directory. The kernel resolves each of those paths when the overlay is
//! mounted. Once the dentry cache has been dropped (memory pressure,
//! `drop_caches` before a cold start), that walk reads the disk tier's
//! directory blocks and inode tables: NVBench measured 7 reads (152 KiB,
//! ext4 reads inode tables ahead) per cold start of a migrated image that
//! otherwise needs no disk at all.
//!
//! `nvtier serve` therefore holds an `O_PATH` descriptor on each such
//! directory of every tiered image. A referenced dentry, with its inode and
//! its ancestors, is never reclaimed, so the walk stays in memory. The cost
//! is one dentry and inode per directory. The set is refreshed every few
//! seconds; descriptors of directories no longer named (an image removed,
//! a generation replaced) are closed, so nothing removed is kept alive for
//! long and the tiers can be unmounted once the daemon stops.

use crate::store::Store;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// How often the set is refreshed.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// The directories a tiered mount of some image on the node names.
pub fn wanted(store: &Store) -> crate::error::Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for img in store.images()? {
        if crate::store::hot::meta_record(store, &img.manifest_digest)?.is_none() {
            continue;
        }
        out.insert(crate::store::hot::meta_dir(store, &img.manifest_digest)?);
        for c in &img.chain_ids {
            if let Some(m) = store.layer(c)? {
                out.insert(store.layer_dir(&m)?);
            }
            if let Some(p) = crate::store::hot::layer_placement(store, c)? {
                if p.current > 0 {
                    out.insert(crate::store::hot::gen_dir(store, c, p.current)?);
                }
            }
        }
    }
    Ok(out)
}

/// Open `O_PATH` descriptors, by directory.
#[derive(Default)]
pub struct Pins {
    held: HashMap<PathBuf, File>,
}

/// What a refresh changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    pub pinned: usize,
    pub released: usize,
    pub held: usize,
}

impl Pins {
    /// Pin what `want` names and is a directory now; release the rest.
    pub fn refresh(&mut self, want: &BTreeSet<PathBuf>) -> Refresh {
        let before = self.held.len();
        self.held.retain(|p, _| want.contains(p));
        let released = before - self.held.len();
        let mut pinned = 0;
        for p in want {
            if self.held.contains_key(p) {
                continue;
            }
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(p)
            {
                Ok(f) => {
                    self.held.insert(p.clone(), f);
                    pinned += 1;
                }
                // Gone since the records were read (a removal or a
                // migration in flight): the next refresh sees the new set.
                Err(e) => tracing::debug!(dir = %p.display(), error = %e, "not pinned"),
            }
        }
        Refresh {
            pinned,
            released,
            held: self.held.len(),
        }
    }

    pub fn held(&self) -> impl Iterator<Item = &PathBuf> {
        self.held.keys()
    }
}

/// Refresh the pins every [`REFRESH`] until shutdown.
/// Refreshes every [`REFRESH`], and at once when `wake` is notified (a
/// migration just changed what tiered mounts name).
pub async fn pin_loop(
    store: Store,
    rx: &mut tokio::sync::watch::Receiver<bool>,
    wake: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut pins = Pins::default();
    loop {
        let s2 = store.clone();
        let r = tokio::task::spawn_blocking(move || {
            let r = wanted(&s2).map(|w| pins.refresh(&w));
            (pins, r)
        })
        .await;
        pins = match r {
            Ok((p, Ok(r))) => {
                if r.pinned > 0 || r.released > 0 {
                    tracing::info!(
                        pinned = r.pinned,
                        released = r.released,
                        held = r.held,
                        "directories of tiered mounts kept in memory"
                    );
                }
                p
            }
            Ok((p, Err(e))) => {
                tracing::warn!(error = %e, "reading the store for pinning; retrying");
                p
            }
            Err(e) => {
                tracing::warn!(error = %e, "pin refresh panicked; releasing all pins");
                Pins::default()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = wake.notified() => {}
            _ = rx.wait_for(|v| *v) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_pins_directories_and_releases_what_is_no_longer_wanted() {
        let t = tempfile::tempdir().expect("tmp");
        let a = t.path().join("a");
        let b = t.path().join("b");
        let f = t.path().join("file");
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        std::fs::write(&f, b"x").expect("write");
        let missing = t.path().join("missing");
        let mut pins = Pins::default();
        let want: BTreeSet<PathBuf> = [a.clone(), b.clone(), f.clone(), missing.clone()].into();
        // A file and a missing path are not pinned (O_DIRECTORY).
        assert_eq!(
            pins.refresh(&want),
            Refresh {
                pinned: 2,
                released: 0,
                held: 2
            }
        );
        // Unchanged: nothing reopened.
        assert_eq!(
            pins.refresh(&want),
            Refresh {
                pinned: 0,
                released: 0,
                held: 2
            }
        );
        // A pinned directory can still be removed; the next refresh
        // without it releases its descriptor.
        std::fs::remove_dir(&b).expect("rmdir while pinned");
        let want: BTreeSet<PathBuf> = [a.clone(), missing].into();
        assert_eq!(
            pins.refresh(&want),
            Refresh {
                pinned: 0,
                released: 1,
                held: 1
            }
        );
        assert_eq!(pins.held().collect::<Vec<_>>(), vec![&a]);
        // The descriptor names the directory itself.
        let fd_dir = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&pins.held[&a])
        ))
        .expect("readlink");
        assert_eq!(fd_dir, a);
    }
}
