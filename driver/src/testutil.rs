//! Helpers for the unit tests.

/// Fail the calling test unless it runs as root. Tests that create device
/// nodes, whiteouts, `trusted.*` xattrs or files of other owners need root;
/// the suite runs as root in CI, and such a test must never pass without
/// having run.
#[track_caller]
pub(crate) fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({why}): run the unit tests as root, e.g. `sudo -E cargo test --workspace --lib`"
    );
}

/// The keys of a JSON object, in order (panics unless `v` is an object).
#[track_caller]
pub(crate) fn object_keys(v: &serde_json::Value) -> Vec<&str> {
    v.as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect()
}

/// Cases a property runs: `PROPTEST_CASES` when set (the long run,
/// `testbed/fuzz-long.sh`), else `default` (the bounded run of the suite).
pub(crate) fn prop_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Check a property with proptest and print how many cases passed
/// (`proptest NAME: N cases passed`, which `testbed/fuzz-long.sh` collects).
/// A failure panics with proptest's minimal failing input. Nothing is
/// persisted: a failing case found once is kept as a regular unit test.
#[track_caller]
pub(crate) fn prop_check<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) where
    S: proptest::strategy::Strategy,
    S::Value: std::fmt::Debug,
{
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::{AtomicU64, Ordering};
    let cases = prop_cases(default_cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    });
    let passed = AtomicU64::new(0);
    let started = std::time::Instant::now();
    let r = runner.run(&strategy, |v| {
        test(v)?;
        passed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    match r {
        Ok(()) => println!(
            "proptest {name}: {} cases passed in {:.1} s",
            passed.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        ),
        Err(e) => panic!("proptest {name}: {e}"),
    }
}

/// A store on scratch tiers (`<tmp>/{state,pmem,disk}`), for tests of
/// records and paths.
pub(crate) fn temp_store(budget: &str) -> (tempfile::TempDir, crate::store::Store) {
    let d = tempfile::tempdir().expect("tmp");
    for s in ["state", "pmem", "disk"] {
        std::fs::create_dir(d.path().join(s)).expect("mkdir");
    }
    let p = |s: &str| d.path().join(s);
    let text = format!(
        "state_dir = {:?}\npmem_dir = {:?}\ndisk_dir = {:?}\npmem_budget = {budget:?}\n",
        p("state"),
        p("pmem"),
        p("disk")
    );
    let cfg = crate::config::Config::parse(&p("config.toml"), &text).expect("config");
    let store = crate::store::Store::open(&cfg).expect("store");
    (d, store)
}

/// An image record of `name` over layers `diff_ids` (chainIDs `chain_ids`),
/// pulled by the CLI, for tests of records.
pub(crate) fn image_record(
    name: &str,
    diff_ids: &[&str],
    chain_ids: &[&str],
) -> crate::store::ImageRecord {
    crate::store::ImageRecord {
        name: name.into(),
        manifest_digest: "sha256:m".into(),
        config_digest: "sha256:c".into(),
        config: serde_json::json!({}),
        diff_ids: diff_ids.iter().map(|d| d.to_string()).collect(),
        blob_digests: Vec::new(),
        chain_ids: chain_ids.iter().map(|c| c.to_string()).collect(),
        created_ms: 0,
        origin: crate::store::ImageOrigin::Cli,
    }
}
