//! Published figures to compare with: N-Docker (Gu et al., NPC 2019, HAL
//! hal-03770568; the copy in the project's seeds, 004_*) and Slacker /
//! HelloBench (Harter et al., FAST 2016).
//!
//! Every number below is quoted from the paper's text; the figures
//! themselves are images whose bar heights are not given as numbers, so a
//! (comparison, category) the text does not mention has no entry and is
//! printed as "–". The paper measured at 1 Gbit/s only (section 3.1).

use serde::Serialize;

/// What a published number compares. Values are fractions (0.267 = 26.7 %)
/// or factors (1.21 = 1.21x), see [`Comparison::form`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Docker: store-after-download time as a share of deploy time.
    DockerStoreShareOfDeploy,
    /// Deploy time, LASS vs Docker: 1 - lass/docker.
    DeployReductionVsDocker,
    /// Deploy time, LASS vs Docker: docker/lass.
    DeploySpeedupVsDocker,
    /// Store-after-download time, LASS vs Docker: 1 - lass/docker.
    StoreReductionVsDocker,
    /// pmem bytes after deploy, LASS vs NVM-Docker: 1 - lass/nvm.
    PmemDeploySavedVsNvm,
    /// Cold-start time, LASS+hot vs Docker: 1 - hot/docker.
    ColdReductionVsDocker,
    /// Cold-start time, LASS+hot vs Docker: docker/hot.
    ColdSpeedupVsDocker,
    /// Cold-start time, LASS+hot vs NVM-Docker: hot/nvm - 1.
    ColdSlowerThanNvm,
    /// pmem bytes after migration, LASS+hot vs NVM-Docker: 1 - hot/nvm.
    PmemMigrationSavedVsNvm,
}

/// How a value is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A share, printed as "23.4 %".
    Share,
    /// A time reduction, printed as "−21.1 %" (negative = faster).
    Reduction,
    /// A saving, printed as "28.5 %".
    Saved,
    /// Slower by, printed as "+2.0 %".
    Slower,
    /// A factor, printed as "1.21×".
    Factor,
}

impl Comparison {
    pub const ALL: [Comparison; 9] = [
        Comparison::DockerStoreShareOfDeploy,
        Comparison::DeployReductionVsDocker,
        Comparison::DeploySpeedupVsDocker,
        Comparison::StoreReductionVsDocker,
        Comparison::PmemDeploySavedVsNvm,
        Comparison::ColdReductionVsDocker,
        Comparison::ColdSpeedupVsDocker,
        Comparison::ColdSlowerThanNvm,
        Comparison::PmemMigrationSavedVsNvm,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Comparison::DockerStoreShareOfDeploy => {
                "Docker: store-after-download share of deploy time"
            }
            Comparison::DeployReductionVsDocker => "deploy time, LASS vs Docker",
            Comparison::DeploySpeedupVsDocker => "deploy speed-up, LASS vs Docker",
            Comparison::StoreReductionVsDocker => "store-after-download time, LASS vs Docker",
            Comparison::PmemDeploySavedVsNvm => "pmem after deploy, LASS saved vs NVM-Docker",
            Comparison::ColdReductionVsDocker => "cold-start time, LASS+hot vs Docker",
            Comparison::ColdSpeedupVsDocker => "cold-start speed-up, LASS+hot vs Docker",
            Comparison::ColdSlowerThanNvm => "cold-start time, LASS+hot vs NVM-Docker",
            Comparison::PmemMigrationSavedVsNvm => {
                "pmem after migration, LASS+hot saved vs NVM-Docker"
            }
        }
    }

    pub fn form(self) -> Form {
        match self {
            Comparison::DockerStoreShareOfDeploy => Form::Share,
            Comparison::DeployReductionVsDocker
            | Comparison::StoreReductionVsDocker
            | Comparison::ColdReductionVsDocker => Form::Reduction,
            Comparison::PmemDeploySavedVsNvm | Comparison::PmemMigrationSavedVsNvm => Form::Saved,
            Comparison::ColdSlowerThanNvm => Form::Slower,
            Comparison::DeploySpeedupVsDocker | Comparison::ColdSpeedupVsDocker => Form::Factor,
        }
    }
}

/// One number from a paper.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PaperFigure {
    pub comparison: Comparison,
    /// A HelloBench category, or None for the paper's average / overall.
    pub category: Option<&'static str>,
    pub value: f64,
    /// Where it is: section, figure, and the words quoted.
    pub source: &'static str,
}

const fn fig(
    comparison: Comparison,
    category: Option<&'static str>,
    value: f64,
    source: &'static str,
) -> PaperFigure {
    PaperFigure {
        comparison,
        category,
        value,
        source,
    }
}

use Comparison as C;

