//! Load on the containerd snapshotter: 32 `ctr run --rm` at once over 4
//! images, while `nvtier migrate` runs and containerd pulls a 5th image
//! into nvtier. Checks every container's file hashes, the pmem budget
//! (sampled with `nvtier status` throughout), and that no mount, snapshot
//! record or anything else is left afterwards. Prints the p50/p99 of the
//! snapshotter's `Prepare` and `Mounts` as nvtier itself measured them
//! (its `nvtier::latency` events); with `NVTIER_LOAD_RESULTS=1` it also
//! writes them to `testbed/results/load.{json,md}`. Nothing here asserts
//! on a time.

mod common;
mod engines;

use common::{repo, Bed};
use engines::state::*;
use engines::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const BUDGET: u64 = 40 << 20;
const IMAGES: usize = 4;
const PER_IMAGE: usize = 8;

/// `s` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Microseconds of each `method` in the serve log's latency events.
fn latencies(log: &str) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let log = strip_ansi(log);
    for l in log.lines().filter(|l| l.contains("nvtier::latency")) {
        let field = |k: &str| -> Option<String> {
            let rest = &l[l.find(&format!(" {k}="))? + k.len() + 2..];
            Some(
                rest.split_whitespace()
                    .next()?
                    .trim_matches('"')
                    .to_string(),
            )
        };
        if let (Some(method), Some(us)) = (field("method"), field("us")) {
            if let Ok(us) = us.parse() {
                m.entry(method).or_default().push(us);
            }
        }
    }
    m
}

