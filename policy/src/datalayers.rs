//! The order of a tiered mount's data-only layers.
//!
//! A tiered mount is `meta::D1::D2::…`: the image's metadata layer, whose
//! stubs carry `trusted.overlay.redirect=/path`, then data-only layers.
//! overlayfs resolves a redirect by looking the path up in `D1`, `D2`, … in
//! turn and takes the first match. Each layer L of the image contributes
//! its base (the layer as pulled; on the disk tier after migration) and,
//! when it has hot files, its hot data layer `hot(L)` (copies of some of
//! its files, on pmem).
//!
//! **Interleaved** (`hot(Ln), base(Ln), hot(Ln-1), base(Ln-1), …`, top-most
//! first) is always right: a path's first match is in its top-most layer.
//! But resolving a file of a lower layer then looks the path up in the
//! bases above it first, and a miss in a base on disk reads that base's
//! directory blocks: a cold start of a fully profiled image still reads
//! the disk tier.
//!
//! **Hot first** (`hot(Ln), …, hot(L1), base(Ln), …, base(L1)`) never
//! touches a base for a hot file. It is right exactly when no hot data
//! layer holds a path that a layer *above* it owns in this image (the
//! owner being the top-most layer that has the path as a regular file).
//! Hot sets are per layer and a layer can be shared by images with
//! different layers above it, so that has to be checked per image: `hot(L)`
//! may hold a file that image A reads from L while image B overwrites it
//! in a layer above L.

use std::collections::HashMap;

/// Layers of one image, bottom first (index = position in the chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLayer<'a> {
    /// Whether the layer has a hot data layer in this mount.
    pub has_hot: bool,
    /// Data paths (the redirect values, `/…`) of its hot files.
    pub hot_paths: Vec<&'a str>,
}

/// One data-only layer of the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// `hot(layers[i])`.
    Hot(usize),
    /// `base(layers[i])`.
    Base(usize),
}

/// Why hot first was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interleaved {
    /// No owner map for the image (built before nvtier recorded one).
    NoOwners,
    /// `hot(layers[layer])` holds `path`, owned by a layer above it
    /// (`owner`, `None` = the top layer or no layer of this image).
    Shadowed {
        layer: usize,
        path: String,
        owner: Option<usize>,
    },
}

