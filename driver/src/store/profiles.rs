//! Hot profiles: one per image content, as `nvtier trace` records and
//! merges them, registry pulls adopt them and the migration reads them.
//!
//! A profile follows the image's layers, not its name: it is stored as
//! `STATE/profiles/c-<hex of the top layer's chainID>.json`, so every name
//! of the same layers (a retag, a second registry) shares it. A name that
//! is not in the store (and a profile written before this rule) uses
//! `STATE/profiles/<sha256(name)>.json`, which is read as a fallback and
//! replaced at the next save.

use super::Store;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use nvtier_tracer::Profile;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn by_name(store: &Store, image: &str) -> PathBuf {
    store.state().join("profiles").join(format!(
        "{}.json",
        hex::encode(Sha256::digest(image.as_bytes()))
    ))
}

/// Where `image`'s profile is saved: by its content when the image is in
/// the store, else by its name.
pub fn profile_path(store: &Store, image: &str) -> PathBuf {
    let top = store
        .image(image)
        .ok()
        .flatten()
        .and_then(|r| r.chain_ids.last().cloned())
        .and_then(|c| super::digest_hex(&c).ok().map(str::to_string));
    match top {
        Some(hex) => store.state().join("profiles").join(format!("c-{hex}.json")),
        None => by_name(store, image),
    }
}

/// The file `image`'s profile is read from, if there is one.
pub fn profile_file(store: &Store, image: &str) -> Option<PathBuf> {
    [profile_path(store, image), by_name(store, image)]
        .into_iter()
        .find(|p| p.is_file())
}

/// `image`'s profile (the one of its content), named for `image`.
pub fn load_profile(store: &Store, image: &str) -> Result<Option<Profile>> {
    let Some(p) = profile_file(store, image) else {
        return Ok(None);
    };
    match std::fs::read_to_string(&p) {
        Ok(t) => Profile::from_json(&t)
            .map(|mut prof| {
                prof.image = image.to_string();
                Some(prof)
            })
            .map_err(|e| Error::Other(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("read profile", p),
    }
}

pub fn save_profile(store: &Store, p: &Profile) -> Result<()> {
    let path = profile_path(store, &p.image);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).ctx("create", d)?;
    }
    let json = p.to_json().map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&path, json.as_bytes())?;
    let old = by_name(store, &p.image);
    if old != path {
        match std::fs::remove_file(&old) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove the old profile", &old),
        }
    }
    Ok(())
}

/// The artifact type of a profile in a registry.
pub const PROFILE_ARTIFACT_TYPE: &str = "application/vnd.nvtier.profile.v1+json";

/// The largest profile nvtier reads from a registry (bytes of JSON).
pub const MAX_PORTABLE_BYTES: u64 = 16 << 20;

/// A hot profile as it travels between nodes: what the image's content
/// determines and nothing of the node that recorded it (no image name, no
/// host paths). Files are named by their layer's diffID and their path in
/// the image, in first-access order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortableProfile {
    pub schema_version: u32,
    /// The image's layers (diffIDs, bottom first): the profile applies to
    /// an image with exactly these.
    pub diff_ids: Vec<String>,
    pub runs: u32,
    /// `ebpf` or `fanotify`.
    pub tracer: String,
    pub files: Vec<PortableFile>,
}

/// One file of a [`PortableProfile`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortableFile {
    pub diff_id: String,
    pub path: String,
    pub bytes: Option<u64>,
    pub first_access_ms: f64,
    pub kinds: std::collections::BTreeSet<nvtier_tracer::Kind>,
    pub count: u64,
}

impl PortableProfile {
    /// The portable part of `p`.
    pub fn of(p: &Profile) -> PortableProfile {
        PortableProfile {
            schema_version: 1,
            diff_ids: p.diff_ids.clone(),
            runs: p.runs,
            tracer: p.tracer.clone(),
            files: p
                .files
                .iter()
                .map(|f| PortableFile {
                    diff_id: f.layer_diff_id.clone(),
                    path: f.path.clone(),
                    bytes: f.bytes,
                    first_access_ms: f.first_access_ms,
                    kinds: f.kinds.clone(),
                    count: f.count,
                })
                .collect(),
        }
    }

