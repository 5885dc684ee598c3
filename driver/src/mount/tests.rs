//! The image mount bookkeeping, on a temporary store with the mount system
//! calls replaced by [`RecordingMounts`]: no root needed.

use super::ops::{Call, Op, RecordingMounts};
use super::*;
use crate::store::{ImageRecord, LayerMeta};
use crate::tier::TierKind;

const IMAGE: &str = "registry.test/demo:latest";

struct Bed {
    _dir: tempfile::TempDir,
    store: Store,
    /// Chain order, bottom first.
    chain: Vec<String>,
    target: PathBuf,
}

impl Bed {
    /// A store with a three-layer image (bottom on disk, the rest on pmem)
    /// and an empty mount target.
    fn new() -> Bed {
        let d = tempfile::tempdir().expect("tmp");
        for s in ["state", "pmem", "disk", "target"] {
            std::fs::create_dir(d.path().join(s)).expect("mkdir");
        }
        let p = |s: &str| d.path().join(s);
        let text = format!(
            "state_dir = {:?}\npmem_dir = {:?}\ndisk_dir = {:?}\npmem_budget = \"64M\"\ntiering = false\n",
            p("state"),
            p("pmem"),
            p("disk")
        );
        let cfg = crate::config::Config::parse(&p("config.toml"), &text).expect("config");
        let store = Store::open(&cfg).expect("store");
        let chain: Vec<String> = ['a', 'b', 'c']
            .iter()
            .map(|c| format!("sha256:{}", c.to_string().repeat(64)))
            .collect();
        for (i, c) in chain.iter().enumerate() {
            let meta = LayerMeta {
                chain_id: c.clone(),
                diff_id: c.clone(),
                blob_digest: None,
                media_type: None,
                parent: i.checked_sub(1).map(|j| chain[j].clone()),
                tier: if i == 0 {
                    TierKind::Disk
                } else {
                    TierKind::Pmem
                },
                compressed_bytes: 0,
                uncompressed_bytes: 0,
                file_bytes: 0,
                charged_bytes: 0,
                file_count: 0,
                created_ms: i as u64,
                store_ms: 0,
            };
            std::fs::create_dir_all(store.layer_dir(&meta).expect("dir")).expect("mkdir layer");
            store.put_layer_meta(&meta).expect("layer meta");
        }
        store
            .put_image(&ImageRecord {
                name: IMAGE.into(),
                manifest_digest: format!("sha256:{}", "d".repeat(64)),
                config_digest: format!("sha256:{}", "e".repeat(64)),
                config: serde_json::json!({}),
                chain_ids: chain.clone(),
                diff_ids: chain.clone(),
                blob_digests: Vec::new(),
                created_ms: 0,
                origin: Default::default(),
            })
            .expect("image");
        let target = std::fs::canonicalize(p("target")).expect("canonical target");
        Bed {
            _dir: d,
            store,
            chain,
            target,
        }
    }

    fn layer_dir(&self, chain: &str) -> PathBuf {
        let m = self.store.layer(chain).expect("meta").expect("layer");
        self.store.layer_dir(&m).expect("layer dir")
    }

    fn record(&self) -> Option<MountRecord> {
        crate::store::meta_read(&self.store.mount_record_path(&self.target)).expect("record")
    }

    fn containers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.store.containers_dir())
            .expect("containers dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn target_is_untouched(&self) -> bool {
        self.target.is_dir()
            && std::fs::read_dir(&self.target)
                .expect("target")
                .next()
                .is_none()
    }
}

#[test]
fn mount_writes_record_and_asks_for_the_chain_top_first() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    let rec = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    assert_eq!(rec.refcount, 1);
    assert_eq!(rec.image, IMAGE);
    assert_eq!(rec.target, b.target);
    assert_eq!(rec.chain_ids, b.chain);
    assert!(rec.tiering.is_none());
    assert_eq!(b.record().as_ref(), Some(&rec), "record on disk");

    let cdir = b.store.containers_dir().join(&rec.container_id);
    assert_eq!(b.containers(), vec![rec.container_id.clone()]);
    assert!(cdir.join("upper").is_dir() && cdir.join("work").is_dir());
    let want = OverlaySpec {
        lower: b.chain.iter().rev().map(|c| b.layer_dir(c)).collect(),
        data: Vec::new(),
        upper: Some(cdir.join("upper")),
        work: Some(cdir.join("work")),
    };
    // Bottom layer on disk, the others on pmem: lowerdirs top first.
    assert!(want.lower[2].starts_with(&b.store.disk.root));
    assert!(want.lower[0].starts_with(&b.store.pmem.root));
    assert_eq!(
        ops.changes(),
        vec![Call::Mount {
            spec: want,
            target: b.target.clone()
        }]
    );
}

