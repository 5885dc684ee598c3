//! Hot-file profiles: which image files a cold start touched, in
//! first-access order. Portable: every entry names its layer by diffID (and
//! chainID) and its path inside the image.

use crate::event::{Kind, RawEvent};
use crate::index::{FileRef, LayerIndex};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// One image file in a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileFile {
    pub layer_chain_id: String,
    pub layer_diff_id: String,
    /// Absolute path inside the image.
    pub path: String,
    /// `open`, `exec`, `mmap`, plus `stat` (only looked up) and `read`
    /// (data read by the kernel for it, e.g. the ELF interpreter).
    pub kinds: BTreeSet<Kind>,
    pub count: u64,
    /// Milliseconds from container start to the first access.
    pub first_access_ms: f64,
    /// File size, when known.
    pub bytes: Option<u64>,
}

/// The hot-file profile of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub image: String,
    /// Layers of the image in chain order (diffIDs), for portability checks.
    pub diff_ids: Vec<String>,
    /// Which tracer produced the latest run: `ebpf` or `fanotify`.
    pub tracer: String,
    pub runs: u32,
    pub lost_events: u64,
    pub files: Vec<ProfileFile>,
}

impl Profile {
    /// Aggregate the events of one traced run. `start_ns` is the container
    /// start on the monotonic clock.
    pub fn from_events(
        image: &str,
        tracer: &str,
        events: &[RawEvent],
        index: &LayerIndex,
        start_ns: u64,
        lost: u64,
    ) -> Profile {
        let mut acc: HashMap<(usize, String), ProfileFile> = HashMap::new();
        let ms = |ts: u64| ts.saturating_sub(start_ns) as f64 / 1e6;
        let mut add = |f: &FileRef, kind: Kind, ts: u64| {
            let l = &index.layers[f.layer];
            let e = acc
                .entry((f.layer, f.path.clone()))
                .or_insert_with(|| ProfileFile {
                    layer_chain_id: l.chain_id.clone(),
                    layer_diff_id: l.diff_id.clone(),
                    path: f.path.clone(),
                    kinds: BTreeSet::new(),
                    count: 0,
                    first_access_ms: ms(ts),
                    bytes: Some(f.bytes),
                });
            e.kinds.insert(kind);
            e.count += 1;
            e.first_access_ms = e.first_access_ms.min(ms(ts));
        };
        for ev in events {
            match ev {
                RawEvent::Inode {
                    kind,
                    ts_ns,
                    dev,
                    ino,
                    ..
                } => {
                    for f in index.by_inode(*dev, *ino) {
                        add(f, *kind, *ts_ns);
                    }
                }
                RawEvent::Path {
                    kind,
                    ts_ns,
                    path,
                    cwd,
                    dfd,
                    ..
                } => {
                    let full = if path.starts_with('/') {
                        path.clone()
                    } else if *dfd == -100 {
                        format!("{}/{path}", cwd.as_deref().unwrap_or("/"))
                    } else {
                        // Relative to another directory fd: not resolvable
                        // from the path alone (the page-cache view covers
                        // such files when their data is read).
                        continue;
                    };
                    for f in index.resolve_all(&full) {
                        add(&f, *kind, *ts_ns);
                    }
                }
                RawEvent::ImagePath { kind, ts_ns, path } => {
                    for f in index.resolve_all(path) {
                        add(&f, *kind, *ts_ns);
                    }
                }
            }
        }
        let mut files: Vec<ProfileFile> = acc.into_values().collect();
        sort(&mut files);
        Profile {
            image: image.to_string(),
            diff_ids: index.layers.iter().map(|l| l.diff_id.clone()).collect(),
            tracer: tracer.to_string(),
            runs: 1,
            lost_events: lost,
            files,
        }
    }