    /// Parse and check one read from a registry (untrusted).
    pub fn from_json(bytes: &[u8]) -> Result<PortableProfile> {
        let p: PortableProfile = serde_json::from_slice(bytes)
            .map_err(|e| Error::Other(format!("profile artifact is not valid: {e}")))?;
        if p.schema_version != 1 {
            return Err(Error::Other(format!(
                "profile artifact has schema version {}; this nvtier reads 1",
                p.schema_version
            )));
        }
        for f in &p.files {
            if !f.path.starts_with('/')
                || f.path.split('/').any(|c| c == "..")
                || f.path.contains('\0')
            {
                return Err(Error::Other(format!(
                    "profile artifact has a bad path {:?}",
                    f.path
                )));
            }
            if !p.diff_ids.contains(&f.diff_id) {
                return Err(Error::Other(format!(
                    "profile artifact entry {} names a layer {} the profile does not list",
                    f.path, f.diff_id
                )));
            }
            if !f.first_access_ms.is_finite() || f.first_access_ms < 0.0 {
                return Err(Error::Other(format!(
                    "profile artifact entry {} has a bad first access time",
                    f.path
                )));
            }
        }
        Ok(p)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Other(e.to_string()))
    }

    /// The profile of `img` on this node: chainIDs are this image's.
    /// Fails unless the image has exactly the profile's layers.
    pub fn for_image(&self, img: &super::ImageRecord) -> Result<Profile> {
        if self.diff_ids != img.diff_ids {
            return Err(Error::Other(format!(
                "the profile is for other layers than those of {}",
                img.name
            )));
        }
        let chain_of: std::collections::HashMap<&String, &String> =
            img.diff_ids.iter().zip(&img.chain_ids).collect();
        let mut files = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let Some(c) = chain_of.get(&f.diff_id) else {
                continue;
            };
            files.push(nvtier_tracer::ProfileFile {
                layer_chain_id: (*c).clone(),
                layer_diff_id: f.diff_id.clone(),
                path: f.path.clone(),
                kinds: f.kinds.clone(),
                count: f.count,
                first_access_ms: f.first_access_ms,
                bytes: f.bytes,
            });
        }
        files.sort_by(|a, b| {
            a.first_access_ms
                .total_cmp(&b.first_access_ms)
                .then_with(|| a.path.cmp(&b.path))
        });
        Ok(Profile {
            image: img.name.clone(),
            diff_ids: img.diff_ids.clone(),
            tracer: self.tracer.clone(),
            runs: self.runs,
            lost_events: 0,
            files,
        })
    }
}

