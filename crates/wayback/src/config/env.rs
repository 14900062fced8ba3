//! The environment: one variable per setting, with its TOML key, default and meaning, in
//! [`ENV_VARS`]. `wayback config-reference` prints the table and the README's configuration
//! reference is generated from it (a test keeps them equal).

use std::path::PathBuf;

use secrecy::SecretString;

use super::{parse_agent_list, LogFormat, MetricsAuth, Settings};

/// One environment variable and the setting it overrides.
pub struct EnvVar {
    pub name: &'static str,
    pub key: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub(super) apply: fn(&mut Settings, &str) -> Result<(), String>,
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
    env_var!("WAYBACK_DATA_DIR", "data_dir", "wayback-data", "Directory for the state database, clusters and template (`--data-dir`). Keep its path short: a cluster's socket, `<data_dir>/clusters/<instance id>/run/.s.PGSQL.<port>` (an HA member's directory is `<instance id>~m1`, 3 bytes more), must fit the 107 bytes a unix socket path allows, so with 36-character instance GUIDs and 5-digit ports the data directory's path is at most 42 bytes (39 with HA plans); a provision that would exceed it fails naming the path.", |s, v| s.data_dir = PathBuf::from(v)),
    env_var!("WAYBACK_CATALOG", "catalog", "built-in catalog.json", "Path of a catalog file to use instead of the built-in one (`--catalog`).", |s, v| s.catalog = non_empty(v).map(PathBuf::from)),
    env_var!("WAYBACK_DATABASE_URL", "database_url", "from `VCAP_SERVICES`, else sqlite://<data_dir>/wayback.db", "State database URL: `sqlite://PATH` or `postgres://…` (several brokers may share one PostgreSQL database). Unset and `VCAP_SERVICES` present (cf push): the `uri` (else `jdbcUrl`) of the bound service named or tagged `wayback-state`, else of one tagged or labelled postgres, else of the first with a PostgreSQL URL; the service used is logged.", |s, v| s.database_url = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_ENCRYPTION_KEYS", "encryption.keys", "generated once into <data_dir>/encryption-key", "Keys that seal secrets in the state database (secret): `id:base64,id:base64`, each 32 random bytes in base64 (`openssl rand -base64 32`); ids of letters, digits, `.`, `_`, `-`. Keep every key that sealed something until `wayback rekey` has run; losing a key loses what it sealed.", |s, v| s.encryption.keys = super::encryption::parse_key_list(v)?),
    env_var!("WAYBACK_ENCRYPTION_CURRENT_KEY", "encryption.current_key", "the only configured key", "Id of the key that seals new secrets (required when several keys are configured).", |s, v| s.encryption.current_key = non_empty(v)),
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
    env_var!("WAYBACK_PG_LOG_KEEP_MB", "postgres.log_keep_mb", "64", "MiB of server log each cluster keeps in `clusters/<id>/log/`: the server rotates its log every eighth of this (and daily) and the oldest files beyond it are deleted at every start and supervisor check (1–1048576).", |s, v| s.postgres.log_keep_mb = parse(v)?),
    env_var!("WAYBACK_JOBS_CONCURRENCY", "jobs.concurrency", "8", "User-facing operations (provision, clone, update, deprovision, bind, unbind) that run at the same time; background jobs never take these slots.", |s, v| s.jobs.concurrency = parse(v)?),
    env_var!("WAYBACK_JOBS_BACKGROUND_CONCURRENCY", "jobs.background_concurrency", "2", "Background jobs (base backups) one broker runs at the same time, in their own lane (1–16; each backup holds a few parts in memory and keeps a core busy compressing).", |s, v| s.jobs.background_concurrency = parse(v)?),
    env_var!("WAYBACK_JOBS_LEASE_SECS", "jobs.lease_secs", "15", "Seconds a job stays claimed without a heartbeat (renewed every third of it while the job runs; a job whose lease is lost stops); after a crash, another broker (or the restarted one) resumes it after this.", |s, v| s.jobs.lease_secs = parse(v)?),
    env_var!("WAYBACK_JOBS_MAX_ATTEMPTS", "jobs.max_attempts", "5", "Attempts of one step before its operation fails.", |s, v| s.jobs.max_attempts = parse(v)?),
    env_var!("WAYBACK_JOBS_STORAGE_RETRY_SECS", "jobs.storage_retry_secs", "600", "How long a provision or clone waits for object storage that does not answer (retrying, and saying so in its last operation) before it fails.", |s, v| s.jobs.storage_retry_secs = parse(v)?),
    env_var!("WAYBACK_JOBS_POLL_INTERVAL_MS", "jobs.poll_interval_ms", "500", "How often an idle worker looks for runnable jobs.", |s, v| s.jobs.poll_interval_ms = parse(v)?),
    env_var!("WAYBACK_SUPERVISOR_INTERVAL_SECS", "supervisor.interval_secs", "5", "How often every live cluster is checked and restarted if it is down.", |s, v| s.supervisor.interval_secs = parse(v)?),
        env_var!("WAYBACK_ARCHIVE_URL", "archive.url", "file://<data_dir>/archive", "Where WAL and base backups are archived: `s3://bucket/prefix` or `file:///dir` (`--archive-url`). S3 endpoint, region and keys: `archive.endpoint`, `archive.region`, `archive.access_key_id`, `archive.secret_access_key`, else `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`.", |s, v| s.archive.url = v.trim().to_string()),
    env_var!("WAYBACK_ARCHIVE_ENCRYPT", "archive.encrypt", "true", "Encrypt new instances' archives client-side (AES-256-GCM) with a data key per instance, wrapped by `encryption.keys` and kept in the archive as `key.json`. An instance keeps what it started with; off: new instances archive in clear. Losing the keys loses the encrypted archives.", |s, v| s.archive.encrypt = parse_bool(v)?),
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
    env_var!("WAYBACK_BACKUP_STALL_TIMEOUT_SECS", "backup.stall_timeout_secs", "300", "The longest pg_basebackup may send nothing (its checkpoint at the start; PostgreSQL waiting for the backup's end segment to be archived at the end) before the base backup fails, its parts are removed and the server's side of it is ended.", |s, v| s.backup.stall_timeout_secs = parse(v)?),
    env_var!("WAYBACK_RETENTION_DELETED_DAYS", "retention.deleted_days", "14", "Days a deleted instance keeps its whole archive (for undo) before the reaper removes all but its `instance.json`.", |s, v| s.retention.deleted_days = parse(v)?),
    env_var!("WAYBACK_RETENTION_INTERVAL_SECS", "retention.interval_secs", "3600", "How often backups and WAL older than each plan's recovery window are pruned and expired deleted instances reaped (`wayback prune` does it once).", |s, v| s.retention.interval_secs = parse(v)?),
    env_var!("WAYBACK_AUDIT_RETENTION_DAYS", "audit.retention_days", "400", "Days the audit trail (who provisioned, cloned, updated, bound, unbound, deleted) keeps a row; 0 keeps them forever. An instance's provision or clone row stays while the instance is known. Pruning of finished jobs and operations never touches it.", |s, v| s.audit.retention_days = parse(v)?),
    env_var!("WAYBACK_CC_API_URL", "cc.api_url", "unset (no Cloud Controller lookups)", "Cloud Controller API URL, e.g. `https://api.sys.example.com`: instance names missing from a request's context are asked from its v3 API.", |s, v| s.cc.api_url = non_empty(v)),
    env_var!("WAYBACK_CC_UAA_URL", "cc.uaa_url", "the CC root's `uaa` link", "UAA URL for the client-credentials token (found from the CC's `GET /` when unset).", |s, v| s.cc.uaa_url = non_empty(v)),
    env_var!("WAYBACK_CC_CLIENT_ID", "cc.client_id", "none", "UAA client id; the client needs `cloud_controller.admin_read_only` or `cloud_controller.global_auditor`.", |s, v| s.cc.client_id = v.trim().to_string()),
    env_var!("WAYBACK_CC_CLIENT_SECRET", "cc.client_secret", "none", "UAA client secret (secret).", |s, v| s.cc.client_secret = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_CC_SKIP_TLS_VERIFY", "cc.skip_tls_verify", "false", "Accept any TLS certificate from the CC and UAA. For labs with self-signed certificates only.", |s, v| s.cc.skip_tls_verify = parse_bool(v)?),
    env_var!("WAYBACK_CC_CONNECT_TIMEOUT_SECS", "cc.connect_timeout_secs", "5", "Seconds to connect to the CC or UAA.", |s, v| s.cc.connect_timeout_secs = parse(v)?),
    env_var!("WAYBACK_CC_REQUEST_TIMEOUT_SECS", "cc.request_timeout_secs", "15", "Seconds one request to the CC or UAA may take.", |s, v| s.cc.request_timeout_secs = parse(v)?),
    env_var!("WAYBACK_CC_ATTEMPTS", "cc.attempts", "3", "Attempts of one CC or UAA call that fails transiently (5xx, 429, timeout), with jittered backoff between them.", |s, v| s.cc.attempts = parse(v)?),
    env_var!("WAYBACK_CC_RECONCILE_INTERVAL_SECS", "cc.reconcile_interval_secs", "600", "How often the names of live instances are refreshed from the CC (a rename seen only there is recorded).", |s, v| s.cc.reconcile_interval_secs = parse(v)?),
    env_var!("WAYBACK_DASHBOARD_CLIENT_ID", "dashboard.client_id", "none (dashboard sign-in off)", "UAA client id of the dashboard's single sign-on, advertised in the catalog as the service's `dashboard_client` (the Cloud Controller creates the client when the broker is registered or updated; redirect URI `<external_url>/dashboard/callback`). Needs `cc.api_url` and `dashboard.client_secret`. Unset: no `dashboard_client`, and the dashboard says sign-in is not configured.", |s, v| s.dashboard.client_id = v.trim().to_string()),
    env_var!("WAYBACK_DASHBOARD_CLIENT_SECRET", "dashboard.client_secret", "none", "Secret of the dashboard's UAA client (secret; sent to the Cloud Controller in the catalog, which creates the client with it).", |s, v| s.dashboard.client_secret = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_DASHBOARD_SESSION_MINUTES", "dashboard.session_minutes", "30", "Minutes a dashboard session lasts after sign-in (1–720); then the user signs in again (usually without typing anything: the UAA remembers them).", |s, v| s.dashboard.session_minutes = parse(v)?),
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
    env_var!("WAYBACK_METRICS_AUTH", "metrics.auth", "none", "Who may read `GET /metrics`: `none` (anyone who reaches the broker), `broker` (the broker's basic-auth credentials) or `own` (`metrics.username` / `metrics.password`). The BOSH job sets `broker`.", |s, v| s.metrics.auth = match v.trim() { "none" => MetricsAuth::None, "broker" => MetricsAuth::Broker, "own" => MetricsAuth::Own, _ => return Err("expected none, broker or own".into()) }),
    env_var!("WAYBACK_METRICS_USERNAME", "metrics.username", "metrics", "Basic-auth user name for `GET /metrics` when `metrics.auth` is `own`.", |s, v| s.metrics.username = v.trim().to_string()),
    env_var!("WAYBACK_METRICS_PASSWORD", "metrics.password", "none", "Basic-auth password for `GET /metrics` when `metrics.auth` is `own` (secret; required then).", |s, v| s.metrics.password = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_METRICS_SAMPLING", "metrics.sampling", "true", "Sample every running cluster's sessions, longest transaction and lock waits each second and its database statistics every 15 s (kept for an hour in memory, shown in `/metrics`); never wakes a parked cluster. The broker's and every agent's own setting.", |s, v| s.metrics.sampling = parse_bool(v)?),
    env_var!("WAYBACK_STATE_RETENTION_DAYS", "state.retention_days", "30", "Days the state database keeps finished jobs and operations superseded by a newer one of the same instance or binding (0: forever); the newest operation of each instance and binding, deprovision tombstones and audit records are kept. The maintenance loop prunes every `retention.interval_secs`.", |s, v| s.state.retention_days = parse(v)?),
    env_var!("WAYBACK_TLS_CA_CERT", "tls.ca_cert", "generated", "The CA certificate that signs every cluster's TLS certificate: a path or the PEM itself (BOSH: a CredHub CA variable's `certificate`). Unset (with `tls.ca_key`): a CA generated once into `<data_dir>/tls/` (key 0600, directory 0700). With agents, give the broker and every agent the same pair.", |s, v| s.tls.ca_cert = non_empty(v)),
    env_var!("WAYBACK_TLS_CA_KEY", "tls.ca_key", "generated", "The CA's private key: a path or the PEM itself (secret; BOSH: the CredHub CA variable's `private_key`). Set both or neither.", |s, v| s.tls.ca_key = non_empty(v).map(SecretString::from)),
    env_var!("WAYBACK_TLS_REQUIRE", "tls.require", "false", "Clusters refuse TCP connections without TLS (`hostssl` only in `pg_hba.conf`; the unix socket stays for the broker's or agent's own admin connections). Existing clusters follow at their next start.", |s, v| s.tls.require = parse_bool(v)?),
    env_var!("WAYBACK_TLS_CLIENT_SSLMODE", "tls.client_sslmode", "verify-full", "The `sslmode` bindings' credentials ask for: `verify-full` (the app checks the CA in the credentials' `ca_certificate` and the host name) or `require` (encrypted, not verified: for apps that cannot be given the CA). In `uri` as `?sslmode=`, in `jdbcUrl` as `ssl=true&sslmode=` (with verify-full, pgjdbc's `SingleCertValidatingFactory` and the CA as `sslfactoryarg`).", |s, v| s.tls.client_sslmode = parse(v)?),
    env_var!("WAYBACK_TRASH_MIN_FREE_BYTES", "trash.min_free_bytes", "2147483648", "Bytes that must stay free on the data file system: below this, the copies of deleted instances kept for a fast undo (each plan's `metadata.wayback.undo.keep_hours`) are removed, oldest first. Their archives are never touched.", |s, v| s.trash.min_free_bytes = parse(v)?),
    env_var!("WAYBACK_TRASH_MIN_FREE_SHARE", "trash.min_free_share", "0.1", "Share of the data file system (0 to 1) that must stay free, as `trash.min_free_bytes`; whichever floor is higher wins.", |s, v| s.trash.min_free_share = parse(v)?),
    env_var!("WAYBACK_DRILLS_MAX_CONCURRENT_PER_MACHINE", "drills.max_concurrent_per_machine", "1", "Restore drills (a real restore of an instance's archive into a scratch copy, checked and deleted; see \"Proving restores\") running at once on one machine: the broker's own, or each agent. 0 turns drills off.", |s, v| s.drills.max_concurrent_per_machine = parse(v)?),
    env_var!("WAYBACK_DIAGNOSE_LONG_TRANSACTION_SECS", "diagnose.long_transaction_secs", "60", "`cf db-diagnose`: a transaction open (or idle in transaction) this many seconds is YELLOW, ten times as long RED (1 to 86400). The other thresholds are fixed (docs/wayback-api.md).", |s, v| s.diagnose.long_transaction_secs = parse(v)?),
    env_var!("WAYBACK_HA_DCS_ENDPOINTS", "ha.dcs_endpoints", "none", "etcd client endpoints (`host:port`, comma-separated) that Patroni keeps the leader lock of each HA instance in (see \"High availability\"). Empty: HA plans (`metadata.wayback.ha`) are refused.", |s, v| s.ha.dcs_endpoints = v.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect()),
];

impl Settings {
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
