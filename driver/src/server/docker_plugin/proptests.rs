//! Property tests of the plugin API: hostile bodies, IDs and queries get
//! a JSON error and change nothing.

use super::graph::{validate_id, Graph};
use super::*;
use crate::testutil::{prop_check, require_root, temp_store};
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The calls that name a layer, and so must refuse an invalid ID.
const ID_CALLS: &[&str] = &[
    "GraphDriver.Create",
    "GraphDriver.CreateReadWrite",
    "GraphDriver.Remove",
    "GraphDriver.Get",
    "GraphDriver.Put",
    "GraphDriver.Exists",
    "GraphDriver.GetMetadata",
    "GraphDriver.Changes",
    "GraphDriver.DiffSize",
    "GraphDriver.Diff",
];

/// Calls without a layer: any body gives a JSON answer.
const OTHER_CALLS: &[&str] = &[
    "Plugin.Activate",
    "GraphDriver.Init",
    "GraphDriver.Status",
    "GraphDriver.Capabilities",
    "GraphDriver.Nope",
    "Nope",
    "",
];

/// IDs that `validate_id` refuses: traversal, separators, empty, long,
/// control characters, leading punctuation.
fn bad_id() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "",
            ".",
            "..",
            "../keep",
            "keep/..",
            "/keep",
            "keep/x",
            "-keep",
            "_keep",
            "keep\0",
            "keep\n",
            "kee p",
            "sha256:abc",
            "ké",
        ])
        .prop_map(String::from),
        Just("k".repeat(129)),
        Just("k".repeat(100_000)),
        any::<String>(),
    ]
    .prop_filter("a valid ID", |s| validate_id(s).is_err())
}

/// A JSON body: shapes of a real request with hostile fields, wrong types,
/// and garbage bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        // Never a valid ID: a random "8" would make a real Create.
        any::<String>()
            .prop_filter("not a valid ID", |s| validate_id(s).is_err())
            .prop_map(serde_json::Value::from),
        bad_id().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                select(vec!["ID", "Parent", "MountLabel", "Opts", "Home", "x"])
                    .prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        4 => (bad_id(), prop_oneof![Just(String::new()), Just("keep".to_string()), bad_id()])
            .prop_map(|(id, parent)| serde_json::to_vec(&json!({"ID": id, "Parent": parent}))
                .expect("json")),
        3 => value.prop_map(|v| serde_json::to_vec(&v).expect("json")),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(vec![b'['; 10_000]),
        1 => Just(vec![b' '; MAX_JSON_BODY + 1]),
    ]
}

/// Everything in the state dir and the tiers but the lock files and their
/// directory (taken, and so created, by reads too).
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, u64, u64, Vec<u8>)> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let locks = Some("locks".as_ref());
            if p.file_name() == locks || p.parent().and_then(|x| x.file_name()) == locks {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let data = if md.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                Vec::new()
            };
            if md.is_dir() {
                stack.push(p.clone());
            }
            m.insert(p, (md.mode(), md.len(), md.ino(), data));
        }
    }
    m
}

async fn call(g: Arc<Graph>, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(hyper::Method::POST)
        .uri(uri)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = match handle(g, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_else(|e| format!("body error: {e}").into_bytes());
    (status, bytes)
}

fn json_err(status: StatusCode, body: &[u8]) -> Result<serde_json::Value, TestCaseError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        TestCaseError::fail(format!(
            "{status}: not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })?;
    prop_assert!(v.is_object(), "{v}");
    Ok(v)
}

#[test]
fn prop_docker_plugin_hostile_requests_get_json_errors_and_change_nothing() {
    require_root("ApplyDiff extraction with owners");
    let (d, store) = temp_store("1M");
    let g = Arc::new(Graph::new(store).expect("graph"));
    // Something to lose: a container layer and an applied one.
    g.create("keep", "", true).expect("create");
    // And a layer waiting for its ApplyDiff: the bodies sent to it are no
    // layer tars, so it must stay empty.
    g.create("target", "keep", false).expect("create");
    g.create("applied", "", false).expect("create");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(4);
    b.append_data(&mut h, "etc/f", &b"data"[..]).expect("tar");
    g.apply_diff("applied", "", &mut &b.into_inner().expect("tar")[..])
        .expect("apply");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = tree(d.path());
    prop_check(
        "docker_plugin_hostile_requests_get_json_errors_and_change_nothing",
        500,
        (
            prop_oneof![
                3 => select(ID_CALLS.to_vec()).prop_map(|m| (m, true)),
                1 => select(OTHER_CALLS.to_vec()).prop_map(|m| (m, false)),
                2 => Just(("GraphDriver.ApplyDiff", true)),
            ],
            body(),
            bad_id(),
            select(vec!["", "keep", "applied"]),
            0u8..6,
        ),
        |((method, names_layer), body, id, parent, query_shape)| {
            let uri = if method == "GraphDriver.ApplyDiff" {
                // Percent-encoded; URIs past 64 KiB never reach a handler.
                let enc = |s: &str| {
                    s.bytes()
                        .take(4096)
                        .map(|b| format!("%{b:02X}"))
                        .collect::<String>()
                };
                let q = match query_shape {
                    0 => String::new(),
                    1 => format!("id={}&parent={parent}", enc(&id)),
                    2 => format!("parent={parent}"),
                    3 => format!("id=keep&id={}", enc(&id)),
                    4 => "id=target&parent=keep".to_string(),
                    _ => format!("id={}", enc(&id)),
                };
                format!("/{method}?{q}")
            } else {
                format!("/{method}")
            };
            let body_copy = body.clone();
            let (status, resp) = rt.block_on(call(g.clone(), &uri, body));
            let v = json_err(status, &resp)?;
            if names_layer {
                let err = v.get("Err").and_then(|e| e.as_str()).unwrap_or("");
                prop_assert!(!err.is_empty(), "{uri}: no Err in {v}");
            } else if method.is_empty() || !method.contains('.') || method.ends_with("Nope") {
                prop_assert!(status.is_client_error(), "{status} {v}");
                prop_assert!(v.get("Err").and_then(|e| e.as_str()).is_some(), "{v}");
            }
            let after = tree(d.path());
            if after != before {
                let changed: Vec<_> = after
                    .iter()
                    .filter(|(p, v)| before.get(*p) != Some(v))
                    .map(|(p, _)| p)
                    .chain(before.keys().filter(|p| !after.contains_key(*p)))
                    .collect();
                // The state is shared: a change fails every later case too,
                // so this first one is the one to keep.
                panic!(
                    "{uri} changed the store: {changed:?} (body {:?})",
                    String::from_utf8_lossy(&body_copy[..body_copy.len().min(300)])
                );
            }
            Ok(())
        },
    );
    // The layers are still there and whole.
    assert!(g.exists("keep").expect("exists"));
    assert!(g.exists("applied").expect("exists"));
}
