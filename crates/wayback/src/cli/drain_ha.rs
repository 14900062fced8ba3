//! The drain's first step for HA members (issue 15 point 5): before the WAL step, every HA
//! member that leads on this machine hands the lead to a healthy standby elsewhere (a member
//! not run from this data directory) through Patroni's switchover, and the drain waits until
//! the new leader leads and this member follows it as a replica, bounded by the drain's
//! timeout. So a rolling deploy costs each HA app one switchover gap instead of a failover. A
//! member that cannot hand over (no healthy standby, Patroni not answering, not done in time)
//! is reported and the drain goes on: it still archives that member's WAL as for any cluster.
//! A member that is a standby here (before or after the switchover) has no WAL of its own to
//! switch: its leader archives, so the WAL step skips it.
//!
//! Works from the data directory alone (`member.json` of each member), the same on a broker's
//! machine and on an agent's. Must not import the broker's HTTP or job layers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::domain::InstanceId;
use crate::runtime::{switch_over, ClusterRuntime, HaRole, LocalRuntime};

/// What the drain did for one HA member that led here.
#[derive(Debug, Clone, Serialize)]
pub struct DrainSwitchover {
    pub instance_id: String,
    /// This machine's member, which led when the drain began.
    pub member: String,
    /// The member that leads now; None when the lead stayed here.
    pub to: Option<String>,
    pub switched: bool,
    pub secs: f64,
    pub detail: String,
}

/// The HA members of this machine after the hand-over: what happened to each that led, and
/// the instances whose member here is a standby (the WAL step skips them).
pub(super) struct HandedOver {
    pub switchovers: Vec<DrainSwitchover>,
    pub standbys: HashSet<InstanceId>,
}

/// Hands over the lead of every HA member that leads on this machine, all at once.
pub(super) async fn hand_over(runtime: &LocalRuntime, timeout: Duration) -> HandedOver {
    let members: Vec<(InstanceId, String)> = runtime
        .cluster_ids()
        .into_iter()
        .filter_map(|id| runtime.ha_member_name(&id).map(|name| (id, name)))
        .collect();
    let outcomes: Vec<(InstanceId, Option<DrainSwitchover>, bool)> = futures::stream::iter(members)
        .map(|(id, member)| async move {
            let (switched, standby) = hand_over_one(runtime, &id, &member, timeout).await;
            (id, switched, standby)
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut out = HandedOver {
        switchovers: Vec::new(),
        standbys: HashSet::new(),
    };
    for (id, switched, standby) in outcomes {
        if standby {
            out.standbys.insert(id);
        }
        out.switchovers.extend(switched);
    }
    out
}

/// One member: (what was done when it led, whether it is a standby here now).
async fn hand_over_one(
    runtime: &LocalRuntime,
    id: &InstanceId,
    member: &str,
    timeout: Duration,
) -> (Option<DrainSwitchover>, bool) {
    let started = Instant::now();
    let rt: &dyn ClusterRuntime = runtime;
    let status = match tokio::time::timeout(timeout, rt.ha_status(id)).await {
        Ok(Ok(status)) => status,
        // Patroni does not run here (the cluster is stopped) or does not answer: the WAL step
        // says what it finds.
        Ok(Err(e)) => {
            tracing::info!(instance = %id, member, error = %e, "drain: no HA status");
            return (None, false);
        }
        Err(_) => return (None, false),
    };
    if status.leader().map(|l| l.name.as_str()) != Some(member) {
        return (None, status.member(member).is_some());
    }
    let mut report = DrainSwitchover {
        instance_id: id.to_string(),
        member: member.to_string(),
        to: None,
        switched: false,
        secs: 0.0,
        detail: String::new(),
    };
    let avoid = [member.to_string()];
    let result = async {
        let plan = tokio::time::timeout(timeout, switch_over(rt, id, None, &avoid))
            .await
            .map_err(|_| format!("the switchover did not end within {} s", timeout.as_secs()))?
            .map_err(|e| e.to_string())?;
        report.to = Some(plan.candidate.clone());
        wait_followed(rt, id, member, &plan.candidate, started + timeout).await?;
        Ok::<String, String>(format!(
            "switched over: {} leads, {member} follows it",
            plan.candidate
        ))
    }
    .await;
    report.secs = started.elapsed().as_secs_f64();
    let standby = match result {
        Ok(detail) => {
            report.switched = true;
            report.detail = detail;
            true
        }
        Err(e) => {
            tracing::warn!(instance = %id, member, error = %e, "drain: the lead stays here");
            report.detail = format!("{e}; the lead stays here");
            false
        }
    };
    (Some(report), standby)
}

/// Waits until `leader` leads and `member` follows it as a running replica.
async fn wait_followed(
    rt: &dyn ClusterRuntime,
    id: &InstanceId,
    member: &str,
    leader: &str,
    deadline: Instant,
) -> Result<(), String> {
    let mut last: String;
    loop {
        match rt.ha_status(id).await {
            Ok(s) => {
                let leads = s.leader().is_some_and(|l| l.name == leader);
                let follows = s.member(member).is_some_and(|m| {
                    matches!(m.role, HaRole::SyncStandby | HaRole::Replica)
                        && matches!(m.state.as_str(), "streaming" | "running")
                });
                if leads && follows {
                    return Ok(());
                }
                last = format!("{:?}", s.members);
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{leader} leads, but {member} did not follow it in time (last seen: {last})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
