//! `nvtier docker-plugin` (hidden): only the Docker graph driver plugin,
//! on a socket of its own.

use anyhow::Result;
use nvtier::store::Store;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Socket path (its parent directories are created; mode 0600).
    #[arg(long, default_value = "/run/docker/plugins/nvtier.sock")]
    socket: PathBuf,
}

/// Bind the plugin socket with [`nvtier::server::bind_socket`] (root-only;
/// a stale socket is replaced, a live one refused) and serve until
/// SIGTERM/SIGINT; the socket is removed on the way out.
pub fn run(store: Store, a: Args) -> Result<()> {
    let socket = a.socket.as_path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _rt = rt.enter();
        nvtier::server::bind_socket(socket)?
    };
    let res = rt.block_on(async {
        eprintln!("nvtier: docker graph driver plugin listening on {}", socket.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = nvtier::server::docker_plugin::serve(listener, store) => r.map_err(anyhow::Error::from),
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); Ok(()) }
        }
    });
    let _ = std::fs::remove_file(socket);
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    res
}
