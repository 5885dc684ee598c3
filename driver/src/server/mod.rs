//! `nvtier serve`: the daemon. It serves, each on its own unix socket
//! (root-only, mode 0600):
//! - the containerd proxy snapshotter ([`snapshotter`]), key
//!   `snapshotter_socket`;
//! - the Docker legacy graph-driver plugin ([`docker_plugin`]), key
//!   `docker_plugin_socket`.
//!
//! For the snapshotter, [`content`] writes the blobs of images nvtier
//! pulls for the engine into containerd's content store (key
//! `content_store_blobs`, through `containerd_socket`).
//!
//! SIGTERM/SIGINT stop accepting, let requests in flight finish, and remove
//! the sockets. State is on disk, so a restart while containerd holds
//! snapshots (and containers run on them) leaves them intact.

pub mod content;
pub mod docker_plugin;
pub mod metrics;
pub mod pins;
pub mod publish;
pub mod recorder;
pub mod snapshotter;
pub mod writeback;

use crate::error::{Error, IoContext, Result};
use crate::store::Store;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Bind a unix socket: create the parent directory, remove a stale socket
/// (refusing if a live server answers on it), and make it root-only (0600).
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ctx("create socket directory", dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::Other(format!(
                    "{} is in use by a running server (another `nvtier serve`?)",
                    path.display()
                )));
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).ctx("remove stale socket", path)?;
        }
        Ok(_) => {
            return Err(Error::Other(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).ctx("stat socket", path),
    }
    // Bind with a restrictive umask so the socket is never reachable by
    // others, not even between bind and chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l.ctx("bind socket", path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .ctx("chmod socket", path)?;
    Ok(l)
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = i.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

struct SocketGuard(PathBuf);
impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Run the daemon until SIGTERM/SIGINT.
/// What the background migration looks at: the profiles' names and
/// modification times, and the image list.
fn profiles_signature(store: &Store) -> Vec<(String, u128)> {
    let mut v: Vec<(String, u128)> = std::fs::read_dir(store.state().join("profiles"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            (e.file_name().to_string_lossy().into_owned(), t)
        })
        .collect();
    if let Ok(imgs) = store.images() {
        v.extend(imgs.into_iter().map(|i| (i.name, 0)));
    }
    v.sort();
    v
}

/// Every `migrate_interval_s`, re-plan and migrate when a profile or the
/// image list changed (new traces, pulls, removals). Runs until shutdown.
/// A finished recording (`wake`) re-plans at once; a finished migration
/// wakes the pins (`pins`).
async fn migrate_loop(
    store: Store,
    rx: &mut tokio::sync::watch::Receiver<bool>,
    wake: std::sync::Arc<tokio::sync::Notify>,
    pins: std::sync::Arc<tokio::sync::Notify>,
) {
    let every = std::time::Duration::from_secs(store.cfg.migrate_interval_s);
    let mut last: Option<Vec<(String, u128)>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = wake.notified() => {}
            _ = rx.wait_for(|v| *v) => return,
        }
        let s2 = store.clone();
        let sig = match tokio::task::spawn_blocking(move || profiles_signature(&s2)).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        if last.as_ref() == Some(&sig) || sig.is_empty() {
            continue;
        }
        let s2 = store.clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::tiering::migrate(&s2, &crate::tiering::MigrateOptions::default())
        })
        .await;
        match r {
            Ok(Ok(rep)) => {
                tracing::info!(
                    layers = rep.layers.len(),
                    copied = rep.copied_bytes,
                    relocated = rep.relocated_bytes,
                    pmem_used = rep.pmem_used_after,
                    "background migration done"
                );
                metrics::metrics().migration(true, rep.copied_bytes, rep.relocated_bytes);
                pins.notify_one();
                last = Some(sig);
            }
            Ok(Err(e)) => {
                metrics::metrics().migration(false, 0, 0);
                tracing::warn!(error = %e, "background migration failed; retrying later")
            }
            Err(e) => tracing::warn!(error = %e, "background migration panicked"),
        }
    }
}

