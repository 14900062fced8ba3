//! `wayback backup INSTANCE_GUID [--json]`: a base backup now, through the same job the broker
//! runs (enqueued, then run inline as the synchronous bind runs its job), with a one-line
//! summary or the manifest and timings as JSON.
//!
//! Reads the same settings as `serve`, so it sees the same state database, clusters and
//! archive. If a backup of the instance is already pending (provision, schedule), that one is
//! run or waited for instead of a second. A broker running at the same time may claim the job
//! first; the command then waits for it to end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::archive::layout::InstancePrefix;
use crate::archive::manifest::BackupManifest;
use crate::config::Settings;
use crate::domain::{InstanceId, InstanceState, SpaceGuid};
use crate::jobs::Worker;

/// The command line of `wayback backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The service instance's GUID.
    pub instance: String,
    /// Print the manifest and timings as JSON instead of one line.
    #[arg(long)]
    pub json: bool,
    /// Directory of the broker's state (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The archive: s3://bucket/prefix or file:///dir (as for `serve`).
    #[arg(long)]
    pub archive_url: Option<String>,
}

/// What the command reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupOutcome {
    pub job_id: String,
    pub manifest: BackupManifest,
    pub timings: Timings,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Timings {
    /// From the job's start to the manifest, as the job recorded it.
    pub backup_ms: i64,
    pub stream_ms: i64,
    pub archive_wait_ms: i64,
    /// The whole command, including waiting for a pending backup.
    pub command_ms: u64,
}

/// Runs the command: 0 with a backup in the archive, 1 when it failed, 2 when it could not run.
pub fn main(mut settings: Settings, args: BackupArgs) -> ExitCode {
    let Some(runtime) = super::start_local(
        &mut settings,
        args.data_dir.clone(),
        args.archive_url.clone(),
    ) else {
        return ExitCode::from(2);
    };
    match runtime.block_on(run(settings, &args.instance)) {
        Ok(outcome) => {
            if args.json {
                let text = serde_json::to_string_pretty(&outcome).expect("serializes");
                println!("{text}");
            } else {
                println!("{}", summary(&outcome));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wayback: backup: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One line: id, sizes, time, where it ends.
pub fn summary(o: &BackupOutcome) -> String {
    let m = &o.manifest;
    let mb = |n: u64| n as f64 / 1e6;
    format!(
        "backup {} of instance {}: {:.1} MB raw, {:.1} MB stored in {} parts, {:.1} s, stop LSN {} (WAL {})",
        m.backup_id,
        m.instance_id,
        mb(m.raw_bytes),
        mb(m.stored_bytes),
        m.parts.len(),
        o.timings.backup_ms as f64 / 1000.0,
        m.stop_lsn,
        m.stop_wal
    )
}

/// Opens what the settings name, enqueues (or joins) a backup job of `instance`, runs it and
/// reads back its manifest from the archive.
pub async fn run(settings: Settings, instance: &str) -> anyhow::Result<BackupOutcome> {
    let started = std::time::Instant::now();
    settings.validate()?;
    let id = InstanceId::parse(instance.to_string())
        .map_err(|e| anyhow::anyhow!("{instance:?} is not an instance GUID: {e}"))?;
    let super::BrokerState {
        data_dir,
        store,
        database_url,
    } = super::open_broker_state(&settings, "backup").await?;
    let Some(record) = store.get_instance(&id).await? else {
        bail!("no instance {id} is known to this broker (state database {database_url})");
    };
    if record.state != InstanceState::Ready {
        bail!(
            "instance {id} is {}; only a ready instance can be backed up",
            record.state.as_str()
        );
    }
    if let Some(at) = record.stopped_at {
        // Its port is held by the broker's wake listener, which this process cannot start it
        // through (issue 17); the broker's own backup jobs start it.
        let since = chrono::DateTime::from_timestamp_millis(at)
            .map_or_else(|| format!("{at} ms"), |t| t.to_rfc3339());
        bail!(
            "instance {id} is stopped when idle (since {since}): it has written nothing since, \
             and its archive holds every commit it made. To back it up anyway, wake it first \
             (connect to it, or bind to it) and run wayback backup again before it is idle again"
        );
    }
    let ctx = super::job_context(settings, &data_dir, &store)?;
    let (settings, archive) = (ctx.settings.clone(), ctx.archive.clone());
    let job = crate::jobs::backup_job(&id, "manual");
    let job_id = if store.enqueue_backup(&job).await? {
        job.id
    } else {
        match store.pending_backup_job(&id).await? {
            Some(pending) => {
                eprintln!(
                    "wayback: a backup of {id} is already pending ({}); running it",
                    pending.id
                );
                pending.id
            }
            // The pending one ended between our insert and our look: ours can go now.
            None if store.enqueue_backup(&job).await? => job.id,
            None => bail!("cannot enqueue a backup of {id}: another one keeps being enqueued"),
        }
    };
    let limit = Duration::from_secs(
        settings.backup.stream_timeout_secs + settings.wal.final_archive_timeout_secs + 600,
    );
    let ended = Worker::new(ctx).run_job(&job_id, limit).await?;
    match ended.state.as_str() {
        crate::store::JOB_DONE => {}
        crate::store::JOB_PENDING => bail!(
            "the backup job {job_id} is still running after {} s: {}",
            limit.as_secs(),
            ended.last_error.as_deref().unwrap_or("no error recorded")
        ),
        _ => bail!(
            "the backup failed: {}",
            ended.last_error.as_deref().unwrap_or("no reason recorded")
        ),
    }
    let row = store
        .backup_of_job(&job_id)
        .await?
        .with_context(|| format!("job {job_id} ended without recording its backup"))?;
    let space = SpaceGuid::parse(record.space_guid.clone())?;
    let key = InstancePrefix::new(&space, &id).base_manifest(&row.backup_id);
    let bytes = archive
        .get(&key)
        .await?
        .with_context(|| format!("{} is missing", archive.location(&key)))?;
    let manifest = BackupManifest::from_json(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", archive.location(&key)))?;
    store.close().await;
    Ok(BackupOutcome {
        job_id,
        manifest,
        timings: Timings {
            backup_ms: row.duration_ms,
            stream_ms: row.stream_ms,
            archive_wait_ms: row.archive_wait_ms,
            command_ms: started.elapsed().as_millis() as u64,
        },
    })
}
