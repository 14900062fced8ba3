//! The steps only followers have (docs/architecture.md §6):
//!
//! ```text
//! follow:    allocate_port → follow_grant → follow_restore → create_cluster → clone_restart
//!            → start
//! unfollow:  follow_promote → create_cluster → configure_archive → clone_restart → start
//!            → clone_rotate → clone_first_archive → follow_release
//! delete:    … (a follower's backup, WAL and history steps pass) → follow_release → destroy
//! ```
//!
//! `follow_grant` gives the follower its identity on the leader: the role `wb_repl_<id>` with a
//! random password (sealed in the store, so a re-run grants the same one), the slot
//! `wb_follower_<id>` and a `pg_hba` replication line for the follower's address alone
//! (`prepare_replication`, idempotent). `follow_restore` runs the standby restore wherever the
//! follower lives and polls it as a clone's restore is polled; a restore the runtime lost (a
//! restart) is started again, and one already done is joined. `follow_promote` promotes the
//! follower on a new timeline; the clone's steps then give it its own archive (own prefix, own
//! data key), take the leader's roles' logins away and archive its first WAL, and
//! `follow_release` withdraws the grant on the leader last, so that a failed unfollow leaves
//! nothing half-withdrawn while it still streams.
//!
//! A leaf of `steps`: imports no sibling, never the dispatcher (`steps` itself), and never
//! `broker`.

use std::time::Duration;

use crate::archive::layout::InstancePrefix;
use crate::context::AppContext;
use crate::domain::{OperationState, SpaceGuid};
use crate::jobs::follow_source::{replication_names, FollowSource};
use crate::jobs::model::Job;
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::{FollowSpec, ReplicationGrant, RestoreState, RuntimeError};
use crate::store::InstanceRecord;

async fn progress_text(ctx: &AppContext, job: &Job, text: &str) {
    if let Some(op) = &job.operation_id {
        if let Err(e) = ctx
            .store
            .update_operation(op, OperationState::InProgress, text)
            .await
        {
            tracing::warn!(job = %job.id, error = %e, "cannot record progress");
        }
    }
}

/// The host a cluster is reached at from another cluster: its agent's advertised host, else
/// this machine's loopback (clusters on the broker's machine).
fn cluster_host(instance: &InstanceRecord) -> String {
    instance
        .agent_host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// The follower's address as its leader sees its connections: the IP of its host.
async fn follower_address(follower: &InstanceRecord) -> Result<String, StepError> {
    host_ip(cluster_host(follower)).await
}

/// The IP address `host` stands for: itself when it is one, else its first resolved address.
pub(super) async fn host_ip(host: String) -> Result<String, StepError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(host);
    }
    let mut addrs = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .map_err(|e| StepError::transient(anyhow::anyhow!("resolve {host}: {e}")))?;
    addrs
        .next()
        .map(|a| a.ip().to_string())
        .ok_or_else(|| StepError::transient(anyhow::anyhow!("{host} resolves to no address")))
}

/// The live leader of a follower; a leader gone is a permanent failure.
async fn leader_of(
    ctx: &AppContext,
    leader: &crate::domain::InstanceId,
) -> Result<InstanceRecord, StepError> {
    match ctx.store.get_instance(leader).await? {
        Some(l) if l.state.is_live() => Ok(l),
        _ => Err(StepError::Permanent {
            user_message: "the leader was deleted while its follower was being made; delete \
                           this instance"
                .into(),
            source: anyhow::anyhow!("leader {leader} is gone"),
        }),
    }
}

/// 32 letters and digits from the OS's generator (a SCRAM password needs printable ASCII).
fn random_password() -> secrecy::SecretString {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric
        .sample_string(&mut rand::rngs::OsRng, 32)
        .into()
}

/// The follower's role, password and slot on its leader (the password made once and kept).
async fn grant(ctx: &AppContext, follower: &InstanceRecord) -> Result<ReplicationGrant, StepError> {
    let (role, slot) = replication_names(&follower.id);
    let password = ctx
        .store
        .ensure_replication_password(&follower.id, &random_password())
        .await?;
    Ok(ReplicationGrant {
        role,
        password,
        slot,
        follower_address: follower_address(follower).await?,
    })
}

/// The follower's grant on its live leader, again (the supervisor's repair of a missing
/// slot; `prepare_replication` is idempotent). Read again first: a follower being unfollowed
/// (no longer `ready`) or unfollowed since must not get its grant back.
pub async fn ensure_grant(ctx: &AppContext, follower: &InstanceRecord) -> anyhow::Result<()> {
    let Some(follower) = ctx.store.get_instance(&follower.id).await? else {
        return Ok(());
    };
    let Some(leader) = &follower.leader_id else {
        return Ok(());
    };
    if follower.state != crate::domain::InstanceState::Ready {
        return Ok(());
    }
    let follower = &follower;
    let grant = grant(ctx, follower)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    ctx.runtime.prepare_replication(leader, &grant).await?;
    Ok(())
}

