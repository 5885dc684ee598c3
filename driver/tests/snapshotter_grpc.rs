//! The snapshotter socket driven directly with a raw gRPC client (the
//! containerd-snapshots crate's generated client): containerd's semantics
//! for active/committed/view snapshots, and hostile requests (path
//! traversal, huge, empty, control characters) that must get gRPC errors and
//! change nothing on disk.

mod common;
mod engines;

use common::Bed;
use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use engines::*;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

type Client = SnapshotsClient<Channel>;

async fn connect(sock: &Path) -> Client {
    let sock = sock.to_path_buf();
    let ch = Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(sock.clone())
        }))
        .await
        .expect("connect to the snapshotter socket");
    SnapshotsClient::new(ch)
}

/// Every path under the tiers and the state dir with its type, size and
/// mtime: "nothing changed on disk" means this is equal before and after.
fn disk_state(bed: &Bed) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for root in [&bed.pmem, &bed.disk, &bed.state] {
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                let md = fs::symlink_metadata(&p).expect("lstat");
                if md.is_dir() {
                    stack.push(p.clone());
                }
                // Lock files are opened (not changed) by every request.
                if p.starts_with(bed.state.join("locks")) {
                    continue;
                }
                m.insert(
                    p.display().to_string(),
                    format!("{:o} {} {}", md.mode(), md.len(), md.mtime_nsec()),
                );
            }
        }
    }
    m
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

