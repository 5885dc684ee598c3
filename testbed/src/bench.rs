//! `nvbench pull`: deployment (pull) time under the three placements.

use crate::proc::{self, run_ok, Opts};
use crate::pull_model::{
    command_line, image_set, machine, now_utc, rate_bits_per_s, PullReport, Sample, PLACEMENTS,
};
use crate::report::{self, Results};
use crate::testbed::Testbed;
use anyhow::{bail, Context, Result};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Where build-image.sh keeps the OCI layout (reused across runs).
const IMAGE_DIR: &str = "/var/tmp/nvtier-bench-images/oci";

/// Command-line options of `nvbench pull`.
#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// Repetitions of every (image, placement) [default: 5, 3 with --quick]
    #[arg(long)]
    pub reps: Option<usize>,
    /// Registry link rate (tbf), e.g. 1gbit, 100mbit, none.
    #[arg(long, default_value = "1gbit")]
    pub rate: String,
    /// Only the images `mid` and `top`, 3 reps by default; results go to
    /// pull-RATE-quick.{json,md} unless --out/--markdown say otherwise.
    #[arg(long)]
    pub quick: bool,
    /// Results JSON [default: testbed/results/pull-RATE.json]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Markdown report [default: testbed/results/pull-RATE.md]
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// nvtier binary [default: target/release/nvtier of the repository]
    #[arg(long)]
    pub nvtier: Option<PathBuf>,
    /// Testbed NAME (1-12 of [a-z0-9-]).
    #[arg(long, default_value = "bench")]
    pub name: String,
}

/// The directory holding tiers.sh & co: found upwards from the cwd, else
/// this crate's source directory.
pub fn find_scripts() -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("no current directory")?;
    for d in cwd.ancestors() {
        let t = d.join("testbed");
        if t.join("tiers.sh").is_file() && t.join("registry.sh").is_file() {
            return Ok(t);
        }
        if d.join("tiers.sh").is_file() && d.join("registry.sh").is_file() {
            return Ok(d.to_path_buf());
        }
    }
    let t = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if t.join("tiers.sh").is_file() {
        return Ok(t);
    }
    bail!("cannot find testbed/tiers.sh (run from the nvtier repository)")
}

fn rate_label(rate: &str) -> Result<String> {
    let r = rate.trim().to_ascii_lowercase();
    if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
        bail!("--rate '{rate}' must look like 1gbit, 100mbit or none");
    }
    Ok(r)
}

fn resolve_nvtier(arg: Option<&Path>, scripts: &Path) -> Result<PathBuf> {
    let p = match arg {
        Some(p) => p.to_path_buf(),
        None => {
            let repo = scripts.parent().unwrap_or(scripts);
            let t = repo.join("target/release/nvtier");
            if t.is_file() {
                t
            } else {
                bail!(
                    "no --nvtier given and {} does not exist (cargo build --release -p nvtier-driver)",
                    t.display()
                );
            }
        }
    };
    std::fs::canonicalize(&p).with_context(|| format!("nvtier binary {}", p.display()))
}

/// Runs nvtier maintenance commands (not throttled, not measured).
struct Nvtier<'a> {
    bin: &'a Path,
    config: &'a Path,
}

impl Nvtier<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.env("NVTIER_CONFIG", self.config).args(args);
        c
    }

    fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = run_ok(&mut self.cmd(args), Opts::new(120))?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("`nvtier {}` did not print JSON", args.join(" ")))
    }

    /// Remove every image (and unreferenced layer); verify the store is empty.
    fn empty_store(&self) -> Result<()> {
        let images = self.json(&["images", "--json"])?;
        for im in images.as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(name) = im.get("name").and_then(|n| n.as_str()) {
                run_ok(&mut self.cmd(&["rm", name]), Opts::new(120))?;
            }
        }
        let mut st = self.json(&["status", "--json"])?;
        if st.get("layers").and_then(|v| v.as_u64()) != Some(0) {
            run_ok(&mut self.cmd(&["gc"]), Opts::new(120))?;
            st = self.json(&["status", "--json"])?;
        }
        let field = |k: &str| st.get(k).and_then(|v| v.as_u64());
        if field("images") != Some(0)
            || field("pmem_used_bytes") != Some(0)
            || field("layers") != Some(0)
        {
            bail!(
                "the store is not empty after `nvtier rm`: images={:?} layers={:?} pmem_used_bytes={:?}",
                field("images"),
                field("layers"),
                field("pmem_used_bytes")
            );
        }
        Ok(())
    }
}

fn drop_caches() -> Result<()> {
    run_ok(&mut Command::new("sync"), Opts::new(300))?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("writing /proc/sys/vm/drop_caches")
}

