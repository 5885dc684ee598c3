//! Property tests of what containerd sends: snapshot keys, labels and
//! list filters.

use super::*;
use crate::testutil::{prop_check, temp_store};
use containerd_snapshots::{Info, Kind};
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;

/// Strings with what a key can hold: path syntax, quotes, operators,
/// control characters, non-ASCII, and sometimes far too many bytes.
fn key_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        4 => prop::collection::vec(
            select(vec![
                "a", "default", "/", "..", ".", "sha256:", "extract-1 ", " ", "\0", "\n",
                "\u{7f}", "\u{85}", "é", "\"", "==", "!=", ",", "\\", "\u{202e}",
            ]),
            0..12,
        )
        .prop_map(|v| v.concat()),
        1 => (1usize..3, select(vec!["x", "é", "\0"]))
            .prop_map(|(k, s)| s.repeat(MAX_KEY_BYTES / s.len() + k - 2 + 1)),
    ]
}

fn key_ok(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY_BYTES && !k.chars().any(char::is_control)
}

#[test]
fn prop_snapshot_keys_and_labels_are_validated_as_specified() {
    prop_check(
        "snapshot_keys_and_labels_are_validated_as_specified",
        1000,
        (
            key_string(),
            prop::collection::vec((key_string(), key_string()), 0..4),
            prop_oneof![Just(0usize), Just(MAX_LABELS), Just(MAX_LABELS + 1)],
        ),
        |(k, labels, pad)| {
            prop_assert_eq!(validate_key("key", &k).is_ok(), key_ok(&k), "{:?}", k);
            let mut m: HashMap<String, String> = labels.into_iter().collect();
            for i in 0..pad {
                if m.len() >= pad {
                    break;
                }
                m.insert(format!("pad{i}"), "v".into());
            }
            let want = m.len() <= MAX_LABELS
                && m.iter().all(|(k, v)| {
                    !k.is_empty()
                        && k.len() + v.len() <= MAX_LABEL_BYTES
                        && !k.chars().any(char::is_control)
                });
            prop_assert_eq!(validate_labels(m.iter()).is_ok(), want);
            Ok(())
        },
    );
}

#[test]
fn prop_snapshot_keys_never_become_paths() {
    let (_d, store) = temp_store("1M");
    let dir = store.snapshots_dir();
    prop_check(
        "snapshot_keys_never_become_paths",
        1000,
        (key_string(), key_string(), prop::option::of(key_string())),
        |(a, b, label)| {
            for k in [&a, &b] {
                let p = store.snapshot_path(k);
                prop_assert_eq!(p.parent(), Some(dir.as_path()));
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let hex = name.strip_suffix(".json").unwrap_or("");
                prop_assert!(
                    hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()),
                    "{name:?}"
                );
            }
            prop_assert_eq!(a == b, store.snapshot_path(&a) == store.snapshot_path(&b));
            // The chainID of an unpack snapshot names a layer directory: it
            // is a well-formed digest, whatever the key and label.
            let mut labels = BTreeMap::new();
            if let Some(l) = label {
                labels.insert(LABEL_REF.to_string(), l);
            }
            for k in [&a, &format!("default/3/extract-9 {b}")] {
                if let Some(c) = unpack_chain(k, &labels) {
                    prop_assert!(crate::store::digest_hex(&c).is_ok(), "{c:?}");
                }
            }
            Ok(())
        },
    );
}

// ---- filters ----

#[derive(Debug, Clone)]
enum Field {
    Name,
    Parent,
    Kind,
    /// A label; quoted in the filter when `quote`.
    Label(String, bool),
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Exists,
}

#[derive(Debug, Clone)]
struct Clause {
    field: Field,
    op: Op,
}

/// Values and label keys over an alphabet that holds the filter syntax's
/// own characters.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        select(vec![
            "a",
            "b",
            "sha256:aa",
            "/",
            ".",
            "-",
            "_",
            "=",
            "!",
            ",",
            "~",
            "\"",
            "\\",
            " ",
            "é",
            "==",
            "!=",
        ]),
        0..5,
    )
    .prop_map(|v| v.concat())
}

