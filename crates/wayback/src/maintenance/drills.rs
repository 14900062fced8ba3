//! When restore drills run (issue 18): the supervisor's pass, once a minute, enqueues a `drill` job for each
//! instance whose archive is due to be proven — live instances (not followers: they have no
//! archive of their own) and deleted ones whose archive retention has not reaped yet.
//!
//! An instance is due when it was never drilled (once it is [`FIRST_DRILL_AFTER_MS`] old), when its newest drill is older than its
//! plan's `metadata.wayback.archive.drill_every_days` (default 7), or, after a failed drill,
//! [`RETRY_AFTER_FAILURE`] later (the failed drill enqueued a fresh base backup meanwhile), so a
//! failure is drilled again within the hour. The oldest drill goes first, and no more are
//! queued per machine than `drills.max_concurrent_per_machine` (the job itself holds to that
//! limit while it runs; see `jobs::steps::drill`). The same pass refreshes the drill metrics
//! from the store, so that they survive a restart and agree across brokers.

use std::collections::HashMap;

use crate::context::AppContext;
use crate::metrics::DrillFigures;
use crate::store::DrillCandidate;

/// How old an instance must be before its first drill: its first base backup is taken and
/// archived meanwhile, and a short-lived instance (a test, a mistake) is not restored at once.
pub const FIRST_DRILL_AFTER_MS: i64 = 60 * 60 * 1000;

/// How often the supervisor's pass looks for drills due.
pub const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How soon a failed drill is tried again.
pub const RETRY_AFTER_FAILURE_MS: i64 = 45 * 60 * 1000;

/// Why `candidate` is due for a drill at `now_ms`, if it is.
pub fn drill_due(candidate: &DrillCandidate, every_days: u64, now_ms: i64) -> Option<&'static str> {
    let Some(last) = &candidate.last else {
        let age = now_ms - candidate.instance.created_at;
        return (age >= FIRST_DRILL_AFTER_MS).then_some("schedule");
    };
    let age = now_ms - last.started_at;
    if !last.passed() {
        return (age >= RETRY_AFTER_FAILURE_MS).then_some("retry");
    }
    let every = (every_days as i64).saturating_mul(86_400_000);
    (age >= every).then_some("schedule")
}

/// One pass: enqueues the drills due, oldest first, within each machine's limit; returns how
/// many it enqueued.
pub async fn schedule(ctx: &AppContext) -> anyhow::Result<usize> {
    refresh_metrics(ctx).await?;
    let max = ctx.settings.drills.max_concurrent_per_machine as usize;
    if max == 0 {
        return Ok(0);
    }
    let now = crate::store::now_millis();
    let mut due: Vec<(i64, &'static str, DrillCandidate)> = Vec::new();
    for c in ctx.store.drill_candidates().await? {
        let every = ctx
            .catalog
            .plan(&c.instance.service_id, &c.instance.plan_id)
            .map_or(7, |p| p.archive.drill_every_days);
        if let Some(reason) = drill_due(&c, every, now) {
            let last = c.last.as_ref().map_or(i64::MIN, |l| l.started_at);
            due.push((last, reason, c));
        }
    }
    due.sort_by_key(|(last, _, c)| (*last, c.instance.created_at));
    let mut queued: HashMap<String, usize> = HashMap::new();
    for machine in ctx.store.pending_drill_machines().await? {
        *queued.entry(machine).or_default() += 1;
    }
    let mut enqueued = 0;
    for (_, reason, c) in due {
        let machine = c.instance.agent.clone().unwrap_or_default();
        let n = queued.entry(machine.clone()).or_default();
        if *n >= max {
            continue;
        }
        let job = crate::jobs::drill_job(&c.instance.id, reason);
        if ctx.store.enqueue_drill(&job).await? {
            *n += 1;
            enqueued += 1;
            tracing::info!(instance = %c.instance.id, machine, reason, "restore drill due; enqueued");
        }
    }
    Ok(enqueued)
}

/// The drill metrics, as the store counts them.
async fn refresh_metrics(ctx: &AppContext) -> anyhow::Result<()> {
    let figures = ctx
        .store
        .drill_stats()
        .await?
        .into_iter()
        .map(|(id, s)| {
            (
                id.to_string(),
                DrillFigures {
                    last_success: s.last_success_ms.map(|t| t as f64 / 1000.0),
                    last_duration: s.last_duration_ms.map(|d| d as f64 / 1000.0),
                    failures: s.failures as u64,
                },
            )
        })
        .collect();
    ctx.metrics.drills_observed(figures);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DrillRecord;

    fn candidate(last: Option<(i64, &str)>) -> DrillCandidate {
        let instance: crate::store::InstanceRecord = crate::store::InstanceRecord {
            id: crate::domain::InstanceId::parse("i-1").unwrap(),
            service_id: "s".into(),
            plan_id: "p".into(),
            organization_guid: "o".into(),
            space_guid: "sp".into(),
            parameters: serde_json::Value::Null,
            context: serde_json::Value::Null,
            state: crate::domain::InstanceState::Ready,
            port: None,
            database_name: "d".into(),
            owner_role: "r".into(),
            created_at: 0,
            updated_at: 0,
            deleted_at: None,
            agent: None,
            agent_host: None,
            leader_id: None,
            stopped_at: None,
            wake_error: None,
            wake_error_at: None,
        };
        DrillCandidate {
            last: last.map(|(started_at, result)| DrillRecord {
                job_id: "j".into(),
                instance_id: instance.id.clone(),
                agent: String::new(),
                started_at,
                finished_at: Some(started_at),
                result: result.into(),
                report: None,
            }),
            instance,
        }
    }

    #[test]
    fn never_drilled_old_passes_and_failures_are_due() {
        const DAY: i64 = 86_400_000;
        assert_eq!(drill_due(&candidate(None), 7, 0), None);
        assert_eq!(drill_due(&candidate(None), 7, 3_600_000), Some("schedule"));
        assert_eq!(drill_due(&candidate(Some((0, "passed"))), 7, 6 * DAY), None);
        assert_eq!(
            drill_due(&candidate(Some((0, "passed"))), 7, 7 * DAY),
            Some("schedule")
        );
        assert_eq!(
            drill_due(&candidate(Some((0, "failed"))), 7, 10 * 60_000),
            None
        );
        assert_eq!(
            drill_due(&candidate(Some((0, "failed"))), 7, 60 * 60_000),
            Some("retry")
        );
    }
}