/// `local` with the files of `other` added (a profile from the registry):
/// the union of both, each file once; runs are the larger count, so the
/// same artifact merged twice changes nothing.
pub fn union(local: Option<Profile>, other: Profile) -> Profile {
    match local {
        None => other,
        Some(mut l) => {
            let (runs, lost, tracer) = (l.runs.max(other.runs), l.lost_events, l.tracer.clone());
            let known: std::collections::HashSet<(String, String)> = l
                .files
                .iter()
                .map(|f| (f.layer_diff_id.clone(), f.path.clone()))
                .collect();
            let mut add = other.clone();
            add.files
                .retain(|f| !known.contains(&(f.layer_diff_id.clone(), f.path.clone())));
            add.runs = 0;
            l.merge(&add);
            l.runs = runs;
            l.lost_events = lost;
            l.tracer = tracer;
            l
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvtier_tracer::{Kind, ProfileFile};

    fn file(diff: &str, path: &str, ms: f64, kinds: &[Kind]) -> ProfileFile {
        ProfileFile {
            layer_chain_id: format!("chain-of-{diff}"),
            layer_diff_id: diff.into(),
            path: path.into(),
            kinds: kinds.iter().copied().collect(),
            count: 3,
            first_access_ms: ms,
            bytes: Some(100),
        }
    }

    fn image(diffs: &[&str]) -> super::super::ImageRecord {
        let chains: Vec<String> = diffs.iter().map(|d| format!("sha256:chain-{d}")).collect();
        let chains: Vec<&str> = chains.iter().map(String::as_str).collect();
        crate::testutil::image_record("other-node/app:2", diffs, &chains)
    }

    fn profile() -> Profile {
        Profile {
            image: "recorder-node/app:1".into(),
            diff_ids: vec!["sha256:a".into(), "sha256:b".into()],
            tracer: "ebpf".into(),
            runs: 2,
            lost_events: 5,
            files: vec![
                file("sha256:a", "/bin/sh", 1.0, &[Kind::Exec]),
                file("sha256:b", "/app/main.py", 2.0, &[Kind::Open]),
            ],
        }
    }

    #[test]
    fn portable_round_trip_carries_no_host_names() {
        let p = PortableProfile::of(&profile());
        let json = p.to_json().expect("json");
        let text = String::from_utf8(json.clone()).expect("utf8");
        assert!(
            !text.contains("recorder-node") && !text.contains("chain-of"),
            "{text}"
        );
        let back = PortableProfile::from_json(&json).expect("parse");
        assert_eq!(back, p);
        let local = back
            .for_image(&image(&["sha256:a", "sha256:b"]))
            .expect("applies");
        assert_eq!(local.image, "other-node/app:2");
        assert_eq!(local.files[0].layer_chain_id, "sha256:chain-sha256:a");
        assert_eq!(local.files[1].path, "/app/main.py");
        assert_eq!((local.runs, local.lost_events), (2, 0));
        // Another image's layers: refused.
        assert!(back.for_image(&image(&["sha256:a"])).is_err());
        assert!(back.for_image(&image(&["sha256:a", "sha256:c"])).is_err());
    }

    #[test]
    fn hostile_artifacts_are_refused() {
        let good = PortableProfile::of(&profile());
        let bad = |f: &dyn Fn(&mut PortableProfile)| {
            let mut p = good.clone();
            f(&mut p);
            PortableProfile::from_json(&p.to_json().expect("json")).expect_err("refused")
        };
        bad(&|p| p.files[0].path = "relative".into());
        bad(&|p| p.files[0].path = "/a/../../etc/shadow".into());
        bad(&|p| p.files[0].diff_id = "sha256:z".into());
        bad(&|p| p.schema_version = 2);
        bad(&|p| p.files[0].first_access_ms = -1.0);
        assert!(PortableProfile::from_json(b"{\"schema_version\":1}").is_err());
        assert!(PortableProfile::from_json(b"not json").is_err());
        let mut extra = serde_json::to_value(&good).expect("v");
        extra["host"] = serde_json::json!("x");
        assert!(PortableProfile::from_json(extra.to_string().as_bytes()).is_err());
    }

    #[test]
    fn a_profile_follows_the_content_not_the_name() {
        let (_d, store) = crate::testutil::temp_store("1M");
        let c = |ch: char| format!("sha256:{}", ch.to_string().repeat(64));
        let rec = |name: &str, top: char| super::super::ImageRecord {
            name: name.into(),
            chain_ids: vec![c('a'), c(top)],
            ..image(&["sha256:a", "sha256:b"])
        };
        store.put_image(&rec("reg/app:1", 'b')).expect("image");
        store
            .put_image(&rec("mirror/app:latest", 'b'))
            .expect("retag");
        store.put_image(&rec("reg/other:1", 'c')).expect("other");
        // A profile written before profiles followed the content.
        let mut p = profile();
        p.image = "reg/app:1".into();
        let legacy = by_name(&store, "reg/app:1");
        std::fs::create_dir_all(legacy.parent().expect("dir")).expect("mkdir");
        std::fs::write(&legacy, p.to_json().expect("json")).expect("legacy");
        let got = load_profile(&store, "reg/app:1")
            .expect("load")
            .expect("legacy read");
        assert_eq!(got.files, p.files);
        save_profile(&store, &got).expect("save");
        assert!(!legacy.exists(), "the name-keyed file is replaced");
        assert!(profile_path(&store, "reg/app:1").ends_with(format!("c-{}.json", "b".repeat(64))));
        // The retag shares it, under its own name; another image does not.
        let r = load_profile(&store, "mirror/app:latest")
            .expect("load")
            .expect("shared");
        assert_eq!((r.image.as_str(), r.files.len()), ("mirror/app:latest", 2));
        assert_eq!(load_profile(&store, "reg/other:1").expect("load"), None);
        // A name not in the store keeps the name key.
        assert_eq!(
            profile_path(&store, "not/pulled:1"),
            by_name(&store, "not/pulled:1")
        );
    }

    #[test]
    fn union_is_idempotent() {
        let img = image(&["sha256:a", "sha256:b"]);
        let reg = PortableProfile::of(&profile()).for_image(&img).expect("p");
        let mut local = reg.clone();
        local.files.truncate(1);
        local.runs = 1;
        local
            .files
            .push(file("sha256:a", "/etc/only-local", 0.5, &[Kind::Open]));
        let once = union(Some(local), reg.clone());
        assert_eq!(once.files.len(), 3);
        assert_eq!(once.runs, 2);
        let twice = union(Some(once.clone()), reg.clone());
        assert_eq!(twice, once);
        assert_eq!(union(None, reg.clone()), reg);
    }
}
