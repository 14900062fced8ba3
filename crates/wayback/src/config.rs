//! Settings: compiled defaults → optional TOML file (`--config`) → environment → command line.
//!
//! Every setting has one environment variable, listed in [`ENV_VARS`] together with its TOML key,
//! default and meaning; `wayback config-reference` prints that table, and the README's
//! configuration reference is generated from it, so the docs cannot drift from the code.
//! Secrets (`broker.password`, `database_url`, `cc.client_secret`) are [`SecretString`]s: they never reach `Debug`
//! output or logs. Must not import anything but `domain`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// All of Wayback's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the broker's HTTP server listens on.
    pub listen: SocketAddr,
    /// Root of everything the broker keeps on disk (state database, clusters, template).
    pub data_dir: PathBuf,
    /// A catalog file replacing the built-in `catalog.json`.
    pub catalog: Option<PathBuf>,
    /// State database: `sqlite://…` or `postgres://…`. Default: the PostgreSQL service bound to
    /// the app when `VCAP_SERVICES` is set (`startup::database_url`), else SQLite under `data_dir`.
    pub database_url: Option<SecretString>,
    /// The URL at which users reach this broker (used for `dashboard_url`).
    pub external_url: Option<String>,
    pub broker: BrokerSettings,
    pub postgres: PostgresSettings,
    pub jobs: JobSettings,
    pub supervisor: SupervisorSettings,
    pub log: LogSettings,
    pub http: HttpSettings,
    /// Where WAL and base backups go (`url` = `s3://bucket/prefix` or `file:///dir`).
    pub archive: crate::storage::StorageSettings,
    pub wal: WalSettings,
    pub retention: RetentionSettings,
    pub backup: BackupSettings,
    /// The Cloud Controller, asked for instance names the platform did not send.
    pub cc: CcSettings,
    /// The broker's agents (VMs that run the clusters); none: clusters run on the broker's VM.
    pub agents: AgentsSettings,
    /// This process as an agent (`wayback agent`).
    pub agent: AgentSettings,
}

/// The agents the broker places instances on. Empty `urls`: the local runtime (clusters on the
/// broker's own machine).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsSettings {
    /// `name=https://host:port` entries, comma separated. The name is recorded with each
    /// instance placed there, so it must stay the same when the agent's address changes.
    pub urls: Vec<AgentEndpoint>,
    /// Basic-auth user name every agent accepts.
    pub username: String,
    pub password: Option<SecretString>,
    /// PEM file of the CA (or self-signed certificate) the agents' TLS certificates chain to.
    pub ca_cert: Option<PathBuf>,
    pub connect_timeout_secs: u64,
    /// The longest one ordinary call to an agent may take (backups and restores are polled).
    pub request_timeout_secs: u64,
}

/// One agent: its stable name and its base URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentEndpoint {
    pub name: String,
    pub url: String,
}

impl Default for AgentsSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            username: "wayback-agent".into(),
            password: None,
            ca_cert: None,
            connect_timeout_secs: 5,
            // Above an agent's own postgres.start_timeout_secs (60): a start answers in time.
            request_timeout_secs: 120,
        }
    }
}

/// `wayback agent`: the clusters of this VM behind an authenticated HTTP(S) API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    pub listen: SocketAddr,
    pub username: String,
    pub password: Option<SecretString>,
    /// PEM certificate chain and private key; both unset: plain HTTP (tests and labs only).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Most instances this agent takes (also bounded by the port range).
    pub max_instances: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".parse().expect("static address"),
            username: "wayback-agent".into(),
            password: None,
            tls_cert: None,
            tls_key: None,
            max_instances: 50,
        }
    }
}

