//! `wayback drill INSTANCE_GUID [--json]`: a restore drill now (issue 18), through the same
//! job the broker runs (enqueued, then run inline as `wayback backup` runs its job), with the
//! report as text or JSON. Exit status 0 when the drill passed, 1 when it failed (or could not
//! run), 2 when the command could not start.
//!
//! Reads the same settings as `serve`. If a drill of the instance is already pending (the
//! schedule's), that one is run or waited for instead of a second; a broker running at the
//! same time may claim the job first, and the command then waits for it to end. The drill
//! waits, like the broker's, while the machine runs its limit of drills or a user's restore.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Settings;
use crate::domain::InstanceId;
use crate::jobs::Worker;
use crate::runtime::DrillReport;

/// The command line of `wayback drill`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// The service instance's GUID (live, or deleted and not yet reaped).
    pub instance: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Directory of the broker's state (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The archive: s3://bucket/prefix or file:///dir (as for `serve`).
    #[arg(long)]
    pub archive_url: Option<String>,
}

/// How long the command waits for its drill (restore and checks of a large instance).
const LIMIT: Duration = Duration::from_secs(6 * 3600);

pub fn main(mut settings: Settings, args: DrillArgs) -> ExitCode {
    let Some(runtime) = super::start_local(
        &mut settings,
        args.data_dir.clone(),
        args.archive_url.clone(),
    ) else {
        return ExitCode::from(2);
    };
    match runtime.block_on(run(settings, &args.instance)) {
        Ok(report) => {
            if args.json {
                let text = serde_json::to_string_pretty(&report).expect("serializes");
                println!("{text}");
            } else {
                print!("{}", summary(&report));
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wayback: drill: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The report for a person.
pub fn summary(r: &DrillReport) -> String {
    let mut out = format!(
        "restore drill of instance {} started {}: {}\n",
        r.instance,
        r.started.to_rfc3339(),
        r.result.as_str().to_uppercase()
    );
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    out += &format!(
        "  base backup:  {}\n  WAL replayed: {}\n  ended:        {} (timeline {})\n  duration:     {:.1} s\n",
        opt(r.backup_id.clone()),
        opt(r.wal_bytes.map(|b| format!("{:.1} MB", b as f64 / 1e6))),
        opt(r.end_lsn.clone()),
        opt(r.timeline.map(|t| t.to_string())),
        r.duration_secs
    );
    for c in &r.checks {
        out += &format!("  checked:      {c}\n");
    }
    if let Some(f) = &r.failure {
        out += &format!("  FAILED:       {}: {}\n", f.check, f.detail);
    }
    out
}

/// Opens what the settings name, enqueues (or joins) a drill job of `instance`, runs it and
/// reads its report back from the state database.
pub async fn run(settings: Settings, instance: &str) -> anyhow::Result<DrillReport> {
    settings.validate()?;
    let id = InstanceId::parse(instance.to_string())
        .map_err(|e| anyhow::anyhow!("{instance:?} is not an instance GUID: {e}"))?;
    let super::BrokerState {
        data_dir,
        store,
        database_url,
    } = super::open_broker_state(&settings, "drill").await?;
    if store.get_instance(&id).await?.is_none() {
        bail!("no instance {id} is known to this broker (state database {database_url})");
    }
    let ctx = super::job_context(settings, &data_dir, &store)?;
    let job = crate::jobs::drill_job(&id, "manual");
    let job_id = if store.enqueue_drill(&job).await? {
        job.id
    } else {
        let pending = store
            .pending_drill_job(&id)
            .await?
            .with_context(|| format!("cannot enqueue a drill of {id}; try again"))?;
        eprintln!(
            "wayback: a drill of {id} is already pending ({}); running it",
            pending.id
        );
        pending.id
    };
    let ended = Worker::new(ctx).run_job(&job_id, LIMIT).await?;
    match ended.state.as_str() {
        crate::store::JOB_DONE => {}
        crate::store::JOB_PENDING => bail!(
            "the drill job {job_id} is still waiting or running after {} s: {}",
            LIMIT.as_secs(),
            ended.last_error.as_deref().unwrap_or("no error recorded")
        ),
        _ => bail!(
            "the drill could not run: {}",
            ended.last_error.as_deref().unwrap_or("no reason recorded")
        ),
    }
    let row = store
        .drills_of(&id, 10)
        .await?
        .into_iter()
        .find(|d| d.job_id == job_id)
        .with_context(|| format!("job {job_id} ended without recording its drill"))?;
    store.close().await;
    let text = row
        .report
        .with_context(|| format!("job {job_id} recorded no report"))?;
    serde_json::from_str(&text).context("read the drill's report")
}
