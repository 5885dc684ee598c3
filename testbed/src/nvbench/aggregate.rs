//! From samples to aggregates: per (rate, system, image) the median, min and
//! max over ok reps; per category and overall the mean over images of the
//! per-image medians (times) or their sum (pmem bytes); ratios of two
//! systems over the images both have.

use super::paper::{self, Comparison, PaperFigure};
use super::samples::{
    Check, Coldstart, ErrorSample, ImageInfo, Line, Meta, Samples, SystemInfo, When,
};
use crate::report::median;
use serde::Serialize;
use std::collections::BTreeMap;

/// HelloBench's categories, in report order.
pub const CATEGORIES: [&str; 6] = [
    "distro",
    "language",
    "database",
    "web-server",
    "web-framework",
    "other",
];
/// The group of every image.
pub const ALL: &str = "all";

/// The rules, printed in the Markdown and stored in results.json.
pub const RULES: &[&str] = &[
    "Per (rate, system, image): median, min and max over the ok reps (failed reps are listed, not counted); \
     an even count takes the mean of the middle two.",
    "Per category and overall (\"all\"): times are the mean over images of the per-image medians, pmem bytes \
     the sum over images; the range (min–max) is the same mean or sum taken over the per-image minima and \
     maxima. A system missing some images of a group is marked [k/N].",
    "Ratios between two systems (speed-up vs Docker = Docker/system, ratio to NVM-Docker = system/NVM-Docker, \
     pmem saved = 1 − system/NVM-Docker) divide these aggregates taken over the images both systems have \
     (marked * when that is fewer than the group's images).",
    "pmem after migration = pmem after deploy for systems that do not migrate (all but LASS+hot).",
    "The paper's averages are over its 134 images and may be means of per-image ratios; ours are ratios \
     of per-group means.",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    DeployMs,
    StoreAfterDownloadMs,
    ColdstartMs,
    PmemAfterDeployBytes,
    PmemAfterMigrationBytes,
    DiskReadIos,
    DiskReadBytes,
    DiskWriteIos,
    DiskWriteBytes,
}

impl Metric {
    /// The metrics of the category tables and plots.
    pub const MAIN: [Metric; 5] = [
        Metric::DeployMs,
        Metric::StoreAfterDownloadMs,
        Metric::ColdstartMs,
        Metric::PmemAfterDeployBytes,
        Metric::PmemAfterMigrationBytes,
    ];

    /// Aggregated by sum over images (else by mean).
    pub fn sums(self) -> bool {
        matches!(
            self,
            Metric::PmemAfterDeployBytes | Metric::PmemAfterMigrationBytes
        )
    }

    pub fn is_time(self) -> bool {
        matches!(
            self,
            Metric::DeployMs | Metric::StoreAfterDownloadMs | Metric::ColdstartMs
        )
    }

    /// File name stem of the plot.
    pub fn key(self) -> &'static str {
        match self {
            Metric::DeployMs => "deploy",
            Metric::StoreAfterDownloadMs => "store_after_download",
            Metric::ColdstartMs => "coldstart",
            Metric::PmemAfterDeployBytes => "pmem_after_deploy",
            Metric::PmemAfterMigrationBytes => "pmem_after_migration",
            Metric::DiskReadIos => "disk_read_ios",
            Metric::DiskReadBytes => "disk_read_bytes",
            Metric::DiskWriteIos => "disk_write_ios",
            Metric::DiskWriteBytes => "disk_write_bytes",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Metric::DeployMs => "Deploy time",
            Metric::StoreAfterDownloadMs => "Store-after-download time",
            Metric::ColdstartMs => "Cold-start time to ready",
            Metric::PmemAfterDeployBytes => "NVM (pmem) usage after deploy",
            Metric::PmemAfterMigrationBytes => "NVM (pmem) usage after migration",
            Metric::DiskReadIos => "disk-tier read I/Os per cold start",
            Metric::DiskReadBytes => "disk-tier read bytes per cold start",
            Metric::DiskWriteIos => "disk-tier write I/Os per cold start",
            Metric::DiskWriteBytes => "disk-tier write bytes per cold start",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stat(v: &[f64]) -> Option<Stat> {
    Some(Stat {
        median: median(v)?,
        min: v.iter().copied().reduce(f64::min)?,
        max: v.iter().copied().reduce(f64::max)?,
        n: v.len(),
    })
}

/// A group aggregate: `value` from the medians, `lo`/`hi` from the minima
/// and maxima, over `images` of the group's `of` images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agg {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub images: usize,
    pub of: usize,
}

/// A ratio of two aggregates over the `images` both sides have.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Paired {
    pub value: f64,
    pub images: usize,
    pub of: usize,
}

