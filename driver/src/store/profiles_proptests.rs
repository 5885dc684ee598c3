//! Property tests of profile files and imported profiles: garbage and
//! hostile profiles are refused or sanitised, never a panic, and never name
//! a file outside the image.

use super::profiles::{load_profile, profile_path};
use crate::store::ImageRecord;
use crate::testutil::{prop_check, temp_store};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

const IMAGE: &str = "registry.test/app:latest";

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn image() -> ImageRecord {
    ImageRecord {
        name: IMAGE.into(),
        manifest_digest: digest('m'),
        config_digest: digest('c'),
        config: json!({}),
        chain_ids: vec![digest('1'), digest('2')],
        diff_ids: vec![digest('a'), digest('b')],
        blob_digests: vec![digest('x'), digest('y')],
        created_ms: 0,
        origin: Default::default(),
    }
}

fn hostile_path() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "/etc/passwd",
            "/bin/sh",
            "/",
            "",
            "etc/passwd",
            "../etc/shadow",
            "/../etc/shadow",
            "/a/../../etc/shadow",
            "/a/..",
            "/a/./b",
            "//etc//passwd",
            "/a\0b",
            "/a\nb",
            "/proc/self/root/etc/shadow",
            "/..",
            "/...",
            "/a/b/",
        ])
        .prop_map(String::from),
        "/[a-z./]{0,12}",
        any::<String>(),
    ]
}

fn file() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            select(vec!['1', '2', '9']).prop_map(digest),
            any::<String>()
        ],
        prop_oneof![
            select(vec!['a', 'b', 'z']).prop_map(digest),
            Just("sha256:".to_string()),
            Just("sha512:aa".to_string()),
            any::<String>()
        ],
        hostile_path(),
        prop::collection::vec(
            select(vec!["open", "exec", "mmap", "stat", "read", "engine"]),
            0..3,
        ),
        prop_oneof![Just(1u64), Just(u64::MAX), any::<u64>()],
        prop_oneof![Just(0.0f64), Just(-1.0), Just(1e308), any::<f64>()],
        prop::option::of(prop_oneof![Just(u64::MAX), any::<u64>()]),
    )
        .prop_map(|(chain, diff, path, kinds, count, ms, bytes)| {
            json!({
                "layer_chain_id": chain, "layer_diff_id": diff, "path": path,
                "kinds": kinds, "count": count, "first_access_ms": ms, "bytes": bytes,
            })
        })
}

/// A profile's JSON: well-formed with hostile entries (duplicated too), or
/// broken.
fn profile_json() -> impl Strategy<Value = String> {
    let files = prop::collection::vec(file(), 0..6).prop_flat_map(|v| {
        let n = v.len();
        (Just(v), prop::collection::vec(0..n.max(1), 0..3))
    });
    let good = (
        prop_oneof![
            Just(IMAGE.to_string()),
            Just("other:1".to_string()),
            any::<String>()
        ],
        files,
        prop_oneof![Just(1u32), Just(u32::MAX)],
        prop_oneof![Just(0u64), Just(u64::MAX)],
    )
        .prop_map(|(image, (mut files, dups), runs, lost)| {
            for i in dups {
                if let Some(f) = files.get(i).cloned() {
                    files.push(f);
                }
            }
            json!({
                "image": image, "diff_ids": [digest('a'), digest('z')], "tracer": "ebpf",
                "runs": runs, "lost_events": lost, "files": files,
            })
            .to_string()
        });
    prop_oneof![
        6 => good,
        1 => any::<String>(),
        1 => select(vec!["", "{", "null", "[]", "{}", "{\"files\": 3}"]).prop_map(String::from),
    ]
}

#[test]
fn prop_profiles_imported_are_sanitised_or_refused() {
    let (_d, store) = temp_store("1M");
    let img = image();
    store.put_image(&img).expect("image");
    let dir = store.state().join("profiles");
    prop_check(
        "profiles_imported_are_sanitised_or_refused",
        500,
        (profile_json(), any::<bool>()),
        |(text, attach)| {
            let _ = std::fs::remove_dir_all(&dir);
            let parsed = nvtier_tracer::Profile::from_json(&text);
            let target = attach.then_some(IMAGE);
            let r = crate::trace::import(&store, &text, target);
            if parsed.is_err() {
                prop_assert!(r.is_err(), "import accepted what from_json refuses");
            }
            let Ok(p) = r else {
                prop_assert!(!dir.exists() || std::fs::read_dir(&dir).expect("ls").count() == 0);
                return Ok(());
            };
            prop_assert_eq!(&p.image, IMAGE);
            prop_assert_eq!(&p.diff_ids, &img.diff_ids);
            for f in &p.files {
                // Absolute, without `..`: a path inside the image's root.
                prop_assert!(f.path.starts_with('/'), "{:?}", f.path);
                prop_assert!(!f.path.split('/').any(|c| c == ".."), "{:?}", f.path);
                // Only this image's layers, by the local chainID.
                let i = img.diff_ids.iter().position(|d| d == &f.layer_diff_id);
                prop_assert!(i.is_some(), "unknown layer {:?}", f.layer_diff_id);
                prop_assert_eq!(&f.layer_chain_id, &img.chain_ids[i.unwrap_or(0)]);
            }
            // Saved under STATE/profiles, read back the same.
            let path = profile_path(&store, IMAGE);
            prop_assert_eq!(path.parent(), Some(dir.as_path()));
            let back = load_profile(&store, IMAGE).expect("load").expect("saved");
            // (serde_json's float parsing may differ in the last digit.)
            let key = |q: &nvtier_tracer::Profile| {
                let mut q = q.clone();
                for f in &mut q.files {
                    f.first_access_ms = 0.0;
                }
                q
            };
            prop_assert_eq!(key(&back), key(&p));
            for (a, b) in back.files.iter().zip(&p.files) {
                let d = (a.first_access_ms - b.first_access_ms).abs();
                prop_assert!(
                    d <= 1e-12 * a.first_access_ms.abs().max(1e-300),
                    "{a:?} {b:?}"
                );
            }
            // The next trace merges its run into it: huge counts saturate.
            let mut merged = back.clone();
            merged.merge(&p);
            prop_assert_eq!(merged.files.len(), p.files.len());
            prop_assert_eq!(merged.runs, p.runs.saturating_mul(2));
            Ok(())
        },
    );
}
