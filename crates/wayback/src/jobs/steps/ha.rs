//! The steps only HA plans' provisions have (issue 15; docs/architecture.md "HA plans"):
//!
//! ```text
//! allocate_port → ha_place → create_cluster → configure_archive → start → create_database
//!               → ha_adopt → ha_first_backup → ha_seed_standby → ha_wait_standby
//! ```
//!
//! `allocate_port` gives the instance its (first member's) port as for any provision.
//! `ha_place` records every member (`ha_members`: name, machine from `jobs::ha::member_machine`,
//! PostgreSQL and Patroni REST ports), so that their ports are held before anything listens on
//! them; a row already there is kept. The next four are a provision's, on the primary member's
//! cluster (its member key `<id>~m1`): the cluster, its archiving into the instance's own
//! prefix, its start, the app database and owner role. `ha_adopt` hands the cluster to Patroni
//! (`HaSeed::Adopt`: the shared superuser password, the replication role and its `pg_hba`
//! lines, then Patroni starts it and promotes it on the next timeline) and waits until it
//! leads. `ha_first_backup` takes the instance's first base backup from the leader and records
//! the cluster's system identifier (the standby's archive target needs it: `wal-push` refuses
//! WAL of any other cluster). `ha_seed_standby` starts the standby's Patroni, which seeds its
//! empty data directory with `pg_basebackup` from the leader (`HaSeed::FromLeader`), and
//! `ha_wait_standby` waits until Patroni shows it streaming (in `sync` mode as the sync
//! standby, so the first commit after the provision already waits for it).
//!
//! Each step is idempotent: a row, a cluster, a Patroni already there is kept, a password is
//! made once (sealed in the store), and a wait only reads.
//!
//! A leaf of `steps`: imports `instance` of its siblings (the plan's cluster spec, the archive
//! target, the port check), never the dispatcher (`steps` itself), and never `broker`.

use std::time::{Duration, Instant};

use super::instance::{archive_of, port_is_free, spec};
use crate::catalog::HaDurability;
use crate::context::AppContext;
use crate::domain::{new_password, InstanceId, OperationState};
use crate::jobs::ha::{member_machine, MEMBER_NAMES, REPLICATION_ROLE};
use crate::jobs::model::{Job, Step};
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::{ClusterSpec, Durability, HaMemberSpec, HaRole, HaSeed, HaStatus};
use crate::store::{HaMemberRecord, InstanceRecord, StoreError};

/// How long `ha_adopt` waits for the adopted primary to lead, and `ha_wait_standby` for the
/// standby to stream, before the step fails for a retry (Patroni's loop is 2 s; a standby's
/// seed copies the whole database).
const LEADER_WAIT: Duration = Duration::from_secs(120);
const STANDBY_WAIT: Duration = Duration::from_secs(600);

/// Runs one step of an HA provision.
pub async fn provision_step(ctx: &AppContext, job: &Job, instance: &InstanceRecord) -> StepResult {
    match job.step {
        Step::HaPlace => place(ctx, instance).await,
        Step::CreateCluster | Step::ConfigureArchive | Step::Start | Step::CreateDatabase => {
            primary_step(ctx, job.step, instance).await
        }
        Step::HaAdopt => adopt(ctx, job, instance, HaSeed::Adopt).await,
        Step::HaFirstBackup => first_backup(ctx, job, instance).await,
        Step::HaSeedStandby => seed_standby(ctx, instance).await,
        Step::HaWaitStandby => wait_standby(ctx, job, instance).await,
        other => Err(StepError::Permanent {
            user_message: "internal error".into(),
            source: anyhow::anyhow!("{other} is not a step of an HA provision"),
        }),
    }
}

