//! LASS for streamed storing: a layer is extracted while its blob
//! downloads, so storing no longer waits for the whole blob or for the
//! parent layer (a layer's directory does not depend on its parent's
//! content; only publishing follows the chain order).
//!
//! The paper's cost model (N-Docker §2.3, equations 1–8) still holds:
//! `T_Total = T_D + T_Disk + T_NVM`, where `T_Disk` and `T_NVM` count only
//! the storing work that falls *after* the network's last byte. What
//! changes is which layers have such work. Without streaming, storing of
//! the LDL and the layers above it starts after the last byte, so all of
//! their bytes are written then, and strategy 3 (boundary = LDL) puts
//! exactly them on NVM. With streaming, layer `i` starts storing when its
//! download starts (`t_i`) and, on a tier that writes `r` bytes per ms,
//! ends at `max(d_i, t_i + S_i / r)` (`d_i`: its download's end, never
//! after the last byte `T_D`). Its work after the last byte on disk is
//! therefore `max(0, t_i + α·S_i − T_D)` (α = 1/disk rate), and it is zero
//! for every layer whose disk storing ends by `T_D`. Equation 2 becomes
//! `T_Disk = max_i max(0, t_i + α·S_i − T_D)` over the disk layers (layers
//! store in parallel), and equation 3 the same with β over the NVM layers.
//! Minimising `T_Total` and then `U_Total` (the paper's order) gives:
//!
//! **A layer goes to pmem exactly when its storing on disk would end after
//! the image's last byte**: `t_i + α·S_i > T_D`, i.e. `α·S_i` is longer than
//! the time left on the wire. Every other layer is stored on disk with no
//! cost to the deploy. When `α·S_i ≤ T_D − t_i` for every layer (a disk
//! that keeps up with the network), no layer needs pmem at all; the
//! paper's LDL-and-above set is the special case where storing cannot start
//! before the download ends.
//!
//! The driver decides when a layer's storing starts (its staging directory
//! is on a tier), from predictions: the time left on the wire (the image's
//! bytes still to come over the observed network rate) and the layer's
//! store time on disk (its size over the disk tier's store rate). A layer
//! whose storing starts after every download has finished (e.g. a retry)
//! falls back to the paper's moment rule: pmem.

use super::{Decision, DiskReason, Placement};

/// What the driver knows when a layer's streamed storing starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// Every download of the image has already finished: this layer's
    /// storing starts after the last byte (the paper's moment rule).
    pub all_downloaded: bool,
    /// Predicted time until the image's last byte arrives, ms.
    pub wire_left_ms: u64,
    /// Predicted time to store this layer on the disk tier, ms.
    pub disk_store_ms: u64,
    /// Bytes the layer is expected to need on pmem (a lower bound).
    pub expected_bytes: u64,
    /// Free pmem budget at this moment.
    pub pmem_free: u64,
}

/// Predicted ms until `bytes` have arrived at `bytes_per_ms`; an unknown
/// rate (0) predicts a wire that lasts (`u64::MAX`).
pub fn ms_for(bytes: u64, bytes_per_ms: u64) -> u64 {
    match bytes_per_ms {
        0 => u64::MAX,
        r => bytes.div_ceil(r),
    }
}

/// Bytes a pull must have received before its own network rate is trusted
/// over the node's learned one: early in a pull the rate is low (TCP slow
/// start, a registry reading its blobs from a cold cache), and the first
/// layers' decisions are taken then.
pub const OWN_RATE_AFTER_BYTES: u64 = 16 << 20;

/// The network rate (bytes per ms) to predict the rest of a pull with:
/// the pull's own (`received` bytes in `since_ms`) once it has received
/// [`OWN_RATE_AFTER_BYTES`], before that the rate this node learned from
/// its earlier pulls from the same registry, if any (else the pull's own,
/// or 0 = unknown).
pub fn wire_rate(received: u64, since_ms: u64, learned: Option<u64>) -> u64 {
    let own = received.checked_div(since_ms).unwrap_or(0);
    match learned {
        Some(l) if l > 0 && received < OWN_RATE_AFTER_BYTES => l,
        _ => own,
    }
}

/// Must the driver sample a layer's first bytes before deciding its tier?
/// Only LASS predicts the wire, and it needs the pull's own early rate only
/// when no rate was learned from earlier pulls (a learned rate is what
/// [`wire_rate`] predicts with during the first bytes anyway, so waiting
/// for them would only delay the layer's storing).
pub fn samples_own_rate(placement: Placement, learned: Option<u64>) -> bool {
    placement == Placement::Lass && !matches!(learned, Some(l) if l > 0)
}

