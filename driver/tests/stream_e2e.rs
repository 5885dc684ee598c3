//! Root integration tests of streamed storing (a layer is extracted while
//! its blob downloads): a kill in the middle of a stream, a corruption that
//! only the blob's end reveals, and a registry that stalls mid-layer. Each
//! must leave nothing behind: no published layer, staging directory,
//! partial download, pmem reservation or kept blob.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = "busybox,8M,4M,30M,2M,1M";

/// Every place a pull may leave something in, with what is there.
fn everything_left(bed: &Bed) -> Vec<PathBuf> {
    let mut v = bed.leftovers();
    v.extend(bed.stored_layers());
    v.extend(entries_under(&[
        bed.state.join("unsynced"),
        bed.state.join("kept-blobs"),
    ]));
    v
}

fn entries_under(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in dirs {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            v.push(e.path());
        }
    }
    v
}

/// Files in a tier's staging directories (extraction under way).
fn staged_files(tier: &Path) -> usize {
    let mut n = 0;
    for d in fs::read_dir(tier.join("staging"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let mut stack = vec![d.path()];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                n += 1;
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    n
}

/// Bytes of the partial downloads.
fn partial_bytes(bed: &Bed) -> Vec<u64> {
    fs::read_dir(bed.state.join("downloads"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .collect()
}

fn spawn_pull(bed: &Bed, r: &str, stderr: Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_nvtier"))
        .args(["pull", r])
        .env("NVTIER_CONFIG", &bed.config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn pull")
}

/// Wait until the 30 MiB layer is half downloaded while files are being
/// extracted (storing while the bytes arrive), or fail after 20 s.
fn wait_mid_stream(bed: &Bed) {
    let t = Instant::now();
    loop {
        let big = partial_bytes(bed)
            .into_iter()
            .any(|b| (12 << 20..28 << 20).contains(&b));
        if big && staged_files(&bed.disk) + staged_files(&bed.pmem) > 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never saw the 30 MiB layer mid-stream with files staged"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_9_mid_stream_leaves_nothing() {
    let bed = Bed::up("skill", "100mbit", "4G");
    let r = bed.push("skilldemo", SPEC);
    let mut child = spawn_pull(&bed, &r, Stdio::null());
    wait_mid_stream(&bed);
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(
        bed.nvtier_json(&["images"]).as_array().map(Vec::len),
        Some(0),
        "the pull finished before it was killed"
    );
    // The next store open removes what the killed process left; `gc`
    // collects the layers it had published (no image refers to them).
    bed.nvtier_ok(&["gc"]);
    let left = everything_left(&bed);
    assert!(left.is_empty(), "left after kill -9 and gc: {left:?}");
    // And a new pull stores the image exactly.
    let rep = bed.nvtier_json(&["pull", &r]);
    check_lass_rule(&rep);
    bed.assert_mounts_as(&r, "skilldemo");
}

#[test]
fn corruption_seen_only_at_the_blob_end_leaves_nothing() {
    let bed = Bed::up("scorr", "100mbit", "4G");
    let r = bed.push("scorrdemo", SPEC);
    // Flip the gzip trailer's CRC of the largest blob: every file of the
    // layer extracts, and only the end of the stream shows the damage.
    let (size, blob) = bed.registry_blobs().into_iter().next().expect("a blob");
    assert!(size > 20 << 20);
    let mut data = fs::read(&blob).expect("read blob");
    assert_eq!(data[..2], [0x1f, 0x8b], "a gzip blob");
    let crc = data.len() - 8;
    data[crc] ^= 0xff;
    fs::write(&blob, &data).expect("corrupt blob");
    let child = spawn_pull(&bed, &r, Stdio::piped());
    // Storing ran while the bytes arrived.
    wait_mid_stream(&bed);
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success(), "pull of a corrupted blob succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.to_lowercase().contains("digest"),
        "error does not mention the digest: {err}"
    );
    assert_nothing_stored(&bed);
}

/// A failed pull left nothing: no file, record or reservation, no image,
/// no pmem charged.
fn assert_nothing_stored(bed: &Bed) {
    let left = everything_left(bed);
    assert!(left.is_empty(), "left after the failed pull: {left:?}");
    assert_eq!(
        bed.nvtier_json(&["images"]).as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(bed.nvtier_json(&["status"])["pmem_used_bytes"], 0);
}

/// SIGCONT for a stopped registry, also when the test fails.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

#[test]
fn registry_stalling_mid_layer_fails_the_pull_cleanly() {
    let bed = Bed::up("sstal", "100mbit", "4G");
    let r = bed.push("sstaldemo", SPEC);
    let pid: i32 = fs::read_to_string(format!("/run/nvtier-testbed/{}/registry.pid", bed.name))
        .expect("registry pid")
        .trim()
        .parse()
        .expect("pid");
    let t0 = Instant::now();
    let child = spawn_pull(&bed, &r, Stdio::piped());
    wait_mid_stream(&bed);
    // The registry stops sending: connections stay open, no bytes come.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP registry");
    let resume = Resume(pid);
    let out = child.wait_with_output().expect("wait");
    let took = t0.elapsed();
    drop(resume);
    assert!(
        !out.status.success(),
        "the pull succeeded with a stalled registry"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("downloading blob") && err.contains("sent no data for 30 s"),
        "the error does not say the download timed out: {err}"
    );
    // The stall timeout is 30 s.
    assert!(took < Duration::from_secs(55), "took {took:?}");
    assert_nothing_stored(&bed);
}
