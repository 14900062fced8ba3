//! `wayback drain [--agent] [--timeout-secs N] [--json]`: before a VM stops (BOSH's drain),
//! makes sure that everything committed so far is in the archive.
//!
//! For every live instance whose cluster runs, it completes the current WAL segment
//! (`pg_switch_wal()`) and waits until that segment is in the instance's archive prefix, all
//! instances at once. Clusters keep running: the platform stops them next (bpm), and what they
//! commit after the drain is archived when they start again. An instance whose segment does
//! not reach the archive in time makes the command fail (exit 1), naming it, so that the
//! operator's `bosh` run stops there instead of losing the last minute of commits with a disk.
//!
//! First, every HA member that leads on this machine hands the lead to a standby elsewhere
//! (Patroni's switchover, `drain_ha.rs`), bounded by the same timeout; the report lists them
//! under `switchovers`, and one that cannot hand over is reported without failing the drain.
//!
//! Which clusters: on a broker, the live instances of its state database. With `--agent` (a
//! `wayback agent` VM, which has no state database), every cluster under `data_dir/clusters`,
//! each archived under the prefix its own `archive.json` names; a cluster without one does not
//! archive (nothing to wait for), and one still restoring from another archive has no WAL of its
//! own to switch. Both modes wait in the archive of the settings (`archive.*`, `--archive-url`),
//! which on an agent is the broker's object storage.
//!
//! Must not import the broker's HTTP or job layers: it runs beside a broker or agent process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;

use crate::archive::layout::{InstancePrefix, WalFileName};
use crate::config::Settings;
use crate::domain::{InstanceId, InstanceState, SpaceGuid};
use crate::runtime::{ClusterStatus, LocalRuntime};
use crate::storage::ObjectStore;

