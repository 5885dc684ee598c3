//! `nvtier serve`.

use anyhow::Result;
use nvtier::store::Store;

pub fn run(store: Store) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(nvtier::server::serve(store))?;
    Ok(())
}
