//! Hot-file placement planner (N-Docker HBCSA, "dynamic" half).
//!
//! nvtier keeps, for each *tiered* image, its flattened directory tree (the
//! image's metadata layer) and the data of its hot files on pmem; everything
//! else stays on disk. Given the hot profiles of every image on the node and
//! the pmem budget, [`plan`] computes the target placement; [`diff`] turns it
//! into moves against what is on pmem now (`nvtier migrate --dry-run`), and
//! [`miss_promotions`] folds the files a profiled cold start still read from
//! disk back into the profile for the next round.
//!
//! # Rule set
//! 1. **Heat.** An image's heat is `starts × 2^(−age / half_life)` with
//!    `age = now − last_start` (0 when `last_start` is in the future) and
//!    `half_life = PlanParams::half_life_ms` (default 24 h; 0 is taken as
//!    1 ms). Images are ranked hottest first; equal heat goes to the more
//!    recent `last_start`, then to more `starts`. An image never started
//!    (`starts == 0` or `last_start_ms == 0`) has no heat and ranks after
//!    every started image. The last tie-breaker is the image name, so the
//!    plan does not depend on the order of the input (names must be unique).
//! 2. **Metadata first, then files.** Images are walked hottest first. An
//!    image is tiered only if its metadata layer fits in what is left of the
//!    budget; an image that does not fit is not tiered and gets no hot files,
//!    but colder (smaller) images may still fit. A tiered image then takes
//!    its hot files in profile order (= first-access order; promoted misses
//!    come last). A file shared by several images (same [`FileKey`]) is
//!    charged once, to the first image that selects it; later tiered images
//!    get it for free. Its size is the largest `bytes` any profile gives for
//!    it, so the charge is never an underestimate. A key repeated within one
//!    profile counts at its first position only.
//! 3. **The coldest data is left out.** Because of rules 1 and 2, a short
//!    budget cuts the later-accessed files of the colder images first, then
//!    whole colder images. It is never an error: a zero budget gives a plan
//!    with nothing tiered, and `used <= budget` always holds.
//! 4. **Skip, don't stop.** A file larger than what is left is skipped (it
//!    goes to `cut`), and the smaller files after it may still go in
//!    (first fit). The files of a profile are read independently, in any
//!    order, and on disk every missed file costs at least one seek whatever
//!    its size; so filling the budget with as many hot files as fit removes
//!    more of the cold start's disk reads than stopping at the first misfit,
//!    which would leave budget unused. The price is that the pmem set of an
//!    image is no longer a prefix of its profile, which nothing relies on.
//!
//! After a plan, nothing more fits: every cut file of a tiered image is
//! larger than `budget − used`, and so is the metadata layer of every image
//! that is not tiered.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// One file of one layer: the unit that is placed on pmem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileKey {
    /// ChainID of the layer that holds the file.
    pub layer: String,
    /// Path relative to the layer root (no leading `/`).
    pub path: String,
}

/// A hot file of an image's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotFile {
    pub key: FileKey,
    /// Data bytes the file needs on pmem.
    pub bytes: u64,
    /// When the profiled cold start first read it (ms since the start).
    pub first_access_ms: f64,
}

/// What the planner knows about one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProfile {
    /// Image name or id; unique on the node.
    pub image: String,
    /// Pmem bytes the image's metadata layer needs.
    pub meta_bytes: u64,
    /// Cold starts seen.
    pub starts: u32,
    /// Last cold start, unix ms; 0 = never.
    pub last_start_ms: u64,
    /// Hot files in profile order (first-access order).
    pub hot: Vec<HotFile>,
}

/// Tunables of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanParams {
    /// Age at which a start counts half (rule 1).
    pub half_life_ms: u64,
}

impl Default for PlanParams {
    fn default() -> Self {
        PlanParams {
            half_life_ms: 24 * 3600 * 1000,
        }
    }
}

/// The target placement of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagePlan {
    pub image: String,
    /// Heat (rule 1); `None` for an image never started.
    pub heat: Option<f64>,
    /// Its metadata layer is on pmem.
    pub tiered: bool,
    pub meta_bytes: u64,
    /// Hot files on pmem for this image, in profile order (empty when not
    /// tiered). `bytes` is the size charged (rule 2).
    pub hot: Vec<HotFile>,
    /// Bytes of `hot`, shared files included.
    pub hot_bytes: u64,
    /// Bytes of `hot` charged to this image (shared files charged to a
    /// hotter image excluded).
    pub charged_bytes: u64,
    /// The image's hot files it does not get, in profile order: for a tiered
    /// image, those that did not fit (all on disk); for an image that is not
    /// tiered, its whole profile.
    pub cut: Vec<HotFile>,
}