/// Parses `name=url[,name=url…]`.
pub fn parse_agent_list(v: &str) -> Result<Vec<AgentEndpoint>, String> {
    let mut out: Vec<AgentEndpoint> = Vec::new();
    for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?} is not name=URL"))?;
        let (name, url) = (name.trim(), url.trim().trim_end_matches('/'));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "agent name {name:?} must be letters, digits, '-', '_' or '.'"
            ));
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!("agent {name}: {url:?} is not an http(s) URL"));
        }
        if out.iter().any(|a| a.name == name) {
            return Err(format!("agent name {name:?} appears twice"));
        }
        out.push(AgentEndpoint {
            name: name.to_string(),
            url: url.to_string(),
        });
    }
    Ok(out)
}

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
    /// Raw tar bytes per part.
    pub part_bytes: u64,
    /// The longest `pg_basebackup` may stream before the backup fails.
    pub stream_timeout_secs: u64,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            compression_level: 1,
            uploads_in_flight: 3,
            part_bytes: crate::archive::manifest::PART_RAW_BYTES,
            stream_timeout_secs: 6 * 3600,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// How many operations run at the same time.
    pub concurrency: usize,
    /// How long a claimed job stays leased without a heartbeat before another worker may take it.
    pub lease_secs: u64,
    /// Attempts of one step before its operation fails.
    pub max_attempts: u32,
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

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            deleted_days: 14,
            interval_secs: 3600,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            data_dir: PathBuf::from("wayback-data"),
            catalog: None,
            database_url: None,
            external_url: None,
            broker: BrokerSettings::default(),
            postgres: PostgresSettings::default(),
            jobs: JobSettings::default(),
            supervisor: SupervisorSettings::default(),
            log: LogSettings::default(),
            http: HttpSettings::default(),
            archive: crate::storage::StorageSettings::default(),
            wal: WalSettings::default(),
            retention: RetentionSettings::default(),
            backup: BackupSettings::default(),
            cc: CcSettings::default(),
            agents: AgentsSettings::default(),
            agent: AgentSettings::default(),
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
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            lease_secs: 15,
            max_attempts: 5,
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

/// A configuration problem, named so that an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}={value:?} is not valid: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// One environment variable and the setting it overrides.
pub struct EnvVar {
    pub name: &'static str,
    pub key: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    apply: fn(&mut Settings, &str) -> Result<(), String>,
}

