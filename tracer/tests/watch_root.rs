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
    let root = all
        .iter()
        .find_map(|s| match s {
            Sighting::NewRoot {
                root, dev, mount, ..
            } if *dev == kroot => {
                assert!(
                    mount.as_deref().is_some_and(|m| m.contains(" / / ")),
                    "the root mount's line: {mount:?}"
                );
                Some(*root)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no sighting of a root on device {kroot}: {all:?}"));
    assert_ne!(
        root, kroot,
        "a root is its mount's unique id, not the device"
    );
    let inodes: Vec<u64> = all
        .iter()
        .filter_map(|s| match s {
            Sighting::Event {
                group,
                event: RawEvent::Inode { ino, .. },
            } if *group == root => Some(*ino),
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

/// An overlay's device number is reused after its unmount (the next mount
/// often gets it); a root is its mount's unique id, so two mounts one after
/// the other are two roots, and the second is not taken for the ignored
/// first.
#[test]
fn a_reused_device_is_a_new_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root (BPF, mounts): run it with sudo");
    }
    let t = tempfile::tempdir().expect("tmp");
    let (lower, merged) = (t.path().join("lower"), t.path().join("merged"));
    std::fs::create_dir_all(lower.join("bin")).expect("bin");
    std::fs::create_dir_all(&merged).expect("merged");
    std::fs::copy("/bin/busybox", lower.join("bin/busybox")).expect("busybox");
    std::fs::write(lower.join("a.txt"), "a").expect("a");
    let (tx, rx) = std::sync::mpsc::channel();
    let w = RootWatcher::start(AttachMode::Btf, tx).expect("watcher");
    let mut seen = Vec::new();
    for round in 0..2 {
        let (up, work) = (
            t.path().join(format!("up{round}")),
            t.path().join(format!("work{round}")),
        );
        std::fs::create_dir_all(&up).expect("up");
        std::fs::create_dir_all(&work).expect("work");
        let ok = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                up.display(),
                work.display()
            ))
            .arg(&merged)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount overlay");
        let dev = std::fs::metadata(&merged).expect("stat").dev();
        let kdev = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
        let out = Command::new("chroot")
            .arg(&merged)
            .args(["/bin/busybox", "cat", "/a.txt"])
            .output()
            .expect("chroot");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a");
        std::thread::sleep(Duration::from_millis(300));
        let root = rx
            .try_iter()
            .find_map(|s| match s {
                Sighting::NewRoot { root, dev, .. } if dev == kdev => Some(root),
                _ => None,
            })
            .unwrap_or_else(|| panic!("round {round}: no new root on device {kdev}"));
        // The first container's root is ignored, as for a fresh profile.
        w.ignore(root);
        std::thread::sleep(Duration::from_millis(150));
        let _ = Command::new("umount").arg(&merged).status();
        seen.push((kdev, root));
    }
    drop(w);
    assert_ne!(seen[0].1, seen[1].1, "two mounts, two roots: {seen:?}");
    eprintln!("devices and roots: {seen:?}");
}
