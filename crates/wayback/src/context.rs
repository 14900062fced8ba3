//! The application context: what the broker's parts share, built once (`startup`, or an
//! operator command that runs jobs) and handed to the broker, the job worker and the
//! maintenance loops as an `Arc<AppContext>`.
//!
//! Imports the types it holds (`store`, `runtime`, `catalog`, `config`, `metrics`, `storage`)
//! and nothing that uses it.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::runtime::{ArchiveCommand, Runtime};
use crate::storage::{ObjectStore, Reachability};
use crate::store::Store;

/// The store, the runtime, the archive, the catalog, the settings and the metrics.
pub struct AppContext {
    pub store: Store,
    pub runtime: Runtime,
    pub catalog: Arc<Catalog>,
    pub settings: Arc<Settings>,
    pub metrics: Metrics,
    /// The archive (WAL, base backups, instance.json).
    pub archive: ObjectStore,
    /// How clusters run the archiver.
    pub archive_command: ArchiveCommand,
    /// Whether the archive answers: the outage in progress, if any (`/health`, job retries).
    pub archive_health: Reachability,
}
