use super::*;
use crate::store::SnapshotKind;
use containerd_snapshots::{Info, Kind};
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn keys() {
    assert!(validate_key("key", "default/3/sha256:abc").is_ok());
    assert!(
        validate_key("key", "../../../etc/passwd").is_ok(),
        "never a path"
    );
    assert!(validate_key("key", "").is_err());
    assert!(validate_key("key", &"x".repeat(MAX_KEY_BYTES + 1)).is_err());
    assert!(validate_key("key", "a\0b").is_err());
    assert!(validate_key("key", "a\nb").is_err());
    let mut l = HashMap::new();
    l.insert("k".to_string(), "v".repeat(MAX_LABEL_BYTES));
    assert!(validate_labels(l.iter()).is_err());
    let mut l = HashMap::new();
    l.insert(String::new(), "v".into());
    assert!(validate_labels(l.iter()).is_err());
}

#[test]
fn unpack_keys() {
    let c = format!("sha256:{}", "a".repeat(64));
    let none = BTreeMap::new();
    assert_eq!(
        unpack_chain(&format!("default/5/extract-12-ab {c}"), &none),
        Some(c.clone())
    );
    assert_eq!(
        unpack_chain(&format!("extract-12-ab {c}"), &none),
        Some(c.clone())
    );
    assert_eq!(unpack_chain("default/5/mycontainer", &none), None);
    assert_eq!(
        unpack_chain("default/5/extract-1 sha256:../../x", &none),
        None
    );
    let mut l = BTreeMap::new();
    l.insert(LABEL_REF.to_string(), c.clone());
    assert_eq!(unpack_chain("default/7/whatever", &l), Some(c));
    l.insert(LABEL_REF.to_string(), "sha256:nothex".into());
    assert_eq!(unpack_chain("default/7/whatever", &l), None);
}

