//! nvbench.md: the Markdown report of an aggregated run.

use super::aggregate::{Agg, GroupAgg, ImageRow, Metric, Paired, RateReport, Report, Stat, ALL};
use super::paper::{self, Comparison, Form};
use std::fmt::Write as _;

const DASH: &str = "–";

/// Seconds from ms, 3 significant digits or so.
pub fn secs(ms: f64) -> String {
    let s = ms / 1000.0;
    if s.abs() >= 100.0 {
        format!("{s:.0}")
    } else if s.abs() >= 10.0 {
        format!("{s:.1}")
    } else {
        format!("{s:.2}")
    }
}

pub fn bytes(b: f64) -> String {
    const K: f64 = 1024.0;
    if b >= K * K * K {
        format!("{:.2} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1} MiB", b / (K * K))
    } else if b >= K {
        format!("{:.1} KiB", b / K)
    } else {
        format!("{b:.0} B")
    }
}

fn count(v: f64) -> String {
    format!("{v:.0}")
}

fn value(m: Metric, v: f64) -> String {
    if m.is_time() {
        secs(v)
    } else if matches!(m, Metric::DiskReadIos | Metric::DiskWriteIos) {
        count(v)
    } else {
        bytes(v)
    }
}

fn agg_cell(m: Metric, a: Option<&Agg>) -> String {
    match a {
        Some(a) => {
            let (v, lo, hi) = (value(m, a.value), value(m, a.lo), value(m, a.hi));
            // one rep, or pmem bytes: no range to show
            let mut s = if lo == hi {
                v
            } else {
                format!("{v} ({lo}–{hi})")
            };
            if a.images < a.of {
                let _ = write!(s, " [{}/{}]", a.images, a.of);
            }
            s
        }
        None => DASH.into(),
    }
}

fn star(p: &Paired) -> &'static str {
    if p.images < p.of {
        "*"
    } else {
        ""
    }
}

fn factor(p: Option<Paired>) -> String {
    match p {
        Some(p) => format!("{:.2}×{}", p.value, star(&p)),
        None => DASH.into(),
    }
}

fn pct(p: Option<Paired>) -> String {
    match p {
        Some(p) => format!("{:.1} %{}", 100.0 * p.value, star(&p)),
        None => DASH.into(),
    }
}

/// A published value at its published precision (up to 2 decimals).
fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn signed(x: f64, digits: usize, exact: bool) -> String {
    let body = if exact {
        trim(x.abs())
    } else {
        format!("{:.*}", digits, x.abs())
    };
    let sign = if body.trim_start_matches(['0', '.']).is_empty() {
        ""
    } else if x < 0.0 {
        "−"
    } else {
        "+"
    };
    format!("{sign}{body}")
}

/// A comparison value in the paper's form; `exact` keeps the published
/// precision.
fn form_value(c: Comparison, v: f64, exact: bool) -> String {
    let p = |x: f64| {
        if exact {
            trim(x)
        } else {
            format!("{x:.1}")
        }
    };
    match c.form() {
        Form::Share | Form::Saved => format!("{} %", p(100.0 * v)),
        // A reduction r is a change of -r.
        Form::Reduction => format!("{} %", signed(-100.0 * v, 1, exact)),
        Form::Slower => format!("{} %", signed(100.0 * v, 1, exact)),
        Form::Factor => format!("{}×", if exact { trim(v) } else { format!("{v:.2}") }),
    }
}