/// `ha_place`: each member's machine and ports, recorded.
pub(super) async fn place(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    let first_port = instance
        .port
        .ok_or_else(|| StepError::transient(anyhow::anyhow!("instance has no port yet")))?;
    for (index, name) in MEMBER_NAMES.iter().enumerate() {
        if ctx.store.ha_member(&instance.id, name).await?.is_some() {
            continue;
        }
        let (agent, agent_host) = member_machine(ctx, instance, index).await?;
        // The instance's other members' ports are never reused, even on another agent (two
        // agents may share a host, as in the tests).
        let mut siblings = vec![first_port];
        for m in ctx.store.ha_members(&instance.id).await? {
            siblings.extend([m.port, m.rest_port]);
        }
        // Another provision may take a port between the choice and the insert: choose again.
        let mut recorded = false;
        for _ in 0..20 {
            let port = match index {
                0 => first_port,
                _ => free_port(ctx, &agent, &siblings).await?,
            };
            let mut taken = siblings.clone();
            taken.push(port);
            let rest_port = free_port(ctx, &agent, &taken).await?;
            let row = HaMemberRecord {
                instance_id: instance.id.clone(),
                member: name.to_string(),
                agent: agent.clone(),
                agent_host: agent_host.clone(),
                port,
                rest_port,
                created_at: 0,
            };
            match ctx.store.ensure_ha_member(&row).await {
                Ok(_) => {
                    recorded = true;
                    break;
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if !recorded {
            return Err(StepError::transient(anyhow::anyhow!(
                "no free ports for HA member {name} after 20 tries"
            )));
        }
    }
    Ok(Outcome::Next)
}

/// A port in the configured range that nothing on `agent`'s machine holds (and, on this
/// machine, nothing listens on), other than `also_taken`.
async fn free_port(ctx: &AppContext, agent: &str, also_taken: &[u16]) -> Result<u16, StepError> {
    let pg = &ctx.settings.postgres;
    let used = ctx.store.used_ports(agent).await?;
    let span = u32::from(pg.port_max - pg.port_min) + 1;
    let offset = rand::random::<u32>() % span;
    (0..span)
        .map(|i| pg.port_min + ((offset + i) % span) as u16)
        .find(|port| {
            !used.contains(port)
                && !also_taken.contains(port)
                && (!agent.is_empty() || port_is_free(&pg.listen_address, *port))
        })
        .ok_or_else(|| StepError::Permanent {
            user_message: "no free port is left for the HA instance's members; ask your \
                           operator to widen the port range"
                .into(),
            source: anyhow::anyhow!("no free port in {}..={}", pg.port_min, pg.port_max),
        })
}

/// A recorded member (placed by `ha_place`).
async fn member(
    ctx: &AppContext,
    instance: &InstanceRecord,
    index: usize,
) -> Result<HaMemberRecord, StepError> {
    let name = MEMBER_NAMES[index];
    ctx.store
        .ha_member(&instance.id, name)
        .await?
        .ok_or_else(|| StepError::transient(anyhow::anyhow!("HA member {name} is not placed")))
}

/// The cluster of a member: the plan's spec under the member's key and port.
fn member_cluster(
    ctx: &AppContext,
    instance: &InstanceRecord,
    member: &HaMemberRecord,
) -> Result<ClusterSpec, StepError> {
    let mut cluster = spec(ctx, instance, &instance.plan_id)?;
    cluster.instance = instance.id.member_key(&member.member);
    cluster.port = member.port;
    Ok(cluster)
}

/// `create_cluster` … `create_database` of a provision, on the primary member's cluster.
async fn primary_step(ctx: &AppContext, step: Step, instance: &InstanceRecord) -> StepResult {
    let primary = member(ctx, instance, 0).await?;
    let key = instance.id.member_key(&primary.member);
    match step {
        Step::CreateCluster => {
            crate::jobs::kept::make_room(ctx).await;
            let cluster = member_cluster(ctx, instance, &primary)?;
            ctx.runtime.create_cluster(&cluster).await?;
        }
        Step::ConfigureArchive => {
            let (target, command) = archive_of(ctx, instance)?;
            ctx.runtime
                .configure_archive(&key, &target, &command)
                .await?;
        }
        // Its port was checked free when placed; one taken since fails the step for a retry.
        Step::Start => ctx.runtime.start(&key).await?,
        _ => {
            ctx.runtime
                .ensure_database(&key, &instance.database_name, &instance.owner_role)
                .await?;
        }
    }
    Ok(Outcome::Next)
}

/// The IP address a member's connections come from, as the other members see them: its
/// machine's address, or loopback for a member on the broker's own machine.
async fn member_address(member: &HaMemberRecord) -> Result<String, StepError> {
    super::follow::host_ip(member_host(member)).await
}

/// The host the other members (and Patroni's view) reach a member at.
fn member_host(member: &HaMemberRecord) -> String {
    member
        .agent_host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// What the runtime needs to run member `index` of `instance` under Patroni.
async fn member_spec(
    ctx: &AppContext,
    instance: &InstanceRecord,
    index: usize,
    seed: HaSeed,
    system_identifier: Option<u64>,
) -> Result<HaMemberSpec, StepError> {
    let plan = ctx
        .catalog
        .plan(&instance.service_id, &instance.plan_id)
        .and_then(|p| p.ha)
        .ok_or_else(|| StepError::Permanent {
            user_message: "the instance's plan is no longer highly available in the catalog".into(),
            source: anyhow::anyhow!("plan {} has no metadata.wayback.ha", instance.plan_id),
        })?;
    let me = member(ctx, instance, index).await?;
    let mut peer_addresses = Vec::new();
    for other in ctx.store.ha_members(&instance.id).await? {
        if other.member != me.member {
            let address = member_address(&other).await?;
            if !peer_addresses.contains(&address) {
                peer_addresses.push(address);
            }
        }
    }
    let superuser = ctx
        .store
        .ensure_ha_superuser_password(&instance.id, &new_password())
        .await?;
    let replication = ctx
        .store
        .ensure_replication_password(&instance.id, &new_password())
        .await?;
    let (mut target, command) = archive_of(ctx, instance)?;
    if let Some(id) = system_identifier {
        target.system_identifier = id;
    }
    Ok(HaMemberSpec {
        cluster: member_cluster(ctx, instance, &me)?,
        member: me.member.clone(),
        seed,
        dcs: ctx.settings.ha.dcs_endpoints.clone(),
        rest_port: me.rest_port,
        advertise_host: member_host(&me),
        durability: match plan.durability {
            HaDurability::Sync => Durability::Sync,
            HaDurability::Async => Durability::Async,
        },
        replication_role: REPLICATION_ROLE.into(),
        replication_password: replication,
        superuser_password: superuser,
        peer_addresses,
        archive: Some((target, command)),
        machine: (!me.agent.is_empty()).then(|| me.agent.clone()),
    })
}

/// `ha_adopt`: Patroni takes the primary's cluster over; done once it leads. `seed` is
/// `AdoptSingle` for a plan change's running single cluster (`ha_adopt_single`).
pub(super) async fn adopt(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
    seed: HaSeed,
) -> StepResult {
    let spec = member_spec(ctx, instance, 0, seed, None).await?;
    ctx.runtime.ha_start_member(&spec).await?;
    let name = spec.member.clone();
    wait_for(
        ctx,
        job,
        &instance.id,
        LEADER_WAIT,
        "the primary leads",
        |s| {
            s.leader()
                .is_some_and(|l| l.name == name && l.state == "running")
        },
    )
    .await?;
    // Patroni names the adopted member leader while it may still be promoting it (it starts an
    // adopted directory in recovery): a base backup begun before the promotion ends is a
    // standby's, which writes no backup history file, and `ha_first_backup` would wait for one.
    let key = instance.id.member_key(&name);
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        match ctx.runtime.standby_status(&key).await {
            Ok(s) if !s.in_recovery => return Ok(Outcome::Next),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(instance = %instance.id, error = %e, "cannot ask the adopted primary whether it is promoted")
            }
        }
        if Instant::now() >= deadline {
            return Err(StepError::transient(anyhow::anyhow!(
                "HA instance {}: the adopted primary is still in recovery after {} s",
                instance.id,
                LEADER_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `ha_first_backup`: the instance's first base backup, from the leader; its system
/// identifier recorded.
pub(super) async fn first_backup(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
) -> StepResult {
    if ctx
        .store
        .ha_system_identifier(&instance.id)
        .await?
        .is_some()
    {
        return Ok(Outcome::Next);
    }
    let report = super::backup::take_and_record(ctx, &job.id, instance, "provision").await?;
    ctx.store
        .set_ha_system_identifier(&instance.id, report.manifest.system_identifier)
        .await?;
    Ok(Outcome::Next)
}

/// `ha_seed_standby`: the standby's Patroni starts and seeds it from the leader.
pub(super) async fn seed_standby(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    let system_identifier = ctx
        .store
        .ha_system_identifier(&instance.id)
        .await?
        .ok_or_else(|| {
            StepError::transient(anyhow::anyhow!("the first base backup is not recorded"))
        })?;
    let spec = member_spec(
        ctx,
        instance,
        1,
        HaSeed::FromLeader,
        Some(system_identifier),
    )
    .await?;
    ctx.runtime.ha_start_member(&spec).await?;
    tracing::info!(instance = %instance.id, member = %spec.member, "HA standby seeding from the leader");
    Ok(Outcome::Next)
}

/// `ha_wait_standby`: done once Patroni shows the standby streaming (the sync standby in
/// `sync` mode).
pub(super) async fn wait_standby(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
) -> StepResult {
    let standby = member(ctx, instance, 1).await?.member;
    let sync = ctx
        .catalog
        .plan(&instance.service_id, &instance.plan_id)
        .and_then(|p| p.ha)
        .is_some_and(|h| h.durability == HaDurability::Sync);
    wait_for(
        ctx,
        job,
        &instance.id,
        STANDBY_WAIT,
        "the standby streams",
        |s| standby_streams(s, &standby, sync),
    )
    .await
}

/// Whether `standby` streams from a leader (as the sync standby when `sync`).
pub fn standby_streams(status: &HaStatus, standby: &str, sync: bool) -> bool {
    status.leader().is_some()
        && status.member(standby).is_some_and(|m| {
            let role_ok = match sync {
                true => m.role == HaRole::SyncStandby,
                false => matches!(m.role, HaRole::SyncStandby | HaRole::Replica),
            };
            role_ok && matches!(m.state.as_str(), "streaming" | "running")
        })
}

/// Polls Patroni's view of `id` until `done` holds; after `limit` the step fails for a retry
/// with what was last seen.
async fn wait_for(
    ctx: &AppContext,
    job: &Job,
    id: &InstanceId,
    limit: Duration,
    what: &str,
    done: impl Fn(&HaStatus) -> bool,
) -> StepResult {
    let deadline = Instant::now() + limit;
    if let Some(op) = &job.operation_id {
        let verb = match job.spec {
            crate::jobs::JobSpec::Update(_) => "Updating",
            _ => "Provisioning",
        };
        let text = format!("{verb} (HA): waiting until {what}");
        if let Err(e) = ctx
            .store
            .update_operation(op, OperationState::InProgress, &text)
            .await
        {
            tracing::debug!(job = %job.id, error = %e, "cannot record progress");
        }
    }
    loop {
        let last = match ctx.runtime.ha_status(id).await {
            Ok(s) if done(&s) => return Ok(Outcome::Next),
            Ok(s) => members_text(&s),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(StepError::transient(anyhow::anyhow!(
                "HA instance {id}: {what} is not seen after {} s; Patroni shows: {last}",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn members_text(status: &HaStatus) -> String {
    let members: Vec<String> = status
        .members
        .iter()
        .map(|m| format!("{} {:?} {}", m.name, m.role, m.state))
        .collect();
    match members.is_empty() {
        true => "no member".into(),
        false => members.join(", "),
    }
}
