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
//! And it keeps base backups recent: once a minute it reads every ready instance's newest
//! backup and pending backup job from the state database in one look, and asks of each whether
//! one is due by the plan's schedule ([`crate::jobs::backup_due`]: none yet, the newest older
//! than `base_backup_every_hours`, or, no sooner than `base_backup_min_minutes` after it, more
//! WAL records written since its start than `base_backup_wal_share` of the databases' size and
//! than one segment) and enqueues a `backup` job unless one is already pending. WAL is counted
//! in bytes of records, never as an LSN distance: the switches above pad segments to their end,
//! and by LSN an idle instance's every backup made the next one due.
//!
//! Watching an idle instance must cost no more than its idle cluster costs by itself: broker
//! and cluster together at most 2x the cluster alone (issue 17 point 0; `bash
//! scripts/bench-idle` measures it: 1.5x at 200 instances): a pass reads the ready instances in one
//! query of the state database (and their backups in one look a minute), however many there
//! are, and a quiet instance costs it a few file reads — its status comes from
//! `postmaster.pid`, and the runtime answers the archiver, switch and WAL-position questions
//! from `pg_wal/` while nothing was written there (`runtime::local::quiet`); only an instance
//! that writes is asked over a session.
//!
//! A follower (issue 14) archives nothing and takes no base backups: none of the above is done
//! to it. A follower whose postmaster died is started again like any instance; one that does
//! not stream is logged and left to its `restore_command` (it replays from its leader's archive
//! and streams again by itself); and a leader's slot missing for a ready follower (a leader
//! restored, say), or lost past `max_slot_wal_keep_size`, is granted again
//! (`jobs::ensure_grant`, idempotent).
//!
//! An instance whose plan stops when idle (issue 17) has an idle clock (`supervisor_idle.rs`):
//! no client or replication session for the plan's `idle.stop_after_secs` enqueues an
//! `idle_stop` job; a parked cluster is never started by the supervisor, and gets no WAL
//! switch, statistics or base backup.
//!
//! An HA instance (issue 15) is tended member by member (`supervisor_ha.rs`): Patroni restarts
//! its own PostgreSQL, so the supervisor never starts a member's server itself; a member whose
//! Patroni is gone gets its Patroni started again (which adopts its data directory and rejoins).
//! The WAL switch, the archiver's statistics and the backup schedule act on the member that
//! leads now. Which instances are HA is read once per pass (`Store::ha_instance_ids`); an HA
//! instance costs a pass a Patroni REST call for its leader.

#[path = "supervisor_ha.rs"]
mod ha;
#[path = "supervisor_idle.rs"]
mod idle;

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
    /// When the base backup schedule was last looked at.
    backups_looked: Mutex<Option<Instant>>,
    /// HA members (by member key) whose Patroni was first seen gone at that time (`ha`).
    ha_down_since: Mutex<HashMap<crate::domain::InstanceId, Instant>>,
    /// Idle clocks of the running instances whose plans stop when idle (`idle`).
    idle: Mutex<HashMap<crate::domain::InstanceId, idle::IdleClock>>,
}

/// The periodic actions the supervisor takes per instance.
#[derive(Clone, Copy)]
enum Action {
    SwitchWal,
    ReadStats,
}

#[derive(Default)]
struct Timers([Option<Instant>; 2]);

