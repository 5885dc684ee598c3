//! The migration journal and fault injection for kill tests.
//!
//! A migration of image I writes `STATE/journal/<I>.json` before its first
//! step and rewrites it after each one; the last write removes it. Every
//! state the store can be in between two steps is consistent on its own
//! (see the tiering module docs), so recovery after `kill -9` reads the
//! journal only to report what was interrupted, then sweeps what the
//! interrupted step left: staging directories, an unpublished generation,
//! a half-relocated layer.

use super::now_ms;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One migration in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub image: String,
    pub manifest_digest: String,
    pub pid: u32,
    /// The generation being built.
    pub generation: u64,
    pub started_ms: u64,
    /// Completed steps, in order (`begin`, `meta_built`, `copied`,
    /// `published_dir`, `committed`, `layer_copied:<chain>`,
    /// `layer_switched:<chain>`, `retired`).
    pub steps: Vec<String>,
}

/// Where a journal lives and how it is written.
pub struct JournalFile {
    path: PathBuf,
    pub j: Journal,
}

impl JournalFile {
    pub fn begin(dir: &Path, hex: &str, j: Journal) -> Result<JournalFile> {
        std::fs::create_dir_all(dir).ctx("create", dir)?;
        let mut f = JournalFile {
            path: dir.join(format!("{hex}.json")),
            j,
        };
        f.step("begin")?;
        Ok(f)
    }

    /// Record a completed step (atomically) and run the fault point of the
    /// same name.
    pub fn step(&mut self, s: &str) -> Result<()> {
        self.j.steps.push(s.to_string());
        let json = serde_json::to_vec_pretty(&self.j).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&self.path, &json)?;
        fault(&format!(
            "after_journal:{}",
            s.split(':').next().unwrap_or(s)
        ));
        Ok(())
    }

    /// The migration is over: remove the journal.
    pub fn finish(self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove journal", &self.path),
        }
    }
}

/// Read every journal left in `dir` (by killed migrations).
pub fn leftovers(dir: &Path) -> Vec<(PathBuf, Option<Journal>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| {
            let j = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            (e.path(), j)
        })
        .collect()
}

/// Fault injection for the kill tests: when `NVTIER_FAULT` names this
/// point, the process sends itself SIGKILL, exactly like `kill -9` from
/// outside, but at a known step. Points: `after_copy`, `mid_publish`,
/// `after_journal:<step>`, `layer_copied`, `layer_switched`.
pub fn fault(point: &str) {
    if let Ok(want) = std::env::var("NVTIER_FAULT") {
        if want == point {
            tracing::warn!(point, "NVTIER_FAULT: killing myself");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

pub fn new_journal(image: &str, manifest: &str, generation: u64) -> Journal {
    Journal {
        image: image.to_string(),
        manifest_digest: manifest.to_string(),
        pid: std::process::id(),
        generation,
        started_ms: now_ms(),
        steps: Vec::new(),
    }
}