fn short_source(s: &str) -> &str {
    s.split_once(':').map_or(s, |(a, _)| a)
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn render(r: &Report, plots: &[String]) -> String {
    let mut o = String::new();
    header(&mut o, r);
    health(&mut o, r);
    for rr in &r.rates {
        rate_section(&mut o, r, rr);
    }
    if !plots.is_empty() {
        let _ = writeln!(o, "## Plots\n");
        for p in plots.iter().filter(|p| p.ends_with(".png")) {
            let svg = p.trim_end_matches(".png").to_string() + ".svg";
            let _ = writeln!(o, "![{p}]({p}) ([SVG]({svg}))\n");
        }
    }
    paper_section(&mut o);
    o
}

fn header(o: &mut String, r: &Report) {
    let m = &r.meta;
    let _ = writeln!(
        o,
        "# NVBench: deploy and cold start of {} storage systems, HelloBench-style\n",
        r.systems.len()
    );
    let opt = |v: Option<String>| v.unwrap_or_else(|| DASH.into());
    let machine = m.machine.as_ref().map(|x| {
        format!(
            "{}, {} cores, {} RAM, kernel {}",
            x.cpu.as_deref().unwrap_or("unknown CPU"),
            x.nproc.map_or(DASH.into(), |n| n.to_string()),
            x.mem_total_kib
                .map_or(DASH.into(), |k| bytes(k as f64 * 1024.0)),
            x.kernel.as_deref().unwrap_or(DASH)
        )
    });
    let rates: Vec<&str> = r.rates.iter().map(|x| x.rate.as_str()).collect();
    match (&m.started, &m.date) {
        (Some(a), Some(b)) if a != b => {
            let _ = writeln!(o, "- Date: {a} to {b}");
        }
        _ => {
            let _ = writeln!(o, "- Date: {}", opt(m.date.clone()));
        }
    }
    let _ = writeln!(o, "- Machine: {}", opt(machine));
    let _ = writeln!(
        o,
        "- Reps: {}{}",
        opt(m.reps.map(|x| x.to_string())),
        if m.quick == Some(true) {
            " (quick run)"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "- Rates: {}", rates.join(", "));
    let _ = writeln!(o, "- Engine: {}", opt(m.engine.clone()));
    if let Some(h) = &m.hdd {
        let text = match h.as_object() {
            Some(obj) => obj
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            None => h.to_string(),
        };
        let _ = writeln!(o, "- HDD emulation: {}", esc(&text));
    }
    if let Some(p) = &m.pmem {
        let _ = writeln!(o, "- pmem tier: {}", esc(p));
    }
    if let Some(s) = m.run_seconds {
        let runs = match m.runs {
            Some(n) if n > 1 => format!(" over {n} runs (`--resume`)"),
            _ => String::new(),
        };
        let _ = writeln!(o, "- Run time: {s:.0} s{runs}");
    }
    if let (Some(d), Some(t)) = (m.cells_done, m.cells_total) {
        if d < t {
            let _ = writeln!(
                o,
                "- **Incomplete:** {d} of {t} (rate, image) cells measured; \
                 run the same command with `--resume` to measure the rest"
            );
        } else {
            let _ = writeln!(o, "- Cells: all {t} (rate, image) cells measured");
        }
    }
    let _ = writeln!(
        o,
        "- Samples: `{}` ({} lines){}\n",
        r.samples_file,
        r.sample_lines,
        if r.meta_present {
            ""
        } else {
            ", **no meta line**"
        }
    );
    let _ = writeln!(o, "| system | id | description |\n|---|---|---|");
    for s in &r.systems {
        let _ = writeln!(
            o,
            "| {} | `{}` | {} |",
            esc(&s.label),
            s.id,
            esc(s.desc.as_deref().unwrap_or(DASH))
        );
    }
    let _ = writeln!(
        o,
        "\n| category | image | ready when | layers | compressed | unpacked |\n|---|---|---|---|---|---|"
    );
    for i in &r.images {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            i.category,
            i.name,
            esc(i.ready.as_deref().unwrap_or(DASH)),
            i.layers.map_or(DASH.into(), |l| l.to_string()),
            i.compressed_bytes.map_or(DASH.into(), |b| bytes(b as f64)),
            i.unpacked_bytes.map_or(DASH.into(), |b| bytes(b as f64)),
        );
    }
    let _ = writeln!(o, "\nHow the numbers are aggregated:\n");
    for rule in r.rules {
        let _ = writeln!(o, "- {rule}");
    }
    let _ = writeln!(
        o,
        "- Times in seconds, bytes in KiB/MiB/GiB (1024-based); a range is shown when min ≠ max; \
         \"–\" marks a cell without data.\n"
    );
    if !r.warnings.is_empty() {
        let _ = writeln!(o, "Warnings from the parser:\n");
        for w in &r.warnings {
            let _ = writeln!(o, "- {}", esc(w));
        }
        o.push('\n');
    }
}

fn health(o: &mut String, r: &Report) {
    let _ = writeln!(o, "## Honesty checks, errors and failed samples\n");
    if r.checks.is_empty() {
        let _ = writeln!(o, "No `check` samples: **nothing verified the setup.**\n");
    } else {
        let pass = r.checks.iter().filter(|c| c.s.ok).count();
        let _ = writeln!(
            o,
            "{pass} of {} checks pass{}\n",
            r.checks.len(),
            if pass < r.checks.len() {
                ": **some checks FAILED**"
            } else {
                "."
            }
        );
        let _ = writeln!(o, "| check | result | detail |\n|---|---|---|");
        for c in &r.checks {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                esc(&c.s.name),
                if c.s.ok { "pass" } else { "**FAIL**" },
                esc(c.s.detail.as_deref().unwrap_or(""))
            );
        }
        o.push('\n');
    }
    if r.errors.is_empty() {
        let _ = writeln!(o, "No `error` samples.\n");
    } else {
        let _ = writeln!(
            o,
            "{} `error` samples:\n\n| line | rate | system | image | stage | message |\n|---|---|---|---|---|---|",
            r.errors.len()
        );
        for e in &r.errors {
            let f = |x: &Option<String>| esc(x.as_deref().unwrap_or(DASH));
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                e.line,
                f(&e.s.rate),
                f(&e.s.system),
                f(&e.s.image),
                f(&e.s.stage),
                esc(&e.s.message)
            );
        }
        o.push('\n');
    }
    if r.failed.is_empty() {
        let _ = writeln!(o, "No failed (`ok: false`) samples.\n");
    } else {
        let _ = writeln!(
            o,
            "{} failed (`ok: false`) samples, not counted in the statistics:\n\n| line | kind | rate | system | image | rep |\n|---|---|---|---|---|---|",
            r.failed.len()
        );
        for f in &r.failed {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                f.line,
                f.kind,
                f.rate,
                r.label(&f.system),
                f.image,
                f.rep
            );
        }
        o.push('\n');
    }
}