/// The target placement of the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub budget: u64,
    /// Every image, hottest first.
    pub images: Vec<ImagePlan>,
    /// Metadata layers on pmem.
    pub meta_bytes: u64,
    /// Hot file data on pmem, each shared file counted once.
    pub hot_bytes: u64,
    /// `meta_bytes + hot_bytes`, never more than `budget`.
    pub used: u64,
}

impl Plan {
    /// The plan of one image.
    pub fn image(&self, name: &str) -> Option<&ImagePlan> {
        self.images.iter().find(|i| i.image == name)
    }

    /// Every file the plan puts on pmem.
    pub fn pmem_files(&self) -> BTreeSet<&FileKey> {
        self.images
            .iter()
            .flat_map(|i| i.hot.iter().map(|f| &f.key))
            .collect()
    }
}

/// Heat of an image (rule 1); `None` when it was never started.
pub fn heat(img: &ImageProfile, now_ms: u64, params: &PlanParams) -> Option<f64> {
    if img.starts == 0 || img.last_start_ms == 0 {
        return None;
    }
    let age = now_ms.saturating_sub(img.last_start_ms) as f64;
    let half = params.half_life_ms.max(1) as f64;
    Some(f64::from(img.starts) * (-age / half).exp2())
}

fn rank(a: &(Option<f64>, &ImageProfile), b: &(Option<f64>, &ImageProfile)) -> Ordering {
    let by_heat = match (a.0, b.0) {
        (Some(x), Some(y)) => y
            .total_cmp(&x)
            .then(b.1.last_start_ms.cmp(&a.1.last_start_ms))
            .then(b.1.starts.cmp(&a.1.starts)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_heat.then_with(|| a.1.image.cmp(&b.1.image))
}

/// Compute the target placement. See the module documentation for the rules.
pub fn plan(images: &[ImageProfile], budget: u64, now_ms: u64, params: &PlanParams) -> Plan {
    let mut size: BTreeMap<&FileKey, u64> = BTreeMap::new();
    for f in images.iter().flat_map(|i| &i.hot) {
        let s = size.entry(&f.key).or_default();
        *s = (*s).max(f.bytes);
    }
    let mut order: Vec<_> = images
        .iter()
        .map(|i| (heat(i, now_ms, params), i))
        .collect();
    order.sort_by(rank);

    let mut left = budget;
    let mut charged: BTreeSet<&FileKey> = BTreeSet::new();
    let mut out = Plan {
        budget,
        images: Vec::with_capacity(order.len()),
        meta_bytes: 0,
        hot_bytes: 0,
        used: 0,
    };
    for (heat, img) in order {
        let mut seen = BTreeSet::new();
        let profile = img.hot.iter().filter(|f| seen.insert(&f.key));
        let sized = |f: &HotFile| HotFile {
            bytes: size[&f.key],
            ..f.clone()
        };
        let tiered = img.meta_bytes <= left;
        let mut p = ImagePlan {
            image: img.image.clone(),
            heat,
            tiered,
            meta_bytes: img.meta_bytes,
            hot: Vec::new(),
            hot_bytes: 0,
            charged_bytes: 0,
            cut: Vec::new(),
        };
        if tiered {
            left -= img.meta_bytes;
            out.meta_bytes += img.meta_bytes;
        }
        for f in profile {
            let bytes = size[&f.key];
            let free = charged.contains(&f.key);
            if tiered && (free || bytes <= left) {
                if !free {
                    left -= bytes;
                    charged.insert(&f.key);
                    p.charged_bytes += bytes;
                }
                p.hot_bytes = p.hot_bytes.saturating_add(bytes);
                p.hot.push(sized(f));
            } else {
                p.cut.push(sized(f));
            }
        }
        out.hot_bytes += p.charged_bytes;
        out.images.push(p);
    }
    out.used = budget - left;
    debug_assert_eq!(out.used, out.meta_bytes + out.hot_bytes);
    out
}

/// What one image has on pmem now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageState {
    /// Its metadata layer is on pmem.
    pub tiered: bool,
    /// Files on pmem on its behalf.
    pub on_pmem: BTreeSet<FileKey>,
}

/// What is on pmem now, per image name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentPlacement {
    pub images: BTreeMap<String, ImageState>,
}

