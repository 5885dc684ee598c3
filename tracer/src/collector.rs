//! The event thread shared by the fd-based fallback tracers (fanotify,
//! inotify): poll an fd, turn each readable batch into events, stop after
//! the first empty batch once asked to.

use crate::event::RawEvent;
use crate::{Error, Result};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A running collector thread.
pub(crate) struct Collector {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<RawEvent>>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Run `read_batch(&source)` whenever `source` is readable (or every
    /// 50 ms); it returns the events decoded from one batch.
    pub(crate) fn spawn<S, F>(name: &str, source: S, mut read_batch: F) -> Result<Collector>
    where
        S: AsFd + Send + 'static,
        F: FnMut(&S) -> Vec<RawEvent> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s2, e2) = (stop.clone(), events.clone());
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let stopping = s2.load(Ordering::SeqCst);
                let mut fds = [nix::poll::PollFd::new(
                    source.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16));
                let batch = read_batch(&source);
                let empty = batch.is_empty();
                if let Ok(mut v) = e2.lock() {
                    v.extend(batch);
                }
                if stopping && empty {
                    return;
                }
            })
            .map_err(|e| Error::FanotifyUnavailable(format!("spawn {name}: {e}")))?;
        Ok(Collector {
            stop,
            events,
            thread: Some(thread),
        })
    }

    /// Stop after draining what is queued; return every event.
    pub(crate) fn finish(mut self) -> Result<Vec<RawEvent>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut v = self
            .events
            .lock()
            .map_err(|_| Error::FanotifyUnavailable("event buffer poisoned".into()))?;
        Ok(std::mem::take(&mut *v))
    }
}
