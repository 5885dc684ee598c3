//! Tier identity: is each tier still the filesystem nvtier filled?
//!
//! - `<tier>/.nvtier-tier.json` ([`TierId`]): written when nvtier first uses
//!   the tier.
//! - `STATE/tiers/<pmem|disk>.json` ([`TierRecord`]): the identity the state
//!   expects, and whether the tier was a mount point of its own.
//!
//! Checked when the store opens and by `nvtier serve` in the background:
//! - the id matches: the tier is the one the records describe;
//! - the id file is gone, or another id is there: the tier was replaced
//!   (tmpfs after a reboot, a re-created NVDIMM namespace, a new device).
//!   Its content is checked record by record (see [`super::health`]) and the
//!   new filesystem is adopted;
//! - the directory is missing, or was a mount point and is not one any more
//!   (the DAX mount failed at boot): the tier is missing. nvtier does not
//!   write to it and runs degraded until it is back.

use super::{now_ms, Store};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::tier::{mount_of, TierKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The id file at the root of a tier.
pub const ID_FILE: &str = ".nvtier-tier.json";

/// `<tier>/.nvtier-tier.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierId {
    pub id: String,
    pub kind: TierKind,
    pub created_ms: u64,
}

/// `STATE/tiers/<kind>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRecord {
    pub id: String,
    pub path: PathBuf,
    /// The tier directory was the root of a mount of its own.
    pub mount_point: bool,
    pub since_ms: u64,
}

/// What the identity check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TierState {
    /// The tier the records describe.
    Ok,
    /// First use: the id was written now.
    New,
    /// Another (usually empty) filesystem than the one the records
    /// describe; adopted, its content must be checked.
    Replaced { previous_id: String },
    /// Not usable: nvtier does not write to it.
    Missing { reason: String },
}

impl TierState {
    pub fn is_missing(&self) -> bool {
        matches!(self, TierState::Missing { .. })
    }
}

impl std::fmt::Display for TierState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TierState::Ok => f.write_str("ok"),
            TierState::New => f.write_str("new"),
            TierState::Replaced { previous_id } => {
                write!(f, "replaced (was {previous_id}; content checked)")
            }
            TierState::Missing { reason } => write!(f, "missing: {reason}"),
        }
    }
}

fn kind_name(k: TierKind) -> &'static str {
    match k {
        TierKind::Pmem => "pmem",
        TierKind::Disk => "disk",
    }
}

pub fn record_path(state: &Path, kind: TierKind) -> PathBuf {
    state
        .join("tiers")
        .join(format!("{}.json", kind_name(kind)))
}

fn read<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn write<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).ctx("create", d)?;
    }
    let json = serde_json::to_vec_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(p, &json)
}

/// Whether `dir` is the root of a mount.
pub fn is_mount_point(dir: &Path) -> bool {
    let Ok(c) = std::fs::canonicalize(dir) else {
        return false;
    };
    mount_of(&c).is_some_and(|m| m.mount_point == c)
}

/// The tier's id file, if it is there and readable.
pub fn tier_id(root: &Path) -> Option<TierId> {
    read(&root.join(ID_FILE))
}

/// The identity the state expects for a tier, if any.
pub fn tier_record(state: &Path, kind: TierKind) -> Option<TierRecord> {
    read(&record_path(state, kind))
}

/// Check a tier against the state without changing anything.
pub fn inspect(state: &Path, kind: TierKind, root: &Path) -> TierState {
    if !root.is_dir() {
        return TierState::Missing {
            reason: format!(
                "{} does not exist (mount the tier there, or fix `{}_dir` in the config)",
                root.display(),
                kind_name(kind)
            ),
        };
    }
    let rec = tier_record(state, kind);
    let id = tier_id(root);
    match (rec, id) {
        (None, _) => TierState::New,
        (Some(r), Some(i)) if r.id == i.id => TierState::Ok,
        (Some(r), None) if r.mount_point && !is_mount_point(root) => TierState::Missing {
            reason: format!(
                "{} is no longer a mount point (its filesystem is not mounted; mount it again)",
                root.display()
            ),
        },
        (Some(r), _) => TierState::Replaced { previous_id: r.id },
    }
}

