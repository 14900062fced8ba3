//! A deprovision loses nothing: before the cluster is destroyed its database is closed, WAL is
//! switched, and the step waits until that last segment is in the archive. If the archive
//! cannot take it in time, the step fails and the instance is kept (and reopened), so that the
//! delete can be retried once storage is back.

use std::time::{Duration, Instant};

use crate::archive::layout::{InstancePrefix, WalFileName};
use crate::context::AppContext;
use crate::domain::SpaceGuid;
use crate::jobs::StepError;
use crate::runtime::ClusterStatus;
use crate::store::{now_millis, InstanceRecord};

pub async fn archive_final_wal(
    ctx: &AppContext,
    instance: &InstanceRecord,
) -> Result<(), StepError> {
    // An HA instance's last WAL is its leader's (`jobs::ha`).
    let cluster = crate::jobs::ha::cluster_key_or_first(ctx, &instance.id)
        .await
        .map_err(StepError::transient)?;
    match ctx.runtime.status(&cluster).await? {
        // A provision that failed before the cluster existed: nothing was ever committed.
        ClusterStatus::Absent => return Ok(()),
        // Down (crashed, or the machine restarted): start it so the archiver pushes what is left.
        ClusterStatus::Stopped => ctx.runtime.start(&cluster).await?,
        // Stopped when idle: everything it committed is archived, but sealing (closing the
        // database, the final switch) is one path for every instance; a start takes ~70 ms.
        ClusterStatus::Parked => ctx.runtime.start(&cluster).await?,
        ClusterStatus::Running => {}
    }
    let Some((lsn, walfile)) = ctx
        .runtime
        .seal_wal(&cluster, &instance.database_name)
        .await?
    else {
        tracing::info!(instance = %instance.id, "cluster never archived; nothing to seal");
        return Ok(());
    };
    let space = SpaceGuid::parse(instance.space_guid.clone()).map_err(StepError::transient)?;
    let name =
        WalFileName::parse(&walfile).map_err(|e| StepError::transient(anyhow::anyhow!(e)))?;
    let key = InstancePrefix::new(&space, &instance.id).wal(&name);
    if !wait_archived(ctx, &instance.id, &key).await {
        return Err(StepError::Permanent {
            user_message: format!(
                "the last WAL ({walfile}) could not be archived within {} s, so the instance was NOT deleted and keeps running. \
                 Check the archive storage, then delete the instance again",
                ctx.settings.wal.final_archive_timeout_secs
            ),
            source: anyhow::anyhow!("{key} not in the archive at the deadline"),
        });
    }
    ctx.store
        .set_instance_final(&instance.id, &lsn, now_millis())
        .await?;
    tracing::info!(instance = %instance.id, lsn, walfile, "final WAL archived");
    Ok(())
}

/// Waits until `key` is in the archive, for at most `wal.final_archive_timeout_secs`; false at
/// the deadline. Also used by a fork (clone-from a live instance).
pub(super) async fn wait_archived(
    ctx: &AppContext,
    instance: &crate::domain::InstanceId,
    key: &str,
) -> bool {
    let deadline =
        Instant::now() + Duration::from_secs(ctx.settings.wal.final_archive_timeout_secs);
    loop {
        match ctx.archive.head(key).await {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(instance = %instance, error = %e, "cannot check the archive; still waiting")
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
