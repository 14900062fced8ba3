//! Opening what the settings name, shared by `serve`, `agent` and the operator commands: the
//! state database (migrations run), the archive (checked reachable) and the runtime (local, or
//! agents with the store as the resolver of where an instance lives). Where each is comes from
//! [`crate::config::resolve`]; this module connects.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Settings;
use crate::runtime::{ArchiveAccess, LocalRuntime, Runtime};
use crate::storage::{ObjectStore, StorageSettings};
use crate::store::Store;

/// Opens the state database the settings name (running migrations); with its URL.
pub async fn state_store(settings: &Settings, data_dir: &Path) -> anyhow::Result<(Store, String)> {
    let url = crate::config::resolve::database_url(settings, data_dir);
    let store = Store::connect(&url)
        .await
        .context("open the state database")?;
    Ok((store, url))
}

/// Opens the archive and checks that it can be reached.
pub async fn reachable_archive(storage: &StorageSettings) -> anyhow::Result<ObjectStore> {
    let archive = ObjectStore::open(storage).context("open the archive")?;
    archive
        .check()
        .await
        .with_context(|| format!("reach the archive at {}", archive.location("")))?;
    Ok(archive)
}

/// The runtime the settings ask for: agents when `agents.urls` lists any (instances not yet
/// seen are looked up in `store`), else clusters on this machine under `data_dir`, backed up to
/// and restored from `archive`.
pub fn runtime(
    settings: &Settings,
    data_dir: &Path,
    store: &Store,
    archive: ArchiveAccess,
) -> anyhow::Result<Runtime> {
    if settings.agents.urls.is_empty() {
        let local = LocalRuntime::new(data_dir.to_path_buf(), settings.postgres.clone());
        return Ok(Arc::new(local.with_archive(archive)));
    }
    let remote = crate::runtime::RemoteRuntime::new(&settings.agents)?;
    let store = store.clone();
    remote.set_resolver(Box::new(move |id| {
        let store = store.clone();
        Box::pin(async move {
            match store.get_instance(&id).await {
                Ok(record) => record.and_then(|r| r.agent),
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "cannot look up the instance's agent");
                    None
                }
            }
        })
    }));
    tracing::info!(agents = ?remote.agent_names(), "clusters run on agents");
    Ok(Arc::new(remote))
}
