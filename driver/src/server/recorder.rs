//! The daemon's recorder thread: the eBPF root watcher feeding
//! [`crate::record`]. Each finished recording wakes the background
//! migration, which places the new hot files.

use super::metrics::metrics;
use crate::record::{EngineImage, EngineImages};
use crate::store::Store;
use nvtier_tracer::bpf::AttachMode;
use nvtier_tracer::watch::RootWatcher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// containerd, asked for the images it unpacked itself.
struct Containerd {
    socket: std::path::PathBuf,
    root: std::path::PathBuf,
    rt: tokio::runtime::Handle,
}

impl EngineImages for Containerd {
    fn lookup(&self, chain: &[String]) -> Option<EngineImage> {
        let f = super::content::engine_image::unpacked_image(
            &self.socket,
            &self.root,
            SNAPSHOTTER,
            chain,
        );
        match self
            .rt
            .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), f).await })
        {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "asking containerd for an unpacked image");
                None
            }
            Err(_) => {
                tracing::warn!("asking containerd for an unpacked image: no answer in 10 s");
                None
            }
        }
    }
}

/// The snapshotter name engines use for nvtier (their proxy plugin).
const SNAPSHOTTER: &str = "nvtier";

/// A running recorder; [`RecorderHandle::stop`] ends it.
pub struct RecorderHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RecorderHandle {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start recording container starts, unless `record_starts` is off or the
/// eBPF programs cannot load (then one log line says why; containers run
/// as before, unrecorded).
pub fn start(store: Store, wake: Arc<tokio::sync::Notify>) -> Option<RecorderHandle> {
    if !store.cfg.record_starts {
        tracing::info!("container starts are not recorded (key `record_starts` is off)");
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = AttachMode::from_env().and_then(|mode| RootWatcher::start(mode, tx));
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "container starts are not recorded: the eBPF watcher cannot load; `nvtier trace IMAGE -- CMD` still records by hand");
            return None;
        }
    };
    tracing::info!(
        attach = watcher.mode().as_str(),
        quiet_ms = store.cfg.record_quiet_ms,
        max_s = store.cfg.record_max_s,
        max_age_s = store.cfg.profile_max_age_s,
        "recording container cold starts of images without a fresh profile"
    );
    let engine = Box::new(Containerd {
        socket: store.cfg.containerd_socket.clone(),
        root: store.cfg.containerd_root.clone(),
        rt: tokio::runtime::Handle::current(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("nvtier-record".into())
        .spawn(move || {
            crate::record::run(store, engine, &watcher, rx, &s2, |r| {
                metrics().recording(Some(r.files));
                wake.notify_one();
            });
        });
    match thread {
        Ok(t) => Some(RecorderHandle {
            stop,
            thread: Some(t),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "container starts are not recorded: cannot start the recorder thread");
            None
        }
    }
}
