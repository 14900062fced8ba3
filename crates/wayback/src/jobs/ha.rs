//! Where an HA instance's work goes (issue 15). An HA instance's members keep their clusters
//! under member keys (`<id>~m1`, `<id>~m2`: `InstanceId::member_key`); what acts on "the
//! instance's database" — a base backup, a WAL switch, the final WAL of a delete, a binding's
//! role — acts on the member Patroni shows as leader now ([`cluster_key`]), and what acts on
//! every member — a delete, the supervisor's care — goes over [`members`]. A single-member
//! instance's key is its id, so every caller asks here without asking whether it is HA. A base
//! backup is taken from a healthy standby when there is one ([`backup_members`], issue 15
//! point 4), so that the leader's I/O is spared; the leader then only completes its WAL segment.
//!
//! The members' names and which machine each goes to are here too: [`member_machine`] is the
//! one place a member is placed (with agents, the standby on another agent than the primary's;
//! without, the broker's own machine).
//!
//! Imports `context`, `domain`, `runtime` and `store`; never `broker`, `steps` or `osb`.

use crate::context::AppContext;
use crate::domain::InstanceId;
use crate::runtime::{HaMember, HaRole, HaStatus, RuntimeError};
use crate::store::{HaMemberRecord, InstanceRecord};

/// The members of an HA plan's instance, in the order they are made: the first is adopted
/// (the primary), the second seeded from it (the standby).
pub const MEMBER_NAMES: [&str; 2] = ["m1", "m2"];

/// The role an HA instance's standbys stream with; its password is the instance's sealed
/// replication password (migration 0012's note).
pub const REPLICATION_ROLE: &str = "wb_ha_repl";

/// Why an HA instance's leader cannot be named now (Patroni not reachable, or a failover
/// in progress): the caller retries later.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot ask Patroni for instance {id}'s leader: {source}")]
    Unreachable {
        id: InstanceId,
        #[source]
        source: RuntimeError,
    },
    #[error("instance {id} has no leader now (a failover may be in progress)")]
    NoLeader { id: InstanceId },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The machine a member goes to: (agent name, host bindings name), `("", None)` for the
/// broker's own. The primary goes where the instance was placed (`allocate_port`). Without
/// agents the standby goes to the same machine ("for labs": the instance's view says both
/// members share it); with agents it goes to another agent that runs HA members and has room
/// (`runtime::choose_ha_member`, never an agent a member already holds), and none fitting
/// fails the step ([`crate::runtime::NO_HA_ROOM`]; the broker refused such a provision
/// before the 202 unless room went since).
pub async fn member_machine(
    ctx: &AppContext,
    instance: &InstanceRecord,
    index: usize,
) -> Result<(String, Option<String>), crate::jobs::StepError> {
    let primary = instance.agent.clone().unwrap_or_default();
    let host = instance.agent_host.clone().filter(|h| !h.is_empty());
    if index == 0 || primary.is_empty() {
        return Ok((primary, host));
    }
    let survey = ctx.runtime.survey().await;
    let Some(answers) = survey.capacities() else {
        return Ok((primary, host));
    };
    let members = ctx.store.ha_members(&instance.id).await?;
    let mut taken: Vec<&str> = members.iter().map(|m| m.agent.as_str()).collect();
    taken.push(&primary);
    let placed = ctx.store.instances_per_agent().await?;
    let placement = crate::runtime::choose_ha_member(&answers, &placed, &taken)?;
    Ok((
        placement.agent,
        Some(placement.host).filter(|h| !h.is_empty()),
    ))
}

/// What the platform's user reads when an HA plan's members cannot each go to their own agent.
pub use crate::runtime::NO_HA_ROOM;

