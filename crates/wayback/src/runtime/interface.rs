//! [`ClusterRuntime`]: everything the broker does to a cluster, as one interface with two
//! implementations — [`super::LocalRuntime`] (this machine) and [`super::RemoteRuntime`] (the
//! instance's agent, which serves the same calls by delegating to its own `LocalRuntime`).
//!
//! This is the only seam between "this machine" and "an agent": job steps, the supervisor and
//! the API hold a [`Runtime`] and never ask which one it is. Long work (a clone's restore) runs
//! in the background wherever the cluster is, and is polled the same way for both
//! ([`ClusterRuntime::start_restore`], [`ClusterRuntime::restore_status`]). The types in the
//! calls are plain domain values a test can build, so a fake runtime can stand in.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::sync::Arc;

use async_trait::async_trait;
use secrecy::SecretString;
use wayback_api::agent::{
    Capacity, KeptCopies, KeptCopy, ReplicationStatus, RestoreStatus, StandbyStatus,
};
use wayback_api::drills::DrillReport;

use super::placement::{Placement, PlacementLedger};
use super::replication::{FollowSpec, ReplicationGrant};
use super::{
    Applied, ArchiveCommand, ArchiverStats, ClusterSpec, ClusterStatus, RuntimeError, WalPosition,
};
use crate::archive::layout::InstancePrefix;
use crate::archive::restore::RestoreTarget;
use crate::archive::{ArchiveTarget, BackupOptions, BackupReport};
use crate::domain::{InstanceId, SpaceGuid};

/// The runtime the broker uses.
pub type Runtime = Arc<dyn ClusterRuntime>;

/// What a clone's restore restores, and into what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSpec {
    pub port: u16,
    /// The new instance's space: the promoted server archives into the instance's own prefix
    /// there from its first moment.
    pub space: SpaceGuid,
    /// The source's archive, only read.
    pub source: InstancePrefix,
    pub source_system_identifier: u64,
    pub target: RestoreTarget,
    pub archive_timeout_secs: u64,
    /// Try the source's copy kept at delete time first (issue 16); the restore falls back to
    /// the archive when it is missing or not exactly what was recorded.
    pub kept_copy: Option<TrashedSource>,
    /// A live source to copy with `pg_basebackup` if it runs on the machine the restore runs
    /// on (issue 16); the restore falls back to the archive when it does not, or on any
    /// failure.
    pub live_fork: Option<InstanceId>,
}

/// A restore drill (issue 18): the instance's archive restored into a scratch copy wherever the
/// instance is (this machine or its agent), checked, and deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillSpec {
    /// The instance's archive, only read.
    pub source: InstancePrefix,
    /// A live instance's catalog is compared with the drill's.
    pub live: bool,
    pub started: chrono::DateTime<chrono::Utc>,
}

/// One machine's trash: `agent` None is the broker's own machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineTrash {
    pub agent: Option<String>,
    pub trash: KeptCopies,
}

/// A deleted source's kept copy, as the broker recorded it at delete time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashedSource {
    pub source: InstanceId,
    /// The shutdown checkpoint pg_control must still name.
    pub checkpoint_lsn: String,
}

/// What a binding's login role may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleAccess {
    /// A member of the owner role whose sessions act as it: it reads and writes, and what it
    /// creates belongs to the owner role.
    Owner,
    /// Reads everything in the app database `database` and writes nothing (`pg_read_all_data`,
    /// `default_transaction_read_only`); never a member of the owner role.
    ReadOnly { database: String },
}

/// Where clusters live and what can be done to them. Every call is idempotent — a job step
/// that crashed half-way is simply run again.
#[async_trait]
pub trait ClusterRuntime: Send + Sync {
    /// Start-up checks and preparation (binaries, OS user, directories, template; or a first
    /// look at every agent).
    async fn prepare(&self) -> Result<(), RuntimeError>;

    /// Chooses where a new instance's cluster goes and records it in `ledger`; None when
    /// clusters run on this machine.
    async fn place(
        &self,
        id: &InstanceId,
        ledger: &dyn PlacementLedger,
    ) -> Result<Option<Placement>, RuntimeError>;

    /// Asks every agent how it is (at once), for the supervisor; nothing to ask locally.
    async fn survey(&self) -> AgentSurvey;