/// The layer whose storing is a streamed pull's critical path: the
/// largest one still to store (its bytes take longest to arrive and to
/// extract), the first of equal ones; `None` when every layer is present.
/// On a node whose CPUs the extractions fill, the others should yield to
/// it: they have time to spare before the last byte, it has none.
pub fn critical_layer(sizes: &[u64], present: &[bool]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &size) in sizes.iter().enumerate() {
        if present.get(i).copied().unwrap_or(false) {
            continue;
        }
        if best.is_none_or(|b| size > sizes[b]) {
            best = Some(i);
        }
    }
    best
}

/// Would storing this layer on disk end after the image's last byte?
pub fn ends_after_last_byte(s: &StreamStart) -> bool {
    s.all_downloaded || s.disk_store_ms > s.wire_left_ms
}

/// Decide the tier of a layer when its streamed storing starts.
pub fn decide_streamed(placement: Placement, s: StreamStart) -> Decision {
    super::gate(
        placement,
        || ends_after_last_byte(&s),
        DiskReason::EndsBeforeLastByte,
        s.expected_bytes,
        s.pmem_free,
    )
}

/// One layer in [`simulate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimLayer {
    pub decision: Decision,
    pub download_start_ms: u64,
    pub download_end_ms: u64,
    /// When its storing ends on the chosen tier.
    pub store_end_ms: u64,
}

/// The outcome of [`simulate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPull {
    pub layers: Vec<Option<SimLayer>>,
    /// The image's last byte.
    pub last_byte_ms: u64,
    /// When the top layer is published (chain order: the latest store end).
    pub deploy_ms: u64,
}

/// Rates of a [`simulate`] run, bytes per ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimRates {
    /// Per download stream.
    pub net: u64,
    pub disk: u64,
    pub pmem: u64,
}