    /// Merge another run of the same image: union of files, counts added,
    /// earliest first access kept.
    pub fn merge(&mut self, other: &Profile) {
        let mut by_key: HashMap<(String, String), usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| ((f.layer_diff_id.clone(), f.path.clone()), i))
            .collect();
        for f in &other.files {
            match by_key.get(&(f.layer_diff_id.clone(), f.path.clone())) {
                Some(&i) => {
                    let e = &mut self.files[i];
                    e.kinds.extend(f.kinds.iter().copied());
                    e.count = e.count.saturating_add(f.count);
                    e.first_access_ms = e.first_access_ms.min(f.first_access_ms);
                    e.bytes = e.bytes.or(f.bytes);
                }
                None => {
                    by_key.insert((f.layer_diff_id.clone(), f.path.clone()), self.files.len());
                    self.files.push(f.clone());
                }
            }
        }
        // Saturating: an imported profile can carry any counts.
        self.runs = self.runs.saturating_add(other.runs);
        self.lost_events = self.lost_events.saturating_add(other.lost_events);
        self.tracer = other.tracer.clone();
        sort(&mut self.files);
    }

    /// Add the files the container engine reads from the image before the
    /// container starts (outside the traced cgroup): each of `paths` that
    /// resolves to a regular file is listed with kind `engine` and a first
    /// access at 0 ms (an entry already there gets the kind and moves to
    /// 0 ms). Paths that do not resolve are skipped.
    pub fn add_engine_reads(&mut self, index: &LayerIndex, paths: &[&str]) {
        for p in paths {
            let Some(f) = index.resolve(p) else { continue };
            let l = &index.layers[f.layer];
            match self
                .files
                .iter_mut()
                .find(|e| e.layer_chain_id == l.chain_id && e.path == f.path)
            {
                Some(e) => {
                    e.kinds.insert(Kind::Engine);
                    e.first_access_ms = 0.0;
                }
                None => self.files.push(ProfileFile {
                    layer_chain_id: l.chain_id.clone(),
                    layer_diff_id: l.diff_id.clone(),
                    path: f.path.clone(),
                    kinds: BTreeSet::from([Kind::Engine]),
                    count: 1,
                    first_access_ms: 0.0,
                    bytes: Some(f.bytes),
                }),
            }
        }
        sort(&mut self.files);
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().filter_map(|f| f.bytes).sum()
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Profile(e.to_string()))
    }

    pub fn from_json(s: &str) -> Result<Profile> {
        let p: Profile =
            serde_json::from_str(s).map_err(|e| Error::Profile(format!("is not valid: {e}")))?;
        for f in &p.files {
            if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
                return Err(Error::Profile(format!("has a bad path {:?}", f.path)));
            }
            if !f.layer_diff_id.starts_with("sha256:") {
                return Err(Error::Profile(format!(
                    "entry {} has no sha256 layer diffID",
                    f.path
                )));
            }
        }
        Ok(p)
    }
}

