//! Grouped bar charts like N-Docker's figures 4–8: one figure per metric and
//! rate, the categories and "all" on the x axis, one bar per system with a
//! whisker for the range. PNG (plotters' bitmap backend) and SVG.
//!
//! Text is drawn with plotters' `ab_glyph` backend from a TTF file read at
//! run time, so no fontconfig/freetype is needed.

use super::aggregate::{Metric, Report, ALL};
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Fonts tried in order when --font is not given (Debian fonts-dejavu-core
/// first).
pub const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 560;

/// Docker grey, NVM-Docker blue, LASS orange, LASS+hot green, then more.
const COLORS: [RGBColor; 8] = [
    RGBColor(110, 110, 110),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

static FONT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Registers the sans-serif font once per process.
pub fn load_font(explicit: Option<&Path>) -> Result<PathBuf> {
    let r = FONT.get_or_init(|| {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => FONT_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    format!(
                        "no font found (tried {}); install the Debian package fonts-dejavu-core \
                         (testbed/install-deps.sh) or pass --font FILE.ttf, or --no-plots",
                        FONT_CANDIDATES.join(", ")
                    )
                })?,
        };
        let data = std::fs::read(&path)
            .map_err(|e| format!("cannot read font {}: {e}", path.display()))?;
        // plotters keeps the bytes for the life of the process.
        let data: &'static [u8] = Box::leak(data.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, data)
            .map_err(|_| format!("{} is not a TrueType/OpenType font", path.display()))?;
        Ok(path)
    });
    r.clone().map_err(|e| anyhow!(e))
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    v: f64,
    lo: f64,
    hi: f64,
}

struct Series {
    label: String,
    values: Vec<Option<Bar>>,
}

struct Figure {
    title: String,
    y_desc: String,
    groups: Vec<String>,
    series: Vec<Series>,
    log: bool,
}