/// What happens to an image's metadata layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaMove {
    Keep,
    Promote,
    Demote,
}

/// The moves of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMoves {
    pub image: String,
    pub meta: MetaMove,
    /// Files to copy to pmem, in profile order.
    pub promote: Vec<HotFile>,
    /// Files to write back to disk, in key order.
    pub demote: Vec<FileKey>,
}

impl ImageMoves {
    pub fn is_empty(&self) -> bool {
        self.meta == MetaMove::Keep && self.promote.is_empty() && self.demote.is_empty()
    }
}

/// The moves from the current placement to a plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Moves {
    /// Images with something to do: the plan's images hottest first, then
    /// images that are no longer planned, by name.
    pub images: Vec<ImageMoves>,
}

impl Moves {
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Moves that turn `current` into `target`. A file is physically on pmem
/// once, whatever the number of images that use it, so each file move is
/// listed exactly once: a promotion under the image the plan charges for it,
/// a demotion under the first image (by name) that holds it now. A file
/// that stays on pmem is not moved even if the image holding it changes.
/// Images absent from the plan lose their metadata layer and files.
pub fn diff(current: &CurrentPlacement, target: &Plan) -> Moves {
    let now: BTreeSet<&FileKey> = current.images.values().flat_map(|s| &s.on_pmem).collect();
    let want = target.pmem_files();
    let meta = |was: bool, will: bool| match (was, will) {
        (false, true) => MetaMove::Promote,
        (true, false) => MetaMove::Demote,
        _ => MetaMove::Keep,
    };
    let mut out = Vec::new();
    let mut at: BTreeMap<&str, usize> = BTreeMap::new();
    let mut promoted = BTreeSet::new();
    for ip in &target.images {
        let was = current.images.get(&ip.image).is_some_and(|s| s.tiered);
        let promote = ip
            .hot
            .iter()
            .filter(|f| !now.contains(&f.key) && promoted.insert(&f.key));
        at.entry(&ip.image).or_insert(out.len());
        out.push(ImageMoves {
            image: ip.image.clone(),
            meta: meta(was, ip.tiered),
            promote: promote.cloned().collect(),
            demote: Vec::new(),
        });
    }
    let mut demoted = BTreeSet::new();
    for (name, s) in &current.images {
        let i = *at.entry(name).or_insert_with(|| {
            out.push(ImageMoves {
                image: name.clone(),
                meta: meta(s.tiered, false),
                promote: Vec::new(),
                demote: Vec::new(),
            });
            out.len() - 1
        });
        let gone = s
            .on_pmem
            .iter()
            .filter(|k| !want.contains(k) && demoted.insert(*k));
        out[i].demote.extend(gone.cloned());
    }
    out.retain(|m| !m.is_empty());
    Moves { images: out }
}

/// Close the loop: `misses` are the files a profiled cold start of
/// `profile.image` still read from disk (tracer miss mode). Those not yet in
/// the profile are appended at its end, in first-access order (each key
/// once); files already in it (cut for lack of budget, or not migrated yet)
/// change nothing. Plan again with the result to promote them.
pub fn miss_promotions(profile: &ImageProfile, misses: &[HotFile]) -> ImageProfile {
    let mut out = profile.clone();
    let mut seen: BTreeSet<&FileKey> = profile.hot.iter().map(|f| &f.key).collect();
    let mut misses: Vec<&HotFile> = misses.iter().collect();
    misses.sort_by(|a, b| a.first_access_ms.total_cmp(&b.first_access_ms));
    for f in misses {
        if seen.insert(&f.key) {
            out.hot.push(f.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600 * 1000;
    const NOW: u64 = 1_700_000_000_000;
    const NEVER: u64 = u64::MAX;

    fn key(p: &str) -> FileKey {
        let layer = format!("sha256:{}", &p[..1]);
        FileKey {
            layer,
            path: p.into(),
        }
    }

    fn hf(p: &str, bytes: u64, t: f64) -> HotFile {
        HotFile {
            key: key(p),
            bytes,
            first_access_ms: t,
        }
    }

    /// An image started `starts` times, last `ago` ms before NOW.
    fn img(name: &str, meta: u64, starts: u32, ago: u64, f: &[(&str, u64)]) -> ImageProfile {
        ImageProfile {
            image: name.into(),
            meta_bytes: meta,
            starts,
            last_start_ms: if ago == NEVER { 0 } else { NOW - ago },
            hot: f
                .iter()
                .zip(0..)
                .map(|(&(p, b), t)| hf(p, b, t.into()))
                .collect(),
        }
    }

    fn run(images: &[ImageProfile], budget: u64) -> Plan {
        plan(images, budget, NOW, &PlanParams::default())
    }

    fn order(p: &Plan) -> Vec<&str> {
        p.images.iter().map(|i| i.image.as_str()).collect()
    }

    fn paths(f: &[HotFile]) -> Vec<&str> {
        f.iter().map(|f| f.key.path.as_str()).collect()
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// 1-5 images over a pool of 12 files (so images share some), with
    /// sizes 1-20, metadata 0-14, 0-3 starts, never / now / 1 h / 30 h ago.
    fn random_images(r: &mut Rng) -> Vec<ImageProfile> {
        let pool: Vec<(String, u64)> = (0..12u64)
            .map(|i| {
                (
                    format!("{}f{i}", ["a", "b", "c"][i as usize % 3]),
                    1 + i * 7 % 20,
                )
            })
            .collect();
        (0..1 + r.next(5))
            .map(|i| {
                let files: Vec<(&str, u64)> = (0..r.next(7))
                    .map(|_| &pool[r.next(12) as usize])
                    .map(|(p, b)| (p.as_str(), *b))
                    .collect();
                let ago = [NEVER, 0, H, 30 * H][r.next(4) as usize];
                img(
                    &format!("img{i}"),
                    r.next(15),
                    r.next(4) as u32,
                    ago,
                    &files,
                )
            })
            .collect()
    }

    /// The invariants of every plan.
    fn check(images: &[ImageProfile], p: &Plan) {
        let sum = |it: &mut dyn Iterator<Item = u64>| it.sum::<u64>();
        assert!(p.used <= p.budget, "{p:?}");
        assert_eq!(p.used, p.meta_bytes + p.hot_bytes);
        let tiered = p.images.iter().filter(|i| i.tiered);
        assert_eq!(p.meta_bytes, sum(&mut tiered.map(|i| i.meta_bytes)));
        assert_eq!(
            p.hot_bytes,
            sum(&mut p.images.iter().map(|i| i.charged_bytes))
        );
        let on = p.pmem_files();
        let mut sizes = BTreeMap::new();
        p.images.iter().flat_map(|i| &i.hot).for_each(|f| {
            sizes.insert(&f.key, f.bytes);
        });
        assert_eq!(p.hot_bytes, sum(&mut sizes.values().copied()));
        assert_eq!(on.len(), sizes.len());
        let left = p.budget - p.used;
        for ip in &p.images {
            let src = images.iter().find(|i| i.image == ip.image).unwrap();
            assert_eq!(ip.hot_bytes, sum(&mut ip.hot.iter().map(|f| f.bytes)));
            // hot and cut partition the profile, each in profile order.
            let mut seen = BTreeSet::new();
            let profile: Vec<&str> = paths(&src.hot)
                .into_iter()
                .filter(|p| seen.insert(*p))
                .collect();
            let (hot, cut) = (paths(&ip.hot), paths(&ip.cut));
            let (h, c): (Vec<&str>, Vec<&str>) = profile.iter().partition(|p| hot.contains(p));
            assert_eq!((hot, cut), (h, c));
            if ip.tiered {
                // Nothing more fits, and what is cut is really on disk.
                let really_cut = |f: &HotFile| f.bytes > left && !on.contains(&f.key);
                assert!(ip.cut.iter().all(really_cut), "{p:?}");
            } else {
                assert!(ip.meta_bytes > left && ip.hot.is_empty());
            }
        }
    }

    #[test]
    fn budget_never_exceeded_sweep() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let mut images = random_images(&mut r);
            let budget = r.next(120);
            let p = run(&images, budget);
            check(&images, &p);
            // Same input in another order: the same plan.
            images.reverse();
            assert_eq!(run(&images, budget), p);
            let k = r.next(images.len() as u64) as usize;
            images.rotate_left(k);
            assert_eq!(run(&images, budget), p);
        }
    }

    #[test]
    fn hottest_image_wins() {
        let a = img("a", 10, 1, H, &[("a1", 50)]);
        let b = img("b", 10, 5, H, &[("b1", 50)]);
        let p = run(&[a, b], 60);
        assert_eq!(order(&p), ["b", "a"]);
        assert!(p.images[0].tiered && !p.images[1].tiered);
        assert_eq!((paths(&p.images[0].hot), p.used), (vec!["b1"], 60));
    }

    #[test]
    fn recency_vs_frequency() {
        let often_old = img("often", 1, 10, 72 * H, &[]); // 10 / 8 = 1.25
        let once_new = img("once", 1, 1, H, &[]); // ~0.97
        let twice_new = img("twice", 1, 2, H, &[]); // ~1.94
        let p = run(&[often_old.clone(), once_new.clone(), twice_new], 0);
        assert_eq!(order(&p), ["twice", "often", "once"]);
        // A short half-life favours recency; a long one frequency.
        let hl = |h| PlanParams { half_life_ms: h };
        let both = [often_old, once_new];
        assert_eq!(order(&plan(&both, 0, NOW, &hl(H))), ["once", "often"]);
        assert_eq!(
            order(&plan(&both, 0, NOW, &hl(1000 * H))),
            ["often", "once"]
        );
        // half_life 0: heat underflows to 0, then recency, then frequency.
        let c = [
            img("x", 1, 9, 2 * H, &[]),
            img("y", 1, 1, H, &[]),
            img("z", 1, 5, H, &[]),
        ];
        assert_eq!(order(&plan(&c, 0, NOW, &hl(0))), ["z", "y", "x"]);
    }

    #[test]
    fn never_started_rank_last_and_ties_by_name() {
        let imgs = [
            img("n2", 1, 0, NEVER, &[("p1", 1)]),
            img("cold", 1, 1, 1000 * H, &[]),
            img("n1", 1, 3, NEVER, &[]),
            img("b", 1, 2, H, &[]),
            img("a", 1, 2, H, &[]),
        ];
        let p = run(&imgs, 100);
        assert_eq!(order(&p), ["a", "b", "cold", "n1", "n2"]);
        assert_eq!(p.images[3].heat, None);
        // A start in the future counts as now.
        let f = ImageProfile {
            last_start_ms: NOW + H,
            ..img("f", 1, 2, 0, &[])
        };
        assert_eq!(heat(&f, NOW, &PlanParams::default()), Some(2.0));
    }

    #[test]
    fn shared_file_charged_once() {
        let a = img("a", 5, 3, H, &[("x1", 10), ("a1", 4)]);
        let b = img("b", 5, 1, H, &[("a1", 4), ("x1", 10), ("b1", 3)]);
        let p = run(&[b, a], 27);
        assert_eq!(order(&p), ["a", "b"]);
        assert_eq!(p.images[0].charged_bytes, 14);
        assert_eq!(paths(&p.images[1].hot), ["a1", "x1", "b1"]);
        assert_eq!((p.images[1].hot_bytes, p.images[1].charged_bytes), (17, 3));
        assert_eq!((p.meta_bytes, p.hot_bytes, p.used), (10, 17, 27));
        // Disagreeing sizes: the largest is charged; a key repeated in one
        // profile counts once.
        let c = img("c", 0, 1, H, &[("x1", 30), ("x1", 1)]);
        let p = run(&[img("a", 0, 3, H, &[("x1", 10)]), c], 30);
        assert_eq!((p.hot_bytes, p.images[1].hot.len()), (30, 1));
    }

    #[test]
    fn metadata_first() {
        // The hot image's metadata does not fit: it gets nothing, not even
        // files that would fit; the colder, smaller image is tiered.
        let big = img("big", 50, 9, H, &[("f1", 5)]);
        let small = img("small", 10, 1, H, &[("s1", 5), ("s2", 30)]);
        let p = run(&[big, small], 40);
        assert_eq!(order(&p), ["big", "small"]);
        assert!(!p.images[0].tiered && p.images[0].hot.is_empty());
        assert_eq!(paths(&p.images[0].cut), ["f1"]);
        assert!(p.images[1].tiered);
        assert_eq!(
            (paths(&p.images[1].hot), paths(&p.images[1].cut)),
            (vec!["s1"], vec!["s2"])
        );
        assert_eq!(p.used, 15);
        // Metadata alone exactly fits: tiered, no files.
        let p = run(&[img("m", 10, 1, H, &[("m1", 1)])], 10);
        assert!(p.images[0].tiered && p.images[0].hot.is_empty());
    }

    #[test]
    fn zero_budget_and_empty_input() {
        let p = run(
            &[img("a", 1, 1, H, &[("a1", 1)]), img("b", 2, 0, NEVER, &[])],
            0,
        );
        assert!(p.images.iter().all(|i| !i.tiered && i.hot.is_empty()));
        assert_eq!((p.used, p.images[0].cut.len()), (0, 1));
        // Zero-byte metadata and files fit even then.
        let p = run(&[img("z", 0, 1, H, &[("z0", 0), ("z1", 1)])], 0);
        assert!(p.images[0].tiered);
        assert_eq!(paths(&p.images[0].hot), ["z0"]);
        let p = run(&[], 100);
        assert!(p.images.is_empty() && p.used == 0 && p.budget == 100);
    }

    #[test]
    fn file_larger_than_budget_is_skipped() {
        let a = img("a", 0, 1, H, &[("a1", 3), ("a2", 99), ("a3", 4), ("a4", 5)]);
        let p = run(&[a], 10);
        assert_eq!(paths(&p.images[0].hot), ["a1", "a3"]);
        assert_eq!(paths(&p.images[0].cut), ["a2", "a4"]);
        assert_eq!(p.used, 7);
    }

    #[test]
    fn coldest_data_is_cut_first() {
        let hot = img("hot", 2, 5, H, &[("h1", 4), ("h2", 4), ("h3", 4)]);
        let warm = img("warm", 2, 2, H, &[("w1", 4), ("w2", 4), ("w3", 4)]);
        let cuts = |b| {
            let p = run(&[warm.clone(), hot.clone()], b);
            let c: Vec<_> = p.images.iter().flat_map(|i| paths(&i.cut)).collect();
            (c.join(" "), p.images[1].tiered)
        };
        assert_eq!(cuts(28), ("".into(), true));
        assert_eq!(cuts(24), ("w3".into(), true));
        assert_eq!(cuts(20).0, "w2 w3");
        assert_eq!(cuts(18).0, "w1 w2 w3");
        assert_eq!(cuts(16), ("w1 w2 w3".into(), true)); // warm tiered, no files
        assert_eq!(cuts(15), ("w1 w2 w3".into(), false));
        assert_eq!(cuts(11), ("h3 w1 w2 w3".into(), false));
    }

    #[test]
    fn same_input_any_order_same_plan() {
        let mut imgs = vec![
            img("c", 3, 2, H, &[("x1", 4), ("c1", 2)]),
            img("a", 3, 2, H, &[("x1", 4), ("a1", 2)]),
            img("b", 3, 0, NEVER, &[("b1", 1)]),
        ];
        let p = run(&imgs, 14);
        assert_eq!(order(&p), ["a", "c", "b"]);
        assert_eq!(p.images[0].charged_bytes, 6);
        // Rotations of both directions: all 6 permutations.
        for _ in 0..2 {
            for _ in 0..3 {
                imgs.rotate_left(1);
                assert_eq!(run(&imgs, 14), p);
            }
            imgs.reverse();
        }
    }

    /// What is on pmem once `p` has been applied.
    fn current_of(p: &Plan) -> CurrentPlacement {
        let mut c = CurrentPlacement::default();
        let mut taken = BTreeSet::new();
        for ip in &p.images {
            let on = ip.hot.iter().filter(|f| taken.insert(&f.key));
            let on_pmem = on.map(|f| f.key.clone()).collect();
            let s = ImageState {
                tiered: ip.tiered,
                on_pmem,
            };
            c.images.insert(ip.image.clone(), s);
        }
        c
    }

    /// Carry out `m` on `c` (a demoted file leaves pmem for every image).
    fn apply(c: &CurrentPlacement, m: &Moves) -> CurrentPlacement {
        let mut c = c.clone();
        for im in &m.images {
            for s in c.images.values_mut() {
                s.on_pmem.retain(|k| !im.demote.contains(k));
            }
            let s = c.images.entry(im.image.clone()).or_default();
            s.tiered = match im.meta {
                MetaMove::Promote => true,
                MetaMove::Demote => false,
                MetaMove::Keep => s.tiered,
            };
            s.on_pmem.extend(im.promote.iter().map(|f| f.key.clone()));
        }
        c
    }

    fn physical(c: &CurrentPlacement) -> BTreeSet<&FileKey> {
        c.images.values().flat_map(|s| &s.on_pmem).collect()
    }

    #[test]
    fn diff_round_trip_sweep() {
        let mut r = Rng(42);
        for _ in 0..1500 {
            let from = run(&random_images(&mut r), r.next(120));
            let to = run(&random_images(&mut r), r.next(120));
            let cur = current_of(&from);
            let m = diff(&cur, &to);
            let after = apply(&cur, &m);
            assert_eq!(physical(&after), to.pmem_files());
            for (name, s) in &after.images {
                assert_eq!(s.tiered, to.image(name).is_some_and(|i| i.tiered), "{name}");
            }
            // Each physical move once, and only real moves.
            let before = physical(&cur);
            let pro: Vec<_> = m
                .images
                .iter()
                .flat_map(|i| &i.promote)
                .map(|f| &f.key)
                .collect();
            let dem: Vec<_> = m.images.iter().flat_map(|i| &i.demote).collect();
            assert_eq!(pro.len(), pro.iter().collect::<BTreeSet<_>>().len());
            assert_eq!(dem.len(), dem.iter().collect::<BTreeSet<_>>().len());
            assert!(pro.iter().all(|k| !before.contains(k)));
            assert!(dem.iter().all(|k| before.contains(k)));
            // Already there: nothing to do.
            assert!(diff(&after, &to).is_empty());
            assert!(diff(&current_of(&to), &to).is_empty());
        }
    }

    #[test]
    fn diff_attribution() {
        let a = img("a", 1, 3, H, &[("x1", 4), ("a1", 2)]);
        let b = img("b", 1, 1, H, &[("x1", 4), ("b1", 2)]);
        let p = run(&[a, b], 100);
        let m = diff(&CurrentPlacement::default(), &p);
        assert_eq!(m.images.len(), 2);
        assert_eq!(m.images[0].meta, MetaMove::Promote);
        assert_eq!(paths(&m.images[0].promote), ["x1", "a1"]);
        assert_eq!(paths(&m.images[1].promote), ["b1"]);
        // An image gone from the plan: its metadata and files go back to
        // disk, except a file another image keeps. A stale file too.
        let mut cur = current_of(&p);
        let old = ImageState {
            tiered: true,
            on_pmem: [key("o1"), key("x1")].into(),
        };
        cur.images.insert("old".into(), old);
        cur.images.get_mut("a").unwrap().on_pmem.insert(key("s1"));
        let m = diff(&cur, &p);
        let got: Vec<_> = m
            .images
            .iter()
            .map(|i| (i.image.as_str(), i.meta, &i.demote[..]))
            .collect();
        let want = [
            ("a", MetaMove::Keep, &[key("s1")][..]),
            ("old", MetaMove::Demote, &[key("o1")]),
        ];
        assert_eq!(got, want);
        // Everything out: all demoted, each file once.
        let m = diff(&current_of(&p), &run(&[], 0));
        assert_eq!(m.images.iter().map(|i| i.demote.len()).sum::<usize>(), 3);
        assert!(m
            .images
            .iter()
            .all(|i| i.meta == MetaMove::Demote && i.promote.is_empty()));
    }

    #[test]
    fn miss_promotions_close_the_loop() {
        let a = img("a", 1, 1, H, &[("a1", 2), ("a2", 50)]);
        let misses = [
            hf("m2", 3, 9.0),
            hf("a2", 50, 1.0),
            hf("m1", 4, 5.0),
            hf("m1", 4, 6.0),
        ];
        let before = run(std::slice::from_ref(&a), 10);
        assert_eq!(paths(&before.images[0].hot), ["a1"]);
        let a2 = miss_promotions(&a, &misses);
        assert_eq!(paths(&a2.hot), ["a1", "a2", "m1", "m2"]);
        assert_eq!(a2.hot[2], hf("m1", 4, 5.0));
        assert_eq!((a2.meta_bytes, a2.starts), (1, 1));
        // The next plan promotes the new files that fit.
        let after = run(std::slice::from_ref(&a2), 10);
        assert_eq!(paths(&after.images[0].hot), ["a1", "m1", "m2"]);
        let m = diff(&current_of(&before), &after);
        assert_eq!(paths(&m.images[0].promote), ["m1", "m2"]);
        // No misses: unchanged.
        assert_eq!(miss_promotions(&a, &[]), a);
    }
}
