//! The `drill` job (issue 18): one restore drill of one instance's archive, run where the
//! instance is (the runtime's [`crate::runtime::ClusterRuntime::drill`]), recorded in the state
//! database (`drills`) and in the archive next to `instance.json`, and counted in the metrics.
//!
//! Drills run in the worker's background lane, never in a slot a user's operation could use,
//! and give way: at most `drills.max_concurrent_per_machine` run on one machine (a drill over
//! the limit waits, holding no slot), none starts while a user's clone or follower restore is
//! pending on the same machine, and none starts when its scratch copy would leave the machine's
//! data file system below the trash floors (`trash.min_free_bytes`, `trash.min_free_share`):
//! it is postponed with a log line.
//!
//! A drill that runs already gives way too: while it runs the step looks about once a second
//! for a user's clone or follower restore pending on its machine, and when one appears asks the
//! runtime to cancel the drill ([`crate::runtime::ClusterRuntime::cancel_drill`]; on an agent,
//! `DELETE /v1/clusters/{id}/drill`). The drill stops at once, its server stopped and its
//! scratch copy deleted; its row is kept as `cancelled` (no error line, no base backup, no
//! failure counted, nothing written into the archive) and the job waits and tries again, the
//! checks above holding it back until the user's restore is done. A broker killed mid-cancel
//! leaves the copy to the start-up clean-up, and the job's next attempt begins the row afresh.
//!
//! A failed drill is loud: an error line naming the instance, the backup and the first failing
//! check; a fresh base backup is enqueued for a live instance (a damaged backup must not stay
//! the newest); and the schedule drills it again within the hour (`maintenance::drills`).

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use crate::archive::keydoc::{self, ArchiveKey};
use crate::archive::layout::InstancePrefix;
use crate::context::AppContext;
use crate::domain::{InstanceId, InstanceState, SpaceGuid};
use crate::jobs::model::{Job, JobSpec};
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::{DrillFailure, DrillReport, DrillResult, DrillSpec};
use crate::store::{now_millis, InstanceRecord, NewJob};

/// A drill job for `instance`; `reason` is `schedule`, `retry` or `manual`.
pub fn drill_job(instance: &InstanceId, reason: &str) -> NewJob {
    JobSpec::drill(reason).to_row(
        format!("drill-{}", uuid::Uuid::new_v4()),
        instance,
        None,
        None,
    )
}

/// How long a drill that must give way waits before it looks again.
const GIVE_WAY: Duration = Duration::from_secs(30);

/// How often a running drill looks for a user's restore it must give way to.
const YIELD_POLL: Duration = Duration::from_secs(1);

/// The archive object of a drill's report: `<prefix>/drills/<started, UTC>.json`.
pub fn report_key(prefix: &InstancePrefix, started: chrono::DateTime<Utc>) -> String {
    format!(
        "{}/drills/{}.json",
        prefix.as_str(),
        started.format("%Y%m%dT%H%M%SZ")
    )
}

pub async fn drill_step(ctx: &AppContext, job: &Job) -> StepResult {
    let Some(instance) = ctx.store.get_instance(&job.instance_id).await? else {
        return Ok(Outcome::Cancelled("the instance is unknown".into()));
    };
    let live = match instance.state {
        InstanceState::Ready => true,
        InstanceState::Deleted => {
            if ctx.store.instance_reaped_at(&instance.id).await?.is_some() {
                return Ok(Outcome::Cancelled(
                    "no drill: the deleted instance's archive was reaped".into(),
                ));
            }
            false
        }
        InstanceState::Provisioning | InstanceState::Updating => {
            return Ok(Outcome::Wait(GIVE_WAY))
        }
        other => {
            return Ok(Outcome::Cancelled(format!(
                "no drill: the instance is {}",
                other.as_str()
            )))
        }
    };
    if instance.leader_id.is_some() {
        return Ok(Outcome::Cancelled(
            "no drill: a follower has no archive of its own".into(),
        ));
    }
    let machine = instance.agent.clone().unwrap_or_default();
    if let Some(why) = give_way(ctx, job, &instance, &machine).await? {
        tracing::info!(instance = %instance.id, machine, why, "restore drill postponed");
        return Ok(Outcome::Wait(GIVE_WAY));
    }
    let report = run(ctx, job, &instance, live, &machine).await?;
    if report.result == DrillResult::Cancelled {
        return Ok(Outcome::Wait(GIVE_WAY));
    }
    tracing::info!(instance = %instance.id, "{}", summary(&report));
    Ok(Outcome::Next)
}