#[test]
fn mounting_again_only_bumps_the_refcount() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    let first = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    let again = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount again");
    assert_eq!(again.refcount, 2);
    assert_eq!(again.container_id, first.container_id);
    assert_eq!(b.record().expect("record").refcount, 2);
    assert_eq!(
        ops.changes().len(),
        1,
        "one overlay mount: {:?}",
        ops.calls()
    );
    assert_eq!(b.containers(), vec![first.container_id]);
}

#[test]
fn another_image_at_a_held_target_is_refused() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    let rec = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    let mut other = b.store.image(IMAGE).expect("image").expect("record");
    other.name = "registry.test/other:1".into();
    b.store.put_image(&other).expect("other image");
    let e = mount_image_with(&ops, &b.store, &other.name, &b.target, false)
        .expect_err("second image at the same target");
    assert!(
        e.to_string()
            .contains(&format!("already holds image {IMAGE}")),
        "{e}"
    );
    assert_eq!(b.record(), Some(rec));
    assert_eq!(ops.changes().len(), 1);
}

#[test]
fn stale_record_is_remounted_with_a_fresh_upper() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    let old = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    // As after a reboot: the record stays, the mount is gone.
    ops.set_mounted(&b.target, false);
    let new = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("remount");
    assert_eq!(new.refcount, 1);
    assert_ne!(new.container_id, old.container_id);
    assert_eq!(b.containers(), vec![new.container_id.clone()]);
    assert_eq!(b.record(), Some(new));
    assert_eq!(ops.changes().len(), 2);
}

#[test]
fn failed_mount_leaves_nothing_behind() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    ops.fail_next(Op::Mount, libc::ENOENT);
    let e = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect_err("mount fails");
    assert!(matches!(e, Error::Mount { ref target, .. } if *target == b.target));
    assert!(
        e.to_string()
            .contains(&std::io::Error::from_raw_os_error(libc::ENOENT).to_string()),
        "{e}"
    );
    assert_eq!(b.record(), None, "no mount record");
    assert!(b.containers().is_empty(), "no container directory");
    assert!(b.target_is_untouched(), "target left as it was");
    assert_eq!(ops.changes().len(), 1);
    // Nothing is left to unmount either.
    assert!(umount_image_with(&ops, &b.store, &b.target).is_err());
    // The next attempt starts clean.
    let rec = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    assert_eq!(rec.refcount, 1);
    assert_eq!(b.containers(), vec![rec.container_id]);
}

#[test]
fn unknown_image_mounts_nothing() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    let e = mount_image_with(&ops, &b.store, "registry.test/absent:1", &b.target, false)
        .expect_err("unknown image");
    assert!(matches!(e, Error::ImageNotFound(ref n) if n == "registry.test/absent:1"));
    assert!(ops.changes().is_empty());
    assert!(b.containers().is_empty());
    assert_eq!(b.record(), None);
}

#[test]
fn umount_of_the_last_reference_removes_record_and_container() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    let rec = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount again");

    assert_eq!(
        umount_image_with(&ops, &b.store, &b.target).expect("umount"),
        1
    );
    assert_eq!(b.record().expect("record kept").refcount, 1);
    assert_eq!(b.containers(), vec![rec.container_id.clone()]);
    assert_eq!(ops.changes().len(), 1, "still mounted: {:?}", ops.calls());

    assert_eq!(
        umount_image_with(&ops, &b.store, &b.target).expect("umount"),
        0
    );
    assert_eq!(b.record(), None, "record removed");
    assert!(b.containers().is_empty(), "container directory removed");
    assert!(b.target_is_untouched(), "target itself stays");
    assert_eq!(
        ops.changes()[1..],
        [Call::Umount {
            target: b.target.clone(),
            detach: false
        }]
    );
    // The image's layers are still referenced by the image: gc keeps them.
    for c in &b.chain {
        assert!(b.layer_dir(c).is_dir());
    }
}

