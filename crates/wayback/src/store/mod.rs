//! The broker's durable state, through sqlx's `Any` driver: a SQLite file by default, or a
//! PostgreSQL database given by URL (several brokers may share one). The audit trail
//! (`audit`) has its own table, which pruning of jobs and operations leaves alone.
//!
//! All SQL is written once, portable to both (TEXT and BIGINT columns, `$n` placeholders, times
//! in Unix milliseconds), so the same test suite proves both backends. Migrations are embedded
//! and run at start-up. Secrets (binding passwords) are sealed with the operator's keys
//! ([`secrets`]). Imports `crypto` for that. Must not import `osb`, `broker`, `runtime` or `pg`.

mod archive_docs;
mod audit;
mod backups;
mod bindings;
mod dashboard_logins;
mod drills;
mod followers;
mod ha;
mod idle;
mod instances;
mod jobs;
mod kept_copies;
mod name_sources;
mod operations;
mod prune;
mod records;
mod reindex;
mod secrets;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, ConnectOptions};

pub use audit::{AuditEvent, AuditKind};
pub use backups::{BackupOverview, BackupRecord};
pub use dashboard_logins::PendingLogin;
pub use drills::{DrillCandidate, DrillRecord, DrillStats};
pub use ha::HaMemberRecord;
pub use instances::SpaceName;
pub use jobs::{JOB_DONE, JOB_FAILED, JOB_PENDING};
pub use kept_copies::KeptCopyRecord;
pub use prune::{Pruned, RowCounts};
pub use records::{
    BindingRecord, InstanceRecord, JobRecord, MetricLabels, NameRecord, NewJob, OperationRecord,
};
pub use reindex::{merge_names, IndexedInstance, MergeOutcome};

/// A store failure. `Conflict` is the one callers act on (a row with that id exists already).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a record with id {0} already exists")]
    Conflict(String),
    #[error("stored record {id} is corrupt: {message}")]
    Corrupt { id: String, message: String },
    #[error("state database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored secrets: {0}")]
    Secret(String),
    #[error("state database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_) | StoreError::Corrupt { .. } | StoreError::Secret(_)
        )
    }
}

/// Maps a unique-key violation to `Conflict(id)`.
fn conflict_on_unique(id: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(id.into()),
        _ => StoreError::Database(e),
    }
}

/// The current time in Unix milliseconds, the unit of every stored time.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn migrator() -> Migrator {
    let migrations = vec![
        Migration::new(
            1,
            Cow::Borrowed("init"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0001_init.sql")),
            false,
        ),
        Migration::new(
            2,
            Cow::Borrowed("final wal"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0002_final_wal.sql")),
            false,
        ),
        Migration::new(
            3,
            Cow::Borrowed("backups"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0003_backups.sql")),
            false,
        ),
        Migration::new(
            4,
            Cow::Borrowed("archive retention"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0004_archive_retention.sql")),
            false,
        ),
        Migration::new(
            5,
            Cow::Borrowed("agents"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0005_agents.sql")),
            false,
        ),
        Migration::new(
            6,
            Cow::Borrowed("backup wal bytes"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0006_backup_wal_bytes.sql")),
            false,
        ),
        Migration::new(
            7,
            Cow::Borrowed("audit events"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0007_audit_events.sql")),
            false,
        ),
        Migration::new(
            8,
            Cow::Borrowed("sealed secrets"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0008_sealed_secrets.sql")),
            false,
        ),
        Migration::new(
            9,
            Cow::Borrowed("followers"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0009_followers.sql")),
            false,
        ),
        Migration::new(
            10,
            Cow::Borrowed("kept copies"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0010_kept_copies.sql")),
            false,
        ),
        Migration::new(
            11,
            Cow::Borrowed("drills"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0011_drills.sql")),
            false,
        ),
        Migration::new(
            12,
            Cow::Borrowed("ha members"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0012_ha_members.sql")),
            false,
        ),
        Migration::new(
            13,
            Cow::Borrowed("ha superuser password"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0013_ha_superuser.sql")),
            false,
        ),
        Migration::new(
            14,
            Cow::Borrowed("stopped at"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0014_stopped_at.sql")),
            false,
        ),
        Migration::new(
            15,
            Cow::Borrowed("wake error"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0015_wake_error.sql")),
            false,
        ),
        Migration::new(
            16,
            Cow::Borrowed("dashboard logins"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0016_dashboard_logins.sql")),
            false,
        ),
    ];
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// The file of a SQLite URL (`sqlite://PATH?…` or `sqlite:PATH`); `None` for memory or others.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.into())
}

/// Makes the SQLite database and its companions (-wal, -shm, -journal) 0600 whatever the
/// umask: the database is created here, before SQLite opens it, and SQLite gives the companions
/// the database file's mode; existing files (from an older version) are fixed.
fn private_sqlite_files(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StoreError::Database(sqlx::Error::Io(e));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Handle to the state database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Seals and opens secrets (binding passwords); without it they can be neither written
    /// nor read ([`Store::with_keyring`]).
    keyring: Option<Arc<crate::crypto::Keyring>>,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and runs migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        if let Some(path) = sqlite_file(url) {
            private_sqlite_files(&path)?;
        }
        let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
        let mut pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 10 })
            .acquire_timeout(Duration::from_secs(30));
        if is_sqlite {
            // WAL lets the worker and the HTTP handlers read while one writes; busy_timeout
            // waits for the writer instead of failing with SQLITE_BUSY.
            pool = pool.after_connect(|conn: &mut sqlx::AnyConnection, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                         PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await?;
        migrator().run(&pool).await?;
        Ok(Store {
            pool,
            keyring: None,
        })
    }

    /// This store, sealing and opening secrets with `keyring`.
    pub fn with_keyring(mut self, keyring: Arc<crate::crypto::Keyring>) -> Store {
        self.keyring = Some(keyring);
        self
    }

    /// The keyring this store seals with, for what must be bound to the same keys (the
    /// dashboard's session cookies).
    pub fn keyring_handle(&self) -> Option<Arc<crate::crypto::Keyring>> {
        self.keyring.clone()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A cheap liveness query for `/health`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
