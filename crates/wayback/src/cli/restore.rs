//! `wayback restore`: the operator's restore of one instance's archive into a directory.
//!
//! The source's prefix comes from the broker's state database when it knows the instance, else
//! from the archive itself (`spaces/*/instances/GUID/`), so a restore works with the broker's
//! database lost. The data directory is DIR; everything else the restore needs (socket
//! directory, server log, the private archive target file that `wal-fetch` reads) goes into
//! `DIR.wayback/` next to it, never into the data directory. The restored server listens on
//! 127.0.0.1 only, with archiving off: a copy made by an operator writes nothing to the archive.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::archive::layout::InstancePrefix;
use crate::archive::restore::{self, RestoreReport, RestoreRequest, RestoreTarget};
use crate::archive::target::capture_environment;
use crate::config::Settings;
use crate::domain::{InstanceId, SpaceGuid};
use crate::pg::ctl::{self, StopMode};
use crate::pg::{Binaries, ClusterDirs, RunAs, Tools};
use crate::storage::ObjectStore;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The command line of `wayback restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The instance (GUID) whose archive to restore.
    #[arg(long)]
    pub from_instance: String,
    /// The new data directory (absent or empty).
    #[arg(long)]
    pub target_dir: PathBuf,
    /// Restore to this time (RFC 3339) instead of the latest archived state.
    #[arg(long)]
    pub point_in_time: Option<DateTime<Utc>>,
    /// Port for the restored server (default: a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Leave the restored server running.
    #[arg(long)]
    pub keep_running: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What the command prints with `--json`.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub instance: String,
    pub prefix: String,
    pub target_dir: PathBuf,
    pub socket_dir: PathBuf,
    /// The postmaster's output before its logging collector runs.
    pub log_file: PathBuf,
    /// The server log (rotated files).
    pub log_dir: PathBuf,
    pub running: bool,
    pub report: RestoreReport,
}

/// The command: exit status 0 once restored (and stopped, unless `--keep-running`).
pub fn main(settings: Settings, args: RestoreArgs) -> ExitCode {
    crate::telemetry::init(&settings.log);
    let Some(runtime) = super::async_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(&settings, &args)) {
        Ok(outcome) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&outcome).expect("serializable")
                );
            } else {
                print!("{}", summary(&outcome));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wayback restore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the source archives: the state database if it knows the instance, else the archive.
pub async fn find_prefix(
    settings: &Settings,
    store: &ObjectStore,
    id: &InstanceId,
) -> anyhow::Result<InstancePrefix> {
    let db_file = settings.data_dir.join("wayback.db");
    if settings.database_url.is_some() || db_file.is_file() {
        let url = crate::config::resolve::database_url(settings, &settings.data_dir);
        match crate::store::Store::connect(&url).await {
            Ok(db) => {
                let found = db.get_instance(id).await;
                db.close().await;
                if let Ok(Some(record)) = found {
                    let space = SpaceGuid::parse(record.space_guid.clone())
                        .map_err(|e| anyhow::anyhow!("instance {id}: space {e}"))?;
                    return Ok(InstancePrefix::new(&space, id));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the broker's state database; searching the archive")
            }
        }
    }
    // Not known to the broker: the archive describes itself.
    let keys = store
        .list("spaces/")
        .await
        .context("list the archive to find the instance")?;
    let marker = format!("/instances/{id}/");
    keys.iter()
        .filter(|o| o.key.contains(&marker))
        .find_map(|o| InstancePrefix::from_key(&o.key))
        .filter(|(_, found)| found == id)
        .map(|(space, id)| InstancePrefix::new(&space, &id))
        .with_context(|| {
            format!("instance {id} is neither in the broker's database nor in the archive")
        })
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

/// `DIR.wayback`, next to the data directory.
fn work_dir(pgdata: &Path) -> anyhow::Result<PathBuf> {
    let name = pgdata
        .file_name()
        .with_context(|| format!("{} has no directory name", pgdata.display()))?;
    let mut work = name.to_os_string();
    work.push(".wayback");
    Ok(pgdata.with_file_name(work))
}

/// Restores as the command line says; the server is stopped afterwards unless asked not to.
pub async fn run(settings: &Settings, args: &RestoreArgs) -> anyhow::Result<Outcome> {
    let id = InstanceId::parse(args.from_instance.clone())
        .map_err(|e| anyhow::anyhow!("--from-instance: {e}"))?;
    let data_dir = std::path::absolute(&settings.data_dir).unwrap_or(settings.data_dir.clone());
    let storage = capture_environment(&crate::config::resolve::archive(settings, &data_dir));
    // Opening a local store creates its directory; a restore only reads, so a missing one is
    // the operator's mistake (a wrong --data-dir or archive URL), not something to create.
    if let Ok(crate::storage::Target::Local { dir }) = storage.resolve() {
        anyhow::ensure!(
            dir.is_dir(),
            "there is no archive at {} (check the data directory or the archive URL)",
            dir.display()
        );
    }
    let store = ObjectStore::open(&storage).context("open the archive")?;
    let source = find_prefix(settings, &store, &id).await?;
    let system_identifier = restore::source_system_identifier(&store, &source)
        .await?
        .with_context(|| format!("{} has no complete base backup", source.as_str()))?;

    let pgdata = std::path::absolute(&args.target_dir)
        .with_context(|| format!("resolve {}", args.target_dir.display()))?;
    let work = work_dir(&pgdata)?;
    let port = match args.port {
        Some(p) => p,
        None => free_port()?,
    };
    let dirs = ClusterDirs {
        pgdata: pgdata.clone(),
        socket_dir: work.join("run"),
        log_file: work.join("postgres.log"),
        log_dir: work.join("log"),
    };
    let socket = dirs.socket_dir.join(format!(".s.PGSQL.{port}"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "the unix socket path {} is longer than the {MAX_SOCKET_PATH} bytes a socket allows; \
             choose a shorter --target-dir",
            socket.display()
        );
    }
    let bin = Binaries::discover(settings.postgres.bin_dir.as_deref()).await?;
    let run_as = RunAs::resolve(&settings.postgres.os_user)?;
    let tools = Tools { bin, run_as };
    crate::pg::fsutil::ensure_dir(&work, 0o711, None)
        .with_context(|| format!("create {}", work.display()))?;
    let staged = settings.data_dir.join("bin/wayback");
    let wayback_bin = match &settings.wal.wayback_bin {
        Some(b) => b.clone(),
        None if staged.is_file() => staged,
        None => std::env::current_exe().context("locate the wayback binary")?,
    };
    // The keys as configured (or the data directory's generated key); none is invented here:
    // an encrypted source then fails naming the key id its key.json needs.
    let keyring = crate::crypto::keyfile::keyring(
        &settings.encryption.keys,
        settings.encryption.current_key.as_deref(),
        &settings.data_dir,
        crate::crypto::keyfile::WhenNoKey::Existing,
    )
    .ok();
    let source_key = crate::archive::keydoc::data_key(&store, keyring.as_ref(), source.as_str())
        .await?
        .map(crate::archive::keydoc::ArchiveKey);
    let request = RestoreRequest {
        standby: None,
        store,
        storage,
        source: source.clone(),
        system_identifier,
        source_key,
        target: args
            .point_in_time
            .map_or(RestoreTarget::Latest, RestoreTarget::PointInTime),
        dirs: dirs.clone(),
        port,
        listen_address: "127.0.0.1".into(),
        tools: tools.clone(),
        wayback_bin,
        target_file: work.join("archive.json"),
        archive: None,
        archive_timeout_secs: settings.wal.archive_timeout_secs,
        fetch_ahead: settings.wal.fetch_ahead,
        fetch_retry_secs: 60,
        parallel: 4,
        superuser_verifier: None,
        progress: None,
        prefilled: false,
    };
    let report = restore::restore(&request).await?;
    if !args.keep_running {
        ctl::stop(&tools, &pgdata, StopMode::Fast, Duration::from_secs(120))
            .await
            .context("stop the restored server")?;
    }
    Ok(Outcome {
        instance: id.to_string(),
        prefix: source.as_str().to_string(),
        target_dir: pgdata,
        socket_dir: dirs.socket_dir,
        log_file: dirs.log_file,
        log_dir: dirs.log_dir,
        running: args.keep_running,
        report,
    })
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The human-readable report.
pub fn summary(o: &Outcome) -> String {
    let r = &o.report;
    let target = r
        .target_time
        .map_or("latest".to_string(), |t| t.to_rfc3339());
    let server = if o.running {
        format!(
            "running on 127.0.0.1:{} (socket {}, server log in {})",
            r.port,
            o.socket_dir.display(),
            o.log_dir.display()
        )
    } else {
        "stopped".to_string()
    };
    format!(
        "restored instance {} ({}) into {}\n\
         \x20 target:       {target}\n\
         \x20 base backup:  {} (ended {}), {} downloaded ({} raw) in {:.1} s\n\
         \x20 replay:       start to promoted in {:.1} s ({} archived WAL segments)\n\
         \x20 result:       timeline {} (backup's {}), recovery ended at {}\n\
         \x20 total:        {:.1} s; server {server}\n",
        o.instance,
        o.prefix,
        o.target_dir.display(),
        r.backup_id,
        r.backup_stop_time.to_rfc3339(),
        mb(r.bytes_downloaded),
        mb(r.raw_bytes),
        r.download_unpack_secs,
        r.start_to_promoted_secs,
        r.wal_segments,
        r.timeline,
        r.backup_timeline,
        r.end_lsn,
        r.total_secs,
    )
}
