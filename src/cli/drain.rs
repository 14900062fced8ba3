//! `wayback drain [--timeout-secs N] [--json]`: before a VM stops (BOSH's drain), makes sure
//! that everything committed so far is in the archive.
//!
//! For every live instance whose cluster runs, it completes the current WAL segment
//! (`pg_switch_wal()`) and waits until that segment is in the instance's archive prefix, all
//! instances at once. Clusters keep running: the platform stops them next (bpm), and what they
//! commit after the drain is archived when they start again. An instance whose segment does
//! not reach the archive in time makes the command fail (exit 1), naming it, so that the
//! operator's `bosh` run stops there instead of losing the last minute of commits with a disk.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;

use crate::archive::layout::{InstancePrefix, WalFileName};
use crate::config::Settings;
use crate::domain::{InstanceState, SpaceGuid};
use crate::runtime::{ClusterStatus, LocalRuntime};
use crate::storage::ObjectStore;
use crate::store::InstanceRecord;

/// The command line of `wayback drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Seconds to wait for each instance's segment. Default: `wal.final_archive_timeout_secs`.
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Print the report as JSON (one document).
    #[arg(long)]
    pub json: bool,
    /// Directory of the broker's state (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The archive: s3://bucket/prefix or file:///dir (as for `serve`).
    #[arg(long)]
    pub archive_url: Option<String>,
}

/// What happened to one instance.
#[derive(Debug, Clone, Serialize)]
pub struct DrainedInstance {
    pub instance_id: String,
    /// The segment completed by the switch, once archived; None when the cluster was not running.
    pub wal_file: Option<String>,
    pub lsn: Option<String>,
    pub archived: bool,
    pub secs: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    pub ok: bool,
    pub instances: Vec<DrainedInstance>,
}

/// Runs the command: 0 when every running instance's WAL is archived, 1 otherwise, 2 when it
/// could not run. The report goes to stderr unless `--json` (a BOSH drain script's stdout is
/// its answer to the director).
pub fn main(mut settings: Settings, args: DrainArgs) -> ExitCode {
    let Some(runtime) = super::start_local(
        &mut settings,
        args.data_dir.clone(),
        args.archive_url.clone(),
    ) else {
        return ExitCode::from(2);
    };
    let timeout = Duration::from_secs(
        args.timeout_secs
            .unwrap_or(settings.wal.final_archive_timeout_secs),
    );
    let report = match runtime.block_on(run(settings, timeout)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wayback: drain: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).expect("a report serializes");
        println!("{text}");
    } else {
        for i in &report.instances {
            eprintln!(
                "{} {}: {} ({:.1} s)",
                if i.archived { "ok    " } else { "FAILED" },
                i.instance_id,
                i.detail,
                i.secs
            );
        }
        eprintln!(
            "wayback: drain: {} of {} instances archived up to now",
            report.instances.iter().filter(|i| i.archived).count(),
            report.instances.len()
        );
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Switches and waits for every live instance of the broker the settings name.
pub async fn run(settings: Settings, timeout: Duration) -> anyhow::Result<DrainReport> {
    settings.validate()?;
    let super::BrokerState {
        data_dir, store, ..
    } = super::open_broker_state(&settings, "drain").await?;
    let archive_settings = crate::startup::archive_settings(&settings, &data_dir);
    let archive = ObjectStore::open(&archive_settings).context("open the archive")?;
    let runtime = Arc::new(LocalRuntime::new(data_dir, settings.postgres.clone()));
    let live = store
        .instances_in_states(&[InstanceState::Ready, InstanceState::Updating])
        .await?;
    let instances: Vec<DrainedInstance> = futures::stream::iter(live)
        .map(|record| drain_one(runtime.clone(), archive.clone(), record, timeout))
        .buffer_unordered(8)
        .collect()
        .await;
    store.close().await;
    Ok(DrainReport {
        ok: instances.iter().all(|i| i.archived),
        instances,
    })
}

async fn drain_one(
    runtime: Arc<LocalRuntime>,
    archive: ObjectStore,
    record: InstanceRecord,
    timeout: Duration,
) -> DrainedInstance {
    let started = Instant::now();
    let mut out = DrainedInstance {
        instance_id: record.id.to_string(),
        wal_file: None,
        lsn: None,
        archived: false,
        secs: 0.0,
        detail: String::new(),
    };
    match runtime.status(&record.id).await {
        Ok(ClusterStatus::Running) => {}
        Ok(other) => {
            // A stopped cluster archived what it had when it stopped (a clean shutdown) or will
            // when it starts; there is nothing to switch.
            out.archived = true;
            out.detail = format!("cluster {other:?}: nothing to switch");
            return out;
        }
        Err(e) => {
            out.detail = format!("cannot read the cluster's status: {e}");
            return out;
        }
    }
    let result = async {
        let (lsn, walfile) = runtime.switch_wal_segment(&record.id).await?;
        let space = SpaceGuid::parse(record.space_guid.clone())
            .map_err(|e| anyhow::anyhow!("space {:?}: {e}", record.space_guid))?;
        let name = WalFileName::parse(&walfile).map_err(|e| anyhow::anyhow!(e))?;
        let key = InstancePrefix::new(&space, &record.id).wal(&name);
        out.lsn = Some(lsn.clone());
        out.wal_file = Some(walfile.clone());
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        loop {
            match archive.head(&key).await {
                Ok(Some(_)) => return Ok(format!("WAL up to {lsn} archived ({walfile})")),
                Ok(None) => {}
                Err(e) => last_error = Some(e.to_string()),
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{walfile} (WAL up to {lsn}) did not reach the archive within {} s{}; \
                     check the cluster's archiving (pg_stat_archiver, its log) and the storage",
                    timeout.as_secs(),
                    last_error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    out.secs = started.elapsed().as_secs_f64();
    match result {
        Ok(detail) => {
            out.archived = true;
            out.detail = detail;
        }
        Err(e) => out.detail = format!("{e:#}"),
    }
    out
}