/// The command line of `wayback drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Seconds to wait for each instance's segment. Default: `wal.final_archive_timeout_secs`.
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Print the report as JSON (one document).
    #[arg(long)]
    pub json: bool,
    /// This machine runs `wayback agent`: drain every cluster under the data directory, found
    /// by their `archive.json`, without a state database.
    #[arg(long)]
    pub agent: bool,
    /// Directory of the broker's state or the agent's clusters (as for `serve` / `agent`).
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
    /// The HA members that led on this machine and what the drain did first (issue 15:
    /// `drain_ha.rs`); absent when none led here. A failed one does not fail the drain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub switchovers: Vec<super::drain_ha::DrainSwitchover>,
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
    let drained = if args.agent {
        runtime.block_on(run_agent(settings, timeout))
    } else {
        runtime.block_on(run(settings, timeout))
    };
    let report = match drained {
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
        for s in &report.switchovers {
            eprintln!(
                "{} {} member {}: {} ({:.1} s)",
                if s.switched { "ok    " } else { "KEPT  " },
                s.instance_id,
                s.member,
                s.detail,
                s.secs
            );
        }
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

/// What the drain does for one cluster.
enum Plan {
    /// Switch its WAL (if it runs) and wait for the segment under `prefix`; an `Err` prefix
    /// (unusable, and why) fails the instance only if there is something to switch.
    Switch {
        id: InstanceId,
        prefix: Result<InstancePrefix, String>,
    },
    /// Nothing: it has no WAL of its own to archive, and why.
    Skip { id: InstanceId, why: String },
}

/// Switches and waits for every live instance of the broker the settings name.
pub async fn run(settings: Settings, timeout: Duration) -> anyhow::Result<DrainReport> {
    settings.validate()?;
    let super::BrokerState {
        data_dir, store, ..
    } = super::open_broker_state(&settings, "drain").await?;
    let live = store
        .instances_in_states(&[InstanceState::Ready, InstanceState::Updating])
        .await;
    // An HA instance's members here are kept under their member keys (`<id>~<member>`): each
    // is planned; the hand-over below skips those that are standbys.
    let members = ha_member_keys(&store).await;
    store.close().await;
    let members = members?;
    let planned = live?
        .into_iter()
        .flat_map(|record| match record.agent {
            // Its agent's own drain (`wayback drain --agent`) archives it when that VM stops.
            Some(agent) => vec![Plan::Skip {
                id: record.id,
                why: format!("runs on agent {agent}: its drain archives it"),
            }],
            None => {
                let prefix = SpaceGuid::parse(record.space_guid.clone())
                    .map(|space| InstancePrefix::new(&space, &record.id))
                    .map_err(|e| format!("space {:?}: {e}", record.space_guid));
                let keys = members
                    .get(&record.id)
                    .cloned()
                    .unwrap_or_else(|| vec![record.id.clone()]);
                keys.into_iter()
                    .map(|id| Plan::Switch {
                        prefix: prefix.clone(),
                        id,
                    })
                    .collect()
            }
        })
        .collect();
    drain_all(&settings, data_dir, planned, timeout).await
}

/// The cluster keys of the HA instances' members on the broker's machine, by instance.
async fn ha_member_keys(
    store: &crate::store::Store,
) -> anyhow::Result<std::collections::HashMap<InstanceId, Vec<InstanceId>>> {
    let mut keys = std::collections::HashMap::new();
    for id in store.ha_instance_ids().await? {
        let members = store.ha_members(&id).await?;
        let here: Vec<InstanceId> = members
            .iter()
            .filter(|m| m.agent.is_empty())
            .map(|m| id.member_key(&m.member))
            .collect();
        keys.insert(id, here);
    }
    Ok(keys)
}

/// Switches and waits for every cluster of this agent's data directory, without a state
/// database: each cluster's `archive.json` says where its WAL goes.
pub async fn run_agent(settings: Settings, timeout: Duration) -> anyhow::Result<DrainReport> {
    settings.validate()?;
    let data_dir = std::fs::canonicalize(&settings.data_dir).with_context(|| {
        format!(
            "data directory {} (drain --agent works on this agent's clusters)",
            settings.data_dir.display()
        )
    })?;
    let runtime = LocalRuntime::new(data_dir.clone(), settings.postgres.clone());
    let planned = runtime
        .cluster_ids()
        .into_iter()
        .map(|id| match runtime.archive_target(&id) {
            None => Plan::Skip {
                id,
                why: "no archive.json: the cluster does not archive".into(),
            },
            Some(target) if target.restore_from.is_some() => Plan::Skip {
                id,
                why: "still restoring from another archive: no WAL of its own to switch".into(),
            },
            Some(target) => Plan::Switch {
                prefix: InstancePrefix::parse(&target.prefix)
                    .ok_or_else(|| format!("archive.json names a bad prefix {:?}", target.prefix)),
                id,
            },
        })
        .collect();
    drain_all(&settings, data_dir, planned, timeout).await
}

/// Drains the planned clusters, all at once, into one report.
async fn drain_all(
    settings: &Settings,
    data_dir: PathBuf,
    planned: Vec<Plan>,
    timeout: Duration,
) -> anyhow::Result<DrainReport> {
    let archive_settings = crate::config::resolve::archive(settings, &data_dir);
    let archive = ObjectStore::open(&archive_settings).context("open the archive")?;
    let runtime = Arc::new(LocalRuntime::new(data_dir, settings.postgres.clone()));
    // HA members that lead here hand the lead over first; a standby here has no WAL to switch.
    let handed = super::drain_ha::hand_over(&runtime, timeout).await;
    let planned = planned.into_iter().map(|plan| match plan {
        Plan::Switch { id, .. } if handed.standbys.contains(&id) => Plan::Skip {
            id,
            why: "an HA standby here: its leader, on another machine, archives".into(),
        },
        other => other,
    });
    let instances: Vec<DrainedInstance> = futures::stream::iter(planned)
        .map(|plan| {
            let (runtime, archive) = (runtime.clone(), archive.clone());
            async move {
                match plan {
                    Plan::Switch { id, prefix } => {
                        drain_one(runtime, archive, id, prefix, timeout).await
                    }
                    Plan::Skip { id, why } => DrainedInstance {
                        instance_id: id.to_string(),
                        wal_file: None,
                        lsn: None,
                        archived: true,
                        secs: 0.0,
                        detail: why,
                    },
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    Ok(DrainReport {
        ok: instances.iter().all(|i| i.archived),
        instances,
        switchovers: handed.switchovers,
    })
}

async fn drain_one(
    runtime: Arc<LocalRuntime>,
    archive: ObjectStore,
    id: InstanceId,
    prefix: Result<InstancePrefix, String>,
    timeout: Duration,
) -> DrainedInstance {
    let started = Instant::now();
    let mut out = DrainedInstance {
        instance_id: id.to_string(),
        wal_file: None,
        lsn: None,
        archived: false,
        secs: 0.0,
        detail: String::new(),
    };
    match runtime.status(&id).await {
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
        let prefix = prefix.map_err(|e| anyhow::anyhow!(e))?;
        let (lsn, walfile) = runtime.switch_wal_segment(&id).await?;
        let name = WalFileName::parse(&walfile).map_err(|e| anyhow::anyhow!(e))?;
        let key = prefix.wal(&name);
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