/// `follow_grant`: the follower's role, slot and `pg_hba` line on the leader.
pub async fn grant_step(
    ctx: &AppContext,
    instance: &InstanceRecord,
    src: &FollowSource,
) -> StepResult {
    let leader = leader_of(ctx, &src.leader).await?;
    let grant = grant(ctx, instance).await?;
    // A leader stopped when idle is started: once it has a follower it never stops again.
    crate::jobs::idle::unpark(ctx, &leader, &leader.id).await?;
    ctx.runtime.prepare_replication(&leader.id, &grant).await?;
    tracing::info!(follower = %instance.id, leader = %leader.id, role = %grant.role, address = %grant.follower_address, "replication granted on the leader");
    Ok(Outcome::Next)
}

/// `follow_restore`: starts (or joins) the standby restore and polls it until the follower is
/// consistent and streams.
pub async fn restore_step(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
    src: &FollowSource,
) -> StepResult {
    let leader = leader_of(ctx, &src.leader).await?;
    let port = instance
        .port
        .ok_or_else(|| StepError::transient(anyhow::anyhow!("instance has no port yet")))?;
    let leader_port = leader
        .port
        .ok_or_else(|| StepError::transient(anyhow::anyhow!("the leader has no port")))?;
    let space = SpaceGuid::parse(leader.space_guid.clone()).map_err(StepError::transient)?;
    let grant = grant(ctx, instance).await?;
    let spec = FollowSpec {
        port,
        leader: InstancePrefix::new(&space, &leader.id),
        leader_system_identifier: src.system_identifier,
        leader_host: cluster_host(&leader),
        leader_port,
        role: grant.role,
        password: grant.password,
        slot: grant.slot,
    };
    let mut status = ctx.runtime.start_follow(&instance.id, &spec).await?;
    let mut shown = String::new();
    loop {
        match status.state {
            RestoreState::Succeeded => {
                tracing::info!(follower = %instance.id, leader = %leader.id, backup = ?status.backup_id, secs = ?status.total_secs, "follower consistent");
                return Ok(Outcome::Next);
            }
            RestoreState::Failed => {
                return match RuntimeError::restore_failed(status.error) {
                    RuntimeError::PortInUse(port) => {
                        super::instance::port_taken(ctx, instance, port).await
                    }
                    e => Err(e.into()),
                };
            }
            RestoreState::Running => {}
            // The runtime (an agent, say) restarted and lost the restore: start it again.
            RestoreState::None => {
                status = ctx.runtime.start_follow(&instance.id, &spec).await?;
                continue;
            }
        }
        let text = format!(
            "Following {src}: {}",
            match status.phase {
                crate::runtime::RestorePhase::Planning =>
                    "choosing the leader's newest base backup",
                crate::runtime::RestorePhase::Unpacking =>
                    "restoring the leader's newest base backup",
                _ => "catching up from the leader's archive until it streams",
            }
        );
        if text != shown {
            progress_text(ctx, job, &text).await;
            shown = text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = ctx.runtime.restore_status(&instance.id).await?;
    }
}

/// `follow_promote`: the follower becomes writable on a new timeline (idempotent: a promoted
/// follower only reports its timeline).
pub async fn promote_step(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    if ctx.runtime.status(&instance.id).await? == crate::runtime::ClusterStatus::Stopped {
        ctx.runtime.start(&instance.id).await?;
    }
    let timeline = ctx.runtime.promote(&instance.id).await?;
    tracing::info!(instance = %instance.id, timeline, "follower promoted");
    Ok(Outcome::Next)
}

/// `follow_release`: withdraws the follower's line, walsender, slot and role on its leader.
/// Not a follower (or its leader deleted since): nothing to withdraw.
pub async fn release_step(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    let Some(leader) = &instance.leader_id else {
        return Ok(Outcome::Next);
    };
    match ctx.store.get_instance(leader).await? {
        Some(l) if l.state.is_live() => {}
        _ => return Ok(Outcome::Next),
    }
    let (role, slot) = replication_names(&instance.id);
    ctx.runtime.drop_replication(leader, &role, &slot).await?;
    tracing::info!(follower = %instance.id, %leader, slot, "replication withdrawn on the leader");
    Ok(Outcome::Next)
}