/// With agents (settings list any), the names of those that run HA members and have room for
/// one (`runtime::ha_agents_with_room`: a runtime that surveys none has none); None without
/// agents (members share the broker's machine). The broker refuses an HA provision before the
/// 202 when fewer than the plan's members have room.
pub async fn agents_with_ha_room(
    ctx: &AppContext,
) -> Result<Option<Vec<String>>, crate::store::StoreError> {
    if ctx.settings.agents.urls.is_empty() {
        return Ok(None);
    }
    let answers = ctx.runtime.survey().await.capacities().unwrap_or_default();
    let placed = ctx.store.instances_per_agent().await?;
    Ok(Some(crate::runtime::ha_agents_with_room(&answers, &placed)))
}

/// The recorded members of `instance` (none: a single-member instance).
pub async fn members(
    ctx: &AppContext,
    instance: &InstanceId,
) -> Result<Vec<HaMemberRecord>, crate::store::StoreError> {
    ctx.store.ha_members(instance).await
}

/// The key of the cluster that takes `instance`'s writes now: its id for a single-member
/// instance; for an HA instance the member key of the member Patroni shows as leader.
pub async fn cluster_key(
    ctx: &AppContext,
    instance: &InstanceId,
) -> Result<InstanceId, LeaderError> {
    if ctx.store.ha_members(instance).await?.is_empty() {
        return Ok(instance.clone());
    }
    let status =
        ctx.runtime
            .ha_status(instance)
            .await
            .map_err(|source| LeaderError::Unreachable {
                id: instance.clone(),
                source,
            })?;
    match status.leader() {
        Some(leader) if leader.state == "running" => Ok(instance.member_key(&leader.name)),
        _ => Err(LeaderError::NoLeader {
            id: instance.clone(),
        }),
    }
}

/// A standby further behind its leader than this is not backed up from: its backup would start
/// at an older restartpoint and end later, and it may still be catching up after a failover.
pub const STANDBY_BACKUP_MAX_LAG_BYTES: u64 = 16 << 20;

/// The member a base backup is taken from instead of the leader, if any: a standby (the sync
/// standby first, then the least behind) that streams on the leader's timeline with at most
/// [`STANDBY_BACKUP_MAX_LAG_BYTES`] of lag. A standby on an older timeline (still catching up
/// after a failover), or whose lag or timeline Patroni does not know, is not chosen.
pub fn backup_standby(status: &HaStatus) -> Option<&HaMember> {
    let leader = status.leader().filter(|l| l.state == "running")?;
    let timeline = leader.timeline?;
    status
        .members
        .iter()
        .filter(|m| matches!(m.role, HaRole::SyncStandby | HaRole::Replica))
        .filter(|m| matches!(m.state.as_str(), "streaming" | "running"))
        .filter(|m| m.timeline == Some(timeline))
        .filter(|m| {
            m.lag_bytes
                .is_some_and(|l| l <= STANDBY_BACKUP_MAX_LAG_BYTES)
        })
        .min_by_key(|m| (m.role != HaRole::SyncStandby, m.lag_bytes))
}

/// Where `instance`'s next base backup comes from: (the key of the cluster that leads, the
/// key of the standby to take it from). A single-member instance: (its id, None); an HA
/// instance without a healthy standby: (the leader's key, None).
pub async fn backup_members(
    ctx: &AppContext,
    instance: &InstanceId,
) -> Result<(InstanceId, Option<InstanceId>), LeaderError> {
    if ctx.store.ha_members(instance).await?.is_empty() {
        return Ok((instance.clone(), None));
    }
    let status =
        ctx.runtime
            .ha_status(instance)
            .await
            .map_err(|source| LeaderError::Unreachable {
                id: instance.clone(),
                source,
            })?;
    match status.leader() {
        Some(leader) if leader.state == "running" => Ok((
            instance.member_key(&leader.name),
            backup_standby(&status).map(|s| instance.member_key(&s.name)),
        )),
        _ => Err(LeaderError::NoLeader {
            id: instance.clone(),
        }),
    }
}

