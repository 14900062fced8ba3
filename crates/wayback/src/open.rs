//! Opening what the settings name, shared by `serve`, `agent` and the operator commands: the
//! state database (migrations run, secrets sealed with the keyring), the archive (checked reachable) and the runtime (local, or
//! agents with the store as the resolver of where an instance lives). Where each is comes from
//! [`crate::config::resolve`]; this module connects.
//!
//! The archive is checked in two ways. An operator command needs it now
//! ([`reachable_archive`]: any failure stops it). A broker or an agent must start without it
//! ([`archive_for_service`]): object storage that is down or slow (a transient error) is
//! reported and left to a background check, since clusters keep their WAL until it is back;
//! settings that cannot work or a permanent refusal (bad credentials, no such bucket) still stop
//! startup, because waiting cannot fix them and a person must act.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Settings;
use crate::crypto::keyfile::WhenNoKey;
use crate::crypto::Keyring;
use crate::runtime::{ArchiveAccess, ClusterTls, LocalRuntime, Runtime};
use crate::storage::{ObjectStore, StorageError, StorageSettings};
use crate::store::Store;

/// Opens the state database the settings name (running migrations) with the keyring
/// ([`keyring`]); with its URL. Refuses when a stored secret was sealed by a key that is not
/// configured (naming the setting and the key ids), and seals once what is still in clear.
pub async fn state_store(settings: &Settings, data_dir: &Path) -> anyhow::Result<(Store, String)> {
    let url = crate::config::resolve::database_url(settings, data_dir);
    let keyring = keyring(settings, data_dir)?;
    let store = Store::connect(&url)
        .await
        .context("open the state database")?
        .with_keyring(Arc::new(keyring));
    let missing = store
        .missing_secret_keys()
        .await
        .context("check the keys of the state database's secrets")?;
    if !missing.is_empty() {
        anyhow::bail!(
            "the state database holds secrets sealed with encryption key(s) {} that are not \
             configured: add them to encryption.keys (WAYBACK_ENCRYPTION_KEYS) or restore {}",
            missing.join(", "),
            data_dir.join(crate::crypto::keyfile::KEY_FILE).display()
        );
    }
    let sealed = store
        .seal_clear_secrets()
        .await
        .context("seal the secrets the state database kept in clear")?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed binding passwords that were stored in clear");
    }
    Ok((store, url))
}

/// The keyring of the settings' `encryption` keys, else of the key generated once into the
/// data directory ([`crate::crypto::keyfile`]).
pub fn keyring(settings: &Settings, data_dir: &Path) -> anyhow::Result<Keyring> {
    crate::crypto::keyfile::keyring(
        &settings.encryption.keys,
        settings.encryption.current_key.as_deref(),
        data_dir,
        WhenNoKey::Generate,
    )
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

/// Opens the archive for a long-running service (broker or agent) and checks it once. Returns
/// the archive and, when the check failed transiently, that error (the service starts anyway);
/// an archive that can never work is an error that names it and says what to fix.
pub async fn archive_for_service(
    storage: &StorageSettings,
) -> anyhow::Result<(ObjectStore, Option<StorageError>)> {
    let archive = ObjectStore::open(storage).context("open the archive")?;
    match archive.check().await {
        Ok(()) => Ok((archive, None)),
        Err(e) if e.is_permanent() => Err(anyhow::Error::new(e).context(format!(
            "reach the archive at {}: object storage refused access (bad credentials, no such \
             bucket, or no permission); fix the archive settings and start again",
            archive.location("")
        ))),
        Err(e) => {
            tracing::warn!(archive = %archive.location(""), error = %e, "object storage does not answer; starting without it and checking again in the background");
            Ok((archive, Some(e)))
        }
    }
}

/// The CA the settings name (`tls.ca_cert`/`tls.ca_key`, else the one generated once into
/// `<data_dir>/tls/`) and the names this machine's clusters are reached by.
pub fn cluster_tls(settings: &Settings, data_dir: &Path) -> anyhow::Result<ClusterTls> {
    let source = crate::tls::CaSource {
        cert: settings.tls.ca_cert.clone(),
        key: settings.tls.ca_key.clone(),
    };
    let ca = source
        .load(data_dir)
        .context("load the CA for the clusters' TLS certificates")?;
    Ok(ClusterTls::new(Arc::new(ca), &settings.advertise_host()).requiring(settings.tls.require))
}

/// The runtime the settings ask for: agents when `agents.urls` lists any (instances not yet
/// seen are looked up in `store`; an HA member's key in its `ha_members` row), else clusters on this machine under `data_dir`, backed up to
/// and restored from `archive`.
pub fn runtime(
    settings: &Settings,
    data_dir: &Path,
    store: &Store,
    archive: ArchiveAccess,
) -> anyhow::Result<Runtime> {
    if settings.agents.urls.is_empty() {
        let local = LocalRuntime::new(data_dir.to_path_buf(), settings.postgres.clone())
            .with_tls(cluster_tls(settings, data_dir)?)
            .with_sampling(settings.metrics.sampling);
        return Ok(Arc::new(local.with_archive(archive)));
    }
    let remote = crate::runtime::RemoteRuntime::new(&settings.agents)?;
    let store = store.clone();
    remote.set_resolver(Box::new(move |id| {
        let store = store.clone();
        Box::pin(async move {
            // An HA member's key (`<id>~<member>`) lives on its `ha_members` row's agent,
            // which knows the cluster by that same key.
            let found = match id.member() {
                Some(member) => store
                    .ha_member(&id.instance(), member)
                    .await
                    .map(|row| row.map(|r| r.agent).filter(|a| !a.is_empty())),
                None => store.get_instance(&id).await.map(|r| r.and_then(|r| r.agent)),
            };
            match found {
                Ok(agent) => agent,
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
