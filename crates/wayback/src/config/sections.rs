//! The settings' sections, each with its compiled defaults.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

/// The Cloud Controller v3 API and the UAA client it is reached with. Off while `api_url` is
/// unset: names then come only from the OSB requests' `context`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CcSettings {
    /// The CC API, e.g. `https://api.sys.example.com`.
    pub api_url: Option<String>,
    /// The UAA. Default: the `uaa` (else `login`) link of the CC root document `GET /`.
    pub uaa_url: Option<String>,
    /// UAA client (client-credentials grant) with `cloud_controller.admin_read_only` or
    /// `cloud_controller.global_auditor`.
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// Accept any TLS certificate from the CC and UAA (labs with self-signed certificates only).
    pub skip_tls_verify: bool,
    pub connect_timeout_secs: u64,
    /// The longest one request to the CC or UAA may take.
    pub request_timeout_secs: u64,
    /// Attempts of one call when the CC or UAA fails transiently (5xx, 429, timeouts).
    pub attempts: u32,
    /// How often the names of all live instances are compared with the CC's.
    pub reconcile_interval_secs: u64,
}

impl Default for CcSettings {
    fn default() -> Self {
        Self {
            api_url: None,
            uaa_url: None,
            client_id: String::new(),
            client_secret: None,
            skip_tls_verify: false,
            connect_timeout_secs: 5,
            request_timeout_secs: 15,
            attempts: 3,
            reconcile_interval_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// zstd level of base backup parts (1–19; low levels keep backups CPU-cheap).
    pub compression_level: i32,
    /// Parts compressed and uploaded at the same time (memory: about this many parts + 1).
    pub uploads_in_flight: usize,
    /// Raw tar bytes per part (a restore goes by each part's recorded size, so this may change).
    pub part_bytes: u64,
    /// The longest `pg_basebackup` may stream before the backup fails.
    pub stream_timeout_secs: u64,
    /// The longest `pg_basebackup` may send nothing — at its end PostgreSQL waits there for the
    /// backup's end segment to be archived — before the backup fails and its parts are removed.
    pub stall_timeout_secs: u64,
}

/// Raw tar bytes per base backup part, unless `backup.part_bytes` says otherwise.
pub const DEFAULT_PART_BYTES: u64 = 64 << 20;

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            compression_level: 1,
            uploads_in_flight: 3,
            part_bytes: DEFAULT_PART_BYTES,
            stream_timeout_secs: 6 * 3600,
            stall_timeout_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalSettings {
    /// zstd level for archived WAL (0 = store uncompressed).
    pub compression_level: i32,
    /// Ready segments `wal-push` uploads in parallel with the one PostgreSQL asked for.
    pub push_ahead: usize,
    /// Segments `wal-fetch` downloads in parallel with the one PostgreSQL asked for.
    pub fetch_ahead: usize,
    /// Seconds after which PostgreSQL switches to a new segment when there was activity:
    /// the longest time a commit can wait before it is archived.
    pub archive_timeout_secs: u64,
    /// How long a deprovision waits for its final WAL to be archived before it gives up
    /// (and keeps the instance).
    pub final_archive_timeout_secs: u64,
    /// The `wayback` binary PostgreSQL runs for archive_command/restore_command.
    /// Default: this executable.
    pub wayback_bin: Option<PathBuf>,
}

impl Default for WalSettings {
    fn default() -> Self {
        Self {
            compression_level: 1,
            push_ahead: 4,
            fetch_ahead: 8,
            archive_timeout_secs: 60,
            final_archive_timeout_secs: 120,
            wayback_bin: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Basic-auth user name the platform uses for OSB calls.
    pub username: String,
    /// Basic-auth password. When unset, one is generated and kept in `<data_dir>/broker-password`.
    pub password: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// Directory with `initdb`, `pg_ctl`, `postgres`… Default: `/usr/lib/postgresql/15/bin`,
    /// else the directory `pg_config --bindir` names.
    pub bin_dir: Option<PathBuf>,
    /// Unprivileged OS user that owns and runs the clusters (initdb and postgres refuse root).
    /// Used when the broker runs as root; otherwise clusters run as the broker's own user.
    pub os_user: String,
    /// Address each cluster listens on.
    pub listen_address: String,
    /// Host name or address written into binding credentials. Default: `listen_address`
    /// (or 127.0.0.1 when that is a wildcard).
    pub advertise_host: Option<String>,
    /// Lowest port handed to a cluster.
    pub port_min: u16,
    /// Highest port handed to a cluster.
    pub port_max: u16,
    /// How long a cluster may take to start or stop before the step fails.
    pub start_timeout_secs: u64,
    /// Copy a pre-initialised data directory (with a fresh system identifier) instead of
    /// running initdb for every instance.
    pub use_template: bool,
    /// MiB of server log each cluster keeps (rotated files; the oldest are deleted beyond it).
    pub log_keep_mb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// How many user-facing operations (provision, update, deprovision, bind, unbind) run at
    /// the same time.
    pub concurrency: usize,
    /// How many background jobs (base backups) run at the same time, in a lane of their own:
    /// they never hold a slot a user-facing operation could use.
    pub background_concurrency: usize,
    /// How long a claimed job stays leased without a heartbeat before another worker may take it.
    pub lease_secs: u64,
    /// Attempts of one step before its operation fails.
    pub max_attempts: u32,
    /// How long a provision or clone waits for object storage that does not answer (retrying,
    /// and saying so in its last operation) before it fails.
    pub storage_retry_secs: u64,
    /// How often an idle worker looks for jobs left by other brokers or by a restart.
    pub poll_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorSettings {
    /// How often the broker checks that every live instance's cluster is running.
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `plain` or `json`.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `wayback=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// How long archives are kept beyond each plan's recovery window, and how often that is enforced.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a deleted instance keeps its whole archive before the reaper removes it.
    pub deleted_days: u64,
    /// How often backups and WAL are pruned and deleted instances reaped.
    pub interval_secs: u64,
}

/// How long the audit trail (`audit_events`) is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Days an audit row is kept (0: forever). An instance's provision or clone row stays
    /// while the instance is known.
    pub retention_days: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            retention_days: 400,
        }
    }
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            deleted_days: 14,
            interval_secs: 3600,
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            username: "admin".into(),
            password: None,
        }
    }
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            bin_dir: None,
            os_user: "wayback".into(),
            listen_address: "127.0.0.1".into(),
            advertise_host: None,
            port_min: 40000,
            port_max: 40999,
            start_timeout_secs: 60,
            use_template: true,
            log_keep_mb: 64,
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            background_concurrency: 2,
            lease_secs: 15,
            max_attempts: 5,
            storage_retry_secs: 600,
            poll_interval_ms: 500,
        }
    }
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self { interval_secs: 5 }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Plain,
            level: "info".into(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
        }
    }
}

/// Who may read `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAuth {
    /// Anyone who reaches the broker (the default of the plain config, for compatibility).
    None,
    /// The broker's own basic-auth credentials (`broker.username` / `broker.password`).
    Broker,
    /// Credentials of its own (`metrics.username` / `metrics.password`), e.g. for Prometheus.
    Own,
}

/// `GET /metrics`: who may read it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    pub auth: MetricsAuth,
    /// Basic-auth user name when `auth = "own"`.
    pub username: String,
    /// Basic-auth password when `auth = "own"` (required then).
    pub password: Option<SecretString>,
    /// Sample running clusters' sessions and lock waits every second (issue 19).
    pub sampling: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            auth: MetricsAuth::None,
            username: "metrics".into(),
            password: None,
            sampling: true,
        }
    }
}

/// How long the state database keeps what is finished.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    /// Days a finished job or a superseded operation is kept before the maintenance loop deletes
    /// it (0: keep forever).
    pub retention_days: u64,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self { retention_days: 30 }
    }
}

/// When the copies of deleted instances kept for a fast undo (issue 16) give way to free space:
/// the oldest goes first while the data file system has less free than either floor.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrashSettings {
    /// Bytes that must stay free on the data file system.
    pub min_free_bytes: u64,
    /// Share of the data file system (0 to 1) that must stay free.
    pub min_free_share: f64,
}

