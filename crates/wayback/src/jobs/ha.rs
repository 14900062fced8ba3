//! Where an HA instance's work goes (issue 15). An HA instance's members keep their clusters
//! under member keys (`<id>~m1`, `<id>~m2`: `InstanceId::member_key`); what acts on "the
//! instance's database" — a base backup, a WAL switch, the final WAL of a delete, a binding's
//! role — acts on the member Patroni shows as leader now ([`cluster_key`]), and what acts on
//! every member — a delete, the supervisor's care — goes over [`members`]. A single-member
//! instance's key is its id, so every caller asks here without asking whether it is HA.
//!
//! The members' names and which machine each goes to are here too: [`member_machine`] is the
//! one place a member is placed (with agents, the standby on another agent than the primary's;
//! without, the broker's own machine).
//!
//! Imports `context`, `domain`, `runtime` and `store`; never `broker`, `steps` or `osb`.

use crate::context::AppContext;
use crate::domain::InstanceId;
use crate::runtime::RuntimeError;
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