fn rate_section(o: &mut String, r: &Report, rr: &RateReport) {
    let _ = writeln!(o, "## Rate {}\n", rr.rate);
    let docker = r.roles.docker.as_deref().map(|d| r.label(d));
    let nvm = r.roles.nvm.as_deref().map(|d| r.label(d));
    let docker = docker.as_deref().unwrap_or("Docker (missing)");
    let nvm = nvm.as_deref().unwrap_or("NVM-Docker (missing)");
    for g in &rr.groups {
        group_section(o, r, rr, g, docker, nvm);
    }
    per_image(o, r, rr);
    disk_tier(o, r, rr);
    startup_read(o, rr);
}

fn group_section(
    o: &mut String,
    r: &Report,
    rr: &RateReport,
    g: &GroupAgg,
    docker: &str,
    nvm: &str,
) {
    let title = if g.group == ALL {
        "all images"
    } else {
        g.group.as_str()
    };
    let _ = writeln!(
        o,
        "### {} — {title} ({} image{}{})\n",
        rr.rate,
        g.images.len(),
        if g.images.len() == 1 { "" } else { "s" },
        // the overall group's list is the image table above
        if g.group == ALL {
            String::new()
        } else {
            format!(": {}", g.images.join(", "))
        }
    );
    let times = [
        Metric::DeployMs,
        Metric::StoreAfterDownloadMs,
        Metric::ColdstartMs,
    ];
    let _ = write!(o, "| system |");
    for m in times {
        let _ = write!(
            o,
            " {}, s | speed-up vs {docker} | ratio to {nvm} |",
            match m {
                Metric::DeployMs => "deploy",
                Metric::StoreAfterDownloadMs => "store after download",
                _ => "cold start",
            }
        );
    }
    let _ = writeln!(o, "\n|---|{}", "---|---|---|".repeat(times.len()));
    for s in &r.systems {
        let aggs = g.systems.get(&s.id);
        let ratios = g.ratios.get(&s.id);
        let _ = write!(o, "| {} |", esc(&s.label));
        for m in times {
            let rt = ratios.and_then(|x| x.get(&m));
            let _ = write!(
                o,
                " {} | {} | {} |",
                agg_cell(m, aggs.and_then(|a| a.get(&m))),
                factor(rt.and_then(|x| x.speedup_vs_docker)),
                factor(rt.and_then(|x| x.ratio_to_nvm)),
            );
        }
        o.push('\n');
    }
    let pm = [
        Metric::PmemAfterDeployBytes,
        Metric::PmemAfterMigrationBytes,
    ];
    let _ = writeln!(
        o,
        "\n| system | pmem after deploy | saved vs {nvm} | pmem after migration | saved vs {nvm} |\n|---|---|---|---|---|"
    );
    for s in &r.systems {
        let aggs = g.systems.get(&s.id);
        let ratios = g.ratios.get(&s.id);
        let _ = write!(o, "| {} |", esc(&s.label));
        for m in pm {
            let rt = ratios.and_then(|x| x.get(&m));
            let _ = write!(
                o,
                " {} | {} |",
                agg_cell(m, aggs.and_then(|a| a.get(&m))),
                pct(rt.and_then(|x| x.saved_vs_nvm)),
            );
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "\nSide by side with N-Docker (LASS = N-Docker at deploy, LASS+hot = N-Docker after HBCSA):\n\n\
         | comparison | ours | N-Docker paper | where |\n|---|---|---|---|"
    );
    for row in &g.vs_paper {
        let c = row.comparison;
        let ours = match row.ours {
            Some(p) => format!("{}{}", form_value(c, p.value, false), star(&p)),
            None => DASH.into(),
        };
        let (pv, src) = match &row.paper {
            Some(f) => (form_value(c, f.value, true), short_source(f.source)),
            None => (DASH.into(), ""),
        };
        let _ = writeln!(o, "| {} | {ours} | {pv} | {src} |", c.label());
    }
    o.push('\n');
}

fn cell<'a>(row: &'a ImageRow, sys: &str, m: Metric) -> Option<&'a Stat> {
    row.systems.get(sys)?.get(&m)
}

