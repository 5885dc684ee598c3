//! The rates this node measures: the disk tier's storing rate, and the
//! network rate of each registry it pulls from.
//!
//! The streamed LASS rule asks how long a layer would take to store on the
//! disk tier. How fast a layer extracts depends on the node (CPU, disk,
//! what else runs) and on the layers (a base layer of 7 000 small files
//! extracts at a third of the rate of a few large files). Each disk-tier
//! layer a pull stores is one sample: its compressed bytes over the time its
//! extraction was busy (not waiting for the network). The estimate is their
//! exponentially weighted mean, kept in `STATE/disk-store-rate.json`; until
//! a node has a sample, the configured `disk_store_rate` stands in.
//!
//! The network rate predicts, with the disk rate, whether a layer's disk
//! storing would outlast the wire. A pull's own rate is trusted only after
//! its first 16 MiB (`nvtier_policy::lass::streamed::wire_rate`); before
//! that the registry's learned rate is used. Each pull of 8 MiB or more is
//! one sample (its downloaded bytes over the time from its first download's
//! start to its last byte), blended as above, in `STATE/link-rates.json`
//! by registry.

use super::Store;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Weight of the newest sample.
const ALPHA: f64 = 0.3;
/// Samples below these are noise (a small layer is mostly fixed costs).
const MIN_BYTES: u64 = 4 << 20;
const MIN_BUSY: Duration = Duration::from_millis(20);

/// The learned estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoreRate {
    /// Compressed bytes per second.
    pub bytes_per_s: u64,
    pub samples: u64,
}

/// The weighted mean of `old` and a new sample.
pub fn blend(old: Option<StoreRate>, bytes: u64, busy: Duration) -> Option<StoreRate> {
    if bytes < MIN_BYTES || busy < MIN_BUSY {
        return old;
    }
    let sample = bytes as f64 / busy.as_secs_f64();
    Some(match old {
        None => StoreRate {
            bytes_per_s: sample as u64,
            samples: 1,
        },
        Some(o) => StoreRate {
            bytes_per_s: (ALPHA * sample + (1.0 - ALPHA) * o.bytes_per_s as f64) as u64,
            samples: o.samples + 1,
        },
    })
}

/// Pulls below this are not a sample of the link.
const MIN_LINK_BYTES: u64 = 8 << 20;

impl Store {
    fn link_rates_path(&self) -> PathBuf {
        self.state().join("link-rates.json")
    }