async fn remove(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.remove(RemoveSnapshotRequest {
        key: key.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

/// A request that names one snapshot by its key and sets nothing else.
#[derive(Debug, Clone, Copy)]
enum ByKey {
    Prepare,
    Stat,
    Remove,
    Mounts,
    Usage,
}

/// The error code `op` on `key` gets (panics when it succeeds).
async fn code_by_key(c: &mut Client, op: ByKey, key: &str) -> Code {
    let key = key.to_string();
    match op {
        ByKey::Prepare => code(
            c.prepare(PrepareSnapshotRequest {
                key,
                ..Default::default()
            })
            .await,
        ),
        ByKey::Stat => code(
            c.stat(StatSnapshotRequest {
                key,
                ..Default::default()
            })
            .await,
        ),
        ByKey::Remove => code(
            c.remove(RemoveSnapshotRequest {
                key,
                ..Default::default()
            })
            .await,
        ),
        ByKey::Mounts => code(
            c.mounts(MountsRequest {
                key,
                ..Default::default()
            })
            .await,
        ),
        ByKey::Usage => code(
            c.usage(UsageRequest {
                key,
                ..Default::default()
            })
            .await,
        ),
    }
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: "nvtier".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

use containerd_snapshots::api::types::Mount;

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    c.commit(CommitSnapshotRequest {
        snapshotter: "nvtier".into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
}

#[test]
fn snapshot_semantics_and_hostile_requests() {
    let bed = Bed::up("grpc", "none", "64M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config(&bed, "64M", Path::new("/nonexistent-containerd"));
    // A snapshot directory on the disk tier that no record owns (a crash
    // between removing the record and the directory) is gone once the
    // server listens: the start-up cleanup removes it, so no later Cleanup
    // has to read the disk tier.
    let orphan = bed.disk.join("snapshots/orphan-of-a-crash/fs");
    fs::create_dir_all(&orphan).expect("orphan dir");
    fs::write(orphan.join("f"), b"x").expect("orphan file");
    let nv = start_nvtier(&bed, &sock, "nvtier");
    assert!(
        !bed.disk.join("snapshots/orphan-of-a-crash").exists(),
        "the orphaned snapshot dir must be removed at start"
    );
    let md = fs::metadata(&sock).expect("socket");
    assert_eq!(
        md.permissions().mode() & 0o777,
        0o600,
        "socket must be root-only"
    );
    // A second server refuses to steal a live socket.
    let o = bed.nvtier(&["serve"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let img = bed.push("grpc1", "busybox,1M");
    // chainID of the base layer = its diffID, from the image config.
    let oci = common::oci_dir();
    let build_lock = common::build_lock();
    let manifest_digest = common::manifest_digest("grpc1");
    let blob = |d: &str| {
        oci.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&manifest_digest)).expect("manifest")).expect("json");
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(blob(manifest["config"]["digest"].as_str().expect("cfg"))).expect("config"),
    )
    .expect("json");
    let base_chain = config["rootfs"]["diff_ids"][0]
        .as_str()
        .expect("diff id")
        .to_string();
    drop(build_lock);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = connect(&sock).await;

        // --- containerd semantics -------------------------------------
        let m = prepare(&mut c, "ns/1/base", "")
            .await
            .expect("prepare base");
        assert_eq!(m[0].r#type, "bind");
        let upper = PathBuf::from(&m[0].source);
        fs::write(upper.join("hello"), "base").expect("write base");
        assert_eq!(
            code_by_key(&mut c, ByKey::Prepare, "ns/1/base").await,
            Code::AlreadyExists
        );
        // Parent must be committed.
        assert_eq!(
            code(
                c.prepare(PrepareSnapshotRequest {
                    key: "ns/2/child".into(),
                    parent: "ns/1/base".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::FailedPrecondition
        );
        commit(&mut c, "ns/3/committed-base", "ns/1/base")
            .await
            .expect("commit");
        // The active key is gone after commit.
        assert_eq!(
            code_by_key(&mut c, ByKey::Stat, "ns/1/base").await,
            Code::NotFound
        );
        let st = c
            .stat(StatSnapshotRequest {
                key: "ns/3/committed-base".into(),
                ..Default::default()
            })
            .await
            .expect("stat")
            .into_inner()
            .info
            .expect("info");
        assert_eq!(st.kind, 3, "committed");

        let m = prepare(&mut c, "ns/4/work", "ns/3/committed-base")
            .await
            .expect("prepare child");
        assert_eq!(m[0].r#type, "overlay");
        let opts = m[0].options.join(",");
        assert!(
            opts.contains("lowerdir=") && opts.contains("upperdir=") && opts.contains("workdir="),
            "{opts}"
        );
        let lower = opts.split("lowerdir=").nth(1).expect("lowerdir");
        assert!(lower.len() < 80, "short lowerdir link: {lower}");
        assert_eq!(
            fs::read_to_string(Path::new(lower).join("hello")).expect("via link"),
            "base"
        );
        let v = c
            .view(ViewSnapshotRequest {
                key: "ns/5/view".into(),
                parent: "ns/3/committed-base".into(),
                ..Default::default()
            })
            .await
            .expect("view")
            .into_inner()
            .mounts;
        assert_eq!(v[0].r#type, "bind");
        assert!(
            v[0].options.contains(&"ro".to_string()),
            "{:?}",
            v[0].options
        );
        // A view cannot be committed.
        assert_eq!(
            code(
                c.commit(CommitSnapshotRequest {
                    name: "x".into(),
                    key: "ns/5/view".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::FailedPrecondition
        );
        // A committed snapshot with children cannot be removed.
        assert_eq!(
            code_by_key(&mut c, ByKey::Remove, "ns/3/committed-base").await,
            Code::FailedPrecondition
        );
        // Update labels (only labels are mutable), then List with a filter.
        let mut info = st.clone();
        info.labels = labels(&[("containerd.io/gc.root", "x"), ("k", "v")]);
        let up = c
            .update(UpdateSnapshotRequest {
                info: Some(info.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.k".into()],
                }),
                ..Default::default()
            })
            .await
            .expect("update")
            .into_inner()
            .info
            .expect("info");
        assert_eq!(up.labels.get("k").map(String::as_str), Some("v"));
        assert!(
            !up.labels.contains_key("containerd.io/gc.root"),
            "only the masked label: {:?}",
            up.labels
        );
        assert_eq!(
            code(
                c.update(UpdateSnapshotRequest {
                    info: Some(info.clone()),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["parent".into()]
                    }),
                    ..Default::default()
                })
                .await
            ),
            Code::InvalidArgument
        );
        let mut unknown = info.clone();
        unknown.name = "ns/9/nope".into();
        assert_eq!(
            code(
                c.update(UpdateSnapshotRequest {
                    info: Some(unknown),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        let mut s = c
            .list(ListSnapshotsRequest {
                filters: vec!["labels.k==v".into()],
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        let mut names = Vec::new();
        while let Some(r) = s.message().await.expect("stream") {
            names.extend(r.info.into_iter().map(|i| i.name));
        }
        assert_eq!(names, vec!["ns/3/committed-base".to_string()]);
        let u = c
            .usage(UsageRequest {
                key: "ns/3/committed-base".into(),
                ..Default::default()
            })
            .await
            .expect("usage")
            .into_inner();
        assert_eq!(u.size, 4096);

        // --- hostile requests: errors, and nothing changes on disk ------
        let before = disk_state(&bed);
        let huge = "k".repeat(1 << 20);
        let traversal = "../../../../../../tmp/nvtier-evil";
        for key in ["", huge.as_str(), "a\0b", "line\nbreak"] {
            for op in [ByKey::Prepare, ByKey::Stat, ByKey::Remove, ByKey::Mounts] {
                assert_eq!(
                    code_by_key(&mut c, op, key).await,
                    Code::InvalidArgument,
                    "{op:?} key {:?}",
                    key.get(..20)
                );
            }
        }
        for key in [
            traversal,
            "/etc/passwd",
            "sha256:../../../../etc",
            "ns/3/committed-base/../../x",
        ] {
            for op in [ByKey::Stat, ByKey::Remove, ByKey::Mounts, ByKey::Usage] {
                assert_eq!(
                    code_by_key(&mut c, op, key).await,
                    Code::NotFound,
                    "{op:?} key {key:?}"
                );
            }
            assert_eq!(
                code(
                    c.commit(CommitSnapshotRequest {
                        name: "ns/9/x".into(),
                        key: key.into(),
                        ..Default::default()
                    })
                    .await
                ),
                Code::NotFound
            );
            // An unknown parent, however it is spelled.
            assert_eq!(
                code(
                    c.prepare(PrepareSnapshotRequest {
                        key: "ns/9/new".into(),
                        parent: key.into(),
                        ..Default::default()
                    })
                    .await
                ),
                Code::NotFound
            );
        }
        // Hostile labels.
        let big = "v".repeat(8192);
        let many: HashMap<String, String> =
            (0..1000).map(|i| (format!("k{i}"), "v".into())).collect();
        for l in [
            labels(&[("k", big.as_str())]),
            labels(&[("", "v")]),
            labels(&[("k\u{1}", "v")]),
            many,
        ] {
            assert_eq!(
                code(
                    c.prepare(PrepareSnapshotRequest {
                        key: "ns/9/l".into(),
                        labels: l,
                        ..Default::default()
                    })
                    .await
                ),
                Code::InvalidArgument
            );
        }
        // A remote-snapshot label with a hostile chainID is just a label:
        // nothing is looked up by it.
        assert_eq!(
            code(
                c.prepare(PrepareSnapshotRequest {
                    key: "ns/9/r".into(),
                    parent: "missing".into(),
                    labels: labels(&[("containerd.io/snapshot.ref", "sha256:../../../etc")]),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        // Commit onto an existing name.
        assert_eq!(
            code(
                c.commit(CommitSnapshotRequest {
                    name: "ns/3/committed-base".into(),
                    key: "ns/4/work".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::AlreadyExists
        );
        let after = disk_state(&bed);
        assert_eq!(before, after, "a rejected request changed the disk");
        assert!(!Path::new("/tmp/nvtier-evil").exists());

        // A traversal-looking key is a legal containerd key: it works, and
        // only a random-id directory is created.
        prepare(&mut c, traversal, "")
            .await
            .expect("odd but legal key");
        assert!(!Path::new("/tmp/nvtier-evil").exists());
        let added: Vec<String> = disk_state(&bed)
            .into_keys()
            .filter(|k| !before.contains_key(k))
            .collect();
        assert!(added.iter().all(|p| !p.contains("evil")), "{added:?}");
        remove(&mut c, traversal).await.expect("remove");

        // --- remote-snapshot pull, deduplicated ------------------------
        // Two concurrent Prepares for the same image (CRI labels): nvtier
        // pulls it once, both get AlreadyExists, and Stat then succeeds.
        let chain0 = bed.nvtier_json(&["layers"]);
        assert_eq!(chain0, serde_json::json!([]));
        let cri = |key: &str| PrepareSnapshotRequest {
            key: key.into(),
            parent: String::new(),
            labels: labels(&[
                ("containerd.io/snapshot.ref", &base_chain),
                ("containerd.io/snapshot/cri.image-ref", &img),
                ("containerd.io/snapshot/cri.layer-digest", "sha256:unused"),
                ("containerd.io/snapshot/cri.image-layers", "sha256:unused"),
            ]),
            ..Default::default()
        };
        let (mut c1, mut c2) = (c.clone(), c.clone());
        let (r1, r2) = tokio::join!(
            c1.prepare(cri("moby/1/extract-1 k")),
            c2.prepare(cri("moby/2/extract-2 k"))
        );
        assert_eq!(code(r1), Code::AlreadyExists);
        assert_eq!(code(r2), Code::AlreadyExists);
        let st = c
            .stat(StatSnapshotRequest {
                key: base_chain.clone(),
                ..Default::default()
            })
            .await
            .expect("stat after AlreadyExists")
            .into_inner()
            .info
            .expect("info");
        assert_eq!(st.kind, 3);
        assert_eq!(
            st.labels.get("containerd.io/snapshot.ref"),
            Some(&base_chain)
        );
        assert_eq!(
            code_by_key(&mut c, ByKey::Stat, "moby/1/extract-1 k").await,
            Code::NotFound
        );
        let pulls = nv.log_text().matches("pulling for containerd").count();
        assert_eq!(
            pulls,
            1,
            "the image must be pulled once:\n{}",
            nv.log_text()
        );
        remove(&mut c, &base_chain).await.expect("remove");

        // Tear down in child-first order; Cleanup leaves nothing.
        for k in ["ns/5/view", "ns/4/work", "ns/3/committed-base"] {
            remove(&mut c, k).await.expect("remove");
        }
        c.cleanup(CleanupRequest::default()).await.expect("cleanup");
    });
    let left = entries_under(&[
        bed.pmem.join("snapshots"),
        bed.disk.join("snapshots"),
        bed.state.join("l"),
        bed.state.join("snapshots"),
    ]);
    assert!(left.is_empty(), "leftovers: {left:?}");
    drop(nv);
    drop(rd);
}

/// A committed snapshot whose directory a tier lost: `Mounts` of a snapshot
/// above it is a `FailedPrecondition` that says what was lost and what to
/// do, never a mount spec that would fail in the kernel.
#[test]
fn mounts_over_lost_content_fail_with_the_fix() {
    let bed = Bed::up("grplst", "none", "64M");
    let rd = make_run_dir(&bed);
    let sock = write_serve_config(&bed, "64M", Path::new("/nonexistent-containerd"));
    let nv = start_nvtier(&bed, &sock, "nvtier");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = connect(&sock).await;
        let m = prepare(&mut c, "ns/1/base", "").await.expect("prepare");
        fs::write(PathBuf::from(&m[0].source).join("f"), b"x").expect("write");
        commit(&mut c, "ns/2/committed", "ns/1/base")
            .await
            .expect("commit");
        prepare(&mut c, "ns/3/work", "ns/2/committed")
            .await
            .expect("prepare above");
        // The committed snapshot's directory is lost from the disk tier.
        let snaps = bed.disk.join("snapshots");
        let mut lost = false;
        for e in fs::read_dir(&snaps).expect("ls").flatten() {
            if e.path().join("fs/f").is_file() {
                fs::remove_dir_all(e.path()).expect("lose it");
                lost = true;
            }
        }
        assert!(lost, "the committed snapshot's directory was found");
        let r = c
            .mounts(MountsRequest {
                snapshotter: "nvtier".into(),
                key: "ns/3/work".into(),
            })
            .await;
        let e = r.expect_err("mounts over lost content");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("is damaged")
                && e.message().contains("ns/2/committed")
                && e.message().contains("pull it again"),
            "{}",
            e.message()
        );
        // Removing the snapshots still works.
        remove(&mut c, "ns/3/work").await.expect("remove work");
        remove(&mut c, "ns/2/committed")
            .await
            .expect("remove committed");
    });
    drop(nv);
    drop(rd);
}
