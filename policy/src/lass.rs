//! Layer-Aware Storage Strategy (LASS), N-Docker §2.3.
//!
//! Layers download in parallel but are stored strictly in chain order. The
//! layers stored *after* the network has finished (the last-downloading layer
//! and everything above it) are the whole critical path of a deployment, so
//! they go to pmem; the layers below were stored while the network was still
//! busy and go to disk.
//!
//! The boundary is taken from what really happened during a pull: a layer goes
//! to pmem exactly when, at the moment its storing begins, every layer of the
//! image has finished downloading ([`decide`]; the engines' own unpack path
//! uses it, see `unpack`).
//!
//! nvtier's own pull stores each layer while it downloads; its rule, derived
//! from the same equations, is in [`streamed`].

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod streamed;

/// Which tier a layer lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Pmem,
    Disk,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Pmem => "pmem",
            Tier::Disk => "disk",
        })
    }
}

/// The placement mode. `Pmem` and `Disk` turn nvtier into the two baselines
/// of the paper ("NVM-Docker" and "Docker").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    #[default]
    Lass,
    Pmem,
    Disk,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Lass => "lass",
            Placement::Pmem => "pmem",
            Placement::Disk => "disk",
        })
    }
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lass" => Ok(Placement::Lass),
            "pmem" => Ok(Placement::Pmem),
            "disk" => Ok(Placement::Disk),
            other => Err(format!(
                "unknown placement {other:?}: expected one of lass, pmem, disk"
            )),
        }
    }
}

/// What the driver observed at the moment a layer's storing begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreMoment {
    /// Every layer of the image that had to be downloaded has finished.
    pub all_downloaded: bool,
    /// Bytes the layer is expected to need (a lower bound; the extractor
    /// enforces the budget byte by byte).
    pub expected_bytes: u64,
    /// Free pmem budget at this moment.
    pub pmem_free: u64,
}

/// Why a layer went to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskReason {
    /// Stored while other layers were still downloading (below the LDL).
    BelowLdl,
    /// The pmem budget cannot hold it.
    BudgetExhausted,
    /// `placement = disk`.
    PlacementDisk,
    /// Streamed storing: on disk, the layer is predicted to be stored
    /// before the image's last byte arrives (see [`streamed`]).
    EndsBeforeLastByte,
}

impl fmt::Display for DiskReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskReason::BelowLdl => "below the last-downloading layer",
            DiskReason::BudgetExhausted => "pmem budget exhausted",
            DiskReason::PlacementDisk => "placement = disk",
            DiskReason::EndsBeforeLastByte => "stored before the last byte",
        })
    }
}

/// The placement decision for one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pmem,
    Disk(DiskReason),
}

impl Decision {
    pub fn tier(self) -> Tier {
        match self {
            Decision::Pmem => Tier::Pmem,
            Decision::Disk(_) => Tier::Disk,
        }
    }
}

/// Decide the tier of a layer at the moment its storing begins.
pub fn decide(placement: Placement, m: StoreMoment) -> Decision {
    gate(
        placement,
        || m.all_downloaded,
        DiskReason::BelowLdl,
        m.expected_bytes,
        m.pmem_free,
    )
}

/// The shape of every LASS decision: the placement mode first; under
/// `lass`, `wants_pmem` (else disk for `not_wanted`); then the budget.
fn gate(
    placement: Placement,
    wants_pmem: impl FnOnce() -> bool,
    not_wanted: DiskReason,
    expected_bytes: u64,
    pmem_free: u64,
) -> Decision {
    let wants = match placement {
        Placement::Disk => return Decision::Disk(DiskReason::PlacementDisk),
        Placement::Pmem => true,
        Placement::Lass => wants_pmem(),
    };
    if !wants {
        return Decision::Disk(not_wanted);
    }
    if expected_bytes > pmem_free {
        return Decision::Disk(DiskReason::BudgetExhausted);
    }
    Decision::Pmem
}

/// The recorded timeline of one layer in a pull (milliseconds since the pull
/// started). `None` for a layer that was already present (reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerTimes {
    pub download_end_ms: u64,
    pub store_start_ms: u64,
}

/// The LDL index of a finished pull, from its timeline: the lowest layer whose
/// storing began at or after the end of the last download. `None` when every
/// layer was reused.
pub fn ldl_index(timeline: &[Option<LayerTimes>]) -> Option<usize> {
    let last_download = timeline.iter().flatten().map(|t| t.download_end_ms).max()?;
    timeline.iter().position(|t| match t {
        Some(t) => t.store_start_ms >= last_download,
        None => false,
    })
}