fn sort(files: &mut [ProfileFile]) {
    files.sort_by(|a, b| {
        a.first_access_ms
            .total_cmp(&b.first_access_ms)
            .then_with(|| a.path.cmp(&b.path))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::LayerRef;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn image() -> (tempfile::TempDir, LayerIndex) {
        let t = tempfile::tempdir().expect("tmp");
        let mut layers = Vec::new();
        for (i, files) in [vec!["bin/sh", "etc/passwd"], vec!["app/main.py"]]
            .iter()
            .enumerate()
        {
            let dir = t.path().join(format!("l{i}"));
            for f in files {
                let p = dir.join(f);
                fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                fs::write(&p, f.as_bytes()).expect("write");
            }
            layers.push(LayerRef {
                chain_id: format!("sha256:c{i}"),
                diff_id: format!("sha256:d{i}"),
                dir,
            });
        }
        let idx = LayerIndex::build(layers).expect("index");
        (t, idx)
    }

    fn inode_ev(idx: &LayerIndex, layer: usize, rel: &str, kind: Kind, ts: u64) -> RawEvent {
        let m = fs::metadata(idx.layers[layer].dir.join(rel)).expect("stat");
        RawEvent::Inode {
            kind,
            ts_ns: ts,
            dev: m.dev(),
            ino: m.ino(),
            pid: 1,
        }
    }

    #[test]
    fn aggregates_in_first_access_order() {
        let (_t, idx) = image();
        let ev = vec![
            inode_ev(&idx, 1, "app/main.py", Kind::Open, 3_000_000),
            inode_ev(&idx, 0, "bin/sh", Kind::Exec, 1_000_000),
            inode_ev(&idx, 0, "bin/sh", Kind::Read, 1_500_000),
            RawEvent::Path {
                kind: Kind::Stat,
                ts_ns: 2_000_000,
                dfd: -100,
                pid: 1,
                path: "passwd".into(),
                cwd: Some("/etc".into()),
            },
            RawEvent::Path {
                kind: Kind::Stat,
                ts_ns: 2_500_000,
                dfd: -100,
                pid: 1,
                path: "/not/there".into(),
                cwd: None,
            },
            // Host files and foreign inodes are not image files.
            RawEvent::Inode {
                kind: Kind::Open,
                ts_ns: 1,
                dev: 0,
                ino: 1,
                pid: 1,
            },
        ];
        let p = Profile::from_events("img", "ebpf", &ev, &idx, 0, 0);
        let got: Vec<_> = p
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.layer_diff_id.as_str(), f.count))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/bin/sh", "sha256:d0", 2),
                ("/etc/passwd", "sha256:d0", 1),
                ("/app/main.py", "sha256:d1", 1)
            ]
        );
        assert_eq!(
            p.files[0].kinds,
            [Kind::Exec, Kind::Read]
                .into_iter()
                .collect::<BTreeSet<_>>()
        );
        assert_eq!(p.files[0].first_access_ms, 1.0);
        assert_eq!(p.files[0].bytes, Some(6));
    }

    #[test]
    fn merges_and_round_trips() {
        let (_t, idx) = image();
        let a = Profile::from_events(
            "img",
            "ebpf",
            &[inode_ev(&idx, 0, "bin/sh", Kind::Exec, 5_000_000)],
            &idx,
            0,
            0,
        );
        let b = Profile::from_events(
            "img",
            "ebpf",
            &[
                inode_ev(&idx, 0, "bin/sh", Kind::Open, 2_000_000),
                inode_ev(&idx, 1, "app/main.py", Kind::Open, 9_000_000),
            ],
            &idx,
            0,
            3,
        );
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m.runs, 2);
        assert_eq!(m.lost_events, 3);
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].count, 2);
        assert_eq!(m.files[0].first_access_ms, 2.0);
        let back = Profile::from_json(&m.to_json().expect("json")).expect("parse");
        assert_eq!(back, m);
        assert!(Profile::from_json("{").is_err());
        let bad = m
            .to_json()
            .expect("json")
            .replace("/bin/sh", "../../etc/shadow");
        assert!(Profile::from_json(&bad).is_err());
    }

    #[test]
    fn merging_huge_imported_counts_saturates() {
        let (_t, idx) = image();
        let mut p = Profile::from_events(
            "img",
            "ebpf",
            &[inode_ev(&idx, 0, "bin/sh", Kind::Exec, 5_000_000)],
            &idx,
            0,
            1,
        );
        p.files[0].count = u64::MAX;
        p.runs = u32::MAX;
        p.lost_events = u64::MAX;
        let mut m = p.clone();
        m.merge(&p);
        assert_eq!(m.files[0].count, u64::MAX);
        assert_eq!(m.runs, u32::MAX);
        assert_eq!(m.lost_events, u64::MAX);
    }

    #[test]
    fn engine_reads_are_added_once_at_zero_ms() {
        let (_t, idx) = image();
        let ev = vec![
            inode_ev(&idx, 1, "app/main.py", Kind::Open, 3_000_000),
            inode_ev(&idx, 0, "etc/passwd", Kind::Open, 4_000_000),
        ];
        let mut p = Profile::from_events("img", "ebpf", &ev, &idx, 0, 0);
        p.add_engine_reads(&idx, &["/etc/passwd", "/etc/group"]);
        p.add_engine_reads(&idx, &["/etc/passwd"]);
        let got: Vec<_> = p
            .files
            .iter()
            .map(|f| {
                (
                    f.path.as_str(),
                    f.first_access_ms,
                    f.kinds.iter().copied().collect::<Vec<_>>(),
                )
            })
            .collect();
        // /etc/group is not in the image: skipped. /etc/passwd was traced
        // later: it moves to 0 ms and keeps its observed kind.
        assert_eq!(
            got,
            vec![
                ("/etc/passwd", 0.0, vec![Kind::Open, Kind::Engine]),
                ("/app/main.py", 3.0, vec![Kind::Open]),
            ]
        );
        let mut q = Profile::from_events("img", "ebpf", &ev[..1], &idx, 0, 0);
        q.add_engine_reads(&idx, &["/etc/passwd"]);
        assert_eq!(q.files[0].path, "/etc/passwd");
        assert_eq!(q.files[0].kinds, BTreeSet::from([Kind::Engine]));
        assert_eq!(q.files[0].bytes, Some("etc/passwd".len() as u64));
        assert_eq!(q.files[0].layer_chain_id, "sha256:c0");
    }
}
