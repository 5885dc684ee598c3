//! Shared set-up for the root integration tests: the testbed library's
//! [`nvtier_testbed::bed::Bed`] (a private emulated pmem tier, emulated HDD
//! and a real registry behind an emulated link, torn down on drop), with
//! the nvtier binary of this build filled in.
#![allow(dead_code, unused_imports)]

pub mod auth;

use serde_json::Value;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Output;

pub use nvtier_testbed::bed::{
    assert_same_tree, build_lock, check_lass_rule, check_lass_rule_with_budget, check_pull_report,
    listing, manifest_digest, oci_dir, reference_rootfs, repo, require_root, run_ok, sh,
};

/// The nvtier binary Cargo built for these tests.
fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nvtier"))
}

/// A private testbed (see [`nvtier_testbed::bed::Bed`]; its fields and
/// methods are reached through `Deref`).
pub struct Bed(nvtier_testbed::bed::Bed);

impl Deref for Bed {
    type Target = nvtier_testbed::bed::Bed;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Bed {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Bed {
    /// `tag` is a short test name (≤ 6 chars); the pid makes it unique.
    pub fn up(tag: &str, rate: &str, pmem_budget: &str) -> Bed {
        Bed(nvtier_testbed::bed::Bed::up(tag, rate, pmem_budget))
    }

    pub fn nvtier(&self, args: &[&str]) -> Output {
        self.0.nvtier(bin(), args)
    }

    /// nvtier in a private mount namespace without tracefs or debugfs.
    pub fn nvtier_without_tracefs(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.0.nvtier_without_tracefs(bin(), args, env)
    }

    /// nvtier in a private mount namespace with tracefs mounted.
    pub fn nvtier_with_tracefs(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.0.nvtier_with_tracefs(bin(), args, env)
    }

    pub fn nvtier_ok(&self, args: &[&str]) -> String {
        self.0.nvtier_ok(bin(), args)
    }

    pub fn nvtier_json(&self, args: &[&str]) -> Value {
        self.0.nvtier_json(bin(), args)
    }

    /// Mount `image` with `nvtier mount` and assert its rootfs is
    /// byte-identical to `umoci unpack` of the pushed image `tag`.
    #[allow(dead_code)] // not every test binary compares a rootfs
    pub fn assert_mounts_as(&self, image: &str, tag: &str) {
        let mnt = self.state.parent().expect("parent").join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir");
        let m = mnt.to_str().expect("utf8");
        self.nvtier_ok(&["mount", image, m]);
        let actual = listing(&mnt);
        self.nvtier_ok(&["umount", m]);
        assert_same_tree(&listing(&reference_rootfs(tag)), &actual);
    }

    /// `nvtier run IMAGE -- /bin/sh -c SCRIPT`: its JSON report.
    pub fn run_sh(&self, image: &str, script: &str) -> Value {
        self.nvtier_json(&["run", image, "--", "/bin/sh", "-c", script])
    }
}

/// The pull reports the daemon saved (`STATE/pulls/*.json`), one per
/// image it pulled for an engine.
pub fn pull_reports(bed: &Bed) -> Vec<Value> {
    std::fs::read_dir(bed.state.join("pulls"))
        .expect("pull reports")
        .flatten()
        .map(|e| {
            serde_json::from_str(&std::fs::read_to_string(e.path()).expect("read")).expect("json")
        })
        .collect()
}

/// `nvtier serve` on the bed's config, stopped with SIGTERM on drop. Its
/// log (`NVTIER_LOG=info`) goes to `log`, or nowhere.
pub struct Serve(std::process::Child);

impl Serve {
    pub fn start(bed: &Bed, log: Option<&Path>) -> Serve {
        let stderr = match log {
            Some(p) => std::process::Stdio::from(std::fs::File::create(p).expect("serve log")),
            None => std::process::Stdio::null(),
        };
        let child = std::process::Command::new(bin())
            .arg("serve")
            .env("NVTIER_CONFIG", &bed.config)
            .env("NVTIER_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("nvtier serve");
        Serve(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// The driver's pull report, serialized, reads as the testbed's
/// `PullReport` (the testbed declares the shape it reads; see
/// `nvtier_testbed::pull_report`). Needs no root.
#[test]
fn pull_report_shape_matches_the_testbed() {
    use nvtier::pull::{LayerReport, PullReport};
    use nvtier::tier::TierKind;
    use nvtier_policy::{DiskReason, Placement};
    let layer = |index: usize, tier: TierKind, disk_reason: Option<DiskReason>| LayerReport {
        index,
        digest: format!("sha256:{index}"),
        diff_id: format!("sha256:d{index}"),
        chain_id: format!("sha256:c{index}"),
        size: 10 + index as u64,
        download_start_ms: Some(1.0),
        download_end_ms: Some(5.0 + index as f64),
        store_start_ms: Some(6.0 + index as f64),
        extracted_ms: None,
        store_end_ms: None,
        lass: None,
        tier,
        reused: false,
        stored_bytes: 100,
        disk_reason,
        class: None,
        pmem_reason: None,
    };
    let report = PullReport {
        image: "r/x:1".into(),
        manifest_digest: "sha256:m".into(),
        config_digest: "sha256:c".into(),
        placement: Placement::Lass,
        layers: vec![
            layer(0, TierKind::Disk, Some(DiskReason::BelowLdl)),
            layer(1, TierKind::Pmem, None),
        ],
        ldl_index: Some(1),
        download_done_ms: 6.0,
        stored_done_ms: 8.5,
        pmem_bytes: 100,
        disk_bytes: 100,
        credentials: None,
        profile: None,
        kept_blobs: Vec::new(),
    };
    let v = serde_json::to_value(&report).expect("serialize");
    check_pull_report(&v);
    let r: nvtier_testbed::pull_report::PullReport =
        serde_json::from_value(v).expect("deserialize");
    assert_eq!(r.layers[0].tier, "disk");
    assert_eq!(r.layers[0].disk_reason.as_deref(), Some("below_ldl"));
    assert_eq!(r.layers[1].tier, "pmem");
    assert_eq!(r.layers[1].store_end_ms, None);
    assert_eq!(r.ldl_index, Some(1));
    assert_eq!(r.stored_done_ms, 8.5);
}
