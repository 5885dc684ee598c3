//! Atomic file replacement.

use crate::error::{IoContext, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `data` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    Staged::write(path, data)?.publish()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("write", path)
}

/// [`write_atomic`] in steps, so that a caller can publish under a lock
/// without holding it over the fsync: [`Staged::write`] writes and syncs
/// the temp file, [`Staged::publish`] renames it into place (visible from
/// then on), and the caller syncs the directory (durable from then on).
/// Dropped unpublished, the temp file is removed; a crash leaves it to
/// [`remove_stale_temps`].
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    published: bool,
}

impl Staged {
    pub fn write(path: &Path, data: &[u8]) -> Result<Staged> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id(),
            rand::random::<u32>()
        ));
        let staged = Staged {
            tmp,
            path: path.to_path_buf(),
            published: false,
        };
        (|| {
            let mut f = File::create(&staged.tmp)?;
            f.write_all(data)?;
            f.sync_all()
        })()
        .ctx("write", path)?;
        Ok(staged)
    }

    /// Rename the synced temp file into place.
    pub fn publish(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.path).ctx("write", &self.path)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Remove the temp files of [`write_atomic`] in `dir` whose writer is
/// dead (killed between create and rename); returns how many. A writer
/// that is still alive (another process of the node) keeps its file.
/// Best effort: an unreadable directory has none.
pub fn remove_stale_temps(dir: &Path, alive: impl Fn(u32) -> bool) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(pid) = temp_writer(name) {
            if !alive(pid) && fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// The writer's pid of a temp file name `.<name>.tmp.<pid>.<rand>`.
fn temp_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (head, rand) = rest.rsplit_once('.')?;
    let (head, pid) = head.rsplit_once('.')?;
    if !head.ends_with(".tmp") || rand.is_empty() || !rand.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_dead_writers_go_live_ones_stay() {
        let d = tempfile::tempdir().expect("tempdir");
        for n in [
            ".a.json.tmp.111.42",
            ".b.json.tmp.222.7",
            "a.json",
            ".c.json.tmp.x.1",
            ".tmp.333.1",
            ".d.json.tmp.444.abc",
        ] {
            fs::write(d.path().join(n), b"x").expect("write");
        }
        let removed = remove_stale_temps(d.path(), |pid| pid == 222);
        assert_eq!(removed, 1);
        let mut left: Vec<String> = fs::read_dir(d.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".b.json.tmp.222.7",
                ".c.json.tmp.x.1",
                ".d.json.tmp.444.abc",
                ".tmp.333.1",
                "a.json"
            ]
        );
        assert_eq!(temp_writer(".x.tmp.12.34"), Some(12));
        assert_eq!(remove_stale_temps(&d.path().join("missing"), |_| false), 0);
    }

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("rec.json");
        write_atomic(&p, b"one").expect("first write");
        write_atomic(&p, b"two").expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(d.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("rec.json")]);
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("no/such/dir/rec.json");
        let e = write_atomic(&p, b"x").expect_err("must fail");
        assert!(e.to_string().contains("rec.json"), "{e}");
    }
}