fn parse_pull_json(stdout: &str) -> Result<PullReport> {
    nvtier_testbed::pull_report::parse(stdout)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn other_testbeds(own: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/nvtier-testbed")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != own)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn run_pull(args: PullArgs) -> Result<()> {
    let t_start = Instant::now();
    let reps = args.reps.unwrap_or(if args.quick { 3 } else { 5 });
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    let rate = rate_label(&args.rate)?;
    let scripts = find_scripts()?;
    let nvtier = resolve_nvtier(args.nvtier.as_deref(), &scripts)?;
    let suffix = if args.quick { "-quick" } else { "" };
    let results_dir = scripts.join("results");
    let out_json = args
        .out
        .clone()
        .unwrap_or_else(|| results_dir.join(format!("pull-{rate}{suffix}.json")));
    let out_md = args
        .markdown
        .clone()
        .unwrap_or_else(|| results_dir.join(format!("pull-{rate}{suffix}.md")));
    let date = now_utc();
    let machine = machine();
    let loadavg_start = loadavg();
    let other_testbeds = other_testbeds(&args.name);
    let git_commit = {
        let repo = scripts.parent().unwrap_or(&scripts).to_string_lossy();
        let c = command_line("git", &["-C", &repo, "rev-parse", "--short", "HEAD"]);
        let dirty = command_line("git", &["-C", &repo, "status", "--porcelain"]);
        if c.is_empty() {
            "unknown".into()
        } else if dirty.is_empty() {
            c
        } else {
            format!("{c}+dirty")
        }
    };
    let mut images = image_set(args.quick);
    eprintln!(
        "nvbench pull: {} images x {} placements x {} reps at {rate}, nvtier {}",
        images.len(),
        PLACEMENTS.len(),
        reps,
        nvtier.display()
    );

    let tb = Testbed::up(&scripts, &args.name, &rate)?;
    let registry = tb.env.get("REGISTRY")?.to_string();
    let pmem_dir = PathBuf::from(tb.env.get("PMEM_DIR")?).join("nvtier");
    let disk_dir = PathBuf::from(tb.env.get("DISK_DIR")?).join("nvtier");
    let state_dir = tb.work.join("state");
    for d in [&pmem_dir, &disk_dir, &state_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let config = tb.work.join("config.toml");
    let toml_str = |p: &Path| format!("{:?}", p.to_string_lossy());
    std::fs::write(
        &config,
        format!(
            "# written by nvbench pull\nstate_dir = {}\npmem_dir = {}\ndisk_dir = {}\npmem_budget = \"2G\"\ninsecure_registries = [{:?}]\n",
            toml_str(&state_dir),
            toml_str(&pmem_dir),
            toml_str(&disk_dir),
            registry
        ),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    let nv = Nvtier {
        bin: &nvtier,
        config: &config,
    };

    // Build and push the images.
    std::fs::create_dir_all(IMAGE_DIR).with_context(|| format!("cannot create {IMAGE_DIR}"))?;
    for im in images.iter_mut() {
        proc::check_stop()?;
        eprintln!("nvbench: image {} = {}", im.name, im.spec);
        let built = run_ok(
            Command::new("bash")
                .arg(scripts.join("build-image.sh"))
                .args(["--out", IMAGE_DIR, "--tag", &im.name, "--layers", &im.spec]),
            Opts::new(900),
        )?;
        let digest = built
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("sha256:"))
            .map(str::to_string)
            .context("build-image.sh printed no manifest digest")?;
        im.reference = format!("{registry}/bench/{}:v1", im.name);
        let pushed = run_ok(
            Command::new("bash")
                .arg(scripts.join("push-image.sh"))
                .args([format!("{IMAGE_DIR}:{}", im.name), im.reference.clone()]),
            Opts::new(600),
        )?;
        let pushed_digest = pushed.stdout.trim();
        if pushed_digest != digest {
            bail!(
                "push of {} returned digest {pushed_digest}, build-image.sh printed {digest}",
                im.name
            );
        }
        im.manifest_digest = digest;
    }

    // Measure.
    let total = reps * images.len() * PLACEMENTS.len();
    let mut samples: Vec<Sample> = Vec::with_capacity(total);
    for rep in 1..=reps {
        for im in &images {
            for placement in PLACEMENTS {
                proc::check_stop()?;
                nv.empty_store()?;
                drop_caches()?;
                let mut cmd = tb.exec_throttled(&nvtier)?;
                cmd.env("NVTIER_CONFIG", &config)
                    .env("NO_PROXY", registry_host(&registry))
                    .env("no_proxy", registry_host(&registry))
                    .args([
                        "pull",
                        "--json",
                        "--no-wait",
                        "--placement",
                        placement,
                        &im.reference,
                    ]);
                let out = run_ok(&mut cmd, Opts::new(600))
                    .with_context(|| format!("pull of {} with placement {placement}", im.name))?;
                let report = parse_pull_json(&out.stdout)?;
                let s = Sample::from_report(
                    rep,
                    &im.name,
                    placement,
                    out.elapsed_ms(),
                    rate_bits_per_s(&rate),
                    report,
                );
                if s.layers.len() != im.layers {
                    bail!(
                        "{}: report has {} layers, expected {}",
                        im.name,
                        s.layers.len(),
                        im.layers
                    );
                }
                if let Some(l) = s.layers.iter().find(|l| l.reused) {
                    bail!(
                        "{} layer {} was reused although the store was emptied",
                        im.name,
                        l.index
                    );
                }
                eprintln!(
                    "[{:>3}/{total}] rep {rep} {:<6} {:<4}  deploy {:>7.0} ms  downloads {:>6.0}  stored {:>6.0}  after-dl {:>6.0} ms  pmem {:>5.1} MiB  LDL {}",
                    samples.len() + 1,
                    im.name,
                    placement,
                    s.deploy_ms,
                    s.download_done_ms,
                    s.stored_done_ms,
                    s.store_after_download_ms,
                    report::mib(s.pmem_bytes),
                    s.ldl_index.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
                );
                samples.push(s);
            }
        }
    }
    nv.empty_store()?;
    let testbed = serde_json::json!({
        "name": tb.name,
        "pmem": "tmpfs 2G",
        "hdd": "ext4 on loop (direct-io) 8G, blkio throttle 150 IOPS / 150 MiB/s (read+write)",
        "registry": registry,
        "rate": rate,
        "pmem_budget": "2G",
        "image_dir": IMAGE_DIR,
        "nvtier": nvtier,
        "env": tb.env.vars,
    });
    drop(tb);

    let summary = report::summarize(&images, &samples);
    let results = Results {
        benchmark: "nvbench pull",
        date,
        machine,
        git_commit,
        rate,
        reps,
        quick: args.quick,
        name: args.name.clone(),
        loadavg_start,
        loadavg_end: loadavg(),
        other_testbeds,
        testbed,
        images,
        placements: PLACEMENTS.iter().map(|p| p.to_string()).collect(),
        duration_s: t_start.elapsed().as_secs_f64(),
        samples,
        summary,
    };
    let md = report::markdown(&results);
    for (p, text) in [
        (&out_json, serde_json::to_string_pretty(&results)? + "\n"),
        (&out_md, md.clone()),
    ] {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    print!("{md}");
    eprintln!(
        "nvbench: wrote {} and {} ({:.0} s)",
        out_json.display(),
        out_md.display(),
        results.duration_s
    );
    Ok(())
}

fn registry_host(registry: &str) -> String {
    registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images() {
        let full = image_set(false);
        assert_eq!(full.len(), 5);
        assert_eq!(full[0].layers, 6);
        assert_eq!(full[4].layers, 11);
        let q: Vec<String> = image_set(true).into_iter().map(|i| i.name).collect();
        assert_eq!(q, vec!["mid", "top"]);
    }

    #[test]
    fn parses_report() {
        let j = r#"{"image":"x","manifest_digest":"sha256:a","config_digest":"sha256:b",
        "placement":"lass","layers":[
         {"index":0,"digest":"sha256:1","diff_id":"d","chain_id":"c0","size":10,
          "download_start_ms":1.0,"download_end_ms":5.0,"store_start_ms":5.5,"store_end_ms":9.0,
          "tier":"disk","reused":false,"stored_bytes":100,"disk_reason":"below_ldl"},
         {"index":1,"digest":"sha256:2","diff_id":"e","chain_id":"c1","size":20,
          "download_start_ms":1.0,"download_end_ms":12.0,"store_start_ms":12.0,"store_end_ms":13.0,
          "tier":"pmem","reused":false,"stored_bytes":200,"disk_reason":null}],
        "ldl_index":1,"download_done_ms":12.0,"stored_done_ms":13.5,"pmem_bytes":200,"disk_bytes":100}"#;
        let r = parse_pull_json(&format!("noise\n{j}")).expect("parses");
        let s = Sample::from_report(1, "x", "lass", 20.0, Some(1e9), r);
        assert_eq!(s.ldl_and_above_bytes, 200);
        assert_eq!(s.store_after_download_ms, 1.5);
        assert!(parse_pull_json("nothing").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(rate_label("1Gbit").expect("ok"), "1gbit");
        assert!(rate_label("1g/s").is_err());
        assert_eq!(registry_host("10.77.3.2:5000"), "10.77.3.2");
    }
}