/// Whether hot first is right for an image: `owners` maps every data path
/// owned by a layer other than the top-most one to its owner (index into
/// `layers`, bottom first); paths it lacks are owned by the top layer (or
/// are not files of the image).
pub fn hot_first_ok(
    layers: &[DataLayer<'_>],
    owners: Option<&HashMap<String, usize>>,
) -> Result<(), Interleaved> {
    let top = layers.len().saturating_sub(1);
    // Only hot layers below the top can be shadowed.
    let below: Vec<usize> = (0..top)
        .filter(|&i| layers[i].has_hot && !layers[i].hot_paths.is_empty())
        .collect();
    if below.is_empty() {
        return Ok(());
    }
    let Some(owners) = owners else {
        return Err(Interleaved::NoOwners);
    };
    for i in below {
        for p in &layers[i].hot_paths {
            let owner = owners.get(*p).copied();
            if owner != Some(i) {
                return Err(Interleaved::Shadowed {
                    layer: i,
                    path: (*p).to_string(),
                    owner,
                });
            }
        }
    }
    Ok(())
}

/// The data-only layers of a tiered mount, in mount order (top-most first).
pub fn order(layers: &[DataLayer<'_>], hot_first: bool) -> Vec<Data> {
    let n = layers.len();
    let mut out = Vec::with_capacity(2 * n);
    if hot_first {
        out.extend((0..n).rev().filter(|&i| layers[i].has_hot).map(Data::Hot));
        out.extend((0..n).rev().map(Data::Base));
    } else {
        for i in (0..n).rev() {
            if layers[i].has_hot {
                out.push(Data::Hot(i));
            }
            out.push(Data::Base(i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(paths: &[&'static str]) -> DataLayer<'static> {
        DataLayer {
            has_hot: !paths.is_empty(),
            hot_paths: paths.to_vec(),
        }
    }

    #[test]
    fn interleaved_and_hot_first_orders() {
        let l = [layer(&["/a"]), layer(&[]), layer(&["/c"])];
        use Data::*;
        assert_eq!(
            order(&l, false),
            vec![Hot(2), Base(2), Base(1), Hot(0), Base(0)]
        );
        assert_eq!(
            order(&l, true),
            vec![Hot(2), Hot(0), Base(2), Base(1), Base(0)]
        );
        assert!(order(&[], true).is_empty());
    }

    #[test]
    fn top_layer_hot_files_never_need_owners() {
        let l = [layer(&[]), layer(&["/x", "/y"])];
        assert_eq!(hot_first_ok(&l, None), Ok(()));
        let l = [layer(&["/x"])];
        assert_eq!(hot_first_ok(&l, None), Ok(()));
        assert_eq!(hot_first_ok(&[], None), Ok(()));
    }

    #[test]
    fn lower_hot_files_need_an_owner_map() {
        let l = [layer(&["/x"]), layer(&[])];
        assert_eq!(hot_first_ok(&l, None), Err(Interleaved::NoOwners));
        let owners: HashMap<String, usize> = [("/x".to_string(), 0)].into();
        assert_eq!(hot_first_ok(&l, Some(&owners)), Ok(()));
    }

    #[test]
    fn a_hot_file_overwritten_above_forbids_hot_first() {
        // /x is hot in layer 0 (another image read it there), but this
        // image's layer 1 has its own /x.
        let l = [layer(&["/x"]), layer(&["/y"]), layer(&[])];
        let owners: HashMap<String, usize> = [("/x".to_string(), 1), ("/y".to_string(), 1)].into();
        assert_eq!(
            hot_first_ok(&l, Some(&owners)),
            Err(Interleaved::Shadowed {
                layer: 0,
                path: "/x".into(),
                owner: Some(1)
            })
        );
        // Owned by the top layer: absent from the map.
        let owners: HashMap<String, usize> = [("/y".to_string(), 1)].into();
        assert_eq!(
            hot_first_ok(&l, Some(&owners)),
            Err(Interleaved::Shadowed {
                layer: 0,
                path: "/x".into(),
                owner: None
            })
        );
    }

    /// Exhaustive over small images: for every way 3 layers can hold 2
    /// paths and every hot subset of what each layer holds, whenever
    /// `hot_first_ok` accepts, the first data layer holding each path of
    /// the merged view in hot-first order is the same layer content as in
    /// the interleaved order (the path's top-most layer).
    #[test]
    fn hot_first_is_accepted_only_when_it_resolves_like_interleaved() {
        const PATHS: [&str; 2] = ["/p", "/q"];
        const N: usize = 3;
        // has[i] bit j: layer i holds PATHS[j] as a file (in its base).
        let mut checked = 0;
        let mut accepted = 0;
        for has_bits in 0u32..(1 << (N * PATHS.len())) {
            let has = |i: usize, j: usize| has_bits & (1 << (i * PATHS.len() + j)) != 0;
            // hot[i] ⊆ has[i]
            for hot_bits in 0u32..(1 << (N * PATHS.len())) {
                if hot_bits & !has_bits != 0 {
                    continue;
                }
                let hot = |i: usize, j: usize| hot_bits & (1 << (i * PATHS.len() + j)) != 0;
                let layers: Vec<DataLayer<'_>> = (0..N)
                    .map(|i| {
                        let ps: Vec<&str> = (0..PATHS.len())
                            .filter(|&j| hot(i, j))
                            .map(|j| PATHS[j])
                            .collect();
                        DataLayer {
                            has_hot: !ps.is_empty(),
                            hot_paths: ps,
                        }
                    })
                    .collect();
                let owner = |j: usize| (0..N).rev().find(|&i| has(i, j));
                let owners: HashMap<String, usize> = (0..PATHS.len())
                    .filter_map(|j| {
                        owner(j)
                            .filter(|&o| o != N - 1)
                            .map(|o| (PATHS[j].to_string(), o))
                    })
                    .collect();
                let resolve = |order: &[Data], j: usize| {
                    order.iter().copied().find(|d| match *d {
                        Data::Hot(i) => hot(i, j),
                        Data::Base(i) => has(i, j),
                    })
                };
                let layer_of = |d: Option<Data>| {
                    d.map(|d| match d {
                        Data::Hot(i) | Data::Base(i) => i,
                    })
                };
                checked += 1;
                if hot_first_ok(&layers, Some(&owners)).is_ok() {
                    accepted += 1;
                    let hf = order(&layers, true);
                    let il = order(&layers, false);
                    for (j, path) in PATHS.iter().enumerate() {
                        if owner(j).is_none() {
                            continue;
                        }
                        assert_eq!(
                            layer_of(resolve(&hf, j)),
                            layer_of(resolve(&il, j)),
                            "has {has_bits:b} hot {hot_bits:b} path {path}"
                        );
                        assert_eq!(layer_of(resolve(&il, j)), owner(j));
                    }
                    // And a hot file never waits behind a base.
                    for j in 0..PATHS.len() {
                        if (0..N).any(|i| hot(i, j)) {
                            assert!(matches!(resolve(&hf, j), Some(Data::Hot(_))));
                        }
                    }
                }
            }
        }
        // Not vacuous: both outcomes occur.
        assert!(
            accepted > 0 && accepted < checked,
            "{accepted} of {checked}"
        );
    }
}