impl Paired {
    fn map(self, f: impl Fn(f64) -> f64) -> Paired {
        Paired {
            value: f(self.value),
            ..self
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// Docker / system.
    pub speedup_vs_docker: Option<Paired>,
    /// system / NVM-Docker.
    pub ratio_to_nvm: Option<Paired>,
    /// 1 - system / NVM-Docker (pmem metrics only).
    pub saved_vs_nvm: Option<Paired>,
}

/// Per system: per metric.
pub type Cells = BTreeMap<String, BTreeMap<Metric, Stat>>;

#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub image: String,
    pub category: String,
    pub systems: Cells,
    pub deploy_failed: BTreeMap<String, usize>,
    pub coldstart_failed: BTreeMap<String, usize>,
}

/// Ours beside the paper's.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub comparison: Comparison,
    pub ours: Option<Paired>,
    pub paper: Option<PaperFigure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupAgg {
    pub group: String,
    pub images: Vec<String>,
    pub systems: BTreeMap<String, BTreeMap<Metric, Agg>>,
    pub ratios: BTreeMap<String, BTreeMap<Metric, Ratios>>,
    pub vs_paper: Vec<CompareRow>,
}

/// Disk-tier traffic of one system's ok cold starts at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct DiskRow {
    pub system: String,
    pub coldstarts: usize,
    /// Cold starts whose sample has disk_read_ios or disk_read_bytes.
    pub measured: usize,
    pub read_ios: Option<Stat>,
    pub read_bytes: Option<Stat>,
    pub write_ios: Option<Stat>,
    pub write_bytes: Option<Stat>,
    pub starts_with_reads: usize,
    pub images_with_reads: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StartupRow {
    pub image: String,
    pub category: String,
    pub hot_files: Option<u64>,
    pub hot_bytes: u64,
    pub image_bytes: u64,
    pub share: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateReport {
    pub rate: String,
    pub images: Vec<ImageRow>,
    pub groups: Vec<GroupAgg>,
    pub disk_tier: Vec<DiskRow>,
    pub startup_read: Vec<StartupRow>,
    /// Sum of hot bytes over sum of image bytes.
    pub startup_read_total_share: Option<f64>,
    pub startup_read_median_share: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedSample {
    pub line: usize,
    pub kind: &'static str,
    pub rate: String,
    pub system: String,
    pub image: String,
    pub rep: u64,
}

/// The systems the comparisons name, by id.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Roles {
    pub docker: Option<String>,
    pub nvm: Option<String>,
    pub lass: Option<String>,
    pub hot: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub samples_file: String,
    pub sample_lines: usize,
    pub meta_present: bool,
    pub meta: Meta,
    pub systems: Vec<SystemInfo>,
    pub images: Vec<ImageInfo>,
    pub roles: Roles,
    /// Categories with images, in HelloBench order, then "all".
    pub groups: Vec<String>,
    pub rules: &'static [&'static str],
    pub rates: Vec<RateReport>,
    pub checks: Vec<Line<Check>>,
    pub errors: Vec<Line<ErrorSample>>,
    pub failed: Vec<FailedSample>,
    pub warnings: Vec<String>,
    pub paper: &'static [PaperFigure],
    pub paper_notes: &'static [&'static str],
}