fn clause() -> impl Strategy<Value = Clause> {
    let field = prop_oneof![
        Just(Field::Name),
        Just(Field::Parent),
        Just(Field::Kind),
        (text(), any::<bool>()).prop_map(|(k, q)| Field::Label(k, q)),
        select(vec!["containerd.io/snapshot.ref", "k"])
            .prop_map(|k| Field::Label(k.to_string(), true)),
    ];
    let value = prop_oneof![
        text(),
        select(vec![
            "view",
            "active",
            "committed",
            "sha256:aa",
            "p",
            "v",
            ""
        ])
        .prop_map(String::from),
    ];
    let op = prop_oneof![
        value.clone().prop_map(Op::Eq),
        value.prop_map(Op::Ne),
        Just(Op::Exists),
    ];
    (field, op).prop_map(|(field, op)| Clause { field, op })
}

/// containerd's quoting: `"…"` with `\` and `"` escaped.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Does containerd's grammar let `s` go unquoted (as a field path part or
/// a value)?
fn bare(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-/:".contains(c))
}

fn render(c: &Clause) -> String {
    let f = match &c.field {
        Field::Name => "name".to_string(),
        Field::Parent => "parent".to_string(),
        Field::Kind => "kind".to_string(),
        Field::Label(k, q) if *q || !bare(k) => format!("labels.{}", quote(k)),
        Field::Label(k, _) => format!("labels.{k}"),
    };
    let v = |s: &str| if bare(s) { s.to_string() } else { quote(s) };
    match &c.op {
        Op::Eq(x) => format!("{f}=={}", v(x)),
        Op::Ne(x) => format!("{f}!={}", v(x)),
        Op::Exists => f,
    }
}

fn model(c: &Clause, i: &Info) -> bool {
    let kind = match i.kind {
        Kind::View => "view",
        Kind::Active => "active",
        Kind::Committed => "committed",
        Kind::Unknown => "unknown",
    };
    let actual = match &c.field {
        Field::Name => Some(i.name.clone()),
        Field::Parent => Some(i.parent.clone()),
        Field::Kind => Some(kind.to_string()),
        Field::Label(k, _) => i.labels.get(k).cloned(),
    };
    match &c.op {
        Op::Eq(v) => actual.as_deref() == Some(v.as_str()),
        Op::Ne(v) => actual.as_deref() != Some(v.as_str()),
        Op::Exists => actual.is_some_and(|a| !a.is_empty()),
    }
}

fn info() -> impl Strategy<Value = Info> {
    (
        0..3u8,
        prop_oneof![text(), Just("sha256:aa".to_string())],
        prop_oneof![text(), Just("p".to_string())],
        prop::collection::hash_map(
            prop_oneof![
                text(),
                Just("containerd.io/snapshot.ref".to_string()),
                Just("k".to_string())
            ],
            prop_oneof![text(), Just("v".to_string())],
            0..4,
        ),
    )
        .prop_map(|(kind, name, parent, labels)| Info {
            kind: match kind {
                0 => Kind::View,
                1 => Kind::Active,
                _ => Kind::Committed,
            },
            name,
            parent,
            labels,
            ..Default::default()
        })
}

#[test]
fn prop_snapshot_filters_match_their_model() {
    prop_check(
        "snapshot_filters_match_their_model",
        2000,
        (
            info(),
            prop::collection::vec(prop::collection::vec(clause(), 1..4), 1..3),
            any::<String>(),
        ),
        |(i, filters, junk)| {
            let rendered: Vec<String> = filters
                .iter()
                .map(|f| f.iter().map(render).collect::<Vec<_>>().join(","))
                .collect();
            let want = filters.iter().any(|f| f.iter().all(|c| model(c, &i)));
            prop_assert_eq!(filter_matches(&rendered, &i), want, "{:?}", rendered);
            // Anything else is answered without a panic, and a filter that
            // is only blanks matches everything.
            let _ = filter_matches(std::slice::from_ref(&junk), &i);
            if junk.trim().is_empty() {
                prop_assert!(filter_matches(&[junk], &i));
            }
            Ok(())
        },
    );
}
