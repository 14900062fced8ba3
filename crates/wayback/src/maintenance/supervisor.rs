//! Keeps every ready instance's cluster running: after a broker restart, and when a postmaster
//! dies. Instances in the middle of an operation are left to that operation's job.
//!
//! It also enforces the archive interval: every plan's `archive_interval_secs` (default
//! `wal.archive_timeout_secs`) it completes each ready instance's current WAL segment, so that a commit reaches the archive within the
//! interval even on a quiet instance. PostgreSQL's own `archive_timeout` is set as well, but on
//! the machines we test on its checkpointer was seen never to act on it (no switch after 60 s
//! with a 10 s timeout, on a bare cluster), so the broker does not rely on it.
//! `pg_switch_wal()` writes nothing when no WAL was written since the last switch, so idle
//! instances do not fill the archive with empty segments.
//!
//! It tends the copies of deleted instances kept for undo ([`crate::jobs::kept::tend`]) on
//! every pass: reconciled with their records, evicted when expired or when the disk is short.
//!
//! And it keeps base backups recent: at most once a minute per ready instance it asks whether
//! one is due by the plan's schedule ([`crate::jobs::backup_due`]: none yet, the newest older
//! than `base_backup_every_hours`, or, no sooner than `base_backup_min_minutes` after it, more
//! WAL records written since its start than `base_backup_wal_share` of the databases' size and
//! than one segment) and enqueues a `backup` job unless one is already pending. WAL is counted
//! in bytes of records, never as an LSN distance: the switches above pad segments to their end,
//! and by LSN an idle instance's every backup made the next one due.
//!
//! A follower (issue 14) archives nothing and takes no base backups: none of the above is done
//! to it. A follower whose postmaster died is started again like any instance; one that does
//! not stream is logged and left to its `restore_command` (it replays from its leader's archive
//! and streams again by itself); and a leader's slot missing for a ready follower (a leader
//! restored, say), or lost past `max_slot_wal_keep_size`, is granted again
//! (`jobs::ensure_grant`, idempotent).
//!
//! An HA instance (issue 15) is tended member by member (`supervisor_ha.rs`): Patroni restarts
//! its own PostgreSQL, so the supervisor never starts a member's server itself; a member whose
//! Patroni is gone gets its Patroni started again (which adopts its data directory and rejoins).
//! The WAL switch, the archiver's statistics and the backup schedule act on the member that
//! leads now.

#[path = "supervisor_ha.rs"]
mod ha;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::context::AppContext;
use crate::domain::InstanceState;
use crate::runtime::{ClusterStatus, Reach};

pub struct Supervisor {
    ctx: Arc<AppContext>,
    interval: Duration,
    archive_interval: Duration,
    /// When each ready instance last had each periodic action; forgotten when it leaves `ready`.
    timers: Mutex<HashMap<crate::domain::InstanceId, Timers>>,
    /// HA members (by member key) whose Patroni was first seen gone at that time (`ha`).
    ha_down_since: Mutex<HashMap<crate::domain::InstanceId, Instant>>,
}

/// The periodic actions the supervisor takes per instance.
#[derive(Clone, Copy)]
enum Action {
    SwitchWal,
    ReadStats,
    CheckBackup,
}

#[derive(Default)]
struct Timers([Option<Instant>; 3]);

/// How often one instance's base backup schedule is looked at.
const BACKUP_CHECK_EVERY: Duration = Duration::from_secs(60);

/// How often each instance's archiver statistics are read for the metrics.
const STATS_EVERY: Duration = Duration::from_secs(15);

impl Supervisor {
    /// Supervises every `supervisor.interval_secs`; completes WAL segments every
    /// `wal.archive_timeout_secs` unless a plan says otherwise.
    pub fn new(ctx: Arc<AppContext>) -> Self {
        let interval = Duration::from_secs(ctx.settings.supervisor.interval_secs);
        let archive_interval = Duration::from_secs(ctx.settings.wal.archive_timeout_secs);
        Self {
            ctx,
            interval,
            archive_interval,
            timers: Mutex::new(HashMap::new()),
            ha_down_since: Mutex::new(HashMap::new()),
        }
    }