    /// Creates the data directory (or leaves an existing one) and writes the configuration.
    async fn create_cluster(&self, spec: &ClusterSpec) -> Result<(), RuntimeError>;

    /// Points the cluster's archiver at `target` (effective from the next start). An agent
    /// builds the target for the same prefix from its own archive settings.
    async fn configure_archive(
        &self,
        id: &InstanceId,
        target: &ArchiveTarget,
        command: &ArchiveCommand,
    ) -> Result<(), RuntimeError>;

    /// Starts the cluster and waits until it accepts connections. A parked cluster
    /// ([`ClusterStatus::Parked`]) is unparked: its port released by the wake listener, then
    /// started, and no longer parked once it runs.
    async fn start(&self, id: &InstanceId) -> Result<(), RuntimeError>;

    /// Stops an idle running cluster so that a client's connection starts it again (issue
    /// 17): switches WAL and waits until that segment is archived (the restore window ends at
    /// its last commit), stops it cleanly, marks it parked (a mark that outlives restarts of
    /// the broker and of agents) and holds its port with the wake listener. A parked cluster
    /// is fine (held again if its listener is gone). Refused (permanent) for an HA member.
    async fn park(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        Err(unsupported(id, "stop clusters when idle"))
    }

    /// The client and replication sessions of a running cluster, read without opening one.
    async fn sessions(&self, id: &InstanceId) -> Result<super::Sessions, RuntimeError> {
        Err(unsupported(id, "count a cluster's sessions"))
    }

    /// Wakes of parked clusters as they happen, for the broker's state and metrics; None from
    /// a runtime that reports none (an agent's wakes are seen by the supervisor as a parked
    /// cluster found running).
    fn subscribe_wakes(&self) -> Option<tokio::sync::broadcast::Receiver<super::WakeEvent>> {
        None
    }