fn per_image(o: &mut String, r: &Report, rr: &RateReport) {
    let _ = writeln!(
        o,
        "### {} — per image (medians, s; ✗ = only failed reps, – = no sample)\n",
        rr.rate
    );
    let _ = write!(o, "| category | image |");
    for (what, _) in [("cold start", ()), ("deploy", ())] {
        for s in &r.systems {
            let _ = write!(o, " {what}: {} |", esc(&s.label));
        }
    }
    let _ = writeln!(o, "\n|---|---|{}", "---|".repeat(2 * r.systems.len()));
    for row in &rr.images {
        let _ = write!(o, "| {} | {} |", row.category, row.image);
        for (m, failed) in [
            (Metric::ColdstartMs, &row.coldstart_failed),
            (Metric::DeployMs, &row.deploy_failed),
        ] {
            for s in &r.systems {
                let v = match cell(row, &s.id, m) {
                    Some(st) => secs(st.median),
                    None if failed.contains_key(&s.id) => "✗".into(),
                    None => DASH.into(),
                };
                let _ = write!(o, " {v} |");
            }
        }
        o.push('\n');
    }
    o.push('\n');
}

fn disk_tier(o: &mut String, r: &Report, rr: &RateReport) {
    let _ = writeln!(
        o,
        "### {} — disk-tier bytes and I/Os per cold start\n\n\
         Over all ok cold starts of the system at this rate: median (max). The goal for LASS+hot is \
         zero disk-tier reads (every file the start needs is on pmem); writes are shown but not judged.\n\n\
         | system | cold starts | read I/Os | read bytes | write I/Os | write bytes | starts reading the disk | verdict |\n\
         |---|---|---|---|---|---|---|---|",
        rr.rate
    );
    for d in &rr.disk_tier {
        let mx = |m: Metric, s: &Option<Stat>| match s {
            Some(s) => format!("{} ({})", value(m, s.median), value(m, s.max)),
            None => DASH.into(),
        };
        let is_hot = r.roles.hot.as_deref() == Some(d.system.as_str());
        let verdict = if !is_hot {
            DASH.to_string()
        } else if d.measured < d.coldstarts {
            format!(
                "**NOT MEASURED** for {} of {} cold starts",
                d.coldstarts - d.measured,
                d.coldstarts
            )
        } else if d.starts_with_reads > 0 {
            format!(
                "**MISS**: {} of {} cold starts read the disk tier ({})",
                d.starts_with_reads,
                d.coldstarts,
                d.images_with_reads.join(", ")
            )
        } else {
            format!("goal met: no disk reads in {} cold starts", d.coldstarts)
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {verdict} |",
            esc(&r.label(&d.system)),
            d.coldstarts,
            mx(Metric::DiskReadIos, &d.read_ios),
            mx(Metric::DiskReadBytes, &d.read_bytes),
            mx(Metric::DiskWriteIos, &d.write_ios),
            mx(Metric::DiskWriteBytes, &d.write_bytes),
            d.starts_with_reads,
        );
    }
    if rr.disk_tier.is_empty() {
        let _ = writeln!(o, "| no cold starts | | | | | | | |");
    }
    o.push('\n');
}

