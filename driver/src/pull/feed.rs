//! A blob file read while it downloads.
//!
//! The download writes the blob into `STATE/downloads/` as before (the file
//! is needed anyway: a pmem layer that outgrows the budget is extracted
//! again on disk from it, and disk-tier layers keep it until their
//! write-back). It tells the extraction how many bytes are in the file;
//! the extraction reads the file up to there and then waits. Memory stays
//! bounded (the reader's buffers), and the download never waits for a slow
//! extraction: what the extraction has not read yet is in the blob file,
//! which never grows past the blob's size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Bytes in the file (written and flushed).
    written: u64,
    /// The download's end: `Ok` with every byte in the file, or why not.
    end: Option<Result<(), String>>,
    /// The pull gave up: readers stop.
    cancelled: bool,
}

#[derive(Default)]
struct Shared {
    st: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The download's side. Dropped before [`Feed::finish`] (the download task
/// was aborted), it tells the reader the download stopped.
pub(super) struct Feed {
    shared: Arc<Shared>,
    finished: bool,
}

/// A handle to cancel readers and look at the progress (the pull's side).
#[derive(Clone)]
pub(super) struct FeedWatch {
    shared: Arc<Shared>,
}

pub(super) fn feed() -> (Feed, FeedWatch) {
    let shared = Arc::new(Shared::default());
    (
        Feed {
            shared: shared.clone(),
            finished: false,
        },
        FeedWatch { shared },
    )
}

impl Feed {
    /// `n` more bytes are in the file.
    pub(super) fn advance(&self, n: u64) {
        self.shared.lock().written += n;
        self.shared.cv.notify_all();
    }

    pub(super) fn finish(mut self, r: Result<(), String>) {
        self.finished = true;
        self.shared.lock().end = Some(r);
        self.shared.cv.notify_all();
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.lock().end = Some(Err("the download stopped".into()));
            self.shared.cv.notify_all();
        }
    }
}

impl FeedWatch {
    /// Stop every reader of this blob (they return an error).
    pub(super) fn cancel(&self) {
        self.shared.lock().cancelled = true;
        self.shared.cv.notify_all();
    }

    /// Wait until `bytes` are in the file, the download ended or `deadline`
    /// passed. Returns the bytes in the file and whether the download ended.
    pub(super) fn wait_for(&self, bytes: u64, deadline: Instant) -> (u64, bool) {
        let mut g = self.shared.lock();
        loop {
            if g.written >= bytes || g.end.is_some() || g.cancelled {
                return (g.written, g.end.is_some());
            }
            let now = Instant::now();
            if now >= deadline {
                return (g.written, false);
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A reader of the blob file from its first byte.
    pub(super) fn reader(&self, path: PathBuf) -> TailReader {
        TailReader {
            shared: self.shared.clone(),
            path,
            file: None,
            pos: 0,
            waited_ns: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Reads the blob file as far as it was written; at its end, waits for
/// more until the download has ended.
pub(super) struct TailReader {
    shared: Arc<Shared>,
    path: PathBuf,
    file: Option<File>,
    pos: u64,
    /// Nanoseconds spent waiting for the download (shared, so the time can
    /// be read after the reader moved to another thread).
    waited_ns: Arc<AtomicU64>,
}

impl TailReader {
    /// The reader's time spent waiting for bytes, as it grows.
    pub(super) fn waited(&self) -> Arc<AtomicU64> {
        self.waited_ns.clone()
    }
}

impl Read for TailReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let avail = {
            let mut g = self.shared.lock();
            let mut wait_start: Option<Instant> = None;
            let avail = loop {
                if g.cancelled {
                    return Err(io::Error::other("the pull was cancelled"));
                }
                if g.written > self.pos {
                    break g.written;
                }
                match &g.end {
                    Some(Ok(())) => return Ok(0),
                    Some(Err(m)) => return Err(io::Error::other(m.clone())),
                    None => {}
                }
                // A timeout only to re-check; the download's own timeouts
                // end a stalled transfer.
                wait_start.get_or_insert_with(Instant::now);
                g = self
                    .shared
                    .cv
                    .wait_timeout(g, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            };
            if let Some(t) = wait_start {
                self.waited_ns
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            avail
        };
        let f = match &mut self.file {
            Some(f) => f,
            None => {
                let mut f = File::open(&self.path)?;
                f.seek(SeekFrom::Start(self.pos))?;
                self.file.insert(f)
            }
        };
        let want = usize::try_from(avail - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let k = f.read(&mut buf[..want])?;
        if k == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} is shorter than reported", self.path.display()),
            ));
        }
        self.pos += k as u64;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_as_the_file_grows_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut f = File::create(&path).unwrap();
        let (feed, watch) = super::feed();
        let mut r = watch.reader(path.clone());
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        });
        for i in 0..50u8 {
            f.write_all(&[i; 1000]).unwrap();
            f.flush().unwrap();
            feed.advance(1000);
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        feed.finish(Ok(()));
        let out = t.join().unwrap().unwrap();
        assert_eq!(out.len(), 50_000);
        assert!(out
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }

    #[test]
    fn a_failed_or_dropped_download_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"abc").unwrap();
        let (feed, watch) = super::feed();
        feed.advance(3);
        feed.finish(Err("digest mismatch".into()));
        let mut out = Vec::new();
        let e = watch
            .reader(path.clone())
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");

        let (feed, watch) = super::feed();
        let r = watch.reader(path.clone());
        let t = std::thread::spawn(move || {
            let mut r = r;
            let mut out = Vec::new();
            r.read_to_end(&mut out)
        });
        drop(feed);
        let e = t.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("stopped"), "{e}");
    }

    #[test]
    fn cancel_wakes_a_waiting_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (_feed, watch) = super::feed();
        let mut r = watch.reader(dir.path().join("blob"));
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            r.read_to_end(&mut out)
        });
        std::thread::sleep(Duration::from_millis(20));
        watch.cancel();
        assert!(t.join().unwrap().is_err());
        let (w, ended) = watch.wait_for(10, Instant::now() + Duration::from_secs(5));
        assert_eq!((w, ended), (0, false));
    }
}
