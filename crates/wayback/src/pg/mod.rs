//! PostgreSQL process driver: everything Wayback does *to* a PostgreSQL 15 cluster on this
//! machine — finding the binaries, running them as the unprivileged cluster user, initdb and the
//! template copy (with a fresh system identifier), rendering `postgresql.conf` / `pg_hba.conf`,
//! `pg_ctl` start/stop with readiness taken from `postmaster.pid` and `pg_isready`, and the SQL
//! administration of roles and databases over the cluster's unix socket.
//!
//! The driver knows paths and ports, not service instances: the directory layout per instance is
//! the runtime's business (`runtime::local`), which hands us a [`ClusterDirs`]. It must not import
//! `osb`, `broker`, `store`, `jobs` or `runtime`.
//!
//! Secrets: the only secrets here are passwords. They travel as [`secrecy::SecretString`], reach
//! the server only as SCRAM verifiers (see [`scram`]), and never appear in a command line, an
//! error or a log line.

pub mod activity;
pub mod binaries;
pub mod conf;
pub mod control;
pub mod ctl;
pub mod fsutil;
pub mod initdb;
pub mod inspect;
mod inspect_db;
pub mod patroni;
pub mod pidfile;
pub mod process;
pub mod readonly;
pub mod scram;
pub mod server_log;
pub mod sessions;
pub mod sql;
pub mod wal_records;
pub mod wire;

use std::path::PathBuf;

pub use binaries::Binaries;
pub use process::{RunAs, Tools};

/// The superuser every Wayback cluster has. Apps never get it; the broker keeps its password
/// per instance in a file only the broker's user can read.
pub const SUPERUSER: &str = "wayback_admin";

/// The application database a new instance gets and its NOLOGIN owner role: the template is made
/// with them ([`initdb::build_template`]). Other names work too, at the cost of a `CREATE
/// DATABASE` per instance ([`sql::ensure_database`]).
pub const APP_DATABASE: &str = "app";
pub const APP_OWNER: &str = "app_owner";

/// Where one cluster's files are; the runtime decides the layout.
#[derive(Debug, Clone)]
pub struct ClusterDirs {
    /// The data directory (`PG_VERSION`, `postgresql.conf`, `postmaster.pid`, …).
    pub pgdata: PathBuf,
    /// `unix_socket_directories`: where `.s.PGSQL.<port>` lives.
    pub socket_dir: PathBuf,
    /// The postmaster's stderr (`pg_ctl -l`): what it says before the logging collector runs.
    pub log_file: PathBuf,
    /// The logging collector's directory (`log_directory`; see [`server_log`]).
    pub log_dir: PathBuf,
}

impl ClusterDirs {
    /// True once initdb or the template copy finished: `PG_VERSION` is the last thing we rename in.
    pub fn exists(&self) -> bool {
        self.pgdata.join("PG_VERSION").is_file()
    }
}

/// What can go wrong driving PostgreSQL. Messages name the instance or path and the command, never
/// a password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Binaries missing, wrong major version, `pg_config` not found.
    #[error("PostgreSQL 15 binaries are not usable: {0}")]
    Binaries(String),
    #[error(
        "OS user {user:?} (postgres.os_user) does not exist; create it with \
         `useradd --system --home-dir /var/lib/wayback --shell /usr/sbin/nologin {user}` \
         or set WAYBACK_PG_OS_USER to an existing unprivileged user"
    )]
    NoSuchUser { user: String },
    /// A directory or path problem an operator must fix (not traversable, socket path too long).
    #[error("{0}")]
    Setup(String),
    #[error("setting {name:?} is refused: {reason}")]
    InvalidSetting { name: String, reason: String },
    #[error("{what} {name:?} is not valid: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    /// A program ran and failed. `output` is the tail of its stderr/stdout or of the server log.
    #[error("{what}: `{command}` {status}{}", fmt_output(.output))]
    Command {
        what: String,
        command: String,
        status: String,
        output: String,
    },
    #[error("{what}: `{command}` did not finish within {secs} s{}", fmt_output(.output))]
    Timeout {
        what: String,
        command: String,
        secs: u64,
        output: String,
    },
    /// The server could not bind its TCP port; the runtime turns this into `PortInUse`.
    #[error("port {port} is already in use")]
    PortInUse { port: u16 },
    #[error("instance {instance} has no cluster")]
    NoCluster { instance: String },
    #[error("the cluster of instance {instance} is not running")]
    NotRunning { instance: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{path}: {reason}")]
    ControlFile { path: PathBuf, reason: String },
}

fn fmt_output(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!("; output:\n{}", output.trim_end())
    }
}

impl PgError {
    /// Permanent errors need a person (config, missing binaries, bad names); the rest — timeouts,
    /// refused connections, a busy port, a failed program — may pass when retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            PgError::Binaries(_)
            | PgError::NoSuchUser { .. }
            | PgError::Setup(_)
            | PgError::InvalidSetting { .. }
            | PgError::InvalidName { .. }
            | PgError::NoCluster { .. }
            | PgError::ControlFile { .. } => true,
            PgError::Io { source, .. } => source.kind() == std::io::ErrorKind::PermissionDenied,
            PgError::Sql { source, .. } => sql::is_permanent(source),
            PgError::Command { .. }
            | PgError::Timeout { .. }
            | PgError::PortInUse { .. }
            | PgError::NotRunning { .. } => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
        let context = context.into();
        move |source| PgError::Io { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_problems_are_permanent_and_timeouts_are_not() {
        assert!(PgError::NoSuchUser { user: "x".into() }.is_permanent());
        assert!(PgError::Binaries("x".into()).is_permanent());
        let timeout = PgError::Timeout {
            what: "start".into(),
            command: "pg_ctl start".into(),
            secs: 1,
            output: String::new(),
        };
        assert!(!timeout.is_permanent());
        assert!(!PgError::PortInUse { port: 1 }.is_permanent());
        let refused = PgError::Io {
            context: "connect".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(!refused.is_permanent());
    }

    #[test]
    fn the_user_error_says_how_to_create_the_user() {
        let msg = PgError::NoSuchUser {
            user: "wayback".into(),
        }
        .to_string();
        assert!(msg.contains("useradd --system"), "{msg}");
        assert!(msg.contains("\"wayback\""), "{msg}");
    }
}