    /// What a running instance has been doing (issue 19): its ring of 1 s samples and 15 s
    /// facts, kept by the sampler where the cluster runs, from `since` on (all of the last
    /// hour when None). A stopped, parked or absent cluster answers `sampling: false` and
    /// whatever the ring still holds; reading never starts or wakes a cluster.
    async fn activity(
        &self,
        id: &InstanceId,
        _since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<wayback_api::activity::Activity, RuntimeError> {
        Err(unsupported(id, "sample a cluster's activity"))
    }

    /// The newest sample, 15 s facts and cumulative lock-wait counters of every instance this
    /// runtime samples (on a remote runtime, of every agent that answered), for `/metrics`.
    /// Never fails: an agent that does not answer (or predates sampling) adds nothing.
    async fn activity_summaries(&self) -> Vec<wayback_api::activity::ActivitySummary> {
        Vec::new()
    }

    /// Reads now, with one read-only session, what `kind` asks about a running cluster.
    /// Refused (not woken) for a stopped or parked cluster.
    async fn inspect(
        &self,
        id: &InstanceId,
        _kind: super::InspectKind,
    ) -> Result<super::Inspection, RuntimeError> {
        Err(unsupported(id, "inspect a cluster"))
    }

    /// Stops the cluster (fast shutdown); a stopped or absent cluster is fine.
    async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError>;

    /// `Running` when the cluster's server takes connections; for an HA member's key, when its
    /// Patroni runs (Patroni restarts the server in a switchover or a rewind, and says in
    /// [`Self::ha_status`] whether it takes connections).
    async fn status(&self, id: &InstanceId) -> Result<ClusterStatus, RuntimeError>;

    /// Stops the cluster and removes every file of it.
    async fn destroy(&self, id: &InstanceId) -> Result<(), RuntimeError>;

    /// Rewrites the configuration for `spec`, reloads, and restarts if a setting needs it.
    async fn apply_settings(&self, spec: &ClusterSpec) -> Result<Applied, RuntimeError>;

    /// Creates the NOLOGIN owner role and the application database it owns.
    async fn ensure_database(
        &self,
        id: &InstanceId,
        database: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError>;

    /// Creates (or resets the password of) a login role: a member of `owner_role`, or with
    /// [`RoleAccess::ReadOnly`] a role that only reads the app database.
    async fn create_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        password: &SecretString,
        owner_role: &str,
        access: &RoleAccess,
    ) -> Result<(), RuntimeError>;

    /// Ends the role's sessions, gives what it owns to `owner_role`, and drops it.
    async fn drop_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError>;

    /// Takes login and password from every role but the superuser (a clone's copied roles);
    /// returns the roles that could log in.
    async fn revoke_copied_logins(&self, id: &InstanceId) -> Result<Vec<String>, RuntimeError>;

    /// Closes `database`, ends sessions and switches WAL; (LSN, last segment) or None if the
    /// cluster does not archive.
    async fn seal_wal(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<Option<(String, String)>, RuntimeError>;

    /// Opens `database` to connections again.
    async fn reopen_database(&self, id: &InstanceId, database: &str) -> Result<(), RuntimeError>;

    /// Completes the current WAL segment (a no-op when nothing was written since the last
    /// one); the LSN.
    async fn switch_wal(&self, id: &InstanceId) -> Result<String, RuntimeError>;

    /// Switches WAL; (LSN, the segment to wait for in the archive).
    async fn switch_wal_segment(&self, id: &InstanceId) -> Result<(String, String), RuntimeError>;

    /// The current WAL position and the databases' total size.
    async fn wal_position(&self, id: &InstanceId) -> Result<WalPosition, RuntimeError>;

    /// The archiver's statistics of a running cluster.
    async fn archiver_stats(&self, id: &InstanceId) -> Result<ArchiverStats, RuntimeError>;

    /// Takes a base backup of the running cluster into the instance's `prefix`, and waits for
    /// it (and its end segment) to be in the archive.
    async fn take_backup(
        &self,
        id: &InstanceId,
        prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError>;

    /// [`Self::take_backup`] from `standby`, an HA member streaming from `leader` (issue 15
    /// point 4: the leader's I/O is spared): the standby streams the backup, and the leader
    /// completes its WAL segment so that the backup's end reaches the archive. A runtime that
    /// cannot (this default) takes it from `leader`.
    async fn take_standby_backup(
        &self,
        standby: &InstanceId,
        leader: &InstanceId,
        prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError> {
        let _ = standby;
        self.take_backup(leader, prefix, options).await
    }

    /// Starts a clone's restore into the instance's cluster in the background — or joins the
    /// one that runs or succeeded; one that failed is started again.
    async fn start_restore(
        &self,
        id: &InstanceId,
        spec: &RestoreSpec,
    ) -> Result<RestoreStatus, RuntimeError>;

    /// Where the instance's restore is; `none` when none is known (start it again).
    async fn restore_status(&self, id: &InstanceId) -> Result<RestoreStatus, RuntimeError>;

    /// A deprovision's end when its plan keeps deleted instances for undo (issue 16): stops the
    /// cluster cleanly, moves its data directory into this machine's trash and removes the rest
    /// of it. None: nothing was kept (no clean copy, or a runtime that keeps none: the default,
    /// e.g. the fast tier's fake), and the cluster is removed as by [`Self::destroy`].
    async fn trash_cluster(&self, id: &InstanceId) -> Result<Option<KeptCopy>, RuntimeError> {
        self.destroy(id).await?;
        Ok(None)
    }

    /// The kept copies on each machine that answered (this one, or every agent) and the room
    /// on its data file system.
    async fn list_trash(&self) -> Result<Vec<MachineTrash>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Removes `id`'s kept copy, if any; never its archive.
    async fn evict_trash(&self, _id: &InstanceId) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Runs a restore drill of `id`'s archive to its end and reports what it found; a drill
    /// that ran and failed a check is an `Ok` report with result `failed`. The scratch copy is
    /// gone when this returns. The default: this runtime runs no drills.
    async fn drill(&self, id: &InstanceId, _spec: &DrillSpec) -> Result<DrillReport, RuntimeError> {
        Err(RuntimeError::Pg(crate::pg::PgError::Setup(format!(
            "this runtime runs no restore drills (instance {id})"
        ))))
    }

    /// Asks a running drill of `id` to stop at once (issue 18 point 4: a user's restore goes
    /// first); its `drill` call then returns a `cancelled` report, its server stopped and its
    /// scratch copy deleted. Whether a drill of `id` was running; asking twice is harmless.
    async fn cancel_drill(&self, _id: &InstanceId) -> Result<bool, RuntimeError> {
        Ok(false)
    }

    /// On a leader: grants one follower its `REPLICATION LOGIN` role (password reset when it
    /// exists), its physical slot (made if missing) and a `pg_hba.conf` replication line for its
    /// address alone; reloads.
    async fn prepare_replication(
        &self,
        leader: &InstanceId,
        grant: &ReplicationGrant,
    ) -> Result<(), RuntimeError>;

    /// On a leader: withdraws a follower's line (reload), walsender, slot and role; anything
    /// already gone is fine.
    async fn drop_replication(
        &self,
        leader: &InstanceId,
        role: &str,
        slot: &str,
    ) -> Result<(), RuntimeError>;

    /// On a leader: each physical slot, with its walsender when one is connected.
    async fn replication_status(
        &self,
        leader: &InstanceId,
    ) -> Result<Vec<ReplicationStatus>, RuntimeError>;

    /// On a follower: how far it received and replayed, and whether it streams.
    async fn standby_status(&self, follower: &InstanceId) -> Result<StandbyStatus, RuntimeError>;

    /// Starts a follower's standby restore in the background (or joins it), as
    /// [`Self::start_restore`] does a clone's; polled with [`Self::restore_status`].
    async fn start_follow(
        &self,
        follower: &InstanceId,
        spec: &FollowSpec,
    ) -> Result<RestoreStatus, RuntimeError>;

    /// Promotes a follower (waits for it) and returns its new timeline; later starts are
    /// ordinary ones.
    async fn promote(&self, follower: &InstanceId) -> Result<u32, RuntimeError>;

    /// HA members (issue 15): whether this runtime runs them — the local runtime does; the
    /// remote one when every agent that answers says so (`Capacity::ha`) and at least one
    /// answers. The broker refuses HA plans where it does not.
    async fn supports_ha(&self) -> bool {
        false
    }

    /// HA members (issue 15): makes (or starts again) this machine's member of an HA instance
    /// and starts its Patroni ([`super::ha::HaMemberSpec`]). Runtimes without the engine refuse.
    async fn ha_start_member(&self, spec: &super::ha::HaMemberSpec) -> Result<(), RuntimeError> {
        Err(no_ha_engine(&spec.cluster.instance))
    }

    /// HA members: every member of the instance's scope, from Patroni.
    async fn ha_status(&self, id: &InstanceId) -> Result<super::ha::HaStatus, RuntimeError> {
        Err(no_ha_engine(id))
    }

    /// HA members: moves the leader to `candidate` (or to the member Patroni picks); the new
    /// leader's name.
    async fn ha_switchover(
        &self,
        id: &InstanceId,
        candidate: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let _ = candidate;
        Err(no_ha_engine(id))
    }

    /// HA members: takes `member` (an HA member's key, the scope's last member, leading) out of
    /// Patroni and makes it the single-member cluster `single.instance` again (a plan change
    /// from an HA plan): Patroni stops it cleanly, the scope leaves the DCS, the member's
    /// directory moves to the instance's own key with Wayback's plain configuration for
    /// `single` (its port, plan settings). Leaves it stopped; idempotent.
    async fn ha_release_member(
        &self,
        member: &InstanceId,
        single: &ClusterSpec,
    ) -> Result<(), RuntimeError> {
        let _ = single;
        Err(no_ha_engine(member))
    }

    /// How each of `leader`'s `followers` is doing ([`super::lag::observe`]): each call bounded
    /// by `timeout`, a side that does not answer giving state `unknown`, never an error.
    async fn follower_lags(
        &self,
        leader: &InstanceId,
        followers: &[InstanceId],
        timeout: std::time::Duration,
    ) -> Vec<crate::domain::FollowerLag> {
        super::lag::observe(self, leader, followers, timeout).await
    }

    /// [`follower_lags`](Self::follower_lags) of the `followers` flagged ready, in the order
    /// given; the others are `unknown` without asking their clusters (a follower being made
    /// or deleted, or stopped, is never woken to be measured).
    async fn follower_lags_if_ready(
        &self,
        leader: &InstanceId,
        followers: &[(InstanceId, bool)],
        timeout: std::time::Duration,
    ) -> Vec<crate::domain::FollowerLag> {
        let ready: Vec<InstanceId> = followers
            .iter()
            .filter(|(_, ready)| *ready)
            .map(|(id, _)| id.clone())
            .collect();
        let mut measured = self
            .follower_lags(leader, &ready, timeout)
            .await
            .into_iter();
        followers
            .iter()
            .map(|(id, ready)| {
                ready
                    .then(|| measured.next())
                    .flatten()
                    .unwrap_or_else(|| crate::domain::FollowerLag::unknown(id.clone()))
            })
            .collect()
    }
}

/// The answer of a runtime that runs no HA members (yet: agents are the next step).
fn unsupported(id: &InstanceId, what: &str) -> RuntimeError {
    RuntimeError::Pg(crate::pg::PgError::Setup(format!(
        "instance {id}: this runtime cannot {what}"
    )))
}

fn no_ha_engine(id: &InstanceId) -> RuntimeError {
    RuntimeError::Pg(crate::pg::PgError::Setup(format!(
        "instance {id}: this runtime does not run HA members"
    )))
}

/// What one look at the agents found: each one's capacity, or why it did not answer.
#[derive(Debug)]
pub struct AgentSurvey {
    /// None: clusters run on this machine.
    answers: Option<Vec<(String, Result<Capacity, RuntimeError>)>>,
}

/// Whether the supervisor can reach an instance's cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Reachable,
    /// Its agent did not answer: do not wait on it.
    AgentDown,
    /// Agents are configured but none is recorded for it (made on this machine before).
    NoAgent,
}

impl AgentSurvey {
    /// No agents: every cluster is on this machine.
    pub fn local() -> Self {
        Self { answers: None }
    }

    /// What each agent answered.
    pub fn answered(answers: Vec<(String, Result<Capacity, RuntimeError>)>) -> Self {
        Self {
            answers: Some(answers),
        }
    }

    /// Each agent's capacity (None where it did not answer); None without agents.
    pub fn capacities(&self) -> Option<Vec<(String, Option<Capacity>)>> {
        let answers = self.answers.as_ref()?;
        Some(
            answers
                .iter()
                .map(|(name, a)| (name.clone(), a.as_ref().ok().cloned()))
                .collect(),
        )
    }

    /// The agents that did not answer.
    pub fn down(&self) -> Vec<String> {
        self.answers
            .iter()
            .flatten()
            .filter(|(_, a)| a.is_err())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether the cluster of an instance recorded on `agent` can be reached.
    pub fn reach(&self, agent: Option<&str>) -> Reach {
        match (&self.answers, agent) {
            (None, _) => Reach::Reachable,
            (Some(_), None) => Reach::NoAgent,
            (Some(answers), Some(agent)) => {
                if answers.iter().any(|(n, a)| n == agent && a.is_err()) {
                    Reach::AgentDown
                } else {
                    Reach::Reachable
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity() -> Capacity {
        Capacity {
            instances: 1,
            max_instances: 10,
            memory_total_bytes: 1,
            memory_available_bytes: 1,
            disk_total_bytes: 1,
            disk_available_bytes: 1,
            advertise_host: "10.0.0.1".into(),
            version: "0".into(),
            ha: false,
            standby_backup: false,
            idle_stop: false,
        }
    }

    #[test]
    fn a_survey_says_which_clusters_can_be_reached() {
        let local = AgentSurvey::local();
        assert_eq!(local.reach(None), Reach::Reachable);
        assert_eq!(local.capacities(), None);
        assert!(local.down().is_empty());
        let survey = AgentSurvey::answered(vec![
            ("a".into(), Ok(capacity())),
            (
                "b".into(),
                Err(RuntimeError::Unreachable {
                    agent: "b".into(),
                    message: "refused".into(),
                }),
            ),
        ]);
        assert_eq!(survey.reach(Some("a")), Reach::Reachable);
        assert_eq!(survey.reach(Some("b")), Reach::AgentDown);
        assert_eq!(survey.reach(None), Reach::NoAgent);
        assert_eq!(survey.down(), vec!["b".to_string()]);
        assert_eq!(
            survey.capacities(),
            Some(vec![("a".into(), Some(capacity())), ("b".into(), None)])
        );
    }
}