#[test]
fn mount_specs() {
    let l = |s: &str| PathBuf::from(s);
    let (u, w) = (l("/d/s/1/fs"), l("/d/s/1/work"));
    let m = build_mounts(SnapshotKind::Active, &[], &u, &w);
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].source, "/d/s/1/fs");
    assert_eq!(m[0].options, vec!["rw", "rbind"]);
    let m = build_mounts(SnapshotKind::Active, &[l("/s/l/b"), l("/s/l/a")], &u, &w);
    assert_eq!(m[0].r#type, "overlay");
    assert_eq!(
        m[0].options,
        vec![
            "workdir=/d/s/1/work",
            "upperdir=/d/s/1/fs",
            "lowerdir=/s/l/b:/s/l/a"
        ]
    );
    let m = build_mounts(SnapshotKind::View, &[l("/s/l/a")], &u, &w);
    assert_eq!(
        (m[0].r#type.as_str(), m[0].source.as_str()),
        ("bind", "/s/l/a")
    );
    assert_eq!(m[0].options, vec!["ro", "rbind"]);
    let m = build_mounts(SnapshotKind::View, &[l("/s/l/b"), l("/s/l/a")], &u, &w);
    assert_eq!(m[0].options, vec!["ro", "lowerdir=/s/l/b:/s/l/a"]);
    let m = build_mounts(SnapshotKind::View, &[], &u, &w);
    assert_eq!(m[0].options, vec!["ro", "rbind"]);
}

#[test]
fn short_links_keep_many_layers_under_a_page() {
    // STATE = /var/lib/nvtier: each lower is "/var/lib/nvtier/l/<10>" (28 bytes + ':').
    let lowers: Vec<PathBuf> = (0..128)
        .map(|_| PathBuf::from(format!("/var/lib/nvtier/l/{}", new_id())))
        .collect();
    let m = build_mounts(
        SnapshotKind::Active,
        &lowers,
        Path::new("/u"),
        Path::new("/w"),
    );
    let total: usize = m[0].options.iter().map(|o| o.len() + 1).sum();
    assert!(total < 4096, "{total}");
}

#[test]
fn filters() {
    let mut i = Info {
        kind: Kind::Committed,
        name: "sha256:aa".into(),
        parent: "p".into(),
        ..Default::default()
    };
    i.labels.insert(LABEL_REF.into(), "sha256:aa".into());
    let f = |s: &str| vec![s.to_string()];
    assert!(filter_matches(&[], &i));
    assert!(filter_matches(
        &f(r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent=="p""#),
        &i
    ));
    assert!(!filter_matches(
        &f(r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent=="q""#),
        &i
    ));
    assert!(filter_matches(&f("kind==committed"), &i));
    assert!(!filter_matches(&f("kind==active"), &i));
    assert!(filter_matches(&f("name!=x"), &i));
    assert!(filter_matches(
        &f(r#"labels."containerd.io/snapshot.ref""#),
        &i
    ));
    assert!(!filter_matches(&f("labels.nope"), &i));
    assert!(filter_matches(
        &[
            String::from("kind==active"),
            String::from("kind==committed")
        ],
        &i
    ));
}

#[test]
fn filters_with_quoted_operators_commas_and_escapes() {
    let mut i = Info {
        kind: Kind::Active,
        name: "a!=b".into(),
        ..Default::default()
    };
    i.labels.insert("k\"q".into(), "x,y==z\\".into());
    let f = |s: &str| vec![s.to_string()];
    // An escaped quote does not end the quoted part: the `,` after it
    // separates clauses.
    assert!(!filter_matches(&f(r#"labels."\""!="",name==a"#), &i));
    assert!(filter_matches(&f(r#"labels."\""!="",name=="a!=b""#), &i));
    // Operators inside quotes are text.
    assert!(filter_matches(&f(r#"name=="a!=b""#), &i));
    assert!(!filter_matches(&f(r#"name!="a!=b""#), &i));
    assert!(filter_matches(&f(r#"labels."k\"q"=="x,y==z\\""#), &i));
    assert!(!filter_matches(&f(r#"labels."k\"q"!="x,y==z\\""#), &i));
}

fn rec(key: &str, parent: &str, id: &str) -> crate::store::SnapshotRecord {
    crate::store::SnapshotRecord {
        key: key.into(),
        id: id.into(),
        kind: SnapshotKind::Committed,
        parent: parent.into(),
        labels: BTreeMap::new(),
        created_ms: 0,
        updated_ms: 0,
        tier: crate::tier::TierKind::Disk,
        layer: None,
        tiering: None,
    }
}

#[test]
fn claimed_keys_count_as_taken_children_and_ids() {
    let mut s = Snaps::default();
    for (k, p, id) in [("a", "", "ia"), ("b", "a", "ib"), ("x", "", "ix")] {
        s.recs.insert(k.into(), rec(k, p, id));
    }
    // A Prepare creating "c" on top of "b".
    s.busy.insert(
        "c".into(),
        Busy {
            parent: "b".into(),
            id: "ic".into(),
            attach: None,
        },
    );
    assert!(s.contains_key("c") && s.get("c").is_none());
    assert_eq!(s.has_child("b"), Some("c"));
    assert_eq!(s.has_child("a"), Some("b"));
    assert_eq!(s.has_child("x"), None);
    let ids: Vec<&str> = s.ids().collect();
    assert!(ids.contains(&"ic") && ids.contains(&"ia"));
    // The parent chain, copied for mounts built without the lock.
    let chain = s.chain("b");
    assert_eq!(chain.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert!(s.chain("").is_empty() && s.chain("gone").is_empty());
}

/// The records of images nvtier pulled for an engine go with the engine's
/// last committed snapshot of their top layer, and GC frees their layers;
/// `nvtier pull`'s records stay; a running container keeps its image.
#[test]
fn engine_images_go_with_their_last_top_snapshot() {
    use crate::store::{ImageOrigin, ImageRecord, LayerMeta};
    let (_d, store) = crate::testutil::temp_store("64M");
    let c = |ch: char| format!("sha256:{}", ch.to_string().repeat(64));
    let (a, b, x, y) = (c('a'), c('b'), c('f'), c('9'));
    for (l, parent) in [(&a, None), (&b, Some(&a)), (&x, Some(&a)), (&y, Some(&a))] {
        let meta = LayerMeta {
            chain_id: l.clone(),
            diff_id: l.clone(),
            blob_digest: None,
            media_type: None,
            parent: parent.cloned(),
            tier: crate::tier::TierKind::Disk,
            compressed_bytes: 0,
            uncompressed_bytes: 0,
            file_bytes: 0,
            charged_bytes: 0,
            file_count: 0,
            created_ms: 0,
            store_ms: 0,
        };
        std::fs::create_dir_all(store.layer_dir(&meta).expect("dir")).expect("mkdir layer");
        store.put_layer_meta(&meta).expect("layer meta");
    }
    let image = |name: &str, chain: Vec<String>, origin| ImageRecord {
        name: name.into(),
        manifest_digest: c('d'),
        config_digest: c('e'),
        config: serde_json::json!({}),
        diff_ids: chain.clone(),
        blob_digests: Vec::new(),
        chain_ids: chain,
        created_ms: 0,
        origin,
    };
    store
        .put_image(&image(
            "reg/engine:1",
            vec![a.clone(), b.clone()],
            ImageOrigin::Engine,
        ))
        .expect("image");
    store
        .put_image(&image(
            "reg/cli:1",
            vec![a.clone(), x.clone()],
            ImageOrigin::Cli,
        ))
        .expect("image");
    // An engine image whose top layer backs no snapshot (the engine
    // removed it while nvtier was down).
    store
        .put_image(&image(
            "reg/gone:1",
            vec![a.clone(), y.clone()],
            ImageOrigin::Engine,
        ))
        .expect("image");
    // A record from before origins is the CLI's.
    let mut old = serde_json::to_value(image("reg/old:1", vec![a.clone()], ImageOrigin::Engine))
        .expect("json");
    old.as_object_mut().expect("object").remove("origin");
    let old: ImageRecord = serde_json::from_value(old).expect("old record");
    assert_eq!(old.origin, ImageOrigin::Cli);
    // containerd's snapshots: the base, both tops, and a running container
    // on the engine image.
    for (key, parent, id, layer) in [
        ("ns/1/a", "", "ia00000000", Some(&a)),
        ("ns/2/b", "ns/1/a", "ib00000000", Some(&b)),
        ("ns/3/x", "ns/1/a", "ix00000000", Some(&x)),
        ("ns/4/ctr", "ns/2/b", "ic00000000", None),
    ] {
        let mut r = rec(key, parent, id);
        r.layer = layer.cloned();
        if layer.is_none() {
            r.kind = SnapshotKind::Active;
        }
        std::fs::create_dir_all(store.snapshots_dir()).expect("mkdir");
        std::fs::write(
            store.snapshot_path(key),
            serde_json::to_vec(&r).expect("json"),
        )
        .expect("record");
    }
    let snap = NvSnapshotter::open(store.clone()).expect("open");
    let names = || -> Vec<String> {
        store
            .images()
            .expect("images")
            .into_iter()
            .map(|i| i.name)
            .collect()
    };
    let has = |l: &str| store.layer(l).expect("layer").is_some();
    // The start-up sweep removed the unbacked engine image and its layer.
    assert_eq!(names(), ["reg/cli:1", "reg/engine:1"]);
    assert!(!has(&y) && has(&a) && has(&b));

    // The running container's parent cannot go, nor the image with it.
    assert!(matches!(
        snap.inner.remove("ns/2/b"),
        Err(SnapError::FailedPrecondition(_))
    ));
    snap.inner.remove("ns/4/ctr").expect("remove the container");
    assert_eq!(names(), ["reg/cli:1", "reg/engine:1"]);
    // The CLI's image stays when the engine drops its snapshots.
    snap.inner.remove("ns/3/x").expect("remove x");
    assert_eq!(names(), ["reg/cli:1", "reg/engine:1"]);
    assert!(has(&x));
    // The engine image's top snapshot goes: its record and its own layer
    // go; the shared base stays.
    snap.inner.remove("ns/2/b").expect("remove b");
    assert_eq!(names(), ["reg/cli:1"]);
    assert!(!has(&b) && has(&a) && has(&x));
    snap.inner.remove("ns/1/a").expect("remove a");
    assert_eq!(names(), ["reg/cli:1"]);
    assert!(has(&a) && has(&x));
}