/// [`cluster_key`], or, when Patroni names no leader now, the first member's key (a delete of
/// an HA instance whose Patroni are down starts that member again to archive what is left).
pub async fn cluster_key_or_first(
    ctx: &AppContext,
    instance: &InstanceId,
) -> Result<InstanceId, LeaderError> {
    match cluster_key(ctx, instance).await {
        Ok(key) => Ok(key),
        Err(LeaderError::Store(e)) => Err(LeaderError::Store(e)),
        Err(e) => {
            let members = ctx.store.ha_members(instance).await?;
            let first = members.first().ok_or(e)?;
            tracing::warn!(instance = %instance, member = %first.member, "no HA leader to ask; acting on the first member");
            Ok(instance.member_key(&first.member))
        }
    }
}

/// Destroys every member of an HA instance (Patroni, server, files, its keys in etcd: the
/// last member removes the scope) and forgets them; nothing for a single-member instance.
/// The standby goes first, so that the leader's Patroni sees itself alone and removes the
/// whole scope. Each destroy is idempotent, so a delete run again finishes what remains.
pub async fn destroy_members(ctx: &AppContext, instance: &InstanceId) -> anyhow::Result<()> {
    let members = ctx.store.ha_members(instance).await?;
    for member in members.iter().rev() {
        ctx.runtime
            .destroy(&instance.member_key(&member.member))
            .await?;
    }
    if !members.is_empty() {
        ctx.store.delete_ha_members(instance).await?;
        tracing::info!(instance = %instance, members = members.len(), "HA members destroyed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: HaRole, state: &str, timeline: u32, lag: Option<u64>) -> HaMember {
        HaMember {
            name: name.into(),
            role,
            state: state.into(),
            timeline: Some(timeline),
            lag_bytes: lag,
            host: "127.0.0.1".into(),
            port: 5432,
        }
    }

    fn status(members: Vec<HaMember>) -> HaStatus {
        HaStatus {
            members,
            history: Vec::new(),
        }
    }

    fn chosen(s: &HaStatus) -> Option<&str> {
        backup_standby(s).map(|m| m.name.as_str())
    }

    #[test]
    fn a_streaming_standby_on_the_leaders_timeline_is_chosen() {
        let leader = member("m1", HaRole::Leader, "running", 3, None);
        let sync = member("m2", HaRole::SyncStandby, "streaming", 3, Some(0));
        assert_eq!(
            chosen(&status(vec![leader.clone(), sync.clone()])),
            Some("m2")
        );
        // Patroni 3.0.2 says `running` of a standby too; the sync standby is preferred.
        let running = member("m2", HaRole::SyncStandby, "running", 3, Some(4096));
        let replica = member("m3", HaRole::Replica, "streaming", 3, Some(0));
        assert_eq!(
            chosen(&status(vec![leader.clone(), replica.clone(), running])),
            Some("m2")
        );
        assert_eq!(chosen(&status(vec![leader, replica])), Some("m3"));
    }

    #[test]
    fn the_leader_backs_up_itself_without_a_healthy_standby() {
        let leader = member("m1", HaRole::Leader, "running", 3, None);
        for standby in [
            // Still catching up after a failover: an older timeline.
            member("m2", HaRole::SyncStandby, "streaming", 2, Some(0)),
            member("m2", HaRole::SyncStandby, "streaming", 3, Some(64 << 20)),
            member("m2", HaRole::SyncStandby, "streaming", 3, None),
            member("m2", HaRole::Replica, "starting", 3, Some(0)),
            member("m2", HaRole::Replica, "stopped", 3, Some(0)),
            member(
                "m2",
                HaRole::Other("standby_leader".into()),
                "streaming",
                3,
                Some(0),
            ),
        ] {
            let s = status(vec![leader.clone(), standby.clone()]);
            assert_eq!(chosen(&s), None, "{standby:?}");
        }
        assert_eq!(chosen(&status(vec![leader])), None);
        // No running leader: nothing to switch the end segment, no standby backup.
        let starting = member("m1", HaRole::Leader, "starting", 3, None);
        let sync = member("m2", HaRole::SyncStandby, "streaming", 3, Some(0));
        assert_eq!(chosen(&status(vec![starting, sync])), None);
    }
}