    fn link_rates(&self) -> std::collections::BTreeMap<String, StoreRate> {
        super::meta::read_json(&self.link_rates_path())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// The network rate learned for `registry`, bytes per second.
    pub fn learned_link_rate(&self, registry: &str) -> Option<StoreRate> {
        self.link_rates()
            .get(registry)
            .copied()
            .filter(|r| r.bytes_per_s > 0)
    }

    /// Add a sample of `registry`'s rate: a pull that downloaded `bytes` in
    /// `took` (first download start to last byte).
    pub fn record_link_sample(&self, registry: &str, bytes: u64, took: Duration) -> Result<()> {
        if bytes < MIN_LINK_BYTES {
            return Ok(());
        }
        let mut all = self.link_rates();
        let old = all.get(registry).copied();
        let Some(new) = blend(old, bytes, took) else {
            return Ok(());
        };
        all.insert(registry.to_string(), new);
        let json = serde_json::to_vec_pretty(&all)
            .map_err(|e| crate::error::Error::Other(e.to_string()))?;
        crate::fsutil::write_atomic(&self.link_rates_path(), &json)?;
        tracing::debug!(
            registry,
            bytes,
            took_ms = took.as_millis() as u64,
            rate = new.bytes_per_s,
            "link rate"
        );
        Ok(())
    }

    fn disk_store_rate_path(&self) -> PathBuf {
        self.state().join("disk-store-rate.json")
    }

    /// The node's measured rate, if it has one.
    pub fn learned_disk_store_rate(&self) -> Option<StoreRate> {
        super::meta::read_json(&self.disk_store_rate_path())
            .ok()
            .flatten()
            .filter(|r: &StoreRate| r.bytes_per_s > 0)
    }

    /// The rate the LASS rule predicts with: learned, else configured.
    pub fn disk_store_rate(&self) -> u64 {
        self.learned_disk_store_rate()
            .map(|r| r.bytes_per_s)
            .unwrap_or(self.cfg.disk_store_rate)
    }

    /// Add a sample: a disk-tier layer of `bytes` compressed bytes whose
    /// extraction was busy for `busy`. Concurrent pulls may each lose the
    /// other's sample (it costs nothing).
    pub fn record_disk_store_sample(&self, bytes: u64, busy: Duration) -> Result<()> {
        let old = self.learned_disk_store_rate();
        let Some(new) = blend(old, bytes, busy) else {
            return Ok(());
        };
        if Some(new) == old {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&new)
            .map_err(|e| crate::error::Error::Other(e.to_string()))?;
        crate::fsutil::write_atomic(&self.disk_store_rate_path(), &json)?;
        tracing::debug!(
            bytes,
            busy_ms = busy.as_millis() as u64,
            rate = new.bytes_per_s,
            samples = new.samples,
            "disk store rate"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_instant_samples_are_ignored() {
        assert_eq!(blend(None, MIN_BYTES - 1, Duration::from_secs(1)), None);
        assert_eq!(blend(None, 64 << 20, Duration::from_millis(5)), None);
        let r = Some(StoreRate {
            bytes_per_s: 10,
            samples: 3,
        });
        assert_eq!(blend(r, 1, Duration::from_secs(1)), r);
    }

    #[test]
    fn the_first_sample_is_taken_and_later_ones_blended() {
        let a = blend(None, 100 << 20, Duration::from_secs(2)).expect("a sample");
        assert_eq!(
            a,
            StoreRate {
                bytes_per_s: 50 << 20,
                samples: 1
            }
        );
        let b = blend(Some(a), 10 << 20, Duration::from_secs(1)).expect("a sample");
        assert_eq!(b.samples, 2);
        let want = (0.3 * (10u64 << 20) as f64 + 0.7 * (50u64 << 20) as f64) as u64;
        assert_eq!(b.bytes_per_s, want);
        // Always between the old estimate and the sample.
        assert!(b.bytes_per_s > 10 << 20 && b.bytes_per_s < 50 << 20);
    }

    #[test]
    fn a_store_learns_and_keeps_its_rate() {
        let (_d, store) = crate::testutil::temp_store("1M");
        assert_eq!(store.learned_disk_store_rate(), None);
        assert_eq!(store.disk_store_rate(), store.cfg.disk_store_rate);
        store
            .record_disk_store_sample(40 << 20, Duration::from_secs(1))
            .expect("record");
        assert_eq!(store.disk_store_rate(), 40 << 20);
        store
            .record_disk_store_sample(1, Duration::from_secs(1))
            .expect("ignored");
        assert_eq!(
            store.learned_disk_store_rate(),
            Some(StoreRate {
                bytes_per_s: 40 << 20,
                samples: 1
            })
        );
    }

    #[test]
    fn link_rates_are_kept_per_registry() {
        let (_d, store) = crate::testutil::temp_store("1M");
        assert_eq!(store.learned_link_rate("r.test:5000"), None);
        store
            .record_link_sample("r.test:5000", 1 << 20, Duration::from_secs(1))
            .expect("too small: ignored");
        assert_eq!(store.learned_link_rate("r.test:5000"), None);
        store
            .record_link_sample("r.test:5000", 100 << 20, Duration::from_secs(1))
            .expect("record");
        store
            .record_link_sample("other.test", 10 << 20, Duration::from_secs(1))
            .expect("record");
        assert_eq!(
            store
                .learned_link_rate("r.test:5000")
                .map(|r| r.bytes_per_s),
            Some(100 << 20)
        );
        assert_eq!(
            store.learned_link_rate("other.test").map(|r| r.bytes_per_s),
            Some(10 << 20)
        );
    }
}
