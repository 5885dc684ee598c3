//! The pmem budget across processes.
//!
//! Extractions onto pmem hold a [`Reservation`]: a file in
//! `STATE/reservations/` naming the owner pid and the bytes granted. Grants
//! are taken in chunks under `locks/budget.lock`, so used bytes (stored pmem
//! layers + live reservations) never exceed `pmem_budget`, even with several
//! pulls at once. Reservations of dead processes are ignored and removed.

use super::{pid_alive, Store};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use nix::fcntl::FlockArg;
use std::fs;
use std::path::PathBuf;

/// Grant granularity: one budget-lock round trip per this many bytes.
const CHUNK: u64 = 8 << 20;

fn parse_name(name: &str) -> Option<u32> {
    // `<pid>.<rand>.json`
    name.split('.').next()?.parse().ok()
}

/// Sum of live reservations.
pub(super) fn reserved(s: &Store) -> Result<u64> {
    let dir = s.reservations_dir();
    let mut sum = 0;
    for e in fs::read_dir(&dir).ctx("list", &dir)? {
        let e = e.ctx("list", &dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        let Some(pid) = parse_name(&name) else {
            continue;
        };
        if !pid_alive(pid) {
            continue;
        }
        if let Ok(t) = fs::read_to_string(e.path()) {
            sum += t.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok(sum)
}

pub(super) fn cleanup_dead(s: &Store) -> Result<()> {
    let dir = s.reservations_dir();
    for e in fs::read_dir(&dir).ctx("list", &dir)? {
        let e = e.ctx("list", &dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = parse_name(&name) {
            if !pid_alive(pid) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// pmem bytes held by one extraction in progress.
#[derive(Debug)]
pub struct Reservation {
    store: Store,
    path: PathBuf,
    granted: u64,
    used: u64,
}

impl Reservation {
    pub(super) fn new(store: Store) -> Self {
        let path = store.reservations_dir().join(format!(
            "{}.{:08x}.json",
            std::process::id(),
            rand::random::<u32>()
        ));
        Reservation {
            store,
            path,
            granted: 0,
            used: 0,
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    /// Charge `n` more bytes; fails with [`Error::BudgetExhausted`] when the
    /// budget cannot hold them.
    pub fn charge(&mut self, n: u64) -> Result<()> {
        if self.used + n <= self.granted {
            self.used += n;
            return Ok(());
        }
        let _l = self
            .store
            .lock_file("budget.lock", FlockArg::LockExclusive)?
            .ok_or_else(|| Error::Other("budget lock".into()))?;
        let others = reserved(&self.store)?.saturating_sub(self.on_disk());
        let used_now = self.store.pmem_committed()? + others;
        let budget = self.store.pmem_budget();
        let free = budget.saturating_sub(used_now + self.granted);
        let need = self.used + n - self.granted;
        if need > free {
            return Err(Error::BudgetExhausted(format!(
                "need {need} more bytes, {free} of {budget} free"
            )));
        }
        let grant = need.max(CHUNK).min(free);
        self.granted += grant;
        write_atomic(&self.path, self.granted.to_string().as_bytes())?;
        self.used += n;
        Ok(())
    }

    fn on_disk(&self) -> u64 {
        if pid_alive(std::process::id()) {
            fs::read_to_string(&self.path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0)
        } else {
            0
        }
    }

    /// Turn the reservation into committed pmem bytes (tiering records):
    /// `publish` writes the record; both happen under the budget lock.
    pub fn convert_with(self, publish: impl FnOnce() -> Result<()>) -> Result<()> {
        self.convert(publish)
    }

    /// Turn the reservation into a stored layer: `publish` writes the layer
    /// metadata; both happen under the budget lock.
    pub(super) fn convert(mut self, publish: impl FnOnce() -> Result<()>) -> Result<()> {
        let _l = self
            .store
            .lock_file("budget.lock", FlockArg::LockExclusive)?
            .ok_or_else(|| Error::Other("budget lock".into()))?;
        publish()?;
        let _ = fs::remove_file(&self.path);
        self.granted = 0;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.granted > 0 {
            let _ = fs::remove_file(&self.path);
        }
    }
}