fn default_label(id: &str) -> String {
    match id {
        "docker" => "Docker",
        "nvm" => "NVM-Docker",
        "lass" => "nvtier LASS",
        "hot" => "nvtier LASS+hot",
        other => other,
    }
    .to_string()
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

fn category_rank(c: &str) -> usize {
    CATEGORIES
        .iter()
        .position(|x| *x == c)
        .unwrap_or(CATEGORIES.len())
}

impl Report {
    pub fn label(&self, id: &str) -> String {
        self.systems
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.label.clone())
            .unwrap_or_else(|| default_label(id))
    }
}

/// (rate, system, image) -> metric -> values.
type Raw = BTreeMap<(String, String, String), BTreeMap<Metric, Vec<f64>>>;

fn put(raw: &mut Raw, r: &str, s: &str, i: &str, m: Metric, v: Option<f64>) {
    let e = raw
        .entry((r.to_string(), s.to_string(), i.to_string()))
        .or_default()
        .entry(m)
        .or_default();
    if let Some(v) = v {
        e.push(v);
    }
}

fn disk_fields(c: &Coldstart) -> [(Metric, Option<u64>); 4] {
    [
        (Metric::DiskReadIos, c.disk_read_ios),
        (Metric::DiskReadBytes, c.disk_read_bytes),
        (Metric::DiskWriteIos, c.disk_write_ios),
        (Metric::DiskWriteBytes, c.disk_write_bytes),
    ]
}