fn startup_read(o: &mut String, rr: &RateReport) {
    if rr.startup_read.is_empty() {
        let _ = writeln!(
            o,
            "### {} — bytes read at startup as a share of image bytes\n\n\
             No `startup_read` samples at this rate.\n",
            rr.rate
        );
        return;
    }
    let _ = writeln!(
        o,
        "### {} — bytes read at startup as a share of image bytes\n\n\
         | category | image | files read | bytes read | image bytes | share |\n|---|---|---|---|---|---|",
        rr.rate
    );
    for s in &rr.startup_read {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            s.category,
            s.image,
            s.hot_files.map_or(DASH.into(), |f| f.to_string()),
            bytes(s.hot_bytes as f64),
            bytes(s.image_bytes as f64),
            s.share
                .map_or(DASH.into(), |x| format!("{:.1} %", 100.0 * x)),
        );
    }
    let share = |x: Option<f64>| x.map_or(DASH.into(), |x| format!("{:.1} %", 100.0 * x));
    let _ = writeln!(
        o,
        "| all | total (median per image) | | | | {} ({}) |\n\n\
         Slacker/HelloBench: {:.1} % — {}.\n",
        share(rr.startup_read_total_share),
        share(rr.startup_read_median_share),
        100.0 * paper::SLACKER_STARTUP_READ_SHARE,
        paper::SLACKER_SOURCE
    );
}