impl Default for TrashSettings {
    fn default() -> Self {
        Self {
            min_free_bytes: 2 * 1024 * 1024 * 1024,
            min_free_share: 0.1,
        }
    }
}

/// Restore drills (issue 18): how many run at once on one machine (the broker's own, or each
/// agent). Each drill restores a whole instance, so one at a time is the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillSettings {
    /// Drills running at once per machine (0: no drills at all).
    pub max_concurrent_per_machine: u32,
}

impl Default for DrillSettings {
    fn default() -> Self {
        Self {
            max_concurrent_per_machine: 1,
        }
    }
}

/// `cf db-diagnose` (issue 19): every threshold is a fixed constant of `api::diagnose`
/// but this one, which an operator whose apps hold transactions open on purpose may raise (and
/// the tests lower, so that a test need not wait a minute).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiagnoseSettings {
    /// A transaction open (or idle in transaction) this long is YELLOW; ten times this, RED.
    pub long_transaction_secs: u64,
}

impl Default for DiagnoseSettings {
    fn default() -> Self {
        Self {
            long_transaction_secs: 60,
        }
    }
}

/// High availability (issue 15): the coordinator Patroni keeps each HA instance's leader lock
/// in. Empty: HA plans (`metadata.wayback.ha`) are refused with a message naming this setting.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaSettings {
    /// etcd client endpoints, `host:port` each (e.g. three etcd members).
    pub dcs_endpoints: Vec<String>,
}

impl HaSettings {
    /// Checks each endpoint is `host:port`; the problem, naming the endpoint.
    pub fn check(&self) -> Result<(), String> {
        for e in &self.dcs_endpoints {
            let ok = e.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(format!("{e:?} is not host:port (an etcd client endpoint)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod ha_tests {
    use super::HaSettings;

    #[test]
    fn dcs_endpoints_must_be_host_and_port() {
        let with = |e: &[&str]| HaSettings {
            dcs_endpoints: e.iter().map(|s| s.to_string()).collect(),
        };
        assert!(with(&[]).check().is_ok());
        assert!(with(&["127.0.0.1:2379", "etcd-0.internal:2379"])
            .check()
            .is_ok());
        for bad in [
            "127.0.0.1",
            ":2379",
            "http://etcd:2379",
            "etcd:0",
            "etcd:99999",
        ] {
            let e = with(&[bad]).check().unwrap_err();
            assert!(e.contains(bad) && e.contains("host:port"), "{e}");
        }
    }
}

/// The dashboard's single sign-on (issue 19): the UAA client the catalog advertises as the
/// service's `dashboard_client` (the Cloud Controller creates it at broker registration, with
/// the redirect URI `<external_url>/dashboard/callback`). Off while `client_id` is empty: no
/// `dashboard_client` is advertised and the dashboard says sign-in is not configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSettings {
    /// The UAA client id (unique on the platform, e.g. `wayback-dashboard`).
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// How long a dashboard session lasts after sign-in (minutes; then sign in again).
    pub session_minutes: u64,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            client_secret: None,
            session_minutes: 30,
        }
    }
}

impl DashboardSettings {
    /// True when single sign-on is configured.
    pub fn enabled(&self) -> bool {
        !self.client_id.is_empty()
    }
}