/// Check a tier and, unless it is missing, adopt it: write a new id for a
/// new or replaced filesystem and record it in the state.
pub fn check_and_adopt(state: &Path, kind: TierKind, root: &Path) -> Result<TierState> {
    let st = inspect(state, kind, root);
    match &st {
        TierState::Ok | TierState::Missing { .. } => return Ok(st),
        TierState::New | TierState::Replaced { .. } => {}
    }
    let id = match tier_id(root) {
        // A first use of a tier that already carries an id (a state
        // directory re-created over existing tiers) keeps it.
        Some(i) if st == TierState::New && i.kind == kind => i,
        _ => {
            let i = TierId {
                id: format!("{:016x}", rand::random::<u64>()),
                kind,
                created_ms: now_ms(),
            };
            write(&root.join(ID_FILE), &i)?;
            i
        }
    };
    write(
        &record_path(state, kind),
        &TierRecord {
            id: id.id,
            path: root.to_path_buf(),
            mount_point: is_mount_point(root),
            since_ms: now_ms(),
        },
    )?;
    match &st {
        TierState::Replaced { previous_id } => tracing::warn!(
            tier = kind_name(kind), path = %root.display(), %previous_id,
            "the tier was replaced: checking what it lost"
        ),
        _ => tracing::info!(tier = kind_name(kind), path = %root.display(), "tier adopted"),
    }
    Ok(st)
}

impl Store {
    /// Whether the pmem tier is usable now (mounted, and the one the state
    /// describes). A missing tier is neither read nor written.
    pub fn pmem_available(&self) -> bool {
        matches!(
            inspect(self.state(), TierKind::Pmem, &self.pmem.root),
            TierState::Ok
        )
    }

    /// The pmem budget in force: the configured one, or 0 while the pmem
    /// tier is missing (everything goes to the disk tier).
    pub fn pmem_budget(&self) -> u64 {
        if self.pmem_available() {
            self.cfg.pmem_budget
        } else {
            0
        }
    }

    /// Where containers' writable layers go: `upper_tier`, or the disk tier
    /// while the pmem tier is missing.
    pub fn upper_tier(&self) -> TierKind {
        match self.cfg.upper_tier {
            TierKind::Pmem if !self.pmem_available() => TierKind::Disk,
            t => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_then_ok_then_replaced() {
        let t = tempfile::tempdir().expect("tmp");
        let (state, tier) = (t.path().join("state"), t.path().join("tier"));
        std::fs::create_dir_all(&tier).expect("mk");
        assert_eq!(inspect(&state, TierKind::Pmem, &tier), TierState::New);
        assert_eq!(
            check_and_adopt(&state, TierKind::Pmem, &tier).expect("adopt"),
            TierState::New
        );
        assert_eq!(inspect(&state, TierKind::Pmem, &tier), TierState::Ok);
        let old = tier_id(&tier).expect("id").id;
        // The content is lost: an empty directory in its place.
        std::fs::remove_dir_all(&tier).expect("rm");
        std::fs::create_dir_all(&tier).expect("mk");
        assert_eq!(
            check_and_adopt(&state, TierKind::Pmem, &tier).expect("adopt"),
            TierState::Replaced {
                previous_id: old.clone()
            }
        );
        let new = tier_id(&tier).expect("id").id;
        assert_ne!(new, old);
        assert_eq!(inspect(&state, TierKind::Pmem, &tier), TierState::Ok);
        // Another tier's id file is a replacement too.
        write(
            &tier.join(ID_FILE),
            &TierId {
                id: "other".into(),
                kind: TierKind::Pmem,
                created_ms: 0,
            },
        )
        .expect("w");
        assert!(matches!(
            inspect(&state, TierKind::Pmem, &tier),
            TierState::Replaced { .. }
        ));
    }

    #[test]
    fn a_missing_directory_is_missing_and_never_created() {
        let t = tempfile::tempdir().expect("tmp");
        let (state, tier) = (t.path().join("state"), t.path().join("gone"));
        let st = check_and_adopt(&state, TierKind::Pmem, &tier).expect("check");
        assert!(st.is_missing(), "{st:?}");
        assert!(!tier.exists());
    }

    #[test]
    fn an_unmounted_mount_point_is_missing() {
        let t = tempfile::tempdir().expect("tmp");
        let (state, tier) = (t.path().join("state"), t.path().join("tier"));
        std::fs::create_dir_all(&tier).expect("mk");
        write(
            &record_path(&state, TierKind::Pmem),
            &TierRecord {
                id: "abc".into(),
                path: tier.clone(),
                mount_point: true,
                since_ms: 0,
            },
        )
        .expect("w");
        let st = check_and_adopt(&state, TierKind::Pmem, &tier).expect("check");
        assert!(st.is_missing(), "{st:?}");
        assert!(!tier.join(ID_FILE).exists(), "nothing written to it");
    }
}