pub fn aggregate(s: Samples, samples_file: &str) -> Report {
    let mut warnings = s.warnings.clone();
    let meta_present = s.meta.is_some();
    let meta = s.meta.clone().unwrap_or_default();
    if !meta_present {
        warnings.push(format!(
            "{samples_file}: no meta line: systems, images and rates are taken from the samples, \
             every image counts as category \"other\""
        ));
    }

    // Rates, systems, images: meta order first, then first appearance.
    let mut rates: Vec<String> = Vec::new();
    for r in &meta.rates {
        push_unique(&mut rates, r);
    }
    let mut systems: Vec<SystemInfo> = meta.systems.clone();
    let mut images: Vec<ImageInfo> = meta.images.clone();
    let seen = s
        .deploys
        .iter()
        .map(|d| (&d.s.rate, &d.s.system, &d.s.image))
        .chain(
            s.coldstarts
                .iter()
                .map(|c| (&c.s.rate, &c.s.system, &c.s.image)),
        )
        .chain(s.pmem.iter().map(|p| (&p.s.rate, &p.s.system, &p.s.image)));
    let mut extra_images = Vec::new();
    for (r, sys, img) in seen {
        push_unique(&mut rates, r);
        if !systems.iter().any(|x| &x.id == sys) {
            systems.push(SystemInfo {
                id: sys.clone(),
                label: default_label(sys),
                desc: None,
            });
        }
        if !images.iter().any(|x| &x.name == img) {
            push_unique(&mut extra_images, img);
            images.push(ImageInfo {
                name: img.clone(),
                category: "other".into(),
                ready: None,
                layers: None,
                compressed_bytes: None,
                unpacked_bytes: None,
            });
        }
    }
    if meta_present && !extra_images.is_empty() {
        warnings.push(format!(
            "images not in the meta line, counted as \"other\": {}",
            extra_images.join(", ")
        ));
    }
    for r in s.startup_reads.iter().filter_map(|r| r.s.rate.as_ref()) {
        push_unique(&mut rates, r);
    }
    // Stable sort: meta order within a category.
    images.sort_by_key(|i| category_rank(&i.category));
    let mut groups: Vec<String> = Vec::new();
    for i in &images {
        push_unique(&mut groups, &i.category);
    }
    groups.push(ALL.to_string());

    let find =
        |pred: &dyn Fn(&SystemInfo) -> bool| systems.iter().find(|x| pred(x)).map(|x| x.id.clone());
    let roles = Roles {
        docker: find(&|x| x.id == "docker" || x.label == "Docker"),
        nvm: find(&|x| x.id == "nvm" || x.label == "NVM-Docker"),
        lass: find(&|x| x.id == "lass"),
        hot: find(&|x| x.id == "hot"),
    };

    // Raw values per cell.
    let mut raw: Raw = BTreeMap::new();
    let mut failed = Vec::new();
    let mut fail_counts: BTreeMap<(&'static str, String, String, String), usize> = BTreeMap::new();
    for d in &s.deploys {
        let x = &d.s;
        if !x.ok {
            failed.push(FailedSample {
                line: d.line,
                kind: "deploy",
                rate: x.rate.clone(),
                system: x.system.clone(),
                image: x.image.clone(),
                rep: x.rep,
            });
            *fail_counts
                .entry(("deploy", x.rate.clone(), x.system.clone(), x.image.clone()))
                .or_default() += 1;
            continue;
        }
        put(
            &mut raw,
            &x.rate,
            &x.system,
            &x.image,
            Metric::DeployMs,
            x.deploy_ms,
        );
        put(
            &mut raw,
            &x.rate,
            &x.system,
            &x.image,
            Metric::StoreAfterDownloadMs,
            x.store_after_download_ms,
        );
    }
    for c in &s.coldstarts {
        let x = &c.s;
        if !x.ok {
            failed.push(FailedSample {
                line: c.line,
                kind: "coldstart",
                rate: x.rate.clone(),
                system: x.system.clone(),
                image: x.image.clone(),
                rep: x.rep,
            });
            *fail_counts
                .entry((
                    "coldstart",
                    x.rate.clone(),
                    x.system.clone(),
                    x.image.clone(),
                ))
                .or_default() += 1;
            continue;
        }
        put(
            &mut raw,
            &x.rate,
            &x.system,
            &x.image,
            Metric::ColdstartMs,
            x.ms,
        );
        for (m, v) in disk_fields(x) {
            put(
                &mut raw,
                &x.rate,
                &x.system,
                &x.image,
                m,
                v.map(|v| v as f64),
            );
        }
    }
    let mut migrating: Vec<String> = roles.hot.iter().cloned().collect();
    for p in &s.pmem {
        let x = &p.s;
        let m = match x.when {
            When::AfterDeploy => Metric::PmemAfterDeployBytes,
            When::AfterMigration => {
                push_unique(&mut migrating, &x.system);
                Metric::PmemAfterMigrationBytes
            }
        };
        put(
            &mut raw,
            &x.rate,
            &x.system,
            &x.image,
            m,
            Some(x.bytes as f64),
        );
    }
    // Non-migrating systems: after migration = after deploy.
    for ((_, sys, _), ms) in raw.iter_mut() {
        if migrating.contains(sys) {
            continue;
        }
        let after_deploy = ms.get(&Metric::PmemAfterDeployBytes).cloned();
        let mig = ms.entry(Metric::PmemAfterMigrationBytes).or_default();
        if mig.is_empty() {
            if let Some(v) = after_deploy {
                *mig = v;
            }
        }
    }

    let mut rate_reports = Vec::new();
    for rate in &rates {
        let mut rows = Vec::new();
        for im in &images {
            let mut cells: Cells = BTreeMap::new();
            let mut deploy_failed = BTreeMap::new();
            let mut coldstart_failed = BTreeMap::new();
            for sys in &systems {
                let key = (rate.clone(), sys.id.clone(), im.name.clone());
                if let Some(ms) = raw.get(&key) {
                    let st: BTreeMap<Metric, Stat> = ms
                        .iter()
                        .filter_map(|(m, v)| Some((*m, stat(v)?)))
                        .collect();
                    if !st.is_empty() {
                        cells.insert(sys.id.clone(), st);
                    }
                }
                for (kind, map) in [
                    ("deploy", &mut deploy_failed),
                    ("coldstart", &mut coldstart_failed),
                ] {
                    let k = (kind, rate.clone(), sys.id.clone(), im.name.clone());
                    if let Some(n) = fail_counts.get(&k) {
                        map.insert(sys.id.clone(), *n);
                    }
                }
            }
            rows.push(ImageRow {
                image: im.name.clone(),
                category: im.category.clone(),
                systems: cells,
                deploy_failed,
                coldstart_failed,
            });
        }
        let group_aggs = groups
            .iter()
            .map(|g| group_agg(g, &rows, &systems, &roles))
            .collect();
        let disk_tier = systems
            .iter()
            .map(|sys| disk_row(rate, &sys.id, &s.coldstarts))
            .filter(|d| d.coldstarts > 0)
            .collect();
        let (startup_read, total, med) = startup_rows(rate, &images, &s);
        rate_reports.push(RateReport {
            rate: rate.clone(),
            images: rows,
            groups: group_aggs,
            disk_tier,
            startup_read,
            startup_read_total_share: total,
            startup_read_median_share: med,
        });
    }

    Report {
        samples_file: samples_file.to_string(),
        sample_lines: s.lines,
        meta_present,
        meta,
        systems,
        images,
        roles,
        groups,
        rules: RULES,
        rates: rate_reports,
        checks: s.checks,
        errors: s.errors,
        failed,
        warnings,
        paper: paper::N_DOCKER,
        paper_notes: paper::N_DOCKER_NOTES,
    }
}

fn agg_of(stats: &[Stat], sums: bool, of: usize) -> Option<Agg> {
    if stats.is_empty() {
        return None;
    }
    let n = stats.len() as f64;
    let f = |g: &dyn Fn(&Stat) -> f64| {
        let s: f64 = stats.iter().map(g).sum();
        if sums {
            s
        } else {
            s / n
        }
    };
    Some(Agg {
        value: f(&|s| s.median),
        lo: f(&|s| s.min),
        hi: f(&|s| s.max),
        images: stats.len(),
        of,
    })
}

/// sum of a's medians / sum of b's medians over the rows having both.
pub fn paired(rows: &[&ImageRow], a: (&str, Metric), b: (&str, Metric)) -> Option<Paired> {
    let get =
        |r: &ImageRow, (sys, m): (&str, Metric)| r.systems.get(sys)?.get(&m).map(|s| s.median);
    let both: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((get(r, a)?, get(r, b)?)))
        .collect();
    let sa: f64 = both.iter().map(|x| x.0).sum();
    let sb: f64 = both.iter().map(|x| x.1).sum();
    if both.is_empty() || sb <= 0.0 {
        return None;
    }
    Some(Paired {
        value: sa / sb,
        images: both.len(),
        of: rows.len(),
    })
}