/// N-Docker's published figures. The paper's "N-Docker" is LASS at deploy
/// time (section 3.2) and LASS + HBCSA hot-file migration at cold start
/// (section 3.3): our systems `lass` and `hot`.
pub const N_DOCKER: &[PaperFigure] = &[
    // N-Docker paper, section 2 (analysis of the Top-134 images).
    fig(
        C::DockerStoreShareOfDeploy,
        None,
        0.234,
        "§2: \"storing latency accounts for 23.4% of deploying time\"",
    ),
    // N-Docker paper, section 3.2, figure 4.
    fig(
        C::DeployReductionVsDocker,
        Some("distro"),
        0.267,
        "§3.2, Fig. 4: \"most significant drop ... 26.7% for the category of distro\"",
    ),
    fig(
        C::DeployReductionVsDocker,
        Some("web-framework"),
        0.193,
        "§3.2, Fig. 4: \"lowest reduction ... 19.3% for the category of web fwk\"",
    ),
    fig(
        C::DeployReductionVsDocker,
        None,
        0.2114,
        "§3.2, Fig. 4: \"On average ... 21.14% lower than Docker's\"",
    ),
    // N-Docker paper, abstract and section 5 ("median container deployment").
    fig(
        C::DeploySpeedupVsDocker,
        None,
        1.21,
        "abstract, §5: \"accelerate the container deployment by 1.21X\"",
    ),
    // N-Docker paper, section 3.2, figure 6.
    fig(
        C::StoreReductionVsDocker,
        None,
        0.903,
        "§3.2, Fig. 6: \"On average ... reduced by 90.3% compared to Docker\"",
    ),
    // N-Docker paper, section 3.2, figure 5.
    fig(
        C::PmemDeploySavedVsNvm,
        Some("distro"),
        0.0,
        "§3.2, Fig. 5: \"distro, N-docker uses the same space size of NVM as NVM-Docker\"",
    ),
    fig(
        C::PmemDeploySavedVsNvm,
        Some("web-framework"),
        0.385,
        "§3.2, Fig. 5: \"web fwk ... has a 38.5% decrease in NVM usage\"",
    ),
    fig(
        C::PmemDeploySavedVsNvm,
        None,
        0.2853,
        "§3.2, Fig. 5: \"On average, N-Docker's NVM usage is 28.53% less\"",
    ),
    // N-Docker paper, section 3.3, figure 7.
    fig(
        C::ColdReductionVsDocker,
        Some("distro"),
        0.761,
        "§3.3, Fig. 7: \"maximum reduction of cold-start delay is 76.1% for distro\"",
    ),
    fig(
        C::ColdReductionVsDocker,
        Some("web-server"),
        0.626,
        "§3.3, Fig. 7: \"minimum reduction ... 62.6% in the category of web server\"",
    ),
    fig(
        C::ColdReductionVsDocker,
        None,
        0.338,
        "§3.3, Fig. 7: \"On average ... reduce the latency ... by 33.8%\" (see note)",
    ),
    // N-Docker paper, abstract and section 5.
    fig(
        C::ColdSpeedupVsDocker,
        None,
        2.96,
        "abstract, §5: \"cold-start by 2.96X\"",
    ),
    // N-Docker paper, section 3.3, figure 7.
    fig(
        C::ColdSlowerThanNvm,
        None,
        0.02,
        "§3.3, Fig. 7: \"only 2% slower than NVM-Docker\"",
    ),
    // N-Docker paper, section 3.3, figure 8.
    fig(
        C::PmemMigrationSavedVsNvm,
        Some("distro"),
        0.9712,
        "§3.3, Fig. 8: \"largest reduction in NVM usage is 97.12 % for ... distro\"",
    ),
    fig(
        C::PmemMigrationSavedVsNvm,
        Some("web-server"),
        0.7012,
        "§3.3, Fig. 8: \"minimum reduction in NVM usage is 70.12% for ... web server\"",
    ),
    fig(
        C::PmemMigrationSavedVsNvm,
        None,
        0.8822,
        "§3.3, Fig. 8, abstract: \"NVM's usage of N-Docker is 88.22% less\"",
    ),
];

/// Notes printed under the comparison: what the text says without a number,
/// and where its numbers disagree with each other.
pub const N_DOCKER_NOTES: &[&str] = &[
    "The paper measured at 1 Gbit/s only (§3.1: \"The machines interconnect with each other in 1Gbps network\"), \
     on 134 Docker Hub images; its numbers are repeated beside every rate here.",
    "Deploy time vs NVM-Docker and store time vs NVM-Docker are given only in words (§3.2: \"almost as fast as \
     NVM-Docker\", \"comparable to NVM-Docker\"); the sentence \"the deployment latency of NVM-Docker ... is larger \
     than that of N-Docker by more than 97%\" is ambiguous and is not used.",
    "The paper's numbers disagree: an average deploy reduction of 21.14% is a 1.27× speed-up, not 1.21×; \
     the average cold-start reduction of 33.8% lies below the per-category minimum of 62.6% and matches \
     2.96× only read as \"reduced to 33.8%\" (1/2.96 = 0.338). Both forms are shown as published.",
    "\"web fwk\" and \"web server\" in the paper are HelloBench's web-framework and web-server.",
];

/// Slacker (Harter et al., FAST 2016), abstract: "pulling packages accounts
/// for 76% of container start time, but only 6.4% of that data is read"
/// (HelloBench, 57 images).
pub const SLACKER_STARTUP_READ_SHARE: f64 = 0.064;
pub const SLACKER_SOURCE: &str = "Slacker (Harter et al., FAST'16), abstract: \
     \"only 6.4% of that data is read\" (HelloBench, 57 images)";

/// The published figure for (comparison, category); None for a cell the
/// paper does not give.
pub fn lookup(c: Comparison, category: Option<&str>) -> Option<&'static PaperFigure> {
    N_DOCKER
        .iter()
        .find(|f| f.comparison == c && f.category == category)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_is_unique_and_in_range() {
        for (i, a) in N_DOCKER.iter().enumerate() {
            for b in &N_DOCKER[i + 1..] {
                assert!(
                    !(a.comparison == b.comparison && a.category == b.category),
                    "duplicate {a:?}"
                );
            }
            match a.comparison.form() {
                Form::Factor => assert!(a.value >= 1.0),
                _ => assert!((0.0..=1.0).contains(&a.value)),
            }
            assert!(a.source.starts_with('§') || a.source.starts_with("abstract"));
        }
        assert_eq!(
            lookup(Comparison::PmemMigrationSavedVsNvm, None).map(|f| f.value),
            Some(0.8822)
        );
        assert!(lookup(Comparison::ColdSlowerThanNvm, Some("distro")).is_none());
    }
}
