//! Base backups on agents: the remote runtime's `take_backup` and `take_standby_backup`, each
//! the agent's `POST /v1/clusters/{id}/backup` (the agent streams, uploads and waits for the
//! end segment itself, with its own backup settings; the broker's say how long that may take).
//! A standby's backup (issue 15 point 4) names the leader's member key in the body; only an
//! agent that says it takes them (`Capacity::standby_backup`) is asked for one. Must not import
//! `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use reqwest::Method;
use wayback_api::agent as wire;

use super::{BackupAnswer, RemoteRuntime};
use crate::archive::layout::InstancePrefix;
use crate::archive::{BackupOptions, BackupReport};
use crate::domain::InstanceId;
use crate::runtime::RuntimeError;

impl RemoteRuntime {
    /// An older agent's standby would wait for a backup history file that never comes: the
    /// backup is then the leader's.
    pub(super) async fn remote_standby_backup(
        &self,
        standby: &InstanceId,
        leader: &InstanceId,
        prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError> {
        let able = self
            .agent_of(standby)
            .await?
            .capacity()
            .await
            .is_ok_and(|c| c.standby_backup);
        if !able {
            tracing::info!(standby = %standby, "the standby's agent takes no standby backups (an older version); taking the backup from the leader");
            return self.remote_backup(leader, None, prefix, options).await;
        }
        self.remote_backup(standby, Some(leader), prefix, options)
            .await
    }

    /// `POST /v1/clusters/{id}/backup` on the cluster's agent; `leader` names the member whose
    /// WAL segment completes a standby's backup.
    pub(super) async fn remote_backup(
        &self,
        id: &InstanceId,
        leader: Option<&InstanceId>,
        prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError> {
        let body = wire::BackupBody {
            prefix: prefix.as_str().to_string(),
            reason: options.reason.clone(),
            leader: leader.map(|l| l.to_string()),
        };
        let timeout = options.stream_timeout + options.archive_wait + Duration::from_secs(60);
        let path = format!("/v1/clusters/{id}/backup");
        let answer: BackupAnswer = self
            .agent_of(id)
            .await?
            .call(Method::POST, &path, Some(&body), Some(timeout))
            .await?;
        Ok(BackupReport {
            manifest: answer.manifest,
            timings: answer.timings,
        })
    }
}
