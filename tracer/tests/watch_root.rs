//! Root test of the root watcher: a process chrooted into an overlay mount
//! is reported as a new root, and its accesses (after exec too) are
//! attributed to that root; a host process reading the same files is not.

use nvtier_tracer::bpf::{AttachMode, Sighting};
use nvtier_tracer::watch::RootWatcher;
use nvtier_tracer::RawEvent;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

#[test]
fn chrooted_overlay_process_is_a_new_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root (BPF, mounts): run it with sudo");
    }
    let t = tempfile::tempdir().expect("tmp");
    let (lower, upper, work, merged) = (
        t.path().join("lower"),
        t.path().join("upper"),
        t.path().join("work"),
        t.path().join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::create_dir_all(lower.join("bin")).expect("bin");
    std::fs::copy("/bin/busybox", lower.join("bin/busybox")).expect("busybox");
    for a in ["sh", "cat", "sleep"] {
        std::os::unix::fs::symlink("busybox", lower.join("bin").join(a)).expect("link");
    }
    std::fs::write(lower.join("a.txt"), "a").expect("a");
    std::fs::write(lower.join("b.txt"), "b").expect("b");
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount overlay");
    let root_dev = std::fs::metadata(&merged).expect("stat").dev();
    let (tx, rx) = std::sync::mpsc::channel();
    let w = RootWatcher::start(AttachMode::Btf, tx).expect("watcher");
    let out = Command::new("chroot")
        .arg(&merged)
        .args(["/bin/sh", "-c", "sleep 0.2; cat /a.txt; cat /b.txt"])
        .output()
        .expect("chroot");
    // A host process reads a.txt through the lower directory.
    let _ = std::fs::read(lower.join("a.txt"));
    std::thread::sleep(Duration::from_millis(300));
    drop(w);
    let _ = Command::new("umount").arg(&merged).status();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ab");
    let all: Vec<Sighting> = rx.try_iter().collect();
    let kroot = {
        let (ma, mi) = (libc::major(root_dev), libc::minor(root_dev));
        ((ma as u64) << 20) | mi as u64
    };
    assert!(
        all.iter()
            .any(|s| matches!(s, Sighting::NewRoot { root, .. } if *root == kroot)),
        "no sighting of root {kroot}: {all:?}"
    );
    let inodes: Vec<u64> = all
        .iter()
        .filter_map(|s| match s {
            Sighting::Event {
                group,
                event: RawEvent::Inode { ino, .. },
            } if *group == kroot => Some(*ino),
            _ => None,
        })
        .collect();
    let ino = |p: &str| std::fs::metadata(lower.join(p)).expect("stat").ino();
    for f in ["a.txt", "b.txt", "bin/busybox"] {
        assert!(
            inodes.contains(&ino(f)),
            "{f} not seen in the root: {all:?}"
        );
    }
    // The host's read of a.txt (through the lower directory) is nobody's.
    let host_pid = std::process::id();
    assert!(
        !all.iter().any(|s| matches!(s,
            Sighting::Event { event: RawEvent::Inode { pid, .. }, .. } if *pid == host_pid)),
        "a host process was recorded: {all:?}"
    );
}
