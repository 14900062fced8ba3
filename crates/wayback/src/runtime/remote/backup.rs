//! Base backups on agents: the remote runtime's `take_backup` and `take_standby_backup`, each
//! the agent's `POST /v1/clusters/{id}/backup` (the agent streams, uploads and waits for the
//! end segment itself, with its own backup settings; the broker's say how long that may take).
//! A standby's backup (issue 15 point 4) names the leader's member key in the body; only an
//! agent that says it takes them (`Capacity::standby_backup`) is asked for one. That agent
//! completes the leader's WAL segment itself when it runs the leader too; when the leader runs
//! on another agent, the broker completes it through that agent every [`LEADER_NUDGE`] while
//! the backup runs (the standby's agent cannot reach it, and the leader's own
//! `archive_timeout` never completes a segment holding only housekeeping records, where a
//! standby's backup may end). Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use reqwest::Method;
use wayback_api::agent as wire;

use super::{BackupAnswer, RemoteRuntime};
use crate::archive::layout::InstancePrefix;
use crate::archive::{BackupOptions, BackupReport};
use crate::domain::InstanceId;
use crate::runtime::{ClusterRuntime, RuntimeError};

/// How often the broker completes the leader's WAL segment while a standby on another agent
/// is backed up: the end segment reaches the archive at most this long after the stream ends
/// (well within `wal.final_archive_timeout_secs`), and a busy leader writes at most one more
/// segment per this interval meanwhile (an idle one none: a switch with nothing written since
/// the last is a no-op).
pub const LEADER_NUDGE: Duration = Duration::from_secs(15);

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
        let standby_agent = self.agent_of(standby).await?.name.clone();
        let leader_agent = self.agent_of(leader).await?.name.clone();
        let backup = self.remote_backup(standby, Some(leader), prefix, options);
        if leader_agent == standby_agent {
            return backup.await;
        }
        let nudge = async {
            loop {
                tokio::time::sleep(LEADER_NUDGE).await;
                if let Err(e) = self.switch_wal_segment(leader).await {
                    tracing::debug!(leader = %leader, error = %e, "cannot complete the leader's WAL segment during a standby's backup");
                }
            }
        };
        tokio::select! {
            report = backup => report,
            never = nudge => never,
        }
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