fn group_agg(group: &str, rows: &[ImageRow], systems: &[SystemInfo], roles: &Roles) -> GroupAgg {
    let rows: Vec<&ImageRow> = rows
        .iter()
        .filter(|r| group == ALL || r.category == group)
        .collect();
    let mut out_sys = BTreeMap::new();
    let mut out_ratios = BTreeMap::new();
    for sys in systems {
        let mut aggs = BTreeMap::new();
        let mut ratios = BTreeMap::new();
        for m in Metric::MAIN {
            let stats: Vec<Stat> = rows
                .iter()
                .filter_map(|r| r.systems.get(&sys.id)?.get(&m).copied())
                .collect();
            if let Some(a) = agg_of(&stats, m.sums(), rows.len()) {
                aggs.insert(m, a);
            }
            let id = sys.id.as_str();
            let speedup_vs_docker = roles
                .docker
                .as_deref()
                .and_then(|d| paired(&rows, (d, m), (id, m)));
            let ratio_to_nvm = roles
                .nvm
                .as_deref()
                .and_then(|n| paired(&rows, (id, m), (n, m)));
            let saved_vs_nvm = if m.sums() {
                ratio_to_nvm.map(|p| p.map(|v| 1.0 - v))
            } else {
                None
            };
            ratios.insert(
                m,
                Ratios {
                    speedup_vs_docker,
                    ratio_to_nvm,
                    saved_vs_nvm,
                },
            );
        }
        if !aggs.is_empty() {
            out_sys.insert(sys.id.clone(), aggs);
        }
        out_ratios.insert(sys.id.clone(), ratios);
    }
    let vs_paper = Comparison::ALL
        .iter()
        .map(|&c| CompareRow {
            comparison: c,
            ours: ours(c, &rows, roles),
            paper: paper::lookup(c, (group != ALL).then_some(group)).copied(),
        })
        .collect();
    GroupAgg {
        group: group.to_string(),
        images: rows.iter().map(|r| r.image.clone()).collect(),
        systems: out_sys,
        ratios: out_ratios,
        vs_paper,
    }
}