fn paper_section(o: &mut String) {
    let _ = writeln!(
        o,
        "## N-Docker's published figures\n\n\
         Gu et al., \"N-Docker: A NVM-HDD Hybrid Docker Storage Framework to Improve Docker \
         Performance\", NPC 2019 (HAL hal-03770568). Only numbers stated in the text are used; \
         the figures' bars are not read off.\n\n\
         | comparison | category | value | where (quoted) |\n|---|---|---|---|"
    );
    for f in paper::N_DOCKER {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            f.comparison.label(),
            f.category.unwrap_or("average / overall"),
            form_value(f.comparison, f.value, true),
            esc(f.source)
        );
    }
    o.push('\n');
    for n in paper::N_DOCKER_NOTES {
        let _ = writeln!(o, "- {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::{aggregate, fixture, samples::Samples};
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(secs(5234.1), "5.23");
        assert_eq!(secs(52341.0), "52.3");
        assert_eq!(bytes(123456789.0), "117.7 MiB");
        assert_eq!(trim(21.14), "21.14");
        assert_eq!(trim(26.70), "26.7");
        assert_eq!(trim(0.0), "0");
        let c = Comparison::DeployReductionVsDocker;
        assert_eq!(form_value(c, 0.2114, true), "−21.14 %");
        assert_eq!(form_value(c, -0.05, false), "+5.0 %");
        assert_eq!(
            form_value(Comparison::ColdSlowerThanNvm, 0.02, true),
            "+2 %"
        );
        assert_eq!(
            form_value(Comparison::ColdSpeedupVsDocker, 2.96, true),
            "2.96×"
        );
        assert_eq!(
            form_value(Comparison::PmemDeploySavedVsNvm, 0.0, true),
            "0 %"
        );
    }

    #[test]
    fn report_has_every_section() {
        let s = Samples::parse(&fixture::jsonl(), "fixture.jsonl").expect("parses");
        let r = aggregate::aggregate(s, "fixture.jsonl");
        let md = render(&r, &["plots/deploy-1gbit.png".into()]);
        for needle in [
            "- Date: 2026-11-21T09:00:00Z to 2026-11-22T10:00:00Z",
            "- Run time: 1234 s over 2 runs",
            "**Incomplete:** 7 of 8 (rate, image) cells measured",
            "Test CPU, 2 cores",
            "- Rates: 100mbit, 1gbit",
            "### 100mbit — language (2 images: python, node)",
            "### 1gbit — all images (4 images",
            "| nvtier LASS+hot | 6.93 (6.24–7.63) [3/4] |",
            "**MISS**: 1 of 9 cold starts read the disk tier (python)",
            "goal met: no disk reads in 12 cold starts",
            "| check | result | detail |",
            "| hot_no_disk_reads | **FAIL** | 1 read |",
            "registry timed out",
            " | deploy | 100mbit | Docker | node | 4 |",
            "| deploy time, LASS vs Docker | −20.0 % | −26.7 % | §3.2, Fig. 4 |",
            "| all | total (median per image) | | | | 5.0 % (5.0 %) |",
            "![plots/deploy-1gbit.png](plots/deploy-1gbit.png)",
            "88.22 %",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        // the per-image table of 1gbit: hot has no nginx sample at all
        assert!(md.contains("| web-server | nginx | 0.90 | 0.27 | 0.85 | – |"));
        // a web-server row the paper gives no deploy figure for
        assert!(md.contains("| deploy time, LASS vs Docker | −20.0 % | – |  |"));
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::super::{aggregate, samples::Samples};
    use super::*;

    fn md(lines: &[&str]) -> String {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let r = aggregate::aggregate(Samples::parse(&text, "t").expect("parses"), "t");
        render(&r, &[])
    }

    #[test]
    fn unmeasured_disk_reads_are_not_a_pass_and_failed_cells_show() {
        let out = md(&[
            r#"{"kind":"coldstart","rate":"1gbit","system":"hot","image":"x","rep":1,"ok":true,"ms":100}"#,
            r#"{"kind":"deploy","rate":"1gbit","system":"hot","image":"x","rep":1,"ok":false}"#,
        ]);
        assert!(
            out.contains("**NOT MEASURED** for 1 of 1 cold starts"),
            "{out}"
        );
        assert!(out.contains("| other | x | 0.10 | ✗ |"), "{out}");
        assert!(
            out.contains("No `startup_read` samples at this rate."),
            "{out}"
        );
        assert!(out.contains("No `check` samples: **nothing verified the setup.**"));
        assert!(out.contains("**no meta line**"));
    }
}