/// Why the drill must wait now, if it must (see the module docs).
async fn give_way(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
    machine: &str,
) -> Result<Option<String>, StepError> {
    let max = i64::from(ctx.settings.drills.max_concurrent_per_machine);
    if max == 0 {
        return Ok(Some("drills.max_concurrent_per_machine is 0".into()));
    }
    if ctx.store.running_drills_on(machine, &job.id).await? >= max {
        return Ok(Some(format!(
            "{max} drill(s) already run on this machine (drills.max_concurrent_per_machine)"
        )));
    }
    if ctx.store.user_restores_pending_on(machine).await? > 0 {
        return Ok(Some(
            "a user's clone or follower restore is pending on this machine".into(),
        ));
    }
    let needed = match ctx.store.latest_backup(&instance.id).await? {
        Some(b) => u64::try_from(b.raw_bytes).unwrap_or(0),
        None => 0,
    };
    let agent = (!machine.is_empty()).then_some(machine);
    if let Ok(trash) = ctx.runtime.list_trash().await {
        if let Some(room) = trash.iter().find(|t| t.agent.as_deref() == agent) {
            let t = &ctx.settings.trash;
            let floor = t
                .min_free_bytes
                .max((t.min_free_share * room.trash.total_bytes as f64) as u64);
            if room.trash.free_bytes < needed.saturating_add(floor) {
                return Ok(Some(format!(
                    "a scratch copy of {needed} bytes would leave less than {floor} bytes free \
                     ({} free; trash.min_free_bytes / trash.min_free_share)",
                    room.trash.free_bytes
                )));
            }
        }
    }
    Ok(None)
}

/// Runs the drill and records it everywhere; a drill that could not run at all is a failed
/// report too, unless retrying may help.
async fn run(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
    live: bool,
    machine: &str,
) -> Result<DrillReport, StepError> {
    let started = Utc::now();
    let started = chrono::DateTime::from_timestamp(started.timestamp(), 0).unwrap_or(started);
    ctx.store
        .begin_drill(&job.id, &instance.id, machine, started.timestamp_millis())
        .await?;
    let space =
        SpaceGuid::parse(instance.space_guid.clone()).map_err(|e| StepError::Permanent {
            user_message: "internal error".into(),
            source: anyhow::anyhow!("instance {}: space {e}", instance.id),
        })?;
    let prefix = InstancePrefix::new(&space, &instance.id);
    let spec = DrillSpec {
        source: prefix.clone(),
        live,
        started,
    };
    tracing::info!(instance = %instance.id, live, "restore drill starting");
    // A task of its own: a step dropped when its lease is lost must not drop the drill
    // half-way (its server running in the scratch copy); it runs on to its clean-up.
    let (runtime, id) = (ctx.runtime.clone(), instance.id.clone());
    let task = tokio::spawn(async move { runtime.drill(&id, &spec).await });
    let ran = give_way_while(ctx, &instance.id, machine, task)
        .await
        .map_err(|e| StepError::Transient(anyhow::anyhow!("the drill task ended: {e}")))?;
    let report = match ran {
        Ok(report) => report,
        Err(e) if !e.is_permanent() => return Err(e.into()),
        Err(e) => could_not_run(&instance.id, started, e.to_string()),
    };
    if report.result == DrillResult::Cancelled {
        let json = serde_json::to_string(&report).map_err(|e| StepError::Permanent {
            user_message: "internal error".into(),
            source: e.into(),
        })?;
        ctx.store.cancel_drill(&job.id, now_millis(), &json).await?;
        tracing::info!(instance = %instance.id, machine, secs = report.duration_secs, "restore drill cancelled: a user's restore on this machine goes first; it runs again later");
        return Ok(report);
    }
    record(ctx, job, instance, &prefix, &report).await?;
    Ok(report)
}

/// Waits for the drill `task`, asking the runtime to cancel it as soon as a user's clone or
/// follower restore is pending on its machine (asked again each poll until the runtime says
/// a drill was running: the drill may not have registered yet, or an agent not answered).
async fn give_way_while<T>(
    ctx: &AppContext,
    id: &InstanceId,
    machine: &str,
    mut task: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    let mut asked = false;
    loop {
        tokio::select! {
            joined = &mut task => return joined,
            () = tokio::time::sleep(YIELD_POLL) => {}
        }
        if asked {
            continue;
        }
        match ctx.store.user_restores_pending_on(machine).await {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "cannot look for users' restores beside a running drill");
                continue;
            }
        }
        match ctx.runtime.cancel_drill(id).await {
            Ok(was_running) => asked = was_running,
            Err(e) => {
                tracing::warn!(instance = %id, machine, error = %e, "cannot cancel the restore drill; trying again")
            }
        }
    }
}