/// The download (start, end) of each layer in a model pull: `concurrency`
/// streams take the layers in index order, each at `net_bytes_per_ms`;
/// layers in `present` are not downloaded ((0, 0)).
fn schedule_downloads(
    sizes: &[u64],
    present: &[bool],
    concurrency: usize,
    net_bytes_per_ms: u64,
) -> Vec<(u64, u64)> {
    let net = net_bytes_per_ms.max(1);
    let mut slots = vec![0u64; concurrency.max(1)];
    let mut dl = vec![(0u64, 0u64); sizes.len()];
    for (i, size) in sizes.iter().enumerate() {
        if present.get(i).copied().unwrap_or(false) {
            continue;
        }
        let (slot, start) = slots
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(_, t)| t)
            .unwrap_or((0, 0));
        let end = start + size.div_ceil(net).max(1);
        slots[slot] = end;
        dl[i] = (start, end);
    }
    dl
}

/// A deterministic model of a pull, used to reason about (and test) LASS
/// without a network: layers download `concurrency` at a time in index
/// order, each at `net_bytes_per_ms` per stream, and are stored in chain
/// order at `store_bytes_per_ms`. It returns, for each layer, the decision
/// LASS would take. Layers in `present` are reused (neither downloaded nor
/// stored).
pub fn simulate(
    sizes: &[u64],
    present: &[bool],
    concurrency: usize,
    net_bytes_per_ms: u64,
    store_bytes_per_ms: u64,
    placement: Placement,
    pmem_budget: u64,
) -> Vec<Option<Decision>> {
    let n = sizes.len();
    let store = store_bytes_per_ms.max(1);
    let dl_end: Vec<u64> = schedule_downloads(sizes, present, concurrency, net_bytes_per_ms)
        .into_iter()
        .map(|(_, end)| end)
        .collect();
    let last = dl_end.iter().copied().max().unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    let mut clock = 0u64;
    let mut used = 0u64;
    for i in 0..n {
        if present.get(i).copied().unwrap_or(false) {
            out.push(None);
            continue;
        }
        let start = clock.max(dl_end[i]);
        let d = decide(
            placement,
            StoreMoment {
                all_downloaded: start >= last,
                expected_bytes: sizes[i],
                pmem_free: pmem_budget.saturating_sub(used),
            },
        );
        if d == Decision::Pmem {
            used += sizes[i];
        }
        clock = start + sizes[i].div_ceil(store).max(1);
        out.push(Some(d));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;
    const BIG: u64 = u64::MAX / 4;

    fn tiers(d: &[Option<Decision>]) -> Vec<Option<Tier>> {
        d.iter().map(|x| x.map(Decision::tier)).collect()
    }

    fn lass(sizes: &[u64]) -> Vec<Option<Tier>> {
        let present = vec![false; sizes.len()];
        // 100 Mbit/s ≈ 12.5 KB/ms per stream, disk store 150 MB/s.
        tiers(&simulate(
            sizes,
            &present,
            3,
            12_500,
            150_000,
            Placement::Lass,
            BIG,
        ))
    }

    use Tier::{Disk as D, Pmem as P};

    #[test]
    fn decide_follows_the_rule() {
        let m = |all, exp, free| StoreMoment {
            all_downloaded: all,
            expected_bytes: exp,
            pmem_free: free,
        };
        assert_eq!(decide(Placement::Lass, m(true, 1, 10)), Decision::Pmem);
        assert_eq!(
            decide(Placement::Lass, m(false, 1, 10)),
            Decision::Disk(DiskReason::BelowLdl)
        );
        assert_eq!(
            decide(Placement::Lass, m(true, 11, 10)),
            Decision::Disk(DiskReason::BudgetExhausted)
        );
        assert_eq!(decide(Placement::Pmem, m(false, 1, 10)), Decision::Pmem);
        assert_eq!(
            decide(Placement::Pmem, m(false, 11, 10)),
            Decision::Disk(DiskReason::BudgetExhausted)
        );
        assert_eq!(
            decide(Placement::Disk, m(true, 1, 10)),
            Decision::Disk(DiskReason::PlacementDisk)
        );
        // An exact fit is allowed.
        assert_eq!(decide(Placement::Lass, m(true, 10, 10)), Decision::Pmem);
    }

    #[test]
    fn largest_layer_at_the_bottom() {
        // Layer 0 downloads last: it is the LDL, so the whole image is stored
        // after the network finished and all of it goes to pmem.
        assert_eq!(
            lass(&[60 * MB, 5 * MB, 5 * MB, 2 * MB, MB]),
            vec![Some(P); 5]
        );
    }

    #[test]
    fn largest_layer_in_the_middle() {
        assert_eq!(
            lass(&[8 * MB, 4 * MB, 30 * MB, 2 * MB, MB]),
            vec![Some(D), Some(D), Some(P), Some(P), Some(P)]
        );
    }

    #[test]
    fn largest_layer_at_the_top() {
        assert_eq!(
            lass(&[2 * MB, 3 * MB, 2 * MB, MB, 40 * MB]),
            vec![Some(D), Some(D), Some(D), Some(D), Some(P)]
        );
    }

    #[test]
    fn all_layers_equal() {
        // 3 streams: layers 0-2 finish together, 3-5 finish together, 6 last.
        let t = lass(&[10 * MB; 7]);
        assert_eq!(t[6], Some(P));
        assert!(t[..6].iter().all(|x| *x == Some(D)), "{t:?}");
    }

    #[test]
    fn single_layer() {
        assert_eq!(lass(&[10 * MB]), vec![Some(P)]);
    }

    #[test]
    fn some_layers_already_present() {
        let sizes = [8 * MB, 4 * MB, 30 * MB, 2 * MB, MB];
        let present = [true, true, false, false, false];
        let t = tiers(&simulate(
            &sizes,
            &present,
            3,
            12_500,
            150_000,
            Placement::Lass,
            BIG,
        ));
        // Layers 2..4 download together; 2 is the largest and finishes last,
        // 3 and 4 wait for it: all three are stored after the network ends.
        assert_eq!(t, vec![None, None, Some(P), Some(P), Some(P)]);
        // Everything present: nothing to decide.
        let t = simulate(&sizes, &[true; 5], 3, 12_500, 150_000, Placement::Lass, BIG);
        assert!(t.iter().all(Option::is_none));
    }

    #[test]
    fn budget_exhaustion_falls_back_to_disk() {
        let sizes = [8 * MB, 4 * MB, 30 * MB, 2 * MB, MB];
        let t = tiers(&simulate(
            &sizes,
            &[false; 5],
            3,
            12_500,
            150_000,
            Placement::Lass,
            31 * MB,
        ));
        // 30 MB fits, then 2 MB would exceed 31 MB, then 1 MB still fits.
        assert_eq!(t, vec![Some(D), Some(D), Some(P), Some(D), Some(P)]);
        let d = simulate(&sizes, &[false; 5], 3, 12_500, 150_000, Placement::Pmem, 0);
        assert!(d
            .iter()
            .all(|x| *x == Some(Decision::Disk(DiskReason::BudgetExhausted))));
    }

    #[test]
    fn baselines() {
        let sizes = [8 * MB, 4 * MB, 30 * MB];
        let p = tiers(&simulate(
            &sizes,
            &[false; 3],
            3,
            12_500,
            150_000,
            Placement::Pmem,
            BIG,
        ));
        assert_eq!(p, vec![Some(P); 3]);
        let d = tiers(&simulate(
            &sizes,
            &[false; 3],
            3,
            12_500,
            150_000,
            Placement::Disk,
            BIG,
        ));
        assert_eq!(d, vec![Some(D); 3]);
    }

    #[test]
    fn ldl_index_from_timeline() {
        let t = |d, s| {
            Some(LayerTimes {
                download_end_ms: d,
                store_start_ms: s,
            })
        };
        assert_eq!(
            ldl_index(&[t(10, 10), t(5, 20), t(30, 30), t(8, 40)]),
            Some(2)
        );
        assert_eq!(ldl_index(&[None, None]), None);
        assert_eq!(ldl_index(&[None, t(5, 5)]), Some(1));
        assert_eq!(ldl_index(&[t(50, 50)]), Some(0));
    }

    #[test]
    fn simulate_matches_ldl_rule_for_many_shapes() {
        // Exhaustive over small shapes: the pmem set is always a suffix and
        // starts at the layer whose download ends last or later.
        let choices = [MB, 3 * MB, 10 * MB];
        let mut shape = [0usize; 5];
        loop {
            let sizes: Vec<u64> = shape.iter().map(|&k| choices[k]).collect();
            let t = lass(&sizes);
            let first_p = t.iter().position(|x| *x == Some(P));
            let first_p = first_p.expect("the last layer is always on pmem");
            assert!(
                t[first_p..].iter().all(|x| *x == Some(P)),
                "{sizes:?} {t:?}"
            );
            assert!(
                t[..first_p].iter().all(|x| *x == Some(D)),
                "{sizes:?} {t:?}"
            );
            // advance
            let mut i = 0;
            while i < shape.len() {
                shape[i] += 1;
                if shape[i] < choices.len() {
                    break;
                }
                shape[i] = 0;
                i += 1;
            }
            if i == shape.len() {
                break;
            }
        }
    }

    #[test]
    fn placement_parses() {
        assert_eq!("lass".parse::<Placement>(), Ok(Placement::Lass));
        assert_eq!("pmem".parse::<Placement>(), Ok(Placement::Pmem));
        assert_eq!("disk".parse::<Placement>(), Ok(Placement::Disk));
        assert!("nvm".parse::<Placement>().is_err());
    }
}