/// Our value of a published comparison, in the paper's form.
pub fn ours(c: Comparison, rows: &[&ImageRow], roles: &Roles) -> Option<Paired> {
    use Metric as M;
    let (docker, nvm, lass, hot) = (
        roles.docker.as_deref(),
        roles.nvm.as_deref(),
        roles.lass.as_deref(),
        roles.hot.as_deref(),
    );
    let less = |p: Paired| p.map(|v| 1.0 - v);
    match c {
        Comparison::DockerStoreShareOfDeploy => {
            let d = docker?;
            paired(rows, (d, M::StoreAfterDownloadMs), (d, M::DeployMs))
        }
        Comparison::DeployReductionVsDocker => {
            paired(rows, (lass?, M::DeployMs), (docker?, M::DeployMs)).map(less)
        }
        Comparison::DeploySpeedupVsDocker => {
            paired(rows, (docker?, M::DeployMs), (lass?, M::DeployMs))
        }
        Comparison::StoreReductionVsDocker => paired(
            rows,
            (lass?, M::StoreAfterDownloadMs),
            (docker?, M::StoreAfterDownloadMs),
        )
        .map(less),
        Comparison::PmemDeploySavedVsNvm => paired(
            rows,
            (lass?, M::PmemAfterDeployBytes),
            (nvm?, M::PmemAfterDeployBytes),
        )
        .map(less),
        Comparison::ColdReductionVsDocker => {
            paired(rows, (hot?, M::ColdstartMs), (docker?, M::ColdstartMs)).map(less)
        }
        Comparison::ColdSpeedupVsDocker => {
            paired(rows, (docker?, M::ColdstartMs), (hot?, M::ColdstartMs))
        }
        Comparison::ColdSlowerThanNvm => {
            paired(rows, (hot?, M::ColdstartMs), (nvm?, M::ColdstartMs)).map(|p| p.map(|v| v - 1.0))
        }
        Comparison::PmemMigrationSavedVsNvm => paired(
            rows,
            (hot?, M::PmemAfterMigrationBytes),
            (nvm?, M::PmemAfterMigrationBytes),
        )
        .map(less),
    }
}

fn disk_row(rate: &str, system: &str, cs: &[Line<Coldstart>]) -> DiskRow {
    let ok: Vec<&Coldstart> = cs
        .iter()
        .map(|l| &l.s)
        .filter(|c| c.ok && c.rate == rate && c.system == system)
        .collect();
    let col = |f: &dyn Fn(&Coldstart) -> Option<u64>| -> Vec<f64> {
        ok.iter().filter_map(|c| f(c)).map(|v| v as f64).collect()
    };
    let measured = ok
        .iter()
        .filter(|c| c.disk_read_ios.is_some() || c.disk_read_bytes.is_some())
        .count();
    let reads =
        |c: &&&Coldstart| c.disk_read_ios.unwrap_or(0) > 0 || c.disk_read_bytes.unwrap_or(0) > 0;
    let mut images_with_reads = Vec::new();
    for c in ok.iter().filter(reads) {
        push_unique(&mut images_with_reads, &c.image);
    }
    DiskRow {
        system: system.to_string(),
        coldstarts: ok.len(),
        measured,
        read_ios: stat(&col(&|c| c.disk_read_ios)),
        read_bytes: stat(&col(&|c| c.disk_read_bytes)),
        write_ios: stat(&col(&|c| c.disk_write_ios)),
        write_bytes: stat(&col(&|c| c.disk_write_bytes)),
        starts_with_reads: ok.iter().filter(reads).count(),
        images_with_reads,
    }
}

