//! `nvtier profile list`: one row per image, with its hot profile.

use super::human;
use crate::error::Result;
use crate::store::profiles::{load_profile, profile_file};
use crate::store::Store;
use serde::Serialize;
use std::fmt::Write as _;

/// An image and its hot profile (`nvtier profile list [--json]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileRow {
    /// Size of the profiled files (those of known size).
    pub bytes: u64,
    /// Files in the profile.
    pub files: usize,
    pub image: String,
    /// Events the tracer dropped in the runs merged so far.
    pub lost_events: u64,
    /// Whether the image has a profile at all.
    pub profiled: bool,
    /// Unix milliseconds of the last recording (the profile's write).
    pub recorded_ms: Option<u64>,
    /// Runs merged into the profile.
    pub runs: u32,
    /// Older than `profile_max_age_s` (the daemon records such images
    /// again); never when that is 0.
    pub stale: bool,
    /// `ebpf` or `fanotify`: the tracer of the last run.
    pub tracer: Option<String>,
}

impl ProfileRow {
    /// Every image in the store, in the store's order; `now_ms` decides
    /// staleness.
    pub fn gather(store: &Store, now_ms: u64) -> Result<Vec<ProfileRow>> {
        let max_age_ms = store.cfg.profile_max_age_s.saturating_mul(1000);
        let mut rows = Vec::new();
        for i in store.images()? {
            let row = match load_profile(store, &i.name)? {
                None => ProfileRow {
                    bytes: 0,
                    files: 0,
                    image: i.name,
                    lost_events: 0,
                    profiled: false,
                    recorded_ms: None,
                    runs: 0,
                    stale: false,
                    tracer: None,
                },
                Some(p) => {
                    let recorded_ms = profile_file(store, &i.name)
                        .and_then(|f| std::fs::metadata(f).ok())
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64);
                    ProfileRow {
                        bytes: p.total_bytes(),
                        files: p.files.len(),
                        image: i.name,
                        lost_events: p.lost_events,
                        profiled: true,
                        stale: max_age_ms > 0
                            && recorded_ms.is_some_and(|r| now_ms.saturating_sub(r) > max_age_ms),
                        recorded_ms,
                        runs: p.runs,
                        tracer: Some(p.tracer),
                    }
                }
            };
            rows.push(row);
        }
        Ok(rows)
    }

    /// The text: a header line, then one line per row.
    pub fn render_text(rows: &[ProfileRow], now_ms: u64) -> String {
        let mut out = format!(
            "{:<50} {:>6} {:>10} {:>5} {:<8} {:>12}\n",
            "IMAGE", "FILES", "BYTES", "RUNS", "TRACER", "RECORDED"
        );
        for r in rows {
            if !r.profiled {
                let _ = writeln!(
                    out,
                    "{:<50} {:>6} {:>10} {:>5} {:<8} {:>12}",
                    r.image, "-", "-", 0, "-", "never"
                );
                continue;
            }
            let age = r
                .recorded_ms
                .map(|t| format!("{} ago", ago(now_ms.saturating_sub(t))))
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(
                out,
                "{:<50} {:>6} {:>10} {:>5} {:<8} {:>12}{}",
                r.image,
                r.files,
                human(r.bytes),
                r.runs,
                r.tracer.as_deref().unwrap_or("-"),
                age,
                if r.stale { "  stale" } else { "" }
            );
        }
        out
    }
}

/// `42s`, `5m`, `3h`, `2d`.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvtier_tracer::{Profile, ProfileFile};

    fn profile(image: &str) -> Profile {
        Profile {
            image: image.into(),
            diff_ids: vec!["sha256:d0".into()],
            tracer: "ebpf".into(),
            runs: 2,
            lost_events: 0,
            files: vec![
                ProfileFile {
                    layer_chain_id: "sha256:c0".into(),
                    layer_diff_id: "sha256:d0".into(),
                    path: "/bin/sh".into(),
                    kinds: Default::default(),
                    count: 1,
                    first_access_ms: 1.0,
                    bytes: Some(1536),
                },
                ProfileFile {
                    layer_chain_id: "sha256:c0".into(),
                    layer_diff_id: "sha256:d0".into(),
                    path: "/etc".into(),
                    kinds: Default::default(),
                    count: 1,
                    first_access_ms: 2.0,
                    bytes: None,
                },
            ],
        }
    }

    #[test]
    fn rows_text_and_staleness() {
        let (_d, store) = crate::testutil::temp_store("1M");
        for name in ["r/a:1", "r/b:1"] {
            store
                .put_image(&crate::testutil::image_record(
                    name,
                    &["sha256:d0"],
                    &["sha256:c0"],
                ))
                .expect("image");
        }
        crate::store::profiles::save_profile(&store, &profile("r/b:1")).expect("profile");
        let now = crate::store::now_ms();
        let rows = ProfileRow::gather(&store, now).expect("rows");
        assert_eq!(rows.len(), 2);
        let a = rows.iter().find(|r| r.image == "r/a:1").expect("a");
        assert!(!a.profiled && a.recorded_ms.is_none() && !a.stale);
        let b = rows.iter().find(|r| r.image == "r/b:1").expect("b");
        assert_eq!((b.files, b.bytes, b.runs), (2, 1536, 2));
        assert_eq!(b.tracer.as_deref(), Some("ebpf"));
        let rec = b.recorded_ms.expect("recorded");
        assert!(rec <= now + 1000 && now - rec < 60_000, "{rec} vs {now}");
        assert!(!b.stale);
        // A week and a bit later (the default max age is 7 days).
        let later = rec + 8 * 86_400 * 1000;
        let rows = ProfileRow::gather(&store, later).expect("rows");
        assert!(rows.iter().any(|r| r.image == "r/b:1" && r.stale));
        let text = ProfileRow::render_text(&rows, later);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("IMAGE"));
        let la = lines
            .iter()
            .find(|l| l.starts_with("r/a:1"))
            .expect("a line");
        assert!(la.trim_end().ends_with("never"), "{la}");
        let lb = lines
            .iter()
            .find(|l| l.starts_with("r/b:1"))
            .expect("b line");
        assert!(
            lb.contains("1.5 KiB") && lb.contains("ebpf") && lb.contains("8d ago"),
            "{lb}"
        );
        assert!(lb.ends_with("stale"), "{lb}");
        let v = serde_json::to_value(&rows[0]).expect("json");
        let keys = crate::testutil::object_keys(&v);
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn ages() {
        assert_eq!(ago(5_000), "5s");
        assert_eq!(ago(300_000), "5m");
        assert_eq!(ago(3 * 3_600_000), "3h");
        assert_eq!(ago(3 * 86_400_000), "3d");
    }
}