/// How often the base backup schedule is looked at: every ready instance in the same pass, from
/// one look at the state database ([`crate::store::Store::backup_overview`]).
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
            backups_looked: Mutex::new(None),
            ha_down_since: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
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

    /// The state database's view of every instance's backups, when the schedule is due for a
    /// look in this pass (once a [`BACKUP_CHECK_EVERY`]); None otherwise, or when the store
    /// cannot answer (logged; the next pass looks again).
    async fn backup_look(&self) -> Option<crate::store::BackupOverview> {
        {
            let mut looked = self
                .backups_looked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if looked.is_some_and(|t| t.elapsed() < BACKUP_CHECK_EVERY) {
                return None;
            }
            *looked = Some(Instant::now());
        }
        match self.ctx.store.backup_overview().await {
            Ok(overview) => Some(overview),
            Err(e) => {
                *self
                    .backups_looked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                tracing::warn!(error = %e, "cannot read the backup schedule's state");
                None
            }
        }
    }

    /// Enqueues a base backup of `instance` if its plan's schedule says one is due; `cluster`
    /// is the cluster that takes its writes (its id, or an HA instance's leader's key).
    async fn schedule_backup(
        &self,
        instance: &crate::store::InstanceRecord,
        backups: &crate::store::BackupOverview,
        cluster: &crate::domain::InstanceId,
    ) -> anyhow::Result<()> {
        let Some(plan) = self
            .ctx
            .catalog
            .plan(&instance.service_id, &instance.plan_id)
        else {
            return Ok(());
        };
        if backups.pending.contains(instance.id.as_str()) {
            return Ok(());
        }
        let newest = backups.newest.get(&instance.id);
        let position = match newest {
            Some(_) => Some(self.ctx.runtime.wal_position(cluster).await?),
            None => None,
        };
        let now = crate::store::now_millis();
        if let Some(reason) = crate::jobs::backup_due(&plan.archive, newest, now, position) {
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
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(id.as_str()));
        // Leaders of ready followers never stop when idle (`idle`).
        let leaders: std::collections::HashSet<crate::domain::InstanceId> =
            ready.iter().filter_map(|i| i.leader_id.clone()).collect();
        // With agents: ask each for its capacity once (metrics), and do not wait on the
        // instances of one that does not answer (each would wait for its own timeout).
        let survey = self.ctx.runtime.survey().await;
        if let Some(capacities) = survey.capacities() {
            self.ctx.metrics.agents_observed(capacities);
        }
        let down = survey.down();
        let backups = self.backup_look().await;
        let ha: std::collections::HashSet<crate::domain::InstanceId> = match self
            .ctx
            .store
            .ha_instance_ids()
            .await
        {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which instances are HA; checking none this pass");
                return Ok(started);
            }
        };
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
            if ha.contains(&instance.id) {
                started += self.check_ha(&instance, backups.as_ref()).await;
                continue;
            }
            if self.check_one(&instance, backups.as_ref(), &leaders).await {
                started += 1;
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

    /// One ready instance on a reachable machine: a running cluster is watched (archiver, WAL
    /// switch, backup schedule when `backups` is given), a stopped one started. True when it
    /// was started.
    ///
    /// Everything here costs nothing for a quiet instance beyond reading a few files: status
    /// comes from `postmaster.pid`, and the runtime answers the archiver, switch and position
    /// questions from `pg_wal/` while nothing was written (`runtime::local::quiet`).
    async fn check_one(
        &self,
        instance: &crate::store::InstanceRecord,
        backups: Option<&crate::store::BackupOverview>,
        leaders: &std::collections::HashSet<crate::domain::InstanceId>,
    ) -> bool {
        match self.ctx.runtime.status(&instance.id).await {
            Ok(ClusterStatus::Running) if instance.leader_id.is_some() => {
                self.check_follower(instance).await;
            }
            Ok(ClusterStatus::Running) => {
                self.observe_archiver(&instance.id).await;
                if self.due(
                    &instance.id,
                    Action::SwitchWal,
                    self.archive_interval_of(instance),
                ) {
                    if let Err(e) = self.ctx.runtime.switch_wal(&instance.id).await {
                        tracing::warn!(instance = %instance.id, error = %e, "cannot complete the WAL segment for archiving");
                    }
                }
                if let Some(backups) = backups {
                    if let Err(e) = self.schedule_backup(instance, backups, &instance.id).await {
                        tracing::warn!(instance = %instance.id, error = format!("{e:#}"), "cannot check the base backup schedule");
                    }
                }
                self.tend_idle_running(instance, leaders).await;
            }
            Ok(ClusterStatus::Stopped) => return self.restart(instance).await,
            // Stopped when idle: its port is held and a client's connection starts it; the
            // supervisor never wakes it (issue 17), nor takes its backups: it writes no WAL.
            Ok(ClusterStatus::Parked) => self.tend_idle_parked(instance).await,
            Ok(ClusterStatus::Absent) => {
                tracing::error!(instance = %instance.id, "cluster data directory is missing; restore the instance from its archive")
            }
            Err(e) => {
                tracing::warn!(instance = %instance.id, error = %e, "cannot check cluster")
            }
        }
        false
    }

    /// Starts the stopped cluster of a ready instance. True when it runs again.
    async fn restart(&self, instance: &crate::store::InstanceRecord) -> bool {
        tracing::warn!(instance = %instance.id, "cluster is down; starting it");
        match self.ctx.runtime.start(&instance.id).await {
            Ok(()) => {
                self.ctx.metrics.cluster_restarted();
                tracing::info!(instance = %instance.id, "cluster started again");
                true
            }
            Err(e) => {
                tracing::error!(instance = %instance.id, error = %e, "cannot start cluster");
                false
            }
        }
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