/// A deterministic model of a streamed pull: layers download `concurrency`
/// at a time in index order, each at `rates.net` per stream; each layer
/// stores while it downloads, at most at its tier's rate, and the decision
/// is taken at its download start with exact predictions. Layers in
/// `present` are reused.
pub fn simulate(
    sizes: &[u64],
    present: &[bool],
    concurrency: usize,
    rates: SimRates,
    placement: Placement,
    pmem_budget: u64,
) -> SimPull {
    let n = sizes.len();
    let dl = super::schedule_downloads(sizes, present, concurrency, rates.net);
    let last = dl.iter().map(|d| d.1).max().unwrap_or(0);
    let mut used = 0u64;
    let mut layers = Vec::with_capacity(n);
    let mut deploy = 0u64;
    for i in 0..n {
        if present.get(i).copied().unwrap_or(false) {
            layers.push(None);
            continue;
        }
        let (start, end) = dl[i];
        let d = decide_streamed(
            placement,
            StreamStart {
                all_downloaded: start >= last,
                wire_left_ms: last - start,
                disk_store_ms: ms_for(sizes[i], rates.disk.max(1)),
                expected_bytes: sizes[i],
                pmem_free: pmem_budget.saturating_sub(used),
            },
        );
        let rate = match d {
            Decision::Pmem => {
                used += sizes[i];
                rates.pmem
            }
            Decision::Disk(_) => rates.disk,
        };
        let store_end = end.max(start + ms_for(sizes[i], rate.max(1)));
        deploy = deploy.max(store_end);
        layers.push(Some(SimLayer {
            decision: d,
            download_start_ms: start,
            download_end_ms: end,
            store_end_ms: store_end,
        }));
    }
    SimPull {
        layers,
        last_byte_ms: last,
        deploy_ms: deploy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lass::Tier;

    const MB: u64 = 1 << 20;
    const BIG: u64 = u64::MAX / 4;

    fn start(all: bool, wire: u64, disk: u64, exp: u64, free: u64) -> StreamStart {
        StreamStart {
            all_downloaded: all,
            wire_left_ms: wire,
            disk_store_ms: disk,
            expected_bytes: exp,
            pmem_free: free,
        }
    }

    #[test]
    fn decide_follows_the_rule() {
        let l = Placement::Lass;
        // Disk storing ends after the last byte: pmem.
        assert_eq!(
            decide_streamed(l, start(false, 10, 11, 1, 1)),
            Decision::Pmem
        );
        // Ends exactly at the last byte, or before: disk.
        assert_eq!(
            decide_streamed(l, start(false, 10, 10, 1, 1)),
            Decision::Disk(DiskReason::EndsBeforeLastByte)
        );
        assert_eq!(
            decide_streamed(l, start(false, 10, 0, 1, 1)),
            Decision::Disk(DiskReason::EndsBeforeLastByte)
        );
        // Starts after the last byte: the moment rule, pmem.
        assert_eq!(decide_streamed(l, start(true, 0, 0, 1, 1)), Decision::Pmem);
        assert_eq!(decide_streamed(l, start(true, 99, 0, 1, 1)), Decision::Pmem);
        // Budget: an exact fit is allowed, one byte more is not.
        assert_eq!(
            decide_streamed(l, start(true, 0, 5, 10, 10)),
            Decision::Pmem
        );
        assert_eq!(
            decide_streamed(l, start(true, 0, 5, 11, 10)),
            Decision::Disk(DiskReason::BudgetExhausted)
        );
        // Baselines.
        assert_eq!(
            decide_streamed(Placement::Pmem, start(false, 10, 0, 1, 1)),
            Decision::Pmem
        );
        assert_eq!(
            decide_streamed(Placement::Pmem, start(false, 10, 0, 2, 1)),
            Decision::Disk(DiskReason::BudgetExhausted)
        );
        assert_eq!(
            decide_streamed(Placement::Disk, start(true, 0, 99, 1, 1)),
            Decision::Disk(DiskReason::PlacementDisk)
        );
        // An unknown network rate predicts a wire that lasts.
        assert_eq!(ms_for(10, 0), u64::MAX);
        assert_eq!(ms_for(10, 3), 4);
        assert_eq!(ms_for(0, 3), 0);
        assert_eq!(
            decide_streamed(l, start(false, ms_for(1, 0), u64::MAX - 1, 1, 1)),
            Decision::Disk(DiskReason::EndsBeforeLastByte)
        );
    }

    /// Every shape of up to 5 layers from a few sizes, at a few rates, with
    /// every subset already present: the pmem set is exactly the layers
    /// whose disk storing would end after the last byte, the deploy is as
    /// fast as all-pmem, and the budget is never exceeded.
    #[test]
    fn exhaustive_small_shapes() {
        let choices = [MB, 3 * MB, 10 * MB, 40 * MB];
        let rate_sets = [
            // 100 Mbit/s per stream, a disk faster than the network.
            SimRates {
                net: 12_500,
                disk: 60_000,
                pmem: 2_000_000,
            },
            // 1 Gbit/s per stream, a disk slower than the network.
            SimRates {
                net: 125_000,
                disk: 60_000,
                pmem: 2_000_000,
            },
            // Equal rates.
            SimRates {
                net: 50_000,
                disk: 50_000,
                pmem: 2_000_000,
            },
        ];
        let mut checked = 0;
        for rates in rate_sets {
            for n in 1..=5usize {
                let mut shape = vec![0usize; n];
                loop {
                    let sizes: Vec<u64> = shape.iter().map(|&k| choices[k]).collect();
                    for present_mask in 0..(1u32 << n) {
                        let present: Vec<bool> =
                            (0..n).map(|i| present_mask & (1 << i) != 0).collect();
                        check_shape(&sizes, &present, rates);
                        checked += 1;
                    }
                    let mut i = 0;
                    while i < n {
                        shape[i] += 1;
                        if shape[i] < choices.len() {
                            break;
                        }
                        shape[i] = 0;
                        i += 1;
                    }
                    if i == n {
                        break;
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    fn check_shape(sizes: &[u64], present: &[bool], rates: SimRates) {
        let s = simulate(sizes, present, 3, rates, Placement::Lass, BIG);
        let p = simulate(sizes, present, 3, rates, Placement::Pmem, BIG);
        let d = simulate(sizes, present, 3, rates, Placement::Disk, BIG);
        for (i, l) in s.layers.iter().enumerate() {
            let Some(l) = l else {
                assert!(present[i]);
                continue;
            };
            let disk_end = l
                .download_end_ms
                .max(l.download_start_ms + ms_for(sizes[i], rates.disk));
            assert_eq!(
                l.decision.tier() == Tier::Pmem,
                disk_end > s.last_byte_ms,
                "{sizes:?} {present:?} {rates:?} layer {i}: {l:?} last {}",
                s.last_byte_ms
            );
            // On disk, a layer ends by the last byte.
            if l.decision.tier() == Tier::Disk {
                assert!(l.store_end_ms <= s.last_byte_ms);
            }
        }
        // As fast as all-pmem, at most as slow as all-disk.
        assert_eq!(s.deploy_ms, p.deploy_ms, "{sizes:?} {present:?} {rates:?}");
        assert!(s.deploy_ms <= d.deploy_ms);
        assert!(s.deploy_ms >= s.last_byte_ms);
        // A budget: never exceeded, and what does not fit goes to disk.
        for budget in [0, 5 * MB, 41 * MB] {
            let b = simulate(sizes, present, 3, rates, Placement::Lass, budget);
            let mut used = 0;
            for (i, l) in b.layers.iter().enumerate() {
                if let Some(l) = l {
                    if l.decision == Decision::Pmem {
                        used += sizes[i];
                    }
                }
            }
            assert!(used <= budget);
        }
    }

    #[test]
    fn the_critical_layer_is_the_first_largest_to_store() {
        let mut checked = 0;
        for n in 0..=5usize {
            for shape in 0..4usize.pow(n as u32) {
                let sizes: Vec<u64> = (0..n)
                    .map(|i| (shape / 4usize.pow(i as u32) % 4) as u64)
                    .collect();
                for mask in 0..(1u32 << n) {
                    let present: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
                    let c = critical_layer(&sizes, &present);
                    let todo: Vec<usize> = (0..n).filter(|&i| !present[i]).collect();
                    match c {
                        None => assert!(todo.is_empty(), "{sizes:?} {present:?}"),
                        Some(c) => {
                            assert!(!present[c], "{sizes:?} {present:?}");
                            for &i in &todo {
                                assert!(sizes[i] <= sizes[c], "{sizes:?} {present:?}");
                                if sizes[i] == sizes[c] {
                                    assert!(i >= c, "not the first: {sizes:?} {present:?}");
                                }
                            }
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 30_000, "{checked}");
        // A shorter `present` counts the missing ones as to store.
        assert_eq!(critical_layer(&[1, 5, 5], &[false]), Some(1));
    }

    #[test]
    fn only_lass_without_a_learned_rate_samples_the_wire() {
        for placement in [Placement::Lass, Placement::Pmem, Placement::Disk] {
            for learned in [None, Some(0), Some(1), Some(125_000), Some(u64::MAX)] {
                let known = matches!(learned, Some(l) if l > 0);
                assert_eq!(
                    samples_own_rate(placement, learned),
                    placement == Placement::Lass && !known,
                    "{placement} {learned:?}"
                );
            }
        }
    }

    #[test]
    fn wire_rate_prefers_the_learned_rate_early_only() {
        let b = OWN_RATE_AFTER_BYTES;
        // No history: the pull's own rate, or unknown.
        assert_eq!(wire_rate(0, 0, None), 0);
        assert_eq!(wire_rate(4 << 20, 100, None), (4 << 20) / 100);
        // Early in a pull: the learned rate, even when the pull has one.
        assert_eq!(wire_rate(4 << 20, 100, Some(7)), 7);
        assert_eq!(wire_rate(0, 0, Some(7)), 7);
        assert_eq!(wire_rate(b - 1, 1000, Some(7)), 7);
        // Later: the pull's own.
        assert_eq!(wire_rate(b, 1000, Some(7)), b / 1000);
        // A learned 0 is no history.
        assert_eq!(wire_rate(4 << 20, 100, Some(0)), (4 << 20) / 100);
        // Exhaustively over a grid: the result is one of the two inputs.
        for received in [0, 1, b - 1, b, b + 1, 10 * b] {
            for since in [0, 1, 10, 1000] {
                for learned in [None, Some(0), Some(1), Some(125_000)] {
                    let own = received.checked_div(since).unwrap_or(0);
                    let r = wire_rate(received, since, learned);
                    assert!(r == own || Some(r) == learned);
                    if received >= b {
                        assert_eq!(r, own);
                    }
                }
            }
        }
    }

    /// A Debian python3-like image (95, 10 and 7 MB), LASS, 3 streams,
    /// unlimited budget.
    fn python_like(rates: SimRates) -> SimPull {
        simulate(
            &[95 * MB, 10 * MB, 7 * MB],
            &[false; 3],
            3,
            rates,
            Placement::Lass,
            BIG,
        )
    }

    #[test]
    fn disk_that_keeps_up_needs_no_pmem() {
        let rates = SimRates {
            net: 12_500,
            disk: 60_000,
            pmem: 2_000_000,
        };
        // 100 Mbit/s shared by 3 streams is ~12.5 KB/ms each here; a disk
        // storing 60 KB/ms never falls behind: everything on disk.
        let s = python_like(rates);
        assert!(s
            .layers
            .iter()
            .all(|l| l.is_some_and(|l| l.decision.tier() == Tier::Disk)));
        assert_eq!(s.deploy_ms, s.last_byte_ms);
    }

    #[test]
    fn slow_disk_puts_the_big_bottom_layer_on_pmem() {
        let rates = SimRates {
            net: 125_000,
            disk: 60_000,
            pmem: 2_000_000,
        };
        let s = python_like(rates);
        let t: Vec<_> = s
            .layers
            .iter()
            .map(|l| l.map(|l| l.decision.tier()))
            .collect();
        assert_eq!(
            t,
            vec![Some(Tier::Pmem), Some(Tier::Disk), Some(Tier::Disk)]
        );
        // The unstreamed rule put all three there.
        let old = super::super::simulate(
            &[95 * MB, 10 * MB, 7 * MB],
            &[false; 3],
            3,
            125_000,
            60_000,
            Placement::Lass,
            BIG,
        );
        assert!(old.iter().all(|d| *d == Some(Decision::Pmem)));
    }
}