fn parse<T: std::str::FromStr>(v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse::<T>().map_err(|e| e.to_string())
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn non_empty(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

macro_rules! env_var {
    ($name:literal, $key:literal, $default:literal, $help:literal, |$s:ident, $v:ident| $body:expr) => {
        EnvVar {
            name: $name,
            key: $key,
            default: $default,
            help: $help,
            apply: |$s, $v| {
                $body;
                Ok(())
            },
        }
    };
}

/// Every environment variable Wayback reads, in the order the reference lists them.
pub const ENV_VARS: &[EnvVar] = &[
    env_var!("WAYBACK_LISTEN", "listen", "127.0.0.1:8080", "Address and port of the broker's HTTP server (`--listen`).", |s, v| s.listen = parse(v)?),
    env_var!("WAYBACK_DATA_DIR", "data_dir", "wayback-data", "Directory for the state database, clusters and template (`--data-dir`).", |s, v| s.data_dir = PathBuf::from(v)),
    env_var!("WAYBACK_CATALOG", "catalog", "built-in catalog.json", "Path of a catalog file to use instead of the built-in one (`--catalog`).", |s, v| s.catalog = non_empty(v).map(PathBuf::from)),
    env_var!("WAYBACK_DATABASE_URL", "database_url", "from `VCAP_SERVICES`, else sqlite://<data_dir>/wayback.db", "State database URL: `sqlite://PATH` or `postgres://…` (several brokers may share one PostgreSQL database). Unset and `VCAP_SERVICES` present (cf push): the `uri` (else `jdbcUrl`) of the bound service named or tagged `wayback-state`, else of one tagged or labelled postgres, else of the first with a PostgreSQL URL; the service used is logged.", |s, v| s.database_url = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_EXTERNAL_URL", "external_url", "http://<listen>", "URL at which users reach the broker; used for instances' dashboard_url.", |s, v| s.external_url = non_empty(v)),
    env_var!("WAYBACK_BROKER_USERNAME", "broker.username", "admin", "Basic-auth user name for OSB requests.", |s, v| s.broker.username = v.to_string()),
    env_var!("WAYBACK_BROKER_PASSWORD", "broker.password", "generated into <data_dir>/broker-password", "Basic-auth password for OSB requests (secret).", |s, v| s.broker.password = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_PG_BIN_DIR", "postgres.bin_dir", "/usr/lib/postgresql/15/bin or `pg_config --bindir`", "Directory of the PostgreSQL 15 server binaries.", |s, v| s.postgres.bin_dir = non_empty(v).map(PathBuf::from)),
    env_var!("WAYBACK_PG_OS_USER", "postgres.os_user", "wayback", "Unprivileged OS user that runs clusters when the broker runs as root.", |s, v| s.postgres.os_user = v.trim().to_string()),
    env_var!("WAYBACK_PG_LISTEN_ADDRESS", "postgres.listen_address", "127.0.0.1", "Address every cluster listens on.", |s, v| s.postgres.listen_address = v.trim().to_string()),
    env_var!("WAYBACK_PG_ADVERTISE_HOST", "postgres.advertise_host", "listen_address", "Host written into binding credentials.", |s, v| s.postgres.advertise_host = non_empty(v)),
    env_var!("WAYBACK_PG_PORT_MIN", "postgres.port_min", "40000", "Lowest port handed to a cluster.", |s, v| s.postgres.port_min = parse(v)?),
    env_var!("WAYBACK_PG_PORT_MAX", "postgres.port_max", "40999", "Highest port handed to a cluster.", |s, v| s.postgres.port_max = parse(v)?),
    env_var!("WAYBACK_PG_START_TIMEOUT_SECS", "postgres.start_timeout_secs", "60", "Seconds a cluster may take to start or stop.", |s, v| s.postgres.start_timeout_secs = parse(v)?),
    env_var!("WAYBACK_PG_USE_TEMPLATE", "postgres.use_template", "true", "Copy a pre-initialised data directory (new system identifier each) instead of running initdb per instance.", |s, v| s.postgres.use_template = parse_bool(v)?),
    env_var!("WAYBACK_JOBS_CONCURRENCY", "jobs.concurrency", "8", "Operations that run at the same time.", |s, v| s.jobs.concurrency = parse(v)?),
    env_var!("WAYBACK_JOBS_LEASE_SECS", "jobs.lease_secs", "15", "Seconds a job stays claimed without a heartbeat; after a crash, another broker (or the restarted one) resumes it after this.", |s, v| s.jobs.lease_secs = parse(v)?),
    env_var!("WAYBACK_JOBS_MAX_ATTEMPTS", "jobs.max_attempts", "5", "Attempts of one step before its operation fails.", |s, v| s.jobs.max_attempts = parse(v)?),
    env_var!("WAYBACK_JOBS_POLL_INTERVAL_MS", "jobs.poll_interval_ms", "500", "How often an idle worker looks for runnable jobs.", |s, v| s.jobs.poll_interval_ms = parse(v)?),
    env_var!("WAYBACK_SUPERVISOR_INTERVAL_SECS", "supervisor.interval_secs", "5", "How often every live cluster is checked and restarted if it is down.", |s, v| s.supervisor.interval_secs = parse(v)?),
        env_var!("WAYBACK_ARCHIVE_URL", "archive.url", "file://<data_dir>/archive", "Where WAL and base backups are archived: `s3://bucket/prefix` or `file:///dir` (`--archive-url`). S3 endpoint, region and keys: `archive.endpoint`, `archive.region`, `archive.access_key_id`, `archive.secret_access_key`, else `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`.", |s, v| s.archive.url = v.trim().to_string()),
    env_var!("WAYBACK_WAL_COMPRESSION_LEVEL", "wal.compression_level", "1", "zstd level for archived WAL (0: uncompressed).", |s, v| s.wal.compression_level = parse(v)?),
    env_var!("WAYBACK_WAL_PUSH_AHEAD", "wal.push_ahead", "4", "Ready WAL segments uploaded in parallel with the one PostgreSQL asked for.", |s, v| s.wal.push_ahead = parse(v)?),
    env_var!("WAYBACK_WAL_FETCH_AHEAD", "wal.fetch_ahead", "8", "WAL segments downloaded in parallel with the one recovery asked for.", |s, v| s.wal.fetch_ahead = parse(v)?),
    env_var!("WAYBACK_WAL_ARCHIVE_TIMEOUT_SECS", "wal.archive_timeout_secs", "60", "Longest time a commit waits before its segment is archived (PostgreSQL's archive_timeout).", |s, v| s.wal.archive_timeout_secs = parse(v)?),
    env_var!("WAYBACK_WAL_FINAL_ARCHIVE_TIMEOUT_SECS", "wal.final_archive_timeout_secs", "120", "How long a deprovision waits for the final WAL to reach the archive before failing (the instance is then kept).", |s, v| s.wal.final_archive_timeout_secs = parse(v)?),
    env_var!("WAYBACK_WAL_BIN", "wal.wayback_bin", "this executable", "The wayback binary PostgreSQL runs as archive_command and restore_command.", |s, v| s.wal.wayback_bin = non_empty(v).map(PathBuf::from)),
    env_var!("WAYBACK_BACKUP_COMPRESSION_LEVEL", "backup.compression_level", "1", "zstd level of base backup parts (1–19).", |s, v| s.backup.compression_level = parse(v)?),
    env_var!("WAYBACK_BACKUP_UPLOADS_IN_FLIGHT", "backup.uploads_in_flight", "3", "Base backup parts compressed and uploaded at the same time (memory: this many 64 MiB parts, plus one).", |s, v| s.backup.uploads_in_flight = parse(v)?),
    env_var!("WAYBACK_BACKUP_PART_BYTES", "backup.part_bytes", "67108864", "Raw tar bytes per base backup part (each part is one zstd frame and one object).", |s, v| s.backup.part_bytes = parse(v)?),
    env_var!("WAYBACK_BACKUP_STREAM_TIMEOUT_SECS", "backup.stream_timeout_secs", "21600", "The longest pg_basebackup may stream before a base backup fails.", |s, v| s.backup.stream_timeout_secs = parse(v)?),
    env_var!("WAYBACK_RETENTION_DELETED_DAYS", "retention.deleted_days", "14", "Days a deleted instance keeps its whole archive (for undo) before the reaper removes all but its `instance.json`.", |s, v| s.retention.deleted_days = parse(v)?),
    env_var!("WAYBACK_RETENTION_INTERVAL_SECS", "retention.interval_secs", "3600", "How often backups and WAL older than each plan's recovery window are pruned and expired deleted instances reaped (`wayback prune` does it once).", |s, v| s.retention.interval_secs = parse(v)?),
    env_var!("WAYBACK_CC_API_URL", "cc.api_url", "unset (no Cloud Controller lookups)", "Cloud Controller API URL, e.g. `https://api.sys.example.com`: instance names missing from a request's context are asked from its v3 API.", |s, v| s.cc.api_url = non_empty(v)),
    env_var!("WAYBACK_CC_UAA_URL", "cc.uaa_url", "the CC root's `uaa` link", "UAA URL for the client-credentials token (found from the CC's `GET /` when unset).", |s, v| s.cc.uaa_url = non_empty(v)),
    env_var!("WAYBACK_CC_CLIENT_ID", "cc.client_id", "none", "UAA client id; the client needs `cloud_controller.admin_read_only` or `cloud_controller.global_auditor`.", |s, v| s.cc.client_id = v.trim().to_string()),
    env_var!("WAYBACK_CC_CLIENT_SECRET", "cc.client_secret", "none", "UAA client secret (secret).", |s, v| s.cc.client_secret = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_CC_SKIP_TLS_VERIFY", "cc.skip_tls_verify", "false", "Accept any TLS certificate from the CC and UAA. For labs with self-signed certificates only.", |s, v| s.cc.skip_tls_verify = parse_bool(v)?),
    env_var!("WAYBACK_CC_CONNECT_TIMEOUT_SECS", "cc.connect_timeout_secs", "5", "Seconds to connect to the CC or UAA.", |s, v| s.cc.connect_timeout_secs = parse(v)?),
    env_var!("WAYBACK_CC_REQUEST_TIMEOUT_SECS", "cc.request_timeout_secs", "15", "Seconds one request to the CC or UAA may take.", |s, v| s.cc.request_timeout_secs = parse(v)?),
    env_var!("WAYBACK_CC_ATTEMPTS", "cc.attempts", "3", "Attempts of one CC or UAA call that fails transiently (5xx, 429, timeout), with jittered backoff between them.", |s, v| s.cc.attempts = parse(v)?),
    env_var!("WAYBACK_CC_RECONCILE_INTERVAL_SECS", "cc.reconcile_interval_secs", "600", "How often the names of live instances are refreshed from the CC (a rename seen only there is recorded).", |s, v| s.cc.reconcile_interval_secs = parse(v)?),
    env_var!("WAYBACK_AGENTS", "agents.urls", "none (clusters run on the broker's machine)", "The agents instances are placed on: `name=https://host:port` entries, comma separated (in the TOML file: a list of `{ name, url }` tables). Each new instance goes to the reachable agent with the most free room; the name is recorded with the instance, so keep it when an address changes.", |s, v| s.agents.urls = parse_agent_list(v)?),
    env_var!("WAYBACK_AGENTS_USERNAME", "agents.username", "wayback-agent", "Basic-auth user name the broker presents to its agents.", |s, v| s.agents.username = v.trim().to_string()),
    env_var!("WAYBACK_AGENTS_PASSWORD", "agents.password", "none", "Basic-auth password the broker presents to its agents (secret).", |s, v| s.agents.password = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_AGENTS_CA_CERT", "agents.ca_cert", "the system's roots", "PEM file of the CA the agents' TLS certificates are issued by.", |s, v| s.agents.ca_cert = non_empty(v).map(PathBuf::from)),
    env_var!("WAYBACK_AGENTS_CONNECT_TIMEOUT_SECS", "agents.connect_timeout_secs", "5", "Seconds to connect to an agent.", |s, v| s.agents.connect_timeout_secs = parse(v)?),
    env_var!("WAYBACK_AGENTS_REQUEST_TIMEOUT_SECS", "agents.request_timeout_secs", "120", "Seconds one call to an agent may take; keep it above the agents' `postgres.start_timeout_secs` (base backups wait `backup.stream_timeout_secs` more; restores are polled).", |s, v| s.agents.request_timeout_secs = parse(v)?),
    env_var!("WAYBACK_AGENT_LISTEN", "agent.listen", "127.0.0.1:8443", "`wayback agent`: address and port of the agent's API.", |s, v| s.agent.listen = parse(v)?),
    env_var!("WAYBACK_AGENT_USERNAME", "agent.username", "wayback-agent", "`wayback agent`: basic-auth user name the broker must present.", |s, v| s.agent.username = v.trim().to_string()),
    env_var!("WAYBACK_AGENT_PASSWORD", "agent.password", "none (required)", "`wayback agent`: basic-auth password the broker must present (secret).", |s, v| s.agent.password = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_AGENT_TLS_CERT", "agent.tls_cert", "none (plain HTTP)", "`wayback agent`: PEM certificate chain served on `agent.listen`; with `agent.tls_key`.", |s, v| s.agent.tls_cert = non_empty(v).map(PathBuf::from)),
    env_var!("WAYBACK_AGENT_TLS_KEY", "agent.tls_key", "none (plain HTTP)", "`wayback agent`: PEM private key of `agent.tls_cert`.", |s, v| s.agent.tls_key = non_empty(v).map(PathBuf::from)),
    env_var!("WAYBACK_AGENT_MAX_INSTANCES", "agent.max_instances", "50", "`wayback agent`: most instances this agent takes (the broker places no more there); also bounded by the port range.", |s, v| s.agent.max_instances = parse(v)?),
    env_var!("WAYBACK_LOG_FORMAT", "log.format", "plain", "`plain` or `json`.", |s, v| s.log.format = match v.trim() { "plain" => LogFormat::Plain, "json" => LogFormat::Json, _ => return Err("expected plain or json".into()) }),
    env_var!("WAYBACK_LOG", "log.level", "info", "Log filter, e.g. `info` or `wayback=debug,info`.", |s, v| s.log.level = v.trim().to_string()),
    env_var!("WAYBACK_HTTP_MAX_BODY_BYTES", "http.max_body_bytes", "262144", "Largest request body the broker accepts.", |s, v| s.http.max_body_bytes = parse(v)?),
];

impl Settings {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, |name| std::env::var(name).ok())
    }

    /// As [`Settings::load`], with the environment given as a lookup function (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut settings = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => Settings::default(),
        };
        for var in ENV_VARS {
            if let Some(value) = env(var.name) {
                (var.apply)(&mut settings, &value).map_err(|message| ConfigError::Env {
                    name: var.name,
                    value: if var.name.ends_with("PASSWORD")
                        || var.name.ends_with("URL")
                        || var.name.ends_with("SECRET")
                    {
                        "<redacted>".into()
                    } else {
                        value.clone()
                    },
                    message,
                })?;
            }
        }
        Ok(settings)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if self.broker.username.is_empty() {
            return invalid("broker.username", "must not be empty");
        }
        if self.postgres.port_min == 0 || self.postgres.port_min > self.postgres.port_max {
            return invalid(
                "postgres.port_min",
                "must be at least 1 and not above postgres.port_max",
            );
        }
        if self.postgres.os_user.is_empty() {
            return invalid("postgres.os_user", "must not be empty");
        }
        if self.jobs.concurrency == 0 {
            return invalid("jobs.concurrency", "must be at least 1");
        }
        if self.jobs.max_attempts == 0 {
            return invalid("jobs.max_attempts", "must be at least 1");
        }
        if self.jobs.lease_secs < 2 {
            return invalid("jobs.lease_secs", "must be at least 2");
        }
        if !(0..=19).contains(&self.wal.compression_level) {
            return invalid("wal.compression_level", "must be between 0 and 19");
        }
        if self.wal.archive_timeout_secs == 0 {
            return invalid("wal.archive_timeout_secs", "must be at least 1");
        }
        if !(1..=19).contains(&self.backup.compression_level) {
            return invalid("backup.compression_level", "must be between 1 and 19");
        }
        if !(1..=16).contains(&self.backup.uploads_in_flight) {
            return invalid("backup.uploads_in_flight", "must be between 1 and 16");
        }
        if !((64 << 10)..=(1 << 30)).contains(&self.backup.part_bytes) {
            return invalid("backup.part_bytes", "must be between 65536 and 1073741824");
        }
        if self.backup.stream_timeout_secs == 0 {
            return invalid("backup.stream_timeout_secs", "must be at least 1");
        }
        if self.retention.interval_secs == 0 {
            return invalid("retention.interval_secs", "must be at least 1");
        }
        if self.http.max_body_bytes < 1024 {
            return invalid("http.max_body_bytes", "must be at least 1024");
        }
        if !self.agents.urls.is_empty() {
            if self.agents.password.is_none() {
                return invalid(
                    "agents.password",
                    "agents.urls is set: the agents' basic-auth password is needed too",
                );
            }
            if self.agents.username.is_empty() {
                return invalid("agents.username", "must not be empty");
            }
            if self.agents.request_timeout_secs == 0 || self.agents.connect_timeout_secs == 0 {
                return invalid("agents.request_timeout_secs", "timeouts must be at least 1");
            }
        }
        if self.agent.tls_cert.is_some() != self.agent.tls_key.is_some() {
            return invalid(
                "agent.tls_cert",
                "agent.tls_cert and agent.tls_key go together: set both or neither",
            );
        }
        if self.agent.max_instances == 0 {
            return invalid("agent.max_instances", "must be at least 1");
        }
        if self.cc.api_url.is_some() {
            if self.cc.client_id.is_empty() || self.cc.client_secret.is_none() {
                return invalid(
                    "cc.client_id",
                    "cc.api_url is set: cc.client_id and cc.client_secret are needed too",
                );
            }
            if self.cc.attempts == 0 {
                return invalid("cc.attempts", "must be at least 1");
            }
            if self.cc.request_timeout_secs == 0 || self.cc.connect_timeout_secs == 0 {
                return invalid("cc.request_timeout_secs", "timeouts must be at least 1");
            }
        }
        if self.cc.reconcile_interval_secs == 0 {
            return invalid("cc.reconcile_interval_secs", "must be at least 1");
        }
        Ok(())
    }

    /// The host written into binding credentials.
    pub fn advertise_host(&self) -> String {
        if let Some(h) = &self.postgres.advertise_host {
            return h.clone();
        }
        match self.postgres.listen_address.as_str() {
            "*" | "0.0.0.0" | "::" | "" => "127.0.0.1".into(),
            other => other.to_string(),
        }
    }

    /// Markdown table of every environment variable (the README's configuration reference).
    pub fn reference_markdown() -> String {
        let mut out = String::from(
            "| environment variable | config file key | default | meaning |\n|---|---|---|---|\n",
        );
        for v in ENV_VARS {
            out.push_str(&format!(
                "| `{}` | `{}` | {} | {} |\n",
                v.name, v.key, v.default, v.help
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn layers_defaults_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wayback.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[postgres]\nport_min = 41000\nport_max = 41010\n[broker]\nusername = \"file-user\"\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("WAYBACK_BROKER_USERNAME", "env-user"),
                ("WAYBACK_BROKER_PASSWORD", "s3cret"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 9000, "file overrides default");
        assert_eq!(s.postgres.port_min, 41000);
        assert_eq!(s.broker.username, "env-user", "env overrides file");
        assert_eq!(s.broker.password.unwrap().expose_secret(), "s3cret");
        assert_eq!(s.jobs.concurrency, 8, "default kept");
    }

    #[test]
    fn bad_values_name_the_variable_and_hide_secrets() {
        let e = Settings::load_from(None, env(&[("WAYBACK_PG_PORT_MIN", "lots")])).unwrap_err();
        assert!(e.to_string().contains("WAYBACK_PG_PORT_MIN"), "{e}");
        let e = Settings::load_from(None, env(&[("WAYBACK_LISTEN", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("WAYBACK_LISTEN"), "{e}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Settings::load_from(None, env(&[("WAYBACK_BROKER_PASSWORD", "hunter2")])).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn validate_refuses_inverted_port_range() {
        let mut s = Settings::default();
        s.postgres.port_min = 5000;
        s.postgres.port_max = 4000;
        assert!(s.validate().is_err());
        assert!(Settings::default().validate().is_ok());
    }

    #[test]
    fn agents_come_as_name_url_pairs_and_bad_ones_are_named() {
        let s = Settings::load_from(
            None,
            env(&[
                (
                    "WAYBACK_AGENTS",
                    " db-1=https://10.0.1.5:8443/ , db-2=http://10.0.1.6:8443",
                ),
                ("WAYBACK_AGENTS_PASSWORD", "agent-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.agents.urls,
            vec![
                AgentEndpoint {
                    name: "db-1".into(),
                    url: "https://10.0.1.5:8443".into()
                },
                AgentEndpoint {
                    name: "db-2".into(),
                    url: "http://10.0.1.6:8443".into()
                },
            ]
        );
        s.validate().unwrap();
        assert!(!format!("{s:?}").contains("agent-secret"));
        for (bad, says) in [
            ("db-1", "not name=URL"),
            ("db 1=https://x", "letters, digits"),
            ("a=https://x,a=https://y", "appears twice"),
            ("a=10.0.1.5:8443", "not an http(s) URL"),
        ] {
            let e = Settings::load_from(None, env(&[("WAYBACK_AGENTS", bad)])).unwrap_err();
            assert!(
                e.to_string().contains("WAYBACK_AGENTS") && e.to_string().contains(says),
                "{bad}: {e}"
            );
        }
        // Agents without the password they need, and half a TLS pair, are refused by name.
        let mut s = Settings::load_from(None, env(&[("WAYBACK_AGENTS", "a=https://x")])).unwrap();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("agents.password"));
        s.agents.urls.clear();
        s.agent.tls_cert = Some("/etc/agent.crt".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("agent.tls_key"));
    }
}