#[test]
fn busy_umount_falls_back_to_detach() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    ops.fail_next(Op::Umount, libc::EBUSY);
    assert_eq!(
        umount_image_with(&ops, &b.store, &b.target).expect("umount"),
        0
    );
    let umounts: Vec<Call> = ops.changes()[1..].to_vec();
    assert_eq!(
        umounts,
        vec![
            Call::Umount {
                target: b.target.clone(),
                detach: false
            },
            Call::Umount {
                target: b.target.clone(),
                detach: true
            },
        ]
    );
    assert_eq!(b.record(), None);
    assert!(b.containers().is_empty());
}

#[test]
fn other_umount_errors_keep_the_record() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    let rec = mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    ops.fail_next(Op::Umount, libc::EPERM);
    let e = umount_image_with(&ops, &b.store, &b.target).expect_err("umount fails");
    assert!(ops::is_errno(&e, libc::EPERM), "{e:?}");
    assert!(e.to_string().starts_with("umount "), "{e}");
    // No lazy detach for anything but EBUSY.
    assert_eq!(ops.changes().len(), 2);
    assert_eq!(b.containers(), vec![rec.container_id]);
    assert!(b.record().is_some());
}

#[test]
fn umount_of_a_record_whose_mount_is_gone_still_cleans_up() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    mount_image_with(&ops, &b.store, IMAGE, &b.target, false).expect("mount");
    ops.set_mounted(&b.target, false);
    assert_eq!(
        umount_image_with(&ops, &b.store, &b.target).expect("umount"),
        0
    );
    assert_eq!(ops.changes().len(), 1, "no umount call: {:?}", ops.calls());
    assert_eq!(b.record(), None);
    assert!(b.containers().is_empty());
}

#[test]
fn umount_of_an_unknown_target_is_a_clear_error() {
    let b = Bed::new();
    let ops = RecordingMounts::default();
    let e = umount_image_with(&ops, &b.store, &b.target).expect_err("nothing mounted");
    assert!(matches!(e, Error::Mount { ref target, .. } if *target == b.target));
    assert!(e.to_string().contains("not mounted by nvtier"), "{e}");
    assert!(ops.calls().is_empty());
    // A path that does not exist is reported as given.
    let gone = b.target.join("absent");
    let e = umount_image_with(&ops, &b.store, &gone).expect_err("no such target");
    assert!(e.to_string().contains(&gone.display().to_string()), "{e}");
    assert!(ops.calls().is_empty());
}

#[test]
fn linux_mounts_mount_and_detach_a_busy_overlay() {
    crate::testutil::require_root("overlay mounts");
    let b = Bed::new();
    // Detach whatever a failed assertion leaves mounted.
    struct Detach<'a>(&'a Path);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            while is_mounted(self.0) {
                if LinuxMounts.umount(self.0, true).is_err() {
                    break;
                }
            }
        }
    }
    let _detach = Detach(&b.target);
    std::fs::write(b.layer_dir(&b.chain[0]).join("f"), b"bottom").expect("write");
    std::fs::write(b.layer_dir(&b.chain[2]).join("f"), b"top").expect("write");
    let rec = mount_image(&b.store, IMAGE, &b.target).expect("mount");
    assert!(is_mounted(&b.target));
    assert_eq!(std::fs::read(b.target.join("f")).expect("read"), b"top");
    assert_eq!(
        mount_image(&b.store, IMAGE, &b.target)
            .expect("again")
            .refcount,
        2
    );
    assert_eq!(umount_image(&b.store, &b.target).expect("umount"), 1);
    assert!(is_mounted(&b.target));
    // An open file keeps the mount busy: the umount detaches it lazily.
    let busy = std::fs::File::open(b.target.join("f")).expect("open");
    assert_eq!(umount_image(&b.store, &b.target).expect("umount"), 0);
    assert!(!is_mounted(&b.target));
    drop(busy);
    assert_eq!(b.record(), None);
    assert!(!b.store.containers_dir().join(rec.container_id).exists());
}