/// The report of a drill the runtime refused to run.
fn could_not_run(id: &InstanceId, started: chrono::DateTime<Utc>, why: String) -> DrillReport {
    DrillReport {
        instance: id.to_string(),
        started,
        result: DrillResult::Failed,
        backup_id: None,
        wal_bytes: None,
        end_lsn: None,
        end_time: None,
        timeline: None,
        duration_secs: (Utc::now() - started).num_milliseconds() as f64 / 1000.0,
        databases_checked: 0,
        tables_counted: 0,
        checks: Vec::new(),
        failure: Some(DrillFailure {
            check: "drill".into(),
            detail: why,
        }),
    }
}

/// The state database's row, the archive's copy, the metrics, and a failure's consequences.
async fn record(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
    prefix: &InstancePrefix,
    report: &DrillReport,
) -> Result<(), StepError> {
    let json = serde_json::to_string(report).map_err(|e| StepError::Permanent {
        user_message: "internal error".into(),
        source: e.into(),
    })?;
    ctx.store
        .finish_drill(&job.id, report.passed(), now_millis(), &json)
        .await?;
    ctx.metrics
        .drill_finished(instance.id.as_str(), report.passed(), report.duration_secs);
    if let Err(e) = write_to_archive(ctx, prefix, report).await {
        tracing::warn!(instance = %instance.id, error = format!("{e:#}"), "cannot write the drill's report into the archive");
    }
    if report.passed() {
        tracing::info!(instance = %instance.id, backup = ?report.backup_id, secs = report.duration_secs, "restore drill passed");
        return Ok(());
    }
    let failure = report.failure.clone().unwrap_or(DrillFailure {
        check: "drill".into(),
        detail: "no detail".into(),
    });
    tracing::error!(
        instance = %instance.id,
        backup = report.backup_id.as_deref().unwrap_or("none"),
        check = failure.check,
        detail = failure.detail,
        "RESTORE DRILL FAILED: the archive of this instance did not restore cleanly"
    );
    if instance.state == InstanceState::Ready {
        let backup = super::backup::backup_job(&instance.id, "drill-failed");
        if ctx.store.enqueue_backup(&backup).await? {
            tracing::info!(instance = %instance.id, "fresh base backup enqueued after the failed drill");
        }
    }
    Ok(())
}

/// `<prefix>/drills/<started>.json`, sealed like `instance.json` when the archive is encrypted.
async fn write_to_archive(
    ctx: &AppContext,
    prefix: &InstancePrefix,
    report: &DrillReport,
) -> anyhow::Result<()> {
    let key = keydoc::data_key(&ctx.archive, ctx.store.keyring().ok(), prefix.as_str())
        .await
        .with_context(|| format!("the archive data key of {}", prefix.as_str()))?
        .map(ArchiveKey);
    let object = report_key(prefix, report.started);
    let bytes = stored_form(report, &object, key.as_ref());
    ctx.archive
        .put(&object, bytes)
        .await
        .with_context(|| format!("write {}", ctx.archive.location(&object)))?;
    Ok(())
}

/// The report as stored: JSON, or `{"format":1,"sealed":"<base64>"}` bound to its object key.
pub fn stored_form(report: &DrillReport, object: &str, key: Option<&ArchiveKey>) -> Vec<u8> {
    use base64::Engine;
    let json = serde_json::to_vec_pretty(report).expect("a drill report serializes");
    let Some(key) = key else {
        return json;
    };
    let sealed = key.cipher().seal(&json, object.as_bytes());
    serde_json::to_vec_pretty(&serde_json::json!({
        "format": 1,
        "sealed": base64::engine::general_purpose::STANDARD.encode(sealed),
    }))
    .expect("an envelope serializes")
}

/// Reads a report as [`stored_form`] wrote it (for `wayback reindex`).
pub fn from_stored(
    bytes: &[u8],
    object: &str,
    key: Option<&ArchiveKey>,
) -> Result<DrillReport, String> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sealed {
        #[allow(dead_code)]
        format: u32,
        sealed: String,
    }
    let plain = match serde_json::from_slice::<Sealed>(bytes) {
        Err(_) => bytes.to_vec(),
        Ok(envelope) => {
            let key = key.ok_or("sealed with the instance's data key, and none was given")?;
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(&envelope.sealed)
                .map_err(|_| "the sealed report is not base64".to_string())?;
            key.cipher()
                .open(&sealed, object.as_bytes())
                .map_err(|e| e.to_string())?
        }
    };
    serde_json::from_slice(&plain).map_err(|e| e.to_string())
}

/// The job's success line.
fn summary(report: &DrillReport) -> String {
    match &report.failure {
        None => format!(
            "The restore drill passed in {:.1} s (backup {}).",
            report.duration_secs,
            report.backup_id.as_deref().unwrap_or("?")
        ),
        Some(f) => format!("The restore drill FAILED at {}: {}", f.check, f.detail),
    }
}
