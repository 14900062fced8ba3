//! The supervisor's care of an HA instance (issue 15): each member's Patroni kept running, and
//! the periodic work on the member that leads now. Patroni starts, stops and promotes
//! PostgreSQL; the runtime's `status` of a member says `stopped` while its Patroni does not run,
//! and its `start` starts Patroni (never `pg_ctl`), which takes its existing data directory
//! over again and rejoins the scope (by `pg_rewind` when it was the old leader).
//!
//! A leader's Patroni that is gone is not started again at once: while another member's
//! Patroni answers and the scope still names the gone one as leader (or none yet), Patroni is
//! left to fail over (its leader key runs out after `ttl`, and the sync standby is promoted),
//! for at most [`FAILOVER_GRACE`]. A leader brought back inside the ttl would take its lock
//! again and recover in place instead, a path seen to leave the pair without a writable
//! primary under load; a failover and a rejoin by `pg_rewind` is the one Patroni is built for.
//! A standby's Patroni, or any member's when no other answers, is started at once.

use std::time::{Duration, Instant};

use super::{Action, Supervisor};
use crate::domain::InstanceId;
use crate::runtime::ClusterStatus;
use crate::store::InstanceRecord;

/// How long a gone leader's Patroni is left down for the others to fail over: twice
/// Patroni's leader `ttl` ([`crate::runtime::ha::LEADER_TTL`]).
const FAILOVER_GRACE: Duration = crate::runtime::ha::LEADER_TTL.saturating_mul(2);

impl Supervisor {
    /// Whether the gone member `name` (its Patroni not running) is to be left down for now:
    /// another member answers and names it as leader, or names none yet, within the grace.
    async fn leave_for_failover(
        &self,
        instance: &InstanceRecord,
        key: &InstanceId,
        name: &str,
    ) -> bool {
        let since = *self
            .ha_down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_insert_with(Instant::now);
        if since.elapsed() >= FAILOVER_GRACE {
            return false;
        }
        match self.ctx.runtime.ha_status(&instance.id).await {
            Ok(status) => match status.leader() {
                Some(leader) => leader.name == name,
                None => true,
            },
            // No member's Patroni answers: nothing will fail over.
            Err(_) => false,
        }
    }

    /// Tends an HA instance's members and returns how many members' Patroni it started; the
    /// base backup schedule is looked at when `backups` is given.
    pub(super) async fn check_ha(
        &self,
        instance: &InstanceRecord,
        backups: Option<&crate::store::BackupOverview>,
    ) -> usize {
        let members = match self.ctx.store.ha_members(&instance.id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(instance = %instance.id, error = %e, "cannot read the HA members");
                return 0;
            }
        };
        let mut started = 0;
        for member in &members {
            let key = instance.id.member_key(&member.member);
            match self.ctx.runtime.status(&key).await {
                Ok(ClusterStatus::Running) => {
                    self.ha_down_since
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                }
                Ok(ClusterStatus::Stopped)
                    if self
                        .leave_for_failover(instance, &key, &member.member)
                        .await =>
                {
                    tracing::warn!(instance = %instance.id, member = %member.member, "the leader's Patroni is gone; leaving Patroni to fail over before starting it again");
                }
                Ok(ClusterStatus::Stopped) => {
                    tracing::warn!(instance = %instance.id, member = %member.member, "the member's Patroni is gone; starting it");
                    match self.ctx.runtime.start(&key).await {
                        Ok(()) => {
                            self.ha_down_since
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&key);
                            started += 1;
                            self.ctx.metrics.cluster_restarted();
                            tracing::info!(instance = %instance.id, member = %member.member, "the member's Patroni runs again");
                        }
                        Err(e) => {
                            tracing::error!(instance = %instance.id, member = %member.member, error = %e, "cannot start the member's Patroni")
                        }
                    }
                }
                // HA members never stop when idle; nothing to do for one that says so.
                Ok(ClusterStatus::Parked) => {}
                Ok(ClusterStatus::Absent) => {
                    tracing::error!(instance = %instance.id, member = %member.member, "the member's data directory is missing")
                }
                Err(e) => {
                    tracing::warn!(instance = %instance.id, member = %member.member, error = %e, "cannot check the member")
                }
            }
        }
        let leader = match crate::jobs::ha::cluster_key(&self.ctx, &instance.id).await {
            Ok(key) => key,
            Err(e) => {
                tracing::debug!(instance = %instance.id, error = %e, "no HA leader to act on now");
                return started;
            }
        };
        if self.due(&instance.id, Action::ReadStats, super::STATS_EVERY) {
            match self.ctx.runtime.archiver_stats(&leader).await {
                Ok(stats) => self
                    .ctx
                    .metrics
                    .archiver_observed(instance.id.as_str(), stats),
                Err(e) => {
                    tracing::debug!(instance = %instance.id, error = %e, "cannot read the leader's archiver statistics")
                }
            }
        }
        if self.due(
            &instance.id,
            Action::SwitchWal,
            self.archive_interval_of(instance),
        ) {
            if let Err(e) = self.ctx.runtime.switch_wal(&leader).await {
                tracing::warn!(instance = %instance.id, error = %e, "cannot complete the leader's WAL segment for archiving");
            }
        }
        if let Some(backups) = backups {
            if let Err(e) = self.schedule_backup(instance, backups, &leader).await {
                tracing::warn!(instance = %instance.id, error = format!("{e:#}"), "cannot check the base backup schedule");
            }
        }
        started
    }
}
