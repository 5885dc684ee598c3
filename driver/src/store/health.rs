//! Loss detection: does every record's content still exist on its tier?
//!
//! [`scan`] checks each tier's identity ([`super::identity`]) and that every
//! layer, hot generation, metadata layer and snapshot directory the records
//! place on a tier is there. Layers are the only content an image cannot
//! mount without: an image with a lost or unavailable layer is *damaged*
//! until it is repaired (re-fetched, see `crate::repair`). Hot copies and
//! metadata layers are rebuilt from the layer bases: [`forget_lost_tiering`]
//! drops their records, mounts fall back to whole layers meanwhile, and the
//! next migration builds them again.

use super::hot::{gen_dir, layer_record_path, meta_dir, owners_path, LayerPlacement, MetaRecord};
use super::identity::{inspect, TierState};
use super::{digest_hex, meta_read_all, LayerMeta, Store};
use crate::error::{Error, IoContext, Result};
use crate::tier::TierKind;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What one tier lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// chainIDs of layers whose directory is gone.
    pub layers: Vec<String>,
    /// (chainID, generation) of hot generations whose copy is gone.
    pub hot: Vec<(String, u64)>,
    /// Manifest digests of metadata layers that are gone.
    pub meta: Vec<String>,
    /// Keys of containerd snapshots whose own directory is gone.
    pub snapshots: Vec<String>,
}

impl Lost {
    /// Nothing lost that a repair can restore (lost snapshots need the
    /// engine).
    pub fn is_empty_but_snapshots(&self) -> bool {
        self.layers.is_empty() && self.hot.is_empty() && self.meta.is_empty()
    }
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
            && self.hot.is_empty()
            && self.meta.is_empty()
            && self.snapshots.is_empty()
    }
}

/// One tier's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierHealth {
    pub tier: TierKind,
    #[serde(flatten)]
    pub state: TierState,
    /// Content the records place on the tier that is not there. For a
    /// missing tier: what is unavailable until it is back.
    pub lost: Lost,
}

/// The store's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub pmem: TierHealth,
    pub disk: TierHealth,
    /// Images that cannot be mounted until repaired, with the reasons.
    pub damaged: BTreeMap<String, Vec<String>>,
}

impl Health {
    pub fn tier(&self, k: TierKind) -> &TierHealth {
        match k {
            TierKind::Pmem => &self.pmem,
            TierKind::Disk => &self.disk,
        }
    }
    /// Nothing lost, nothing missing.
    pub fn is_healthy(&self) -> bool {
        [&self.pmem, &self.disk]
            .iter()
            .all(|t| t.lost.is_empty() && !t.state.is_missing())
    }
}

fn short(d: &str) -> &str {
    d.strip_prefix("sha256:")
        .and_then(|h| h.get(..12))
        .unwrap_or(d)
}

impl Store {
    /// Whether a stored layer's directory is there, on an available tier.
    pub fn layer_intact(&self, m: &LayerMeta) -> Result<bool> {
        if m.tier == TierKind::Pmem && !self.pmem_available() {
            return Ok(false);
        }
        Ok(self.layer_dir(m)?.is_dir())
    }

    /// Why a layer cannot be mounted, naming the images that use it and
    /// the fix; `Ok(())` when it can.
    pub fn check_layer(&self, m: &LayerMeta) -> Result<()> {
        if self.layer_intact(m)? {
            return Ok(());
        }
        let images: Vec<String> = self
            .images()?
            .into_iter()
            .filter(|i| i.chain_ids.contains(&m.chain_id))
            .map(|i| i.name)
            .collect();
        let what = if m.tier == TierKind::Pmem && !self.pmem_available() {
            format!(
                "layer {} is on the pmem tier, which is missing ({})",
                short(&m.chain_id),
                inspect(self.state(), TierKind::Pmem, &self.pmem.root)
            )
        } else {
            format!(
                "layer {} was lost from the {} tier ({})",
                short(&m.chain_id),
                m.tier,
                self.layer_dir(m)?.display()
            )
        };
        Err(Error::Damaged {
            image: if images.is_empty() {
                "(no image)".into()
            } else {
                images.join(", ")
            },
            what,
        })
    }
}

