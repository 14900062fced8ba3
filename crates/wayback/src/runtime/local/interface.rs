//! The local runtime as a [`ClusterRuntime`]: each call is the inherent call of the same name
//! (they live with their concern: lifecycle, admin, archive, backup, clone, restore). Nothing
//! is placed (clusters are here) and there are no agents to survey. Must not import `osb`,
//! `broker`, `store` or `jobs`.

use async_trait::async_trait;
use secrecy::SecretString;

use super::LocalRuntime;
use crate::archive::layout::InstancePrefix;
use crate::archive::{ArchiveTarget, BackupOptions, BackupReport};
use crate::domain::InstanceId;
use crate::runtime::RoleAccess;
use crate::runtime::{
    AgentSurvey, Applied, ArchiveCommand, ArchiverStats, ClusterRuntime, ClusterSpec,
    ClusterStatus, Placement, PlacementLedger, RestoreSpec, RestoreStatus, RuntimeError,
    WalPosition,
};
use crate::runtime::{FollowSpec, ReplicationGrant, ReplicationStatus, StandbyStatus};

#[async_trait]
impl ClusterRuntime for LocalRuntime {
    async fn drill(
        &self,
        id: &InstanceId,
        spec: &crate::runtime::DrillSpec,
    ) -> Result<crate::runtime::DrillReport, RuntimeError> {
        LocalRuntime::drill(self, id, spec).await
    }
    async fn cancel_drill(&self, id: &InstanceId) -> Result<bool, RuntimeError> {
        LocalRuntime::cancel_drill(self, id).await
    }
    async fn prepare(&self) -> Result<(), RuntimeError> {
        LocalRuntime::prepare(self).await
    }
    async fn place(
        &self,
        _id: &InstanceId,
        _ledger: &dyn PlacementLedger,
    ) -> Result<Option<Placement>, RuntimeError> {
        Ok(None)
    }
    async fn survey(&self) -> AgentSurvey {
        AgentSurvey::local()
    }
    async fn create_cluster(&self, spec: &ClusterSpec) -> Result<(), RuntimeError> {
        LocalRuntime::create_cluster(self, spec).await
    }
    async fn configure_archive(
        &self,
        id: &InstanceId,
        target: &ArchiveTarget,
        command: &ArchiveCommand,
    ) -> Result<(), RuntimeError> {
        LocalRuntime::configure_archive(self, id, target, command).await
    }
    async fn start(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        LocalRuntime::start(self, id).await
    }
    async fn park(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        LocalRuntime::park(self, id).await
    }
    fn subscribe_wakes(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::runtime::WakeEvent>> {
        Some(self.subscribe_wakes())
    }
    async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        LocalRuntime::stop(self, id).await
    }
    async fn inspect(
        &self,
        id: &InstanceId,
        kind: crate::runtime::InspectKind,
    ) -> Result<crate::runtime::Inspection, RuntimeError> {
        LocalRuntime::inspect(self, id, kind).await
    }
    async fn sessions(&self, id: &InstanceId) -> Result<crate::runtime::Sessions, RuntimeError> {
        LocalRuntime::sessions(self, id).await
    }
    async fn activity(
        &self,
        id: &InstanceId,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<wayback_api::activity::Activity, RuntimeError> {
        Ok(LocalRuntime::activity(self, id, since))
    }
    async fn activity_summaries(&self) -> Vec<wayback_api::activity::ActivitySummary> {
        LocalRuntime::activity_summaries(self)
    }
    async fn status(&self, id: &InstanceId) -> Result<ClusterStatus, RuntimeError> {
        LocalRuntime::status(self, id).await
    }
    async fn destroy(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        LocalRuntime::destroy(self, id).await
    }
    async fn apply_settings(&self, spec: &ClusterSpec) -> Result<Applied, RuntimeError> {
        LocalRuntime::apply_settings(self, spec).await
    }
    async fn ensure_database(
        &self,
        id: &InstanceId,
        database: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        LocalRuntime::ensure_database(self, id, database, owner_role).await
    }
    async fn create_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        password: &SecretString,
        owner_role: &str,
        access: &RoleAccess,
    ) -> Result<(), RuntimeError> {
        LocalRuntime::create_login_role(self, id, role, password, owner_role, access).await
    }
    async fn drop_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        LocalRuntime::drop_login_role(self, id, role, owner_role).await
    }
    async fn revoke_copied_logins(&self, id: &InstanceId) -> Result<Vec<String>, RuntimeError> {
        LocalRuntime::revoke_copied_logins(self, id).await
    }
    async fn seal_wal(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        LocalRuntime::seal_wal(self, id, database).await
    }
    async fn reopen_database(&self, id: &InstanceId, database: &str) -> Result<(), RuntimeError> {
        LocalRuntime::reopen_database(self, id, database).await
    }
    async fn switch_wal(&self, id: &InstanceId) -> Result<String, RuntimeError> {
        LocalRuntime::switch_wal(self, id).await
    }
    async fn switch_wal_segment(&self, id: &InstanceId) -> Result<(String, String), RuntimeError> {
        LocalRuntime::switch_wal_segment(self, id).await
    }
    async fn wal_position(&self, id: &InstanceId) -> Result<WalPosition, RuntimeError> {
        LocalRuntime::wal_position(self, id).await
    }
    async fn archiver_stats(&self, id: &InstanceId) -> Result<ArchiverStats, RuntimeError> {
        LocalRuntime::archiver_stats(self, id).await
    }
    async fn take_backup(
        &self,
        id: &InstanceId,
        prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError> {
        LocalRuntime::take_backup(self, id, prefix, options).await
    }
    async fn take_standby_backup(
        &self,
        standby: &InstanceId,
        leader: &InstanceId,
        prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError> {
        LocalRuntime::take_standby_backup(self, standby, leader, prefix, options).await
    }
    async fn start_restore(
        &self,
        id: &InstanceId,
        spec: &RestoreSpec,
    ) -> Result<RestoreStatus, RuntimeError> {
        LocalRuntime::start_restore(self, id, spec).await
    }
    async fn restore_status(&self, id: &InstanceId) -> Result<RestoreStatus, RuntimeError> {
        LocalRuntime::restore_status(self, id).await
    }
    async fn trash_cluster(
        &self,
        id: &InstanceId,
    ) -> Result<Option<wayback_api::agent::KeptCopy>, RuntimeError> {
        LocalRuntime::trash_cluster(self, id).await
    }
    async fn list_trash(&self) -> Result<Vec<crate::runtime::MachineTrash>, RuntimeError> {
        Ok(vec![crate::runtime::MachineTrash {
            agent: None,
            trash: LocalRuntime::list_trash(self).await?,
        }])
    }
    async fn evict_trash(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        LocalRuntime::evict_trash(self, id).await
    }
    async fn prepare_replication(
        &self,
        leader: &InstanceId,
        grant: &ReplicationGrant,
    ) -> Result<(), RuntimeError> {
        LocalRuntime::prepare_replication(self, leader, grant).await
    }
    async fn drop_replication(
        &self,
        leader: &InstanceId,
        role: &str,
        slot: &str,
    ) -> Result<(), RuntimeError> {
        LocalRuntime::drop_replication(self, leader, role, slot).await
    }
    async fn replication_status(
        &self,
        leader: &InstanceId,
    ) -> Result<Vec<ReplicationStatus>, RuntimeError> {
        LocalRuntime::replication_status(self, leader).await
    }
    async fn standby_status(&self, follower: &InstanceId) -> Result<StandbyStatus, RuntimeError> {
        LocalRuntime::standby_status(self, follower).await
    }
    async fn start_follow(
        &self,
        follower: &InstanceId,
        spec: &FollowSpec,
    ) -> Result<RestoreStatus, RuntimeError> {
        LocalRuntime::start_follow(self, follower, spec).await
    }
    async fn promote(&self, follower: &InstanceId) -> Result<u32, RuntimeError> {
        LocalRuntime::promote(self, follower).await
    }
    async fn supports_ha(&self) -> bool {
        true
    }
    async fn ha_start_member(
        &self,
        spec: &crate::runtime::HaMemberSpec,
    ) -> Result<(), RuntimeError> {
        LocalRuntime::ha_start_member(self, spec).await
    }
    async fn ha_status(&self, id: &InstanceId) -> Result<crate::runtime::HaStatus, RuntimeError> {
        LocalRuntime::ha_status(self, id).await
    }
    async fn ha_switchover(
        &self,
        id: &InstanceId,
        candidate: Option<&str>,
    ) -> Result<String, RuntimeError> {
        LocalRuntime::ha_switchover(self, id, candidate).await
    }
    async fn ha_release_member(
        &self,
        member: &InstanceId,
        single: &crate::runtime::ClusterSpec,
    ) -> Result<(), RuntimeError> {
        LocalRuntime::ha_release_member(self, member, single).await
    }
}