/// Every `repair_interval_s`: check the tiers' identity and content, and
/// repair what a lost or replaced tier held (see [`crate::repair`]). Logs
/// when the pmem tier goes missing and when it is back.
async fn repair_loop(store: Store, rx: &mut tokio::sync::watch::Receiver<bool>) {
    let every = std::time::Duration::from_secs(store.cfg.repair_interval_s);
    let opts = crate::repair::RepairOptions {
        image: None,
        include_missing: false,
        rebuild_hot: true,
        auth: crate::pull::Credentials::Node,
    };
    let mut was_available = store.pmem_available();
    let mut first = true;
    loop {
        if !first {
            if every.is_zero() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = rx.wait_for(|v| *v) => return,
            }
        }
        first = false;
        let s2 = store.clone();
        let health =
            match tokio::task::spawn_blocking(move || crate::store::health::scan(&s2)).await {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "tier check failed; retrying later");
                    continue;
                }
                Err(_) => continue,
            };
        let available = !health.pmem.state.is_missing();
        if available != was_available {
            if available {
                tracing::info!(path = %store.pmem.root.display(), "the pmem tier is back: using it again");
            } else {
                tracing::warn!(
                    path = %store.pmem.root.display(), state = %health.pmem.state,
                    "the pmem tier is missing: running degraded"
                );
            }
            was_available = available;
        }
        use crate::store::identity::TierState;
        let replaced = [&health.pmem.state, &health.disk.state]
            .iter()
            .any(|s| matches!(s, TierState::Replaced { .. } | TierState::New));
        let lost = [&health.pmem, &health.disk]
            .iter()
            .any(|t| !t.state.is_missing() && !t.lost.is_empty_but_snapshots());
        if replaced || lost {
            let r = crate::repair::repair(&store, &opts).await;
            metrics::metrics().repair(r.is_ok());
            match r {
                Ok(r) => tracing::info!(
                    images = r.images.len(),
                    restored_layers = r.images.iter().map(|i| i.restored_layers).sum::<usize>(),
                    hot_generations = r.forgotten.hot_generations,
                    meta_layers = r.forgotten.meta_layers,
                    still_damaged = r.damaged_after.len(),
                    "background repair done"
                ),
                Err(e) => tracing::warn!(error = %e, "background repair failed; retrying later"),
            }
        }
    }
}

pub async fn serve(store: Store) -> Result<()> {
    let cfg = store.cfg.clone();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut guards = Vec::new();

    if let Some(path) = &cfg.snapshotter_socket {
        let snap = snapshotter::NvSnapshotter::open(store.clone())?;
        let listener = bind_socket(path)?;
        guards.push(SocketGuard(path.clone()));
        tracing::info!(socket = %path.display(), "containerd snapshotter listening (proxy plugin `nvtier`)");
        let mut rx = rx.clone();
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(snap.service())
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async move {
                        let _ = rx.wait_for(|v| *v).await;
                    },
                )
                .await
                .map_err(|e| Error::Other(format!("snapshotter server: {e}")))
        });
    }

    if let Some(path) = &cfg.docker_plugin_socket {
        let listener = bind_socket(path)?;
        guards.push(SocketGuard(path.clone()));
        tracing::info!(socket = %path.display(), "Docker graph driver plugin listening (dockerd --experimental -s nvtier)");
        let (store, mut rx) = (store.clone(), rx.clone());
        tasks.spawn(async move {
            tokio::select! {
                r = docker_plugin::serve(listener, store) => r,
                _ = rx.wait_for(|v| *v) => Ok(()),
            }
        });
    }

    if tasks.is_empty() {
        return Err(Error::Config {
            file: cfg.file.clone(),
            msg: "nothing to serve: keys `snapshotter_socket` and `docker_plugin_socket` are both empty".into(),
        });
    }

    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let pins_wake = std::sync::Arc::new(tokio::sync::Notify::new());
    if let Err(why) = crate::tiering::enabled(&store) {
        tracing::info!(%why, "background migration off");
    } else if cfg.migrate_interval_s > 0 {
        let (store, mut rx, wake, pins) =
            (store.clone(), rx.clone(), wake.clone(), pins_wake.clone());
        tasks.spawn(async move {
            migrate_loop(store, &mut rx, wake, pins).await;
            Ok(())
        });
    }
    let recorder = recorder::start(store.clone(), wake);

    if crate::tiering::enabled(&store).is_ok() {
        let (store, mut rx) = (store.clone(), rx.clone());
        tasks.spawn(async move {
            pins::pin_loop(store, &mut rx, pins_wake).await;
            Ok(())
        });
    }

    {
        let (store, mut rx) = (store.clone(), rx.clone());
        tasks.spawn(async move {
            writeback::writeback_loop(store, &mut rx).await;
            Ok(())
        });
    }

    {
        let (store, mut rx) = (store.clone(), rx.clone());
        tasks.spawn(async move {
            repair_loop(store, &mut rx).await;
            Ok(())
        });
    }

    if let Some(addr) = cfg.metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config {
                file: cfg.file.clone(),
                msg: format!("key `metrics_address`: cannot listen on {addr}: {e}"),
            })?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        let (store, mut rx) = (store.clone(), rx.clone());
        tasks.spawn(async move {
            tokio::select! {
                r = metrics::serve_metrics(listener, store) => r,
                _ = rx.wait_for(|v| *v) => Ok(()),
            }
        });
    }

    if cfg.profile_push {
        let (store, mut rx) = (store.clone(), rx.clone());
        tasks.spawn(async move {
            publish::publish_loop(store, &mut rx).await;
            Ok(())
        });
    }

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown_signal() => {}
        Some(r) = tasks.join_next() => {
            result = r.map_err(|e| Error::Other(e.to_string())).and_then(|x| x);
            if result.is_ok() {
                result = Err(Error::Other("a server stopped unexpectedly".into()));
            }
        }
    }
    let _ = tx.send(true);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "server ended with an error");
        }
    }
    if let Some(r) = recorder {
        r.stop();
    }
    drop(guards);
    tracing::info!("stopped");
    result
}
