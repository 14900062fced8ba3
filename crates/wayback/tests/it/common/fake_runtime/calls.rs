//! The fake's answers to each `ClusterRuntime` call: what a real runtime would do to the
//! cluster, in memory (see the parent module).

use chrono::Utc;
use secrecy::SecretString;
use wayback::archive::layout::InstancePrefix;
use wayback::archive::manifest::{backup_id, BackupManifest, SettingFloors, FORMAT};
use wayback::archive::{ArchiveTarget, BackupOptions, BackupReport, BackupTimings};
use wayback::domain::InstanceId;
use wayback::runtime::{
    async_trait, AgentSurvey, Applied, ArchiveCommand, ArchiverStats, ClusterRuntime, ClusterSpec,
    ClusterStatus, FollowSpec, Placement, PlacementLedger, ReplicationGrant, ReplicationStatus,
    RestorePhase, RestoreSpec, RestoreState, RestoreStatus, RuntimeError, StandbyStatus,
    WalPosition,
};

use super::{lock, Call, FakeCluster, FakeRuntime, FAKE_LSN};
use wayback::runtime::RoleAccess;

/// A base backup's manifest as a 15.8 cluster would write it, with no parts.
fn manifest(id: &InstanceId, reason: &str) -> BackupManifest {
    let now = Utc::now();
    BackupManifest {
        format: FORMAT,
        backup_id: backup_id(now),
        instance_id: id.to_string(),
        system_identifier: 7_000_000_000_000_000_001,
        pg_version: 150008,
        timeline: 1,
        start_lsn: "0/2000028".into(),
        stop_lsn: "0/2000138".into(),
        start_wal: "000000010000000000000002".into(),
        stop_wal: "000000010000000000000002".into(),
        start_time: now,
        stop_time: now,
        floors: SettingFloors {
            max_connections: 100,
            max_worker_processes: 8,
            max_locks_per_transaction: 64,
            max_prepared_transactions: 0,
            max_wal_senders: 10,
        },
        raw_bytes: 0,
        stored_bytes: 0,
        parts: vec![],
        reason: reason.to_string(),
    }
}

#[async_trait]
impl ClusterRuntime for FakeRuntime {
    async fn prepare(&self) -> Result<(), RuntimeError> {
        self.enter(Call::Prepare, None).await
    }

    async fn place(
        &self,
        id: &InstanceId,
        _ledger: &dyn PlacementLedger,
    ) -> Result<Option<Placement>, RuntimeError> {
        self.enter(Call::Place, Some(id)).await?;
        Ok(None)
    }

    async fn survey(&self) -> AgentSurvey {
        // A survey cannot fail; a failure asked for is dropped with the call.
        let _ = self.enter(Call::Survey, None).await;
        AgentSurvey::local()
    }

    async fn create_cluster(&self, spec: &ClusterSpec) -> Result<(), RuntimeError> {
        self.enter(Call::CreateCluster, Some(&spec.instance))
            .await?;
        let mut clusters = lock(&self.clusters);
        let cluster = clusters
            .entry(spec.instance.to_string())
            .or_insert_with(|| FakeCluster::new(ClusterStatus::Stopped, spec.port));
        cluster.port = spec.port;
        cluster.settings = spec.settings.clone();
        Ok(())
    }