    /// True when `id` last took `action` more than `every` ago (and records that it does now).
    fn due(&self, id: &crate::domain::InstanceId, action: Action, every: Duration) -> bool {
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let last = &mut timers.entry(id.clone()).or_default().0[action as usize];
        let now = Instant::now();
        match last {
            Some(at) if now.duration_since(*at) < every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Enqueues a base backup of `instance` if its plan's schedule says one is due; `cluster`
    /// is the cluster that takes its writes (its id, or an HA instance's leader's key).
    async fn schedule_backup(
        &self,
        instance: &crate::store::InstanceRecord,
        cluster: &crate::domain::InstanceId,
    ) -> anyhow::Result<()> {
        if !self.due(&instance.id, Action::CheckBackup, BACKUP_CHECK_EVERY) {
            return Ok(());
        }
        let Some(plan) = self
            .ctx
            .catalog
            .plan(&instance.service_id, &instance.plan_id)
        else {
            return Ok(());
        };
        if self
            .ctx
            .store
            .pending_backup_job(&instance.id)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let newest = self.ctx.store.latest_backup(&instance.id).await?;
        let position = match &newest {
            Some(_) => Some(self.ctx.runtime.wal_position(cluster).await?),
            None => None,
        };
        let now = crate::store::now_millis();
        if let Some(reason) = crate::jobs::backup_due(&plan.archive, newest.as_ref(), now, position)
        {
            let job = crate::jobs::backup_job(&instance.id, reason);
            if self.ctx.store.enqueue_backup(&job).await? {
                tracing::info!(instance = %instance.id, reason, "base backup due; enqueued");
            }
        }
        Ok(())
    }

    /// The archive interval of `instance`'s plan (the broker's default if the plan has none).
    fn archive_interval_of(&self, instance: &crate::store::InstanceRecord) -> Duration {
        self.ctx
            .catalog
            .plan(&instance.service_id, &instance.plan_id)
            .and_then(|p| p.archive.archive_interval_secs)
            .map(Duration::from_secs)
            .unwrap_or(self.archive_interval)
    }

    /// Reads the archiver's statistics of a running instance into the metrics.
    async fn observe_archiver(&self, id: &crate::domain::InstanceId) {
        if !self.due(id, Action::ReadStats, STATS_EVERY) {
            return;
        }
        match self.ctx.runtime.archiver_stats(id).await {
            Ok(stats) => {
                if stats.ready_segments > 2 {
                    tracing::warn!(instance = %id, waiting = stats.ready_segments, oldest_secs = stats.oldest_ready_age_secs, failures = stats.failed_count, "archiving is behind");
                }
                self.ctx.metrics.archiver_observed(id.as_str(), stats)
            }
            Err(e) => {
                tracing::debug!(instance = %id, error = %e, "cannot read archiver statistics")
            }
        }
    }

    /// A running follower: streaming (else logged), and its slot on the leader there (else
    /// granted again).
    async fn check_follower(&self, follower: &crate::store::InstanceRecord) {
        if !self.due(&follower.id, Action::ReadStats, STATS_EVERY) {
            return;
        }
        match self.ctx.runtime.standby_status(&follower.id).await {
            Ok(s) if !s.streaming => {
                tracing::warn!(instance = %follower.id, replay_lsn = ?s.replay_lsn, "follower is not streaming from its leader; it replays from the leader's archive until it can")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(instance = %follower.id, error = %e, "cannot read the follower's status")
            }
        }
        let Some(leader) = &follower.leader_id else {
            return;
        };
        let (_, slot) = crate::jobs::replication_names(&follower.id);
        match self.ctx.runtime.replication_status(leader).await {
            // A slot past `max_slot_wal_keep_size` is invalidated (`lost`) and streams no more:
            // granted again like a missing one (`prepare_replication` replaces a lost slot).
            Ok(slots)
                if slots
                    .iter()
                    .any(|r| r.slot == slot && r.wal_status.as_deref() != Some("lost")) => {}
            Ok(_) => {
                tracing::warn!(instance = %follower.id, %leader, slot, "the follower's slot is missing or lost on its leader; granting it again");
                if let Err(e) = crate::jobs::ensure_grant(&self.ctx, follower).await {
                    tracing::warn!(instance = %follower.id, %leader, error = format!("{e:#}"), "cannot grant the follower's replication again");
                }
            }
            Err(e) => {
                tracing::debug!(instance = %follower.id, %leader, error = %e, "cannot read the leader's replication")
            }
        }
    }

    /// Checks every ready instance once and starts those that are down. Returns how many it
    /// started.
    pub async fn check_all(&self) -> anyhow::Result<usize> {
        let mut started = 0;
        let ready = self
            .ctx
            .store
            .instances_in_states(&[InstanceState::Ready])
            .await?;
        let live: std::collections::HashSet<String> =
            ready.iter().map(|i| i.id.to_string()).collect();
        self.ctx.metrics.retain_instances(&live);
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(id.as_str()));
        // With agents: ask each for its capacity once (metrics), and do not wait on the
        // instances of one that does not answer (each would wait for its own timeout).
        let survey = self.ctx.runtime.survey().await;
        if let Some(capacities) = survey.capacities() {
            self.ctx.metrics.agents_observed(capacities);
        }
        let down = survey.down();
        let (mut waiting, mut unplaced) = (0, 0);
        for instance in ready {
            match survey.reach(instance.agent.as_deref()) {
                Reach::Reachable => {}
                Reach::AgentDown => {
                    waiting += 1;
                    continue;
                }
                // Made on this machine before agents were configured: no agent runs it.
                Reach::NoAgent => {
                    unplaced += 1;
                    continue;
                }
            }
            // An HA instance's members are Patroni's to run (`ha`).
            if let Some(n) = self.check_ha(&instance).await {
                started += n;
                continue;
            }
            match self.ctx.runtime.status(&instance.id).await {
                Ok(ClusterStatus::Running) if instance.leader_id.is_some() => {
                    self.check_follower(&instance).await;
                }
                Ok(ClusterStatus::Running) => {
                    self.observe_archiver(&instance.id).await;
                    if self.due(
                        &instance.id,
                        Action::SwitchWal,
                        self.archive_interval_of(&instance),
                    ) {
                        if let Err(e) = self.ctx.runtime.switch_wal(&instance.id).await {
                            tracing::warn!(instance = %instance.id, error = %e, "cannot complete the WAL segment for archiving");
                        }
                    }
                    if let Err(e) = self.schedule_backup(&instance, &instance.id).await {
                        tracing::warn!(instance = %instance.id, error = format!("{e:#}"), "cannot check the base backup schedule");
                    }
                }
                Ok(ClusterStatus::Stopped) => {
                    tracing::warn!(instance = %instance.id, "cluster is down; starting it");
                    match self.ctx.runtime.start(&instance.id).await {
                        Ok(()) => {
                            started += 1;
                            self.ctx.metrics.cluster_restarted();
                            tracing::info!(instance = %instance.id, "cluster started again");
                        }
                        Err(e) => {
                            tracing::error!(instance = %instance.id, error = %e, "cannot start cluster")
                        }
                    }
                }
                Ok(ClusterStatus::Absent) => {
                    tracing::error!(instance = %instance.id, "cluster data directory is missing; restore the instance from its archive")
                }
                Err(e) => {
                    tracing::warn!(instance = %instance.id, error = %e, "cannot check cluster")
                }
            }
        }
        if !down.is_empty() {
            tracing::warn!(agents = ?down, instances = waiting, "agents do not answer; their instances are not checked until they do");
        }
        if unplaced > 0 {
            tracing::warn!(instances = unplaced, "ready instances run on no agent (made before agents were configured); bring each over with clone-from");
        }
        Ok(started)
    }

    /// Checks at once, then every interval, until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let mut startup = true;
        let mut drills_looked: Option<Instant> = None;
        loop {
            if let Err(e) = self.check_all().await {
                tracing::warn!(error = %e, "supervisor pass failed");
            }
            // The copies kept for undo: reconciled with their records (at start-up, a copy
            // without one is a move whose record a killed broker never wrote), and evicted
            // by age and for room.
            if let Err(e) = crate::jobs::kept::tend(&self.ctx, startup).await {
                tracing::warn!(error = format!("{e:#}"), "cannot tend the kept copies");
            }
            startup = false;
            // Restore drills due (issue 18): enqueued here at most once a minute, run in the
            // background lane.
            if !drills_looked.is_some_and(|t| t.elapsed() < super::drills::LOOK_EVERY) {
                drills_looked = Some(Instant::now());
                if let Err(e) = super::drills::schedule(&self.ctx).await {
                    tracing::warn!(error = format!("{e:#}"), "cannot schedule restore drills");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
