//! Operator commands (`wayback prune`, …): each parses nothing itself (clap does, in `main`),
//! opens what it needs from the same settings as `serve`, calls the library and prints. Thin
//! by design: the logic lives in the subsystems, so the broker and the command share it.

pub mod agents;
pub mod backup;
pub mod drain;
mod drain_ha;
pub mod drill;
pub mod prune;
pub mod register;
pub mod reindex;
pub mod rekey;
pub mod restore;
pub mod smoke;
pub mod switchover;

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Overrides, Settings};
use crate::store::Store;

/// The start a command on this machine's broker state shares: `--data-dir` and
/// `--archive-url` over the settings, logging, and the async runtime (`None`, said on stderr,
/// when it cannot start).
fn start_local(
    settings: &mut Settings,
    data_dir: Option<PathBuf>,
    archive_url: Option<String>,
) -> Option<tokio::runtime::Runtime> {
    settings.apply(Overrides {
        data_dir,
        archive_url,
        ..Overrides::default()
    });
    crate::telemetry::init(&settings.log);
    async_runtime()
}

/// Percent-encodes a query value (names may hold spaces, `&`, `,`…).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The async runtime a command runs on; `None`, said on stderr, when it cannot start.
fn async_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("wayback: cannot start the async runtime: {e}");
            None
        }
    }
}

/// The start an operator command that talks to the platform shares: `--data-dir` over the
/// settings, logging, what the command needs from the settings (`prepare`; an error there is
/// exit 2, said on stderr as `wayback: COMMAND: …`) and the async runtime.
fn start_command<T>(
    settings: &mut Settings,
    data_dir: Option<PathBuf>,
    command: &str,
    prepare: impl FnOnce(&Settings) -> anyhow::Result<T>,
) -> Result<(T, tokio::runtime::Runtime), std::process::ExitCode> {
    settings.apply(Overrides {
        data_dir,
        ..Overrides::default()
    });
    crate::telemetry::init(&settings.log);
    let prepared = prepare(settings).map_err(|e| {
        eprintln!("wayback: {command}: {e:#}");
        std::process::ExitCode::from(2)
    })?;
    let runtime = async_runtime().ok_or(std::process::ExitCode::from(2))?;
    Ok((prepared, runtime))
}

/// An existing broker's state, as a command that works on it opens it.
struct BrokerState {
    /// The data directory, canonical.
    data_dir: PathBuf,
    store: Store,
    database_url: String,
}

/// The context a one-shot command (`wayback backup`, `wayback drill`) runs its job in, built as
/// `serve` builds it: the archive the settings name (resolved against `data_dir`), the runtime
/// with its keyring, the catalog, and the settings as resolved.
fn job_context(
    mut settings: Settings,
    data_dir: &std::path::Path,
    store: &Store,
) -> anyhow::Result<std::sync::Arc<crate::context::AppContext>> {
    use std::sync::Arc;
    settings.archive = crate::config::resolve::archive(&settings, data_dir);
    let archive =
        crate::storage::ObjectStore::open(&settings.archive).context("open the archive")?;
    let wayback_bin = crate::config::resolve::wayback_executable(&settings)?;
    let shared = Arc::new(settings.clone());
    let runtime = crate::open::runtime(
        &settings,
        data_dir,
        store,
        crate::runtime::ArchiveAccess {
            store: archive.clone(),
            settings: shared.clone(),
            wayback_bin: wayback_bin.clone(),
            keyring: Some(Arc::new(crate::open::keyring(&settings, data_dir)?)),
        },
    )?;
    Ok(Arc::new(crate::context::AppContext {
        store: store.clone(),
        runtime,
        catalog: Arc::new(crate::catalog::Catalog::load(settings.catalog.as_deref())?),
        archive_command: crate::runtime::ArchiveCommand {
            wayback_bin,
            archive_timeout_secs: settings.wal.archive_timeout_secs,
        },
        metrics: Default::default(),
        archive,
        archive_health: Default::default(),
        settings: shared,
    }))
}

/// Opens the state database of the broker whose (existing) data directory the settings name;
/// `command` says who needs it in the error when the directory is not there.
async fn open_broker_state(settings: &Settings, command: &str) -> anyhow::Result<BrokerState> {
    let data_dir = std::fs::canonicalize(&settings.data_dir).with_context(|| {
        format!(
            "data directory {} ({command} works on an existing broker's state)",
            settings.data_dir.display()
        )
    })?;
    let (store, database_url) = crate::open::state_store(settings, &data_dir).await?;
    Ok(BrokerState {
        data_dir,
        store,
        database_url,
    })
}