    async fn configure_archive(
        &self,
        id: &InstanceId,
        _target: &ArchiveTarget,
        _command: &ArchiveCommand,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::ConfigureArchive, Some(id)).await?;
        self.with(id, false, |c| c.archiving = true)
    }

    async fn start(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.enter(Call::Start, Some(id)).await?;
        self.with(id, false, |c| c.status = ClusterStatus::Running)
    }

    async fn park(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.enter(Call::Park, Some(id)).await?;
        if id.member().is_some() {
            return Err(wayback::pg::PgError::Setup(format!(
                "instance {id} is an HA member: it never stops when idle"
            ))
            .into());
        }
        let status = self.with(id, false, |c| c.status)?;
        match status {
            ClusterStatus::Running | ClusterStatus::Parked => {
                self.with(id, false, |c| c.status = ClusterStatus::Parked)
            }
            _ => Err(wayback::pg::PgError::NotRunning {
                instance: id.to_string(),
            }
            .into()),
        }
    }

    async fn sessions(&self, id: &InstanceId) -> Result<wayback::runtime::Sessions, RuntimeError> {
        self.enter(Call::Sessions, Some(id)).await?;
        self.with(id, true, |_| ())?;
        Ok(lock(&self.sessions)
            .get(id.as_str())
            .copied()
            .unwrap_or_default())
    }

    async fn activity(
        &self,
        id: &InstanceId,
        since: Option<chrono::DateTime<Utc>>,
    ) -> Result<wayback_api::activity::Activity, RuntimeError> {
        let Some((mut activity, _)) = lock(&self.activity).get(id.as_str()).cloned() else {
            return Err(wayback::pg::PgError::Setup(format!(
                "instance {id}: this runtime cannot sample a cluster's activity"
            ))
            .into());
        };
        if let Some(since) = since {
            activity.samples.retain(|s| s.at > since);
            activity.stats.retain(|s| s.at > since);
        }
        Ok(activity)
    }

    async fn inspect(
        &self,
        id: &InstanceId,
        kind: wayback::runtime::InspectKind,
    ) -> Result<wayback::runtime::Inspection, RuntimeError> {
        let locks = lock(&self.activity)
            .get(id.as_str())
            .map(|(_, l)| l.clone());
        match (kind, locks) {
            (wayback::runtime::InspectKind::Locks, Some(locks)) => {
                Ok(wayback::runtime::Inspection::Locks(locks))
            }
            _ => Err(wayback::pg::PgError::Setup(format!(
                "instance {id}: this runtime cannot inspect a cluster"
            ))
            .into()),
        }
    }

    fn subscribe_wakes(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<wayback::runtime::WakeEvent>> {
        let mut wakes = lock(&self.wakes);
        Some(
            wakes
                .get_or_insert_with(|| tokio::sync::broadcast::channel(64).0)
                .subscribe(),
        )
    }

    async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.enter(Call::Stop, Some(id)).await?;
        let _ = self.with(id, false, |c| c.status = ClusterStatus::Stopped);
        Ok(())
    }

    async fn status(&self, id: &InstanceId) -> Result<ClusterStatus, RuntimeError> {
        self.enter(Call::Status, Some(id)).await?;
        Ok(self
            .with(id, false, |c| c.status)
            .unwrap_or(ClusterStatus::Absent))
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.enter(Call::Destroy, Some(id)).await?;
        lock(&self.clusters).remove(id.as_str());
        self.fake_ha_leave(id);
        Ok(())
    }

    async fn apply_settings(&self, spec: &ClusterSpec) -> Result<Applied, RuntimeError> {
        self.enter(Call::ApplySettings, Some(&spec.instance))
            .await?;
        self.with(&spec.instance, false, |c| {
            c.settings = spec.settings.clone()
        })?;
        Ok(Applied { restarted: false })
    }

    async fn ensure_database(
        &self,
        id: &InstanceId,
        database: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::EnsureDatabase, Some(id)).await?;
        self.with(id, true, |c| {
            c.databases.insert(database.into(), owner_role.into());
        })
    }

    async fn create_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        _password: &SecretString,
        _owner_role: &str,
        access: &RoleAccess,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::CreateLoginRole, Some(id)).await?;
        self.with(id, true, |c| {
            c.roles.insert(role.into());
            if matches!(access, RoleAccess::ReadOnly { .. }) {
                c.read_only_roles.insert(role.into());
            }
        })
    }

    async fn drop_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        _owner_role: &str,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::DropLoginRole, Some(id)).await?;
        self.with(id, true, |c| {
            c.roles.remove(role);
        })
    }

    async fn revoke_copied_logins(&self, id: &InstanceId) -> Result<Vec<String>, RuntimeError> {
        self.enter(Call::RevokeCopiedLogins, Some(id)).await?;
        self.with(id, true, |c| {
            std::mem::take(&mut c.roles).into_iter().collect()
        })
    }

    async fn seal_wal(
        &self,
        id: &InstanceId,
        _database: &str,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        self.enter(Call::SealWal, Some(id)).await?;
        self.with(id, true, |_| None)
    }

    async fn reopen_database(&self, id: &InstanceId, _database: &str) -> Result<(), RuntimeError> {
        self.enter(Call::ReopenDatabase, Some(id)).await?;
        self.with(id, true, |_| ())
    }

    async fn switch_wal(&self, id: &InstanceId) -> Result<String, RuntimeError> {
        self.enter(Call::SwitchWal, Some(id)).await?;
        self.with(id, true, |_| "0/3000000".to_string())
    }

    async fn switch_wal_segment(&self, id: &InstanceId) -> Result<(String, String), RuntimeError> {
        self.enter(Call::SwitchWalSegment, Some(id)).await?;
        let segment = "000000010000000000000002".to_string();
        self.with(id, true, |_| ("0/3000000".to_string(), segment))
    }

    async fn wal_position(&self, id: &InstanceId) -> Result<WalPosition, RuntimeError> {
        self.enter(Call::WalPosition, Some(id)).await?;
        let position = WalPosition {
            current_lsn: FAKE_LSN,
            database_bytes: 8 << 20,
            wal_bytes: Some(0),
        };
        self.with(id, true, |_| position)
    }

    async fn archiver_stats(&self, id: &InstanceId) -> Result<ArchiverStats, RuntimeError> {
        self.enter(Call::ArchiverStats, Some(id)).await?;
        self.with(id, true, |_| ArchiverStats::default())
    }

    async fn take_backup(
        &self,
        id: &InstanceId,
        _prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError> {
        self.enter(Call::TakeBackup, Some(id)).await?;
        self.with(id, true, |_| ())?;
        Ok(BackupReport {
            manifest: manifest(id, &options.reason),
            timings: BackupTimings::default(),
        })
    }

    async fn cancel_drill(&self, id: &InstanceId) -> Result<bool, RuntimeError> {
        self.enter(Call::CancelDrill, Some(id)).await?;
        Ok(false)
    }

    async fn drill(
        &self,
        id: &InstanceId,
        spec: &wayback::runtime::DrillSpec,
    ) -> Result<wayback::runtime::DrillReport, RuntimeError> {
        self.enter(Call::Drill, Some(id)).await?;
        Ok(wayback::runtime::DrillReport {
            instance: id.to_string(),
            started: spec.started,
            result: wayback::runtime::DrillResult::Passed,
            backup_id: Some(format!("fake-{id}")),
            wal_bytes: Some(0),
            end_lsn: Some("0/3000000".into()),
            end_time: None,
            timeline: Some(2),
            duration_secs: 0.0,
            databases_checked: 1,
            tables_counted: 0,
            checks: vec!["fake runtime: nothing restored".into()],
            failure: None,
        })
    }

    async fn start_restore(
        &self,
        id: &InstanceId,
        spec: &RestoreSpec,
    ) -> Result<RestoreStatus, RuntimeError> {
        self.enter(Call::StartRestore, Some(id)).await?;
        // The restored server runs, promoted, with the source's (here: no) roles.
        let mut clusters = lock(&self.clusters);
        let cluster = clusters
            .entry(id.to_string())
            .or_insert_with(|| FakeCluster::new(ClusterStatus::Running, spec.port));
        cluster.status = ClusterStatus::Running;
        cluster.archiving = true;
        Ok(restored())
    }

    async fn restore_status(&self, id: &InstanceId) -> Result<RestoreStatus, RuntimeError> {
        self.enter(Call::RestoreStatus, Some(id)).await?;
        Ok(if self.exists(id.as_str()) {
            restored()
        } else {
            RestoreStatus::default()
        })
    }

    async fn prepare_replication(
        &self,
        leader: &InstanceId,
        grant: &ReplicationGrant,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::PrepareReplication, Some(leader)).await?;
        self.with(leader, true, |c| {
            let who = (grant.role.clone(), grant.follower_address.clone());
            c.replication.insert(grant.slot.clone(), who);
        })
    }

    async fn drop_replication(
        &self,
        leader: &InstanceId,
        _role: &str,
        slot: &str,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::DropReplication, Some(leader)).await?;
        self.with(leader, true, |c| {
            c.replication.remove(slot);
        })
    }

    async fn replication_status(
        &self,
        leader: &InstanceId,
    ) -> Result<Vec<ReplicationStatus>, RuntimeError> {
        self.enter(Call::ReplicationStatus, Some(leader)).await?;
        // Every follower streams, caught up.
        self.with(leader, true, |c| {
            c.replication
                .iter()
                .map(|(slot, (role, _))| ReplicationStatus {
                    slot: slot.clone(),
                    role: Some(role.clone()),
                    active: true,
                    state: Some("streaming".into()),
                    lag_bytes: Some(0),
                    replay_lag_secs: Some(0.0),
                    xmin_age: Some(0),
                    wal_status: Some("reserved".into()),
                    ..ReplicationStatus::default()
                })
                .collect()
        })
    }

    async fn standby_status(&self, follower: &InstanceId) -> Result<StandbyStatus, RuntimeError> {
        self.enter(Call::StandbyStatus, Some(follower)).await?;
        // Caught up: replayed up to where `wal_position` says every cluster is.
        self.with(follower, true, |c| StandbyStatus {
            in_recovery: c.standby,
            streaming: c.standby,
            receiver_status: c.standby.then(|| "streaming".into()),
            receive_lsn: c.standby.then_some(FAKE_LSN),
            replay_lsn: c.standby.then_some(FAKE_LSN),
            ..StandbyStatus::default()
        })
    }

    async fn start_follow(
        &self,
        follower: &InstanceId,
        spec: &FollowSpec,
    ) -> Result<RestoreStatus, RuntimeError> {
        self.enter(Call::StartFollow, Some(follower)).await?;
        // A running standby that archives nothing.
        let mut clusters = lock(&self.clusters);
        let cluster = clusters
            .entry(follower.to_string())
            .or_insert_with(|| FakeCluster::new(ClusterStatus::Running, spec.port));
        cluster.status = ClusterStatus::Running;
        cluster.standby = true;
        Ok(RestoreStatus {
            timeline: Some(1),
            ..restored()
        })
    }

    async fn promote(&self, follower: &InstanceId) -> Result<u32, RuntimeError> {
        self.enter(Call::Promote, Some(follower)).await?;
        self.with(follower, true, |c| {
            c.standby = false;
            2
        })
    }

    async fn supports_ha(&self) -> bool {
        true
    }

    async fn ha_start_member(
        &self,
        spec: &wayback::runtime::HaMemberSpec,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::HaStartMember, Some(&spec.cluster.instance))
            .await?;
        self.fake_ha_start_member(spec)
    }

    async fn ha_status(&self, id: &InstanceId) -> Result<wayback::runtime::HaStatus, RuntimeError> {
        self.enter(Call::HaStatus, Some(id)).await?;
        self.fake_ha_status(id)
    }

    async fn ha_switchover(
        &self,
        id: &InstanceId,
        candidate: Option<&str>,
    ) -> Result<String, RuntimeError> {
        self.enter(Call::HaSwitchover, Some(id)).await?;
        self.fake_ha_switchover(id, candidate)
    }

    async fn ha_release_member(
        &self,
        member: &InstanceId,
        single: &wayback::runtime::ClusterSpec,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::HaReleaseMember, Some(member)).await?;
        self.fake_ha_release_member(member, single)
    }
}

/// A restore that succeeded.
fn restored() -> RestoreStatus {
    RestoreStatus {
        state: RestoreState::Succeeded,
        phase: RestorePhase::Done,
        backup_stop: Some(Utc::now().timestamp()),
        backup_id: Some(backup_id(Utc::now())),
        timeline: Some(2),
        total_secs: Some(0.0),
        ..RestoreStatus::default()
    }
}