fn figure(r: &Report, rate_idx: usize, m: Metric) -> Figure {
    let rr = &r.rates[rate_idx];
    let scale = if m.is_time() { 1000.0 } else { 1024.0 * 1024.0 };
    let series = r
        .systems
        .iter()
        .map(|s| Series {
            label: s.label.clone(),
            values: rr
                .groups
                .iter()
                .map(|g| {
                    let a = g.systems.get(&s.id)?.get(&m)?;
                    Some(Bar {
                        v: a.value / scale,
                        lo: a.lo / scale,
                        hi: a.hi / scale,
                    })
                })
                .collect(),
        })
        .collect();
    let y_desc = if m.is_time() {
        "seconds (mean over images of per-image medians)".to_string()
    } else {
        "MiB, log scale (sum over images of per-image medians)".to_string()
    };
    Figure {
        title: format!("{} — registry link {}", m.title(), rr.rate),
        y_desc,
        groups: rr
            .groups
            .iter()
            .map(|g| {
                if g.group == ALL {
                    "all".to_string()
                } else {
                    format!("{} ({})", g.group, g.images.len())
                }
            })
            .collect(),
        series,
        log: !m.is_time(),
    }
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB, Y>(root: &DrawingArea<DB, Shift>, f: &Figure, y: Y, y_floor: f64) -> DrawResult<DB>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    root.fill(&WHITE)?;
    let n = f.groups.len();
    let groups = f.groups.clone();
    let mut chart = ChartBuilder::on(root)
        .caption(&f.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < groups.len() {
                groups[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y: &f64| {
            if y.abs() >= 10.0 {
                format!("{y:.0}")
            } else {
                let s = format!("{y:.3}");
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            }
        })
        .x_desc("image category (number of images)")
        .y_desc(f.y_desc.as_str())
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    let k = f.series.len().max(1) as f64;
    let width = 0.8 / k;
    for (si, s) in f.series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let x0 = |gi: usize| gi as f64 - 0.4 + si as f64 * width;
        let bars = s.values.iter().enumerate().filter_map(|(gi, b)| {
            let b = (*b)?;
            let top = b.v.max(y_floor);
            Some(Rectangle::new(
                [
                    (x0(gi) + 0.05 * width, y_floor),
                    (x0(gi) + 0.95 * width, top),
                ],
                color.filled(),
            ))
        });
        chart
            .draw_series(bars)?
            .label(s.label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let whiskers = s.values.iter().enumerate().filter_map(|(gi, b)| {
            let b = (*b)?;
            let xc = x0(gi) + 0.5 * width;
            let cap = 0.2 * width;
            let (lo, hi) = (b.lo.max(y_floor), b.hi.max(y_floor));
            Some(PathElement::new(
                vec![
                    (xc - cap, lo),
                    (xc + cap, lo),
                    (xc, lo),
                    (xc, hi),
                    (xc - cap, hi),
                    (xc + cap, hi),
                ],
                BLACK.stroke_width(1),
            ))
        });
        chart.draw_series(whiskers)?;
        // No data: "n/a"; a zero (e.g. Docker's pmem usage): "0".
        let notes = s.values.iter().enumerate().filter_map(|(gi, b)| {
            let text = match b {
                None => "n/a",
                Some(b) if b.v <= y_floor => "0",
                Some(_) => return None,
            };
            Some(Text::new(
                text,
                (x0(gi) + 0.1 * width, y_floor),
                ("sans-serif", 11)
                    .into_font()
                    .transform(FontTransform::Rotate270),
            ))
        });
        chart.draw_series(notes)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn y_range(f: &Figure) -> (f64, f64, f64) {
    let vals = f
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .flat_map(|b| [b.v, b.hi]);
    if f.log {
        let pos: Vec<f64> = vals.filter(|v| *v > 0.0).collect();
        let max = pos.iter().copied().fold(1.0, f64::max);
        let min = pos.iter().copied().fold(max, f64::min);
        let lo = 10f64.powf((min / 2.0).log10().floor());
        // headroom for the legend (a factor on a log axis)
        let hi = 10f64.powf((max * 8.0).log10().ceil());
        (lo, hi, lo)
    } else {
        let max = vals.fold(0.0, f64::max);
        let hi = if max > 0.0 { max * 1.35 } else { 1.0 };
        (0.0, hi, 0.0)
    }
}

fn render_one<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, f: &Figure) -> Result<()> {
    let (lo, hi, floor) = y_range(f);
    let r = if f.log {
        draw(&root, f, (lo..hi).log_scale(), floor)
    } else {
        draw(&root, f, lo..hi, floor)
    };
    r.map_err(|e| anyhow!("{e}"))
}

/// Writes `plots/<metric>-<rate>.{png,svg}` under `dir`; returns the paths
/// relative to `dir`.
pub fn render_all(r: &Report, dir: &Path, font: Option<&Path>) -> Result<Vec<String>> {
    load_font(font)?;
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)
        .with_context(|| format!("cannot create {}", plots.display()))?;
    let mut out = Vec::new();
    for (ri, rr) in r.rates.iter().enumerate() {
        if rr.rate.contains(['/', '\\']) || rr.rate.starts_with('.') {
            bail!("rate name {:?} cannot be used in a file name", rr.rate);
        }
        for m in Metric::MAIN {
            let f = figure(r, ri, m);
            let stem = format!("{}-{}", m.key(), rr.rate);
            let png = plots.join(format!("{stem}.png"));
            let svg = plots.join(format!("{stem}.svg"));
            render_one(
                BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area(),
                &f,
            )
            .with_context(|| format!("drawing {}", png.display()))?;
            render_one(
                SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area(),
                &f,
            )
            .with_context(|| format!("drawing {}", svg.display()))?;
            out.push(format!("plots/{stem}.png"));
            out.push(format!("plots/{stem}.svg"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{aggregate, fixture, samples::Samples};
    use super::*;

    #[test]
    fn renders_png_and_svg() {
        let s = Samples::parse(&fixture::jsonl(), "fixture.jsonl").expect("parses");
        let r = aggregate::aggregate(s, "fixture.jsonl");
        let dir = tempfile::tempdir().expect("tempdir");
        let files = render_all(&r, dir.path(), None).expect("render");
        assert_eq!(files.len(), 2 * 5 * 2);
        for m in Metric::MAIN {
            for rate in fixture::RATES {
                for ext in ["png", "svg"] {
                    let p = dir.path().join(format!("plots/{}-{rate}.{ext}", m.key()));
                    let data = std::fs::read(&p).expect("plot file exists");
                    assert!(
                        data.len() > 5000,
                        "{} is only {} bytes",
                        p.display(),
                        data.len()
                    );
                    if ext == "png" {
                        assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n");
                    } else {
                        let text = String::from_utf8(data).expect("utf-8 svg");
                        assert!(text.contains("<svg") && text.contains("nvtier LASS+hot"));
                        assert!(text.contains(rate));
                    }
                }
            }
        }
    }
}
