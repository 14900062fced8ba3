//! Settings: compiled defaults → optional TOML file (`--config`) → environment → command line.
//!
//! Every setting has one environment variable, listed in [`ENV_VARS`] together with its TOML key,
//! default and meaning; `wayback config-reference` prints that table, and the README's
//! configuration reference is generated from it, so the docs cannot drift from the code.
//! Secrets (`broker.password`, `database_url`, `cc.client_secret`, `dashboard.client_secret`, `encryption.keys`) are [`SecretString`]s: they
//! never reach `Debug` output or logs. [`resolve`] turns the settings into what every command
//! needs from them (data directory, state database, archive, binary, broker password), once.
//!
//! The parts: the sections ([`sections`], the agents' in [`agents`]), the environment table
//! ([`env`]) and the checks ([`validate`](Settings::validate)). Must not import anything but
//! `domain` and `storage`'s settings type.

mod agents;
mod encryption;
mod env;
pub mod resolve;
mod sections;
mod tls;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

pub use agents::{parse_agent_list, AgentEndpoint, AgentSettings, AgentsSettings};
pub use encryption::EncryptionSettings;
pub use env::{EnvVar, ENV_VARS};
pub use sections::*;
pub use tls::{ClientSslMode, TlsSettings};

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
    /// The audit trail's retention.
    pub audit: AuditSettings,
    pub backup: BackupSettings,
    /// The Cloud Controller, asked for instance names the platform did not send.
    pub cc: CcSettings,
    /// The broker's agents (VMs that run the clusters); none: clusters run on the broker's VM.
    pub agents: AgentsSettings,
    /// This process as an agent (`wayback agent`).
    pub agent: AgentSettings,
    /// Who may read `GET /metrics`.
    pub metrics: MetricsSettings,
    /// How long the state database keeps finished jobs and operations.
    pub state: StateSettings,
    /// The keys that seal secrets in the state database.
    pub encryption: EncryptionSettings,
    /// The CA behind the clusters' TLS certificates.
    pub tls: TlsSettings,
    /// When copies of deleted instances kept for undo give way to free space.
    pub trash: TrashSettings,
    /// Restore drills: how many at once per machine.
    pub drills: DrillSettings,
    /// High availability: the coordinator (etcd) of HA plans' instances.
    pub ha: HaSettings,
    /// The dashboard's single sign-on client.
    pub dashboard: DashboardSettings,
    /// `cf db-diagnose`'s one adjustable threshold.
    pub diagnose: DiagnoseSettings,
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
            audit: AuditSettings::default(),
            backup: BackupSettings::default(),
            cc: CcSettings::default(),
            agents: AgentsSettings::default(),
            agent: AgentSettings::default(),
            metrics: MetricsSettings::default(),
            state: StateSettings::default(),
            encryption: EncryptionSettings::default(),
            tls: TlsSettings::default(),
            trash: TrashSettings::default(),
            drills: DrillSettings::default(),
            ha: HaSettings::default(),
            dashboard: DashboardSettings::default(),
            diagnose: DiagnoseSettings::default(),
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

/// What a command line may set over the settings (`--listen`, `--data-dir`, …): the last
/// layer, applied the same way by `serve` and every operator command.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub archive_url: Option<String>,
}

impl Settings {
    /// Applies what the command line set.
    pub fn apply(&mut self, overrides: Overrides) {
        let Overrides {
            listen,
            data_dir,
            catalog,
            archive_url,
        } = overrides;
        if let Some(l) = listen {
            self.listen = l;
        }
        if let Some(d) = data_dir {
            self.data_dir = d;
        }
        if let Some(c) = catalog {
            self.catalog = Some(c);
        }
        if let Some(a) = archive_url {
            self.archive.url = a;
        }
    }

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
                        || var.name.ends_with("KEYS")
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
}

#[cfg(test)]
mod tests;
