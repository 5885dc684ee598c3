//! Mount specs of snapshots: overlays over the parent chain, binds.

use super::{Inner, SResult, SnapError};
use crate::store::{SnapshotKind, SnapshotRecord};
use containerd_snapshots::api::types::Mount;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The mounts of a snapshot. `lowers` are the parent chain's directories,
/// top-most (the direct parent) first.
pub fn build_mounts(
    kind: SnapshotKind,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Vec<Mount> {
    let bind = |src: &Path, ro: bool| Mount {
        r#type: "bind".into(),
        source: src.to_string_lossy().into_owned(),
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    };
    let lowerdir = || {
        format!(
            "lowerdir={}",
            lowers
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(":")
        )
    };
    let overlay = |options: Vec<String>| Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    };
    match kind {
        SnapshotKind::Active | SnapshotKind::Committed if lowers.is_empty() => {
            vec![bind(upper, kind == SnapshotKind::Committed)]
        }
        SnapshotKind::Active => vec![overlay(vec![
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            lowerdir(),
        ])],
        SnapshotKind::Committed => vec![overlay(vec!["ro".into(), lowerdir()])],
        SnapshotKind::View => match lowers {
            [] => vec![bind(upper, true)],
            [one] => vec![bind(one, true)],
            _ => vec![overlay(vec!["ro".into(), lowerdir()])],
        },
    }
}

impl Inner {
    /// Lower dirs (short links) of the parent chain, direct parent first.
    pub(super) fn lowers(
        &self,
        snaps: &BTreeMap<String, SnapshotRecord>,
        parent: &str,
    ) -> SResult<Vec<PathBuf>> {
        let mut v = Vec::new();
        let mut p = parent.to_string();
        while !p.is_empty() {
            let r = snaps
                .get(&p)
                .ok_or_else(|| SnapError::NotFound(p.clone()))?;
            v.push(self.ensure_link(r)?);
            if v.len() > 4096 {
                return Err(SnapError::FailedPrecondition(
                    "parent chain too long (cycle?)".into(),
                ));
            }
            p = r.parent.clone();
        }
        Ok(v)
    }

    pub(super) fn mounts_of(
        &self,
        snaps: &BTreeMap<String, SnapshotRecord>,
        r: &SnapshotRecord,
    ) -> SResult<Vec<Mount>> {
        self.check_content(r)?;
        let d = self.snap_dir(r);
        if let (SnapshotKind::Active, Some(t)) = (r.kind, &r.tiering) {
            match self.tiered_mount(snaps, r, t, &d) {
                Ok(Some(m)) => return Ok(vec![m]),
                Ok(None) => {
                    tracing::warn!(key = %r.key, "tiered mount options too long; mounting whole layers")
                }
                Err(e) => {
                    tracing::warn!(key = %r.key, error = %e, "tiered mount not possible; mounting whole layers")
                }
            }
        }
        let lowers = self.lowers(snaps, &r.parent)?;
        let upper = match r.kind {
            SnapshotKind::Committed => self.content_dir(r)?,
            _ => d.join("fs"),
        };
        Ok(build_mounts(r.kind, &lowers, &upper, &d.join("work")))
    }
}
