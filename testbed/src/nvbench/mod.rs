//! `nvbench report`: turns the JSON-lines samples of testbed/nvbench.sh into
//! results.json, nvbench.md and plots/*.{png,svg}.

pub mod aggregate;
#[cfg(test)]
mod fixture;
pub mod markdown;
pub mod paper;
pub mod plots;
pub mod samples;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The JSON-lines samples file written by testbed/nvbench.sh.
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// Output directory (created, with DIR/plots): results.json,
    /// nvbench.md, plots/<metric>-<rate>.{png,svg}.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// TrueType font for the plots [default: DejaVuSans.ttf of
    /// fonts-dejavu-core, or another found in /usr/share/fonts].
    #[arg(long, value_name = "FILE")]
    pub font: Option<PathBuf>,
    /// Write results.json and nvbench.md only.
    #[arg(long)]
    pub no_plots: bool,
}

fn write(path: &Path, data: &str) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run_report(a: ReportArgs) -> Result<()> {
    let s = samples::Samples::read(&a.samples)?;
    for w in &s.warnings {
        eprintln!("nvbench report: warning: {w}");
    }
    let r = aggregate::aggregate(s, &a.samples.display().to_string());
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create {}", a.out_dir.display()))?;
    let json = serde_json::to_string_pretty(&r).context("cannot serialize the results")?;
    let json_path = a.out_dir.join("results.json");
    write(&json_path, &(json + "\n"))?;
    // Plots before the Markdown, which links them; the JSON is written
    // already if the plots fail.
    let plot_files = if a.no_plots {
        Vec::new()
    } else {
        plots::render_all(&r, &a.out_dir, a.font.as_deref())
            .context("plotting failed (results.json is written; --no-plots skips the plots)")?
    };
    let md_path = a.out_dir.join("nvbench.md");
    write(&md_path, &markdown::render(&r, &plot_files))?;
    eprintln!(
        "nvbench report: {} rates, {} systems, {} images -> {}, {}{}",
        r.rates.len(),
        r.systems.len(),
        r.images.len(),
        json_path.display(),
        md_path.display(),
        if plot_files.is_empty() {
            String::new()
        } else {
            format!(
                ", {} plot files in {}",
                plot_files.len(),
                a.out_dir.join("plots").display()
            )
        }
    );
    Ok(())
}