/// Check both tiers and every record that places content on them. Reads
/// only; nothing is changed.
pub fn scan(store: &Store) -> Result<Health> {
    let pstate = inspect(store.state(), TierKind::Pmem, &store.pmem.root);
    let dstate = inspect(store.state(), TierKind::Disk, &store.disk.root);
    let pmem_ok = !pstate.is_missing();
    let mut pmem = TierHealth {
        tier: TierKind::Pmem,
        state: pstate,
        lost: Lost::default(),
    };
    let mut disk = TierHealth {
        tier: TierKind::Disk,
        state: dstate,
        lost: Lost::default(),
    };
    let mut lost_layers: BTreeMap<String, TierKind> = BTreeMap::new();
    for l in store.layers()? {
        let gone = match l.tier {
            TierKind::Pmem if !pmem_ok => true,
            _ => !store.layer_dir(&l)?.is_dir(),
        };
        if gone {
            lost_layers.insert(l.chain_id.clone(), l.tier);
            match l.tier {
                TierKind::Pmem => pmem.lost.layers.push(l.chain_id),
                TierKind::Disk => disk.lost.layers.push(l.chain_id),
            }
        }
    }
    let hot_dir = store.state().join("hot");
    if hot_dir.is_dir() {
        for p in meta_read_all::<LayerPlacement>(&hot_dir)? {
            for n in p.generations.keys() {
                if !pmem_ok || !gen_dir(store, &p.chain_id, *n)?.is_dir() {
                    pmem.lost.hot.push((p.chain_id.clone(), *n));
                }
            }
        }
    }
    let meta_rec_dir = store.state().join("meta");
    if meta_rec_dir.is_dir() {
        for m in meta_read_all::<MetaRecord>(&meta_rec_dir)? {
            if !pmem_ok || !meta_dir(store, &m.manifest_digest)?.is_dir() {
                pmem.lost.meta.push(m.manifest_digest);
            }
        }
    }
    for s in store.snapshots()? {
        // Snapshots backed by a store layer live in the layer.
        if s.layer.is_some() {
            continue;
        }
        let gone = match s.tier {
            TierKind::Pmem if !pmem_ok => true,
            t => !store.tier(t).root.join("snapshots").join(&s.id).is_dir(),
        };
        if gone {
            match s.tier {
                TierKind::Pmem => pmem.lost.snapshots.push(s.key),
                TierKind::Disk => disk.lost.snapshots.push(s.key),
            }
        }
    }
    let mut damaged: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let stored: BTreeSet<String> = store.layers()?.into_iter().map(|l| l.chain_id).collect();
    for i in store.images()? {
        let reasons: Vec<String> = i
            .chain_ids
            .iter()
            .filter_map(|c| match lost_layers.get(c) {
                Some(TierKind::Pmem) if !pmem_ok => {
                    Some(format!("layer {} is on the missing pmem tier", short(c)))
                }
                Some(t) => Some(format!("layer {} lost from the {t} tier", short(c))),
                None if !stored.contains(c) => {
                    Some(format!("layer {} is not in the store", short(c)))
                }
                None => None,
            })
            .collect();
        if !reasons.is_empty() {
            damaged.insert(i.name, reasons);
        }
    }
    Ok(Health {
        pmem,
        disk,
        damaged,
    })
}

/// What [`forget_lost_tiering`] dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Forgotten {
    pub hot_generations: usize,
    pub meta_layers: usize,
}

/// Drop the records of hot generations and metadata layers whose copies
/// are gone from an available pmem tier, so mounts use whole layers and the
/// next migration builds them again. Nothing is dropped while the pmem tier
/// is missing (it may come back with its content).
pub fn forget_lost_tiering(store: &Store) -> Result<Forgotten> {
    let mut out = Forgotten::default();
    if !store.pmem_available() {
        return Ok(out);
    }
    let _l = store.lock_store()?;
    let hot_dir = store.state().join("hot");
    if hot_dir.is_dir() {
        for mut p in meta_read_all::<LayerPlacement>(&hot_dir)? {
            let before = p.generations.len();
            let mut keep = BTreeMap::new();
            for (n, g) in std::mem::take(&mut p.generations) {
                if gen_dir(store, &p.chain_id, n)?.is_dir() {
                    keep.insert(n, g);
                }
            }
            if keep.len() == before {
                p.generations = keep;
                continue;
            }
            out.hot_generations += before - keep.len();
            if !keep.contains_key(&p.current) {
                p.current = 0;
            }
            p.generations = keep;
            let path = layer_record_path(store, &p.chain_id)?;
            if p.generations.is_empty() && p.current == 0 {
                std::fs::remove_file(&path).ctx("remove hot record", &path)?;
            } else {
                super::hot::put_layer_placement(store, &p)?;
            }
        }
    }
    let meta_rec_dir = store.state().join("meta");
    if meta_rec_dir.is_dir() {
        for m in meta_read_all::<MetaRecord>(&meta_rec_dir)? {
            if meta_dir(store, &m.manifest_digest)?.is_dir() {
                continue;
            }
            out.meta_layers += 1;
            let _ = std::fs::remove_file(owners_path(store, &m.manifest_digest)?);
            let p = super::hot::meta_record_path(store, &m.manifest_digest)?;
            std::fs::remove_file(&p).ctx("remove metadata-layer record", &p)?;
        }
    }
    if out != Forgotten::default() {
        tracing::warn!(
            hot_generations = out.hot_generations,
            meta_layers = out.meta_layers,
            "pmem copies lost: mounts use the whole layers until the next migration rebuilds them"
        );
    }
    Ok(out)
}

/// Remove the records of layers whose directory was lost, under their
/// chain locks, so a pull stores them again. Layers on a missing pmem tier
/// are kept unless `include_missing` (an explicit repair: they are stored
/// again on an available tier). Returns the chainIDs dropped.
pub fn forget_lost_layers(
    store: &Store,
    chains: &BTreeSet<String>,
    include_missing: bool,
) -> Result<Vec<String>> {
    let pmem_ok = store.pmem_available();
    let mut out = Vec::new();
    for c in chains {
        let _cl = store.lock_chain(c)?;
        let Some(m) = store.layer(c)? else {
            continue;
        };
        if store.layer_intact(&m)? {
            continue;
        }
        if m.tier == TierKind::Pmem && !pmem_ok && !include_missing {
            continue;
        }
        let p = store
            .layers_meta_dir()
            .join(format!("{}.json", digest_hex(c)?));
        std::fs::remove_file(&p).ctx("remove lost layer's metadata", &p)?;
        // Snapshots of the layer point at it through their short links:
        // re-created when the layer is back (`ensure_link`).
        tracing::warn!(chain = %c, tier = %m.tier, "layer lost: it will be fetched again");
        out.push(c.clone());
    }
    Ok(out)
}
