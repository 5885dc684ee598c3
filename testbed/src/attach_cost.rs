//! `nvbench attach-cost`: what the eBPF tracer costs per syscall under each
//! way of attaching its syscall programs.
//!
//! - `btf`: raw syscall tracepoints with BTF types (`tp_btf/sys_enter`,
//!   `tp_btf/sys_exit`); need no tracefs; run for every syscall on the host
//!   and filter by syscall number first.
//! - `tracepoint`: per-syscall tracepoints (`syscalls:sys_exit_openat`,
//!   ...); libbpf resolves them through tracefs, so this benchmark mounts
//!   tracefs in a private mount namespace of its own (the host is not
//!   touched).
//! - `root`: `nvtier serve`'s root watcher (the same programs, filtered by
//!   the task's root instead of a cgroup). The traced worker runs chrooted
//!   in an overlay mount whose root is recorded; the untraced one in a
//!   second overlay whose root the watcher was told to ignore, as for a
//!   container whose image has a fresh profile.
//! - `none`: no tracer loaded (the baseline); `overlay`: the same with the
//!   workers chrooted in the two overlays (the baseline of `root`: an
//!   overlay lookup costs more than one on the host's file system).
//!
//! A worker process does ITERS × (openat + close + newfstatat) and reports
//! its ns per iteration. In every round, for each mode in rotating order,
//! one worker runs inside the traced cgroup (each iteration yields two
//! events: the open and the stat) and one outside it (the cost every other
//! process on the host pays while a trace runs). Results: medians over
//! rounds, and the cost over `none` per traced event and per untraced
//! syscall.

use anyhow::{bail, Context, Result};
use nvtier_tracer::bpf::{AttachMode, BpfTracer, Sighting};
use nvtier_tracer::watch::RootWatcher;
use nvtier_tracer::Tracer;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Arguments of `nvbench attach-cost`.
#[derive(clap::Args)]
pub struct AttachCostArgs {
    /// Rounds (each runs every mode once, in rotating order).
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// Iterations of openat + close + newfstatat per worker run.
    #[arg(long, default_value_t = 200_000)]
    pub iters: u64,
    /// Results JSON.
    #[arg(long, default_value = "testbed/results/attach-cost.json")]
    pub out: PathBuf,
    /// Markdown report.
    #[arg(long, default_value = "testbed/results/attach-cost.md")]
    pub markdown: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    None,
    Btf,
    Tracepoint,
    /// No tracer, both workers chrooted in the overlays: `root`'s baseline.
    Overlay,
    Root,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Btf => "btf",
            Mode::Tracepoint => "tracepoint",
            Mode::Overlay => "overlay",
            Mode::Root => "root",
        }
    }
}

#[derive(Debug, Serialize)]
struct Sample {
    round: usize,
    mode: Mode,
    traced_ns_per_iter: f64,
    untraced_ns_per_iter: f64,
    events: usize,
    lost: u64,
}

#[derive(Debug, Serialize)]
struct ModeSummary {
    mode: Mode,
    traced_ns_per_iter_median: f64,
    untraced_ns_per_iter_median: f64,
    /// Median over rounds of (traced − none in the same round) / 2 events
    /// per iteration: pairing within a round cancels the machine's drift.
    ns_per_traced_event: Option<f64>,
    /// Median over rounds of (untraced − none in the same round) / 2
    /// syscalls per iteration (close is a third, filtered-out syscall: it
    /// counts as part of the iteration's cost).
    ns_per_untraced_syscall: Option<f64>,
    events_per_round_median: f64,
    lost_total: u64,
}

#[derive(Debug, Serialize)]
struct Results {
    date: String,
    machine: crate::pull_model::Machine,
    rounds: usize,
    iters: u64,
    samples: Vec<Sample>,
    summary: Vec<ModeSummary>,
}

/// The worker: join `cgroup` and chroot to `root` (if given), then time
/// the syscall loop. Prints ns per iteration.
pub fn worker(cgroup: Option<&Path>, root: Option<&Path>, iters: u64) -> Result<()> {
    if let Some(cg) = cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("join cgroup {}", cg.display()))?;
    }
    if let Some(r) = root {
        nix::unistd::chroot(r).with_context(|| format!("chroot {}", r.display()))?;
        std::env::set_current_dir("/").context("chdir /")?;
    }
    let path = Path::new("/etc/hostname");
    let t0 = Instant::now();
    for _ in 0..iters {
        let f = std::fs::File::open(path).context("open /etc/hostname")?;
        drop(f);
        std::fs::metadata(path).context("stat /etc/hostname")?;
    }
    let ns = t0.elapsed().as_nanos() as f64 / iters.max(1) as f64;
    println!("{ns}");
    Ok(())
}