fn startup_rows(
    rate: &str,
    images: &[ImageInfo],
    s: &Samples,
) -> (Vec<StartupRow>, Option<f64>, Option<f64>) {
    let mut rows = Vec::new();
    for im in images {
        // The last sample for this rate (or for every rate) wins.
        let last = s
            .startup_reads
            .iter()
            .rev()
            .map(|l| &l.s)
            .find(|r| r.image == im.name && r.rate.as_deref().is_none_or(|x| x == rate));
        if let Some(r) = last {
            rows.push(StartupRow {
                image: im.name.clone(),
                category: im.category.clone(),
                hot_files: r.hot_files,
                hot_bytes: r.hot_bytes,
                image_bytes: r.image_bytes,
                share: (r.image_bytes > 0).then(|| r.hot_bytes as f64 / r.image_bytes as f64),
            });
        }
    }
    let image_bytes: u64 = rows.iter().map(|r| r.image_bytes).sum();
    let hot_bytes: u64 = rows.iter().map(|r| r.hot_bytes).sum();
    let total = (image_bytes > 0).then(|| hot_bytes as f64 / image_bytes as f64);
    let shares: Vec<f64> = rows.iter().filter_map(|r| r.share).collect();
    (rows, total, median(&shares))
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    fn report() -> Report {
        let s = Samples::parse(&fixture::jsonl(), "fixture.jsonl").expect("fixture parses");
        aggregate(s, "fixture.jsonl")
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    fn rate<'a>(r: &'a Report, name: &str) -> &'a RateReport {
        r.rates.iter().find(|x| x.rate == name).expect("rate")
    }

    fn group<'a>(r: &'a RateReport, name: &str) -> &'a GroupAgg {
        r.groups.iter().find(|g| g.group == name).expect("group")
    }

    fn cell(r: &RateReport, image: &str, sys: &str, m: Metric) -> Option<Stat> {
        r.images
            .iter()
            .find(|i| i.image == image)?
            .systems
            .get(sys)?
            .get(&m)
            .copied()
    }

    #[test]
    fn medians() {
        assert_eq!(
            stat(&[3.0, 1.0, 2.0]),
            Some(Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0,
                n: 3
            })
        );
        assert_eq!(stat(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median), Some(2.5));
        assert_eq!(stat(&[]), None);
    }

    #[test]
    fn order_groups_and_roles() {
        let r = report();
        assert!(r.meta_present);
        let rates: Vec<&str> = r.rates.iter().map(|x| x.rate.as_str()).collect();
        assert_eq!(rates, ["100mbit", "1gbit"]);
        assert_eq!(r.groups, ["distro", "language", "web-server", "all"]);
        let images: Vec<&str> = r.images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(images, ["ubuntu", "python", "node", "nginx"]);
        assert_eq!(r.roles.docker.as_deref(), Some("docker"));
        assert_eq!(r.roles.nvm.as_deref(), Some("nvm"));
        assert_eq!(r.roles.hot.as_deref(), Some("hot"));
        assert!(r.warnings.iter().any(|w| w.contains("future_kind")));
    }

    #[test]
    fn per_image_cells_skip_failed_reps() {
        let r = report();
        let r100 = rate(&r, "100mbit");
        let s = cell(r100, "node", "docker", Metric::DeployMs).expect("cell");
        assert_eq!(s.n, 3, "the failed rep is not counted");
        assert!(close(s.median, 12000.0) && close(s.min, 10800.0) && close(s.max, 13200.0));
        let row = r100
            .images
            .iter()
            .find(|i| i.image == "node")
            .expect("node");
        assert_eq!(row.deploy_failed.get("docker"), Some(&1));
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].kind, "deploy");
        // Non-migrating systems: after migration = after deploy.
        let nvm = cell(r100, "python", "nvm", Metric::PmemAfterMigrationBytes).expect("nvm");
        assert!(close(nvm.median, 300e6));
        let hot = cell(r100, "python", "hot", Metric::PmemAfterMigrationBytes).expect("hot");
        assert!(close(hot.median, 30e6));
    }

    #[test]
    fn category_means_sums_and_ratios() {
        let r = report();
        let g = group(rate(&r, "100mbit"), "language");
        assert_eq!(g.images, ["python", "node"]);
        let d = g.systems["docker"][&Metric::DeployMs];
        assert!(close(d.value, 11000.0) && close(d.lo, 9900.0) && close(d.hi, 12100.0));
        assert_eq!((d.images, d.of), (2, 2));
        let p = g.systems["nvm"][&Metric::PmemAfterDeployBytes];
        assert!(close(p.value, 650e6), "pmem bytes are summed");
        let lass = &g.ratios["lass"][&Metric::DeployMs];
        assert!(close(lass.speedup_vs_docker.expect("speed-up").value, 1.25));
        assert!(close(lass.ratio_to_nvm.expect("ratio").value, 0.8 / 0.78));
        assert!(lass.saved_vs_nvm.is_none(), "saved is for pmem only");
        let hot = &g.ratios["hot"][&Metric::PmemAfterMigrationBytes];
        assert!(close(hot.saved_vs_nvm.expect("saved").value, 0.9));
        let cmp = |c: Comparison| {
            g.vs_paper
                .iter()
                .find(|x| x.comparison == c)
                .and_then(|x| x.ours)
                .map(|p| p.value)
                .expect("ours")
        };
        assert!(close(cmp(Comparison::DeployReductionVsDocker), 0.2));
        assert!(close(cmp(Comparison::DockerStoreShareOfDeploy), 0.25));
        assert!(close(cmp(Comparison::ColdSlowerThanNvm), 0.31 / 0.3 - 1.0));
        assert!(close(cmp(Comparison::PmemDeploySavedVsNvm), 0.3));
    }

    #[test]
    fn missing_cells() {
        let r = report();
        let r1 = rate(&r, "1gbit");
        assert!(cell(r1, "nginx", "hot", Metric::ColdstartMs).is_none());
        let ws = group(r1, "web-server");
        assert!(!ws.systems.contains_key("hot"));
        assert!(ws.ratios["hot"][&Metric::ColdstartMs]
            .speedup_vs_docker
            .is_none());
        let all = group(r1, ALL);
        let h = all.systems["hot"][&Metric::ColdstartMs];
        assert_eq!((h.images, h.of), (3, 4));
        // mean over the three images hot has
        assert!(close(h.value, 0.31 * (600.0 + 1500.0 + 1700.0) / 3.0));
        // the ratio pairs the images both have
        let sp = all.ratios["hot"][&Metric::ColdstartMs]
            .speedup_vs_docker
            .expect("speed-up");
        assert_eq!((sp.images, sp.of), (3, 4));
        assert!(close(sp.value, 1.0 / 0.31));
        // the paper has distro but not web-server for deploy reduction
        let distro = group(r1, "distro");
        let row = |g: &GroupAgg, c| g.vs_paper.iter().find(|x| x.comparison == c).cloned();
        let dep = row(distro, Comparison::DeployReductionVsDocker).expect("row");
        assert_eq!(dep.paper.map(|p| p.value), Some(0.267));
        let dep = row(ws, Comparison::DeployReductionVsDocker).expect("row");
        assert!(dep.paper.is_none());
        assert!(row(ws, Comparison::ColdReductionVsDocker)
            .and_then(|x| x.ours)
            .is_none());
    }

    #[test]
    fn disk_tier_and_startup_read() {
        let r = report();
        let r1 = rate(&r, "1gbit");
        let hot = r1
            .disk_tier
            .iter()
            .find(|d| d.system == "hot")
            .expect("hot");
        assert_eq!(
            (hot.coldstarts, hot.measured, hot.starts_with_reads),
            (9, 9, 1)
        );
        assert_eq!(hot.images_with_reads, ["python"]);
        let r100 = rate(&r, "100mbit");
        let hot = r100
            .disk_tier
            .iter()
            .find(|d| d.system == "hot")
            .expect("hot");
        assert_eq!(hot.starts_with_reads, 0);
        assert_eq!(r100.startup_read.len(), 4);
        assert!(close(r100.startup_read_total_share.expect("share"), 0.05));
    }

    #[test]
    fn no_meta() {
        let text: String = fixture::jsonl()
            .lines()
            .filter(|l| !l.contains("\"kind\":\"meta\""))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = aggregate(Samples::parse(&text, "f").expect("parses"), "f");
        assert!(!r.meta_present);
        assert_eq!(r.groups, ["other", "all"]);
        assert_eq!(r.label("hot"), "nvtier LASS+hot");
        assert!(r.warnings.iter().any(|w| w.contains("no meta line")));
    }
}
