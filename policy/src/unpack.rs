//! LASS for layers the *engine* unpacks (the containerd snapshotter's
//! ordinary unpack path).
//!
//! There the snapshotter never sees the downloads; it sees a `Prepare` of an
//! extract snapshot when the engine begins storing a layer, and a `Commit`
//! when it is done. What it *can* observe at that moment is the engine's
//! content-store ingest area (containerd: `ROOT/io.containerd.content.v1.content/ingest/`):
//! one directory per download in progress, whose `data` file grows while
//! bytes arrive and which disappears when the blob is committed.
//!
//! Rule: a layer goes to pmem exactly when, at the moment its unpack begins,
//! no download is in progress (no ingest was written to within the last
//! `fresh_ms`). That is the LASS rule ("every layer of the image has finished
//! downloading") with "the image" widened to "the node": a concurrent pull of
//! another image keeps the layer on disk, which is the conservative side
//! (less pmem, never a slower critical path than all-disk). An ingest that has
//! not grown for `fresh_ms` is treated as stalled/abandoned (containerd keeps
//! aborted ingests until their expiry), so a stale leftover cannot pin every
//! later layer to disk.

use crate::lass::{decide, Decision, Placement, StoreMoment};

/// Default window: an ingest written to within this many ms is "downloading".
pub const INGEST_FRESH_MS: u64 = 5_000;

/// What the snapshotter observed when an unpack began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackMoment {
    /// Age (ms since last write) of every ingest in the engine's content
    /// store; `None` when the ingest area could not be read.
    pub ingest_ages_ms: Option<Vec<u64>>,
    /// Free pmem budget.
    pub pmem_free: u64,
}

/// Downloads still running: some ingest was written to within `fresh_ms`.
/// `None` (unobservable) counts as running: the layer stays on disk.
pub fn downloads_running(ingest_ages_ms: Option<&[u64]>, fresh_ms: u64) -> bool {
    match ingest_ages_ms {
        None => true,
        Some(a) => a.iter().any(|&age| age < fresh_ms),
    }
}

/// The tier of a layer the engine unpacks. The size is not known when the
/// unpack begins, so only an empty budget sends it to disk here; the store
/// re-checks the real size at commit.
pub fn decide_unpack(placement: Placement, m: &UnpackMoment, fresh_ms: u64) -> Decision {
    decide(
        placement,
        StoreMoment {
            all_downloaded: !downloads_running(m.ingest_ages_ms.as_deref(), fresh_ms),
            expected_bytes: 1,
            pmem_free: m.pmem_free,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lass::DiskReason;

    fn m(ages: Option<Vec<u64>>, free: u64) -> UnpackMoment {
        UnpackMoment {
            ingest_ages_ms: ages,
            pmem_free: free,
        }
    }

    #[test]
    fn no_ingest_means_all_downloaded() {
        assert_eq!(
            decide_unpack(Placement::Lass, &m(Some(vec![]), 1 << 30), 5000),
            Decision::Pmem
        );
    }

    #[test]
    fn a_fresh_ingest_keeps_the_layer_on_disk() {
        assert_eq!(
            decide_unpack(Placement::Lass, &m(Some(vec![10_000, 20]), 1 << 30), 5000),
            Decision::Disk(DiskReason::BelowLdl)
        );
    }

    #[test]
    fn stale_ingests_are_ignored() {
        assert_eq!(
            decide_unpack(
                Placement::Lass,
                &m(Some(vec![5_000, 60_000]), 1 << 30),
                5000
            ),
            Decision::Pmem
        );
    }

    #[test]
    fn unobservable_is_disk() {
        assert_eq!(
            decide_unpack(Placement::Lass, &m(None, 1 << 30), 5000),
            Decision::Disk(DiskReason::BelowLdl)
        );
    }

    #[test]
    fn budget_and_placement_still_apply() {
        assert_eq!(
            decide_unpack(Placement::Lass, &m(Some(vec![]), 0), 5000),
            Decision::Disk(DiskReason::BudgetExhausted)
        );
        assert_eq!(
            decide_unpack(Placement::Disk, &m(Some(vec![]), 1 << 30), 5000),
            Decision::Disk(DiskReason::PlacementDisk)
        );
        assert_eq!(
            decide_unpack(Placement::Pmem, &m(Some(vec![1]), 1 << 30), 5000),
            Decision::Pmem
        );
    }
}
