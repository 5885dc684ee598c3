//! `nvtier serve` makes disk-tier layers it published before their
//! write-back durable in the background (see `store::durable`).

use crate::store::Store;

/// How often published-but-unsynced layers are looked for.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Run [`Store::sync_layers`] every [`EVERY`] until shutdown.
pub async fn writeback_loop(store: Store, rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let s2 = store.clone();
        match tokio::task::spawn_blocking(move || s2.sync_layers()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "writing back disk-tier layers; retrying"),
            Err(e) => tracing::warn!(error = %e, "write-back task panicked; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = rx.wait_for(|v| *v) => return,
        }
    }
}