fn run_worker(cgroup: Option<&Path>, root: Option<&Path>, iters: u64) -> Result<f64> {
    let exe = std::env::current_exe().context("own executable")?;
    let mut c = Command::new(exe);
    c.arg("attach-cost-worker")
        .arg("--iters")
        .arg(iters.to_string());
    if let Some(cg) = cgroup {
        c.arg("--cgroup").arg(cg);
    }
    if let Some(r) = root {
        c.arg("--chroot").arg(r);
    }
    let out = c.output().context("run the worker")?;
    if !out.status.success() {
        bail!(
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("worker output")
}

/// A cgroup v2 directory, removed on drop.
struct Cg {
    dir: PathBuf,
    id: u64,
}

impl Cg {
    fn create() -> Result<Cg> {
        use std::os::unix::fs::MetadataExt;
        let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/unified")
        };
        let dir = base.join(format!("nvbench-attach-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let id = std::fs::metadata(&dir)
            .with_context(|| format!("stat {}", dir.display()))?
            .ino();
        Ok(Cg { dir, id })
    }
}

impl Drop for Cg {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Mount tracefs in a private mount namespace of this process, unless it
/// is mounted already. Must run before any thread is started.
fn private_tracefs() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare the mount namespace (run before any thread starts, as root)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private in the benchmark's mount namespace")?;
    if !Path::new("/sys/kernel/tracing/events").exists() {
        mount(
            Some("tracefs"),
            "/sys/kernel/tracing",
            Some("tracefs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mount tracefs at /sys/kernel/tracing (private namespace)")?;
    }
    Ok(())
}

/// Two overlay mounts with `/etc/hostname` (container-like roots), in the
/// benchmark's private mount namespace; unmounted on drop. The ignored
/// root's first 50 ms of syscalls are still recorded (until the watcher
/// applies the decision), a negligible part of a worker's run.
struct Roots {
    dir: PathBuf,
    recorded: PathBuf,
    ignored: PathBuf,
}

impl Roots {
    fn create() -> Result<Roots> {
        let dir = std::env::temp_dir().join(format!("nvbench-roots-{}", std::process::id()));
        let lower = dir.join("lower");
        std::fs::create_dir_all(lower.join("etc")).context("create the overlay lower dir")?;
        std::fs::write(lower.join("etc/hostname"), "nvbench\n").context("write etc/hostname")?;
        let mut made = Vec::new();
        for name in ["recorded", "ignored"] {
            let (up, work, merged) = (
                dir.join(format!("{name}-up")),
                dir.join(format!("{name}-work")),
                dir.join(name),
            );
            for d in [&up, &work, &merged] {
                std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                up.display(),
                work.display()
            );
            nix::mount::mount(
                Some("overlay"),
                &merged,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            )
            .with_context(|| format!("mount an overlay at {}", merged.display()))?;
            made.push(merged);
        }
        Ok(Roots {
            recorded: made[0].clone(),
            ignored: made[1].clone(),
            dir,
        })
    }
}

impl Drop for Roots {
    fn drop(&mut self) {
        for m in [&self.recorded, &self.ignored] {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The root watcher, with a consumer that tells it to ignore the root of
/// `ignored` (by its device) when it is first seen, and counts the events
/// of the other roots.
struct Watch {
    watcher: RootWatcher,
    consumer: std::thread::JoinHandle<usize>,
}

impl Watch {
    fn start(ignored: &Path) -> Result<Watch> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(ignored)
            .with_context(|| format!("stat {}", ignored.display()))?
            .dev();
        let kdev = (nix::sys::stat::major(dev) << 20) | nix::sys::stat::minor(dev);
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = RootWatcher::start(AttachMode::Btf, tx)?;
        let ignorer = watcher.ignorer();
        let consumer = std::thread::spawn(move || {
            let mut skip = None;
            let mut events = 0;
            for s in rx {
                match s {
                    Sighting::NewRoot { root, dev, .. } if dev == kdev => {
                        ignorer.ignore(root);
                        skip = Some(root);
                    }
                    Sighting::Event { group, .. } if Some(group) != skip => events += 1,
                    _ => {}
                }
            }
            events
        });
        Ok(Watch { watcher, consumer })
    }

    /// Stop; the events the recorded root produced, and those lost.
    fn stop(self) -> (usize, u64) {
        let lost = self.watcher.lost();
        drop(self.watcher);
        (self.consumer.join().unwrap_or(0), lost)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn run(a: AttachCostArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("attach-cost loads BPF programs and makes cgroups: run as root");
    }
    private_tracefs()?;
    let cg = Cg::create()?;
    let roots = Roots::create()?;
    let modes = [
        Mode::None,
        Mode::Btf,
        Mode::Tracepoint,
        Mode::Overlay,
        Mode::Root,
    ];
    let mut samples = Vec::new();
    for round in 0..a.rounds {
        for k in 0..modes.len() {
            let mode = modes[(round + k) % modes.len()];
            let (events, lost, traced, untraced) = if mode == Mode::Overlay {
                let traced = run_worker(None, Some(&roots.recorded), a.iters)?;
                let untraced = run_worker(None, Some(&roots.ignored), a.iters)?;
                (0, 0, traced, untraced)
            } else if mode == Mode::Root {
                let w = Watch::start(&roots.ignored)?;
                let traced = run_worker(None, Some(&roots.recorded), a.iters)?;
                let untraced = run_worker(None, Some(&roots.ignored), a.iters)?;
                let (events, lost) = w.stop();
                (events, lost, traced, untraced)
            } else {
                let tracer = match mode {
                    Mode::Btf => Some(BpfTracer::start_with(AttachMode::Btf, &[cg.id], None)?),
                    Mode::Tracepoint => Some(BpfTracer::start_with(
                        AttachMode::Tracepoint,
                        &[cg.id],
                        None,
                    )?),
                    _ => None,
                };
                let traced = run_worker(Some(&cg.dir), None, a.iters)?;
                let untraced = run_worker(None, None, a.iters)?;
                let (events, lost) = match tracer {
                    Some(t) => {
                        let (ev, lost) = Box::new(t).stop()?;
                        (ev.len(), lost)
                    }
                    None => (0, 0),
                };
                (events, lost, traced, untraced)
            };
            eprintln!(
                "round {round} {:<10} traced {traced:8.0} ns/iter, untraced {untraced:8.0} ns/iter, {events} events, {lost} lost",
                mode.name()
            );
            samples.push(Sample {
                round,
                mode,
                traced_ns_per_iter: traced,
                untraced_ns_per_iter: untraced,
                events,
                lost,
            });
        }
    }
    let med = |m: Mode, f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().filter(|s| s.mode == m).map(f).collect();
        median(&mut v)
    };
    // Per round: this mode's figure minus the baseline's of the same round
    // (`root` against `overlay`: the same overlays without the watcher).
    let paired = |m: Mode, f: &dyn Fn(&Sample) -> f64| {
        let base = if m == Mode::Root {
            Mode::Overlay
        } else {
            Mode::None
        };
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|s| s.mode == m)
            .filter_map(|s| {
                samples
                    .iter()
                    .find(|b| b.mode == base && b.round == s.round)
                    .map(|b| (f(s) - f(b)) / 2.0)
            })
            .collect();
        median(&mut v)
    };
    let summary: Vec<ModeSummary> = modes
        .iter()
        .map(|&m| {
            let t = med(m, &|s| s.traced_ns_per_iter);
            let u = med(m, &|s| s.untraced_ns_per_iter);
            ModeSummary {
                mode: m,
                traced_ns_per_iter_median: t,
                untraced_ns_per_iter_median: u,
                ns_per_traced_event: (!matches!(m, Mode::None | Mode::Overlay))
                    .then(|| paired(m, &|s| s.traced_ns_per_iter)),
                ns_per_untraced_syscall: (!matches!(m, Mode::None | Mode::Overlay))
                    .then(|| paired(m, &|s| s.untraced_ns_per_iter)),
                events_per_round_median: med(m, &|s| s.events as f64),
                lost_total: samples.iter().filter(|s| s.mode == m).map(|s| s.lost).sum(),
            }
        })
        .collect();
    let res = Results {
        date: crate::pull_model::now_utc(),
        machine: crate::pull_model::machine(),
        rounds: a.rounds,
        iters: a.iters,
        samples,
        summary,
    };
    if let Some(d) = a.out.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&res)?)
        .with_context(|| format!("write {}", a.out.display()))?;
    let md = markdown(&res);
    std::fs::write(&a.markdown, &md).with_context(|| format!("write {}", a.markdown.display()))?;
    print!("{md}");
    Ok(())
}

fn markdown(r: &Results) -> String {
    let mut s = format!(
        "# eBPF attach cost\n\n{} · {} ({} CPUs, {} GiB) · Linux {} · {} rounds × {} iterations \
         (openat + close + newfstatat), modes interleaved in rotating order; medians; \
         the per-event and per-syscall costs are medians of differences to the baseline \
         within each round. `root` is `nvtier serve`'s root watcher: its traced process runs \
         chrooted in a recorded overlay root, its untraced one in an overlay root the watcher \
         ignores (a container whose image has a fresh profile); its costs are against `overlay`, the same \
         two chrooted workers with no tracer.\n\n\
         | attach | traced process ns/iter | untraced process ns/iter | ns per traced event | ns per untraced syscall | events/round | lost |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
        r.date,
        r.machine.cpu_model,
        r.machine.nproc,
        r.machine.mem_total_kib / (1024 * 1024),
        r.machine.kernel,
        r.rounds,
        r.iters
    );
    let f = |x: Option<f64>| x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "—".into());
    for m in &r.summary {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} | {:.0} | {} |\n",
            m.mode.name(),
            m.traced_ns_per_iter_median,
            m.untraced_ns_per_iter_median,
            f(m.ns_per_traced_event),
            f(m.ns_per_untraced_syscall),
            m.events_per_round_median,
            m.lost_total
        ));
    }
    s
}