/// The `p`-th percentile (nearest rank) of `v`, sorted.
fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn sh_out(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[test]
fn load_32_starts_during_migration_and_pull() {
    let t0 = Instant::now();
    let bed = Bed::up("load", "1gbit", "40M");
    let rd = make_run_dir(&bed);
    // No background migration: the test starts one itself, with the load.
    let sock = write_serve_config(&bed, "40M", &containerd_root(&bed));
    let mut cfg = fs::read_to_string(&bed.config).expect("config");
    cfg.push_str("migrate_interval_s = 0\n");
    fs::write(&bed.config, cfg).expect("config");
    let nv = start_nvtier_env(
        &bed,
        &sock,
        "nvtier",
        &[(
            "NVTIER_LOG",
            "info,h2=warn,tower=warn,hyper=warn,nvtier::latency=debug",
        )],
    );
    let ctd = Containerd::start(&bed, &sock, None);

    // Four small images over the same busybox base, pulled by nvtier
    // (LASS), attached by containerd, each with a start-up profile.
    let mut imgs = Vec::new();
    for i in 0..IMAGES {
        let tag = format!("load{}", i + 1);
        let r = bed.push_seed(&tag, "busybox,4M,2M", 41 + i as u32);
        bed.nvtier_json(&["pull", &r]);
        ctd.pull_nvtier(&r);
        imgs.push((tag, r));
    }
    for img in bed.nvtier_json(&["images"]).as_array().expect("images") {
        let name = img["name"].as_str().expect("name");
        let p = bed.nvtier_json(&[
            "trace",
            name,
            "--",
            "/bin/sh",
            "-c",
            "cat /data/layer1.txt /data/layer2.bin >/dev/null",
        ]);
        assert_eq!(p["exit_code"], 0, "{p}");
    }
    let fifth = bed.push_seed("load5", "busybox,12M,8M", 45);
    let wants: Vec<BTreeMap<String, String>> =
        imgs.iter().map(|(tag, _)| image_hashes(tag)).collect();
    // The 5th image downloads for a while during the starts.
    bed.set_rate("40mbit");
    let before = snapshot_records(&bed).len();
    let setup = t0.elapsed();

    // pmem sampled through `nvtier status` until the load is over.
    let done = Arc::new(AtomicBool::new(false));
    let max_used = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, max_used, samples) = (done.clone(), max_used.clone(), samples.clone());
        let config = bed.config.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let o = Command::new(env!("CARGO_BIN_EXE_nvtier"))
                    .args(["status", "--json"])
                    .env("NVTIER_CONFIG", &config)
                    .output()
                    .expect("nvtier status");
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                let v: Value = serde_json::from_slice(&o.stdout).expect("status json");
                let used = v["pmem_used_bytes"].as_u64().expect("pmem_used_bytes");
                max_used.fetch_max(used, Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let n = IMAGES * PER_IMAGE;
    let go = Arc::new(Barrier::new(n + 2));
    let load_t = Instant::now();
    let mut starts = Vec::new();
    for k in 0..n {
        let (go, sock, path) = (go.clone(), ctd.sock.clone(), ctd.path_env.clone());
        let img = imgs[k % IMAGES].1.clone();
        let mut args: Vec<String> = ["run", "--rm", "--snapshotter", "nvtier"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(img);
        args.push(format!("load-{k}"));
        args.extend(sha256sum_cmd(&wants[k % IMAGES]));
        starts.push(std::thread::spawn(move || {
            go.wait();
            let t = Instant::now();
            let o = Command::new("ctr")
                .arg("-a")
                .arg(&sock)
                .args(&args)
                .env("PATH", &path)
                .output()
                .expect("ctr run");
            (o, t.elapsed())
        }));
    }
    let migrate = {
        let (go, config) = (go.clone(), bed.config.clone());
        std::thread::spawn(move || {
            go.wait();
            let t = Instant::now();
            let o = Command::new(env!("CARGO_BIN_EXE_nvtier"))
                .args(["migrate", "--json"])
                .env("NVTIER_CONFIG", &config)
                .output()
                .expect("nvtier migrate");
            (o, t.elapsed())
        })
    };
    go.wait();
    let pull_t = Instant::now();
    let pull = ctd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "nvtier",
        &fifth,
    ]);
    let pull_time = pull_t.elapsed();
    let mut start_times = Vec::new();
    for (k, h) in starts.into_iter().enumerate() {
        let (o, d) = h.join().expect("start thread");
        let out = ok(o, &format!("ctr run load-{k}"));
        assert_hashes(&out, &wants[k % IMAGES], &format!("container load-{k}"));
        start_times.push(d);
    }
    let load_time = load_t.elapsed();
    let (mo, migrate_time) = migrate.join().expect("migrate thread");
    let mig: Value = serde_json::from_str(&ok(mo, "nvtier migrate")).expect("migrate json");
    ok(pull, "ctr pull of the 5th image");
    done.store(true, Ordering::SeqCst);
    sampler.join().expect("status sampler");
    let max_used = max_used.load(Ordering::SeqCst);
    let samples = samples.load(Ordering::SeqCst);
    assert!(samples >= 3, "pmem sampled only {samples} times");
    assert!(
        max_used <= BUDGET,
        "pmem {max_used} exceeded the budget {BUDGET}"
    );
    assert!(
        mig["copied_bytes"].as_u64().unwrap_or(0) + mig["relocated_bytes"].as_u64().unwrap_or(0)
            > 0,
        "the migration did nothing: {mig}"
    );

    // No container is left: no active snapshot, no mount of our dirs.
    wait_for("the containers' snapshots to go", 30, || {
        snapshot_records(&bed)
            .iter()
            .all(|r| r["kind"] == "committed")
    });
    let after = snapshot_records(&bed).len();
    assert_eq!(
        after,
        before + 2,
        "the 5th image adds its 2 data layers (busybox is shared)"
    );
    let mounts = mounts_under(&[&bed.state, &bed.pmem, &bed.disk]);
    let mounts: Vec<&String> = mounts
        .iter()
        .filter(|l| l.contains(" - overlay "))
        .collect();
    assert!(mounts.is_empty(), "overlay mounts left: {mounts:#?}");
    assert_consistent(&bed, "after the load");
    assert!(
        bed.nvtier_json(&["status"])["pmem_used_bytes"]
            .as_u64()
            .unwrap_or(u64::MAX)
            <= BUDGET
    );

    // What nvtier measured.
    let log = nv.log_text();
    let lat = latencies(&log);
    let mut stats = serde_json::Map::new();
    for m in ["prepare", "mounts", "commit", "remove", "stat"] {
        let mut v = lat.get(m).cloned().unwrap_or_default();
        v.sort_unstable();
        stats.insert(
            m.into(),
            json!({"calls": v.len(), "p50_us": pct(&v, 50.0), "p99_us": pct(&v, 99.0), "max_us": v.last().copied().unwrap_or(0)}),
        );
    }
    for m in ["prepare", "mounts"] {
        assert!(
            stats[m]["calls"].as_u64().unwrap_or(0) >= n as u64,
            "fewer {m} latency events than containers: {stats:?}\n{:?}",
            log.lines()
                .filter(|l| l.contains("latency"))
                .take(3)
                .collect::<Vec<_>>()
        );
    }
    let mut st: Vec<u128> = start_times.iter().map(Duration::as_millis).collect();
    st.sort_unstable();
    let report = json!({
        "date": sh_out("date -u +%FT%TZ"),
        "machine": {
            "kernel": sh_out("uname -r"),
            "nproc": sh_out("nproc"),
            "cpu_model": sh_out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        },
        "scenario": format!("{n} concurrent `ctr run --rm` (containerd 1.6, {IMAGES} images x {PER_IMAGE}, each sha256sums its image's files) while `nvtier migrate` runs and `ctr images pull` of a 5th image (20 MiB at 40 Mbit/s) unpacks into nvtier; pmem budget {} MiB; debug build", BUDGET >> 20),
        "snapshotter_us": stats,
        "ctr_run_ms": {"p50": st[st.len() / 2], "max": st.last().copied().unwrap_or(0)},
        "load_s": load_time.as_secs_f64(),
        "migrate_s": migrate_time.as_secs_f64(),
        "pull_5th_s": pull_time.as_secs_f64(),
        "pmem_max_used_bytes": max_used,
        "pmem_budget_bytes": BUDGET,
        "pmem_samples": samples,
    });
    eprintln!(
        "load report:\n{}",
        serde_json::to_string_pretty(&report).expect("json")
    );
    if std::env::var_os("NVTIER_LOAD_RESULTS").is_some() {
        let dir = repo().join("testbed/results");
        fs::write(
            dir.join("load.json"),
            serde_json::to_string_pretty(&report).expect("json") + "\n",
        )
        .expect("write load.json");
        let row = |m: &str| {
            let s = &report["snapshotter_us"][m];
            format!(
                "| {m} | {} | {} | {} | {} |\n",
                s["calls"], s["p50_us"], s["p99_us"], s["max_us"]
            )
        };
        let md = format!(
            "# Snapshotter latency under load\n\n{} · {} ({} CPUs) · Linux {} · `cargo test -p nvtier-driver --test load_e2e` with `NVTIER_LOAD_RESULTS=1`.\n\n{}.\n\nMeasured inside `nvtier serve` (its `nvtier::latency` events: wall time of each gRPC call, from the request to the reply). The load lasted {:.1} s; the migration {:.1} s and the 5th pull {:.1} s of it. pmem peaked at {} of {} bytes ({} samples).\n\n| call | calls | p50 µs | p99 µs | max µs |\n|---|--:|--:|--:|--:|\n{}{}{}{}\n`ctr run --rm` end to end: p50 {} ms, max {} ms.\n",
            report["date"].as_str().unwrap_or(""),
            report["machine"]["cpu_model"].as_str().unwrap_or(""),
            report["machine"]["nproc"].as_str().unwrap_or(""),
            report["machine"]["kernel"].as_str().unwrap_or(""),
            report["scenario"].as_str().unwrap_or(""),
            load_time.as_secs_f64(),
            migrate_time.as_secs_f64(),
            pull_time.as_secs_f64(),
            max_used,
            BUDGET,
            samples,
            row("prepare"),
            row("mounts"),
            row("commit"),
            row("remove"),
            report["ctr_run_ms"]["p50"],
            report["ctr_run_ms"]["max"],
        );
        fs::write(dir.join("load.md"), md).expect("write load.md");
    }

    // Everything goes with the images.
    let mut refs: Vec<&str> = imgs.iter().map(|(_, r)| r.as_str()).collect();
    refs.push(&fifth);
    let mut args = vec!["images", "rm", "--sync"];
    args.extend(refs.iter().copied());
    ctd.ctr_ok(&args);
    wait_for("snapshots to be removed", 30, || {
        snapshot_records(&bed).is_empty()
    });
    for img in bed.nvtier_json(&["images"]).as_array().expect("images") {
        bed.nvtier_ok(&["rm", img["name"].as_str().expect("name")]);
    }
    assert_all_freed(&bed, "after removing every image", 10);
    drop(ctd);
    drop(nv);
    drop(rd);
    eprintln!(
        "test time {:?} (set-up {setup:?}, load {load_time:?})",
        t0.elapsed()
    );
}
