//! The one place everything is wired: [`Application::build`] then
//! [`Application::run_until_stopped`]. Tests build the same `Application` the binary runs.

use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::broker::{ArchiveMaintenance, Broker, NameResolver, Supervisor};
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::jobs::{JobContext, Worker};
use crate::metrics::Metrics;
use crate::osb::{self, AppState, BasicAuth};
use crate::runtime::{ArchiveAccess, LocalRuntime, Runtime};
use crate::storage::{ObjectStore, StorageSettings};
use crate::store::Store;

/// The state database's URL: `database_url` if the settings name one; else, on Cloud Foundry
/// (`VCAP_SERVICES` is set), the PostgreSQL service bound to the app ([`vcap_state_database`]);
/// else the SQLite file in `data_dir`. Which service was used is logged, its credentials never.
pub(crate) fn database_url(settings: &Settings, data_dir: &Path) -> String {
    if let Some(url) = &settings.database_url {
        return url.expose_secret().to_string();
    }
    if let Ok(vcap) = std::env::var("VCAP_SERVICES") {
        match vcap_state_database(&vcap) {
            Ok(Some(found)) => {
                tracing::info!(
                    service = %found.name,
                    label = %found.label,
                    credential = found.field,
                    "state database: the service bound to this app (VCAP_SERVICES)"
                );
                return found.url.expose_secret().to_string();
            }
            // A cf push container's disk goes with the container: SQLite there loses the state.
            Ok(None) => tracing::warn!(
                "VCAP_SERVICES has no bound service with a PostgreSQL `uri`: the state database is \
                 SQLite in the data directory, lost with the container; bind a PostgreSQL service \
                 named wayback-state or set database_url"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "VCAP_SERVICES is not valid JSON; the state database is SQLite in the data directory"
            ),
        }
    }
    Store::default_sqlite_url(data_dir)
}

/// The state database found in `VCAP_SERVICES`: which bound service, and its URL.
#[derive(Debug)]
pub(crate) struct VcapDatabase {
    pub name: String,
    pub label: String,
    /// The credential the URL came from: `uri`, or `jdbcUrl` when there is no usable `uri`.
    pub field: &'static str,
    pub url: SecretString,
}

/// Picks the state database from a `VCAP_SERVICES` document (`{label: [service, …], …}`):
/// among the bound services whose credentials hold a PostgreSQL URL (`uri`, else a
/// `jdbc:postgresql:` `jdbcUrl`), the first one named or tagged `wayback-state`, else the first
/// whose tags or label mention postgres, else the first. `None` when there is no such service.
pub(crate) fn vcap_state_database(vcap: &str) -> Result<Option<VcapDatabase>, serde_json::Error> {
    let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_str(vcap)?;
    let mut best: Option<(u8, VcapDatabase)> = None;
    for (label, services) in &doc {
        for service in services.as_array().into_iter().flatten() {
            let Some((field, url)) = postgres_url(&service["credentials"]) else {
                continue;
            };
            let name = service["name"].as_str().unwrap_or_default().to_string();
            let tags: Vec<String> = service["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_ascii_lowercase))
                .collect();
            let rank = if name == "wayback-state" || tags.iter().any(|t| t == "wayback-state") {
                0
            } else if tags.iter().any(|t| t.contains("postgres"))
                || label.to_ascii_lowercase().contains("postgres")
            {
                1
            } else {
                2
            };
            if !matches!(&best, Some((r, _)) if *r <= rank) {
                let found = VcapDatabase {
                    name,
                    label: label.clone(),
                    field,
                    url: SecretString::from(url),
                };
                best = Some((rank, found));
            }
        }
    }
    Ok(best.map(|(_, found)| found))
}

/// A PostgreSQL URL from a binding's credentials: `uri` (`postgres://` or `postgresql://`),
/// else `jdbcUrl` (`jdbc:postgresql://…?user=…&password=…`, which sqlx reads without `jdbc:`).
fn postgres_url(credentials: &serde_json::Value) -> Option<(&'static str, String)> {
    let is_postgres = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
    if let Some(uri) = credentials["uri"].as_str().filter(|u| is_postgres(u)) {
        return Some(("uri", uri.to_string()));
    }
    credentials["jdbcUrl"]
        .as_str()
        .and_then(|u| u.strip_prefix("jdbc:"))
        .filter(|u| is_postgres(u))
        .map(|u| ("jdbcUrl", u.to_string()))
}

/// Opens the state database the settings name (running migrations); with its URL.
pub(crate) async fn open_state_store(
    settings: &Settings,
    data_dir: &Path,
) -> anyhow::Result<(Store, String)> {
    let url = database_url(settings, data_dir);
    let store = Store::connect(&url)
        .await
        .context("open the state database")?;
    Ok((store, url))
}

/// The archive's settings, with `file://DATA_DIR/archive` when they name no URL.
pub(crate) fn archive_settings(settings: &Settings, data_dir: &Path) -> StorageSettings {
    let mut archive = settings.archive.clone();
    if archive.url.trim().is_empty() {
        archive.url = StorageSettings::default_url(data_dir, "archive");
    }
    archive
}

/// Opens the archive and checks that it can be reached.
pub(crate) async fn open_reachable_archive(
    storage: &StorageSettings,
) -> anyhow::Result<ObjectStore> {
    let archive = ObjectStore::open(storage).context("open the archive")?;
    archive
        .check()
        .await
        .with_context(|| format!("reach the archive at {}", archive.location("")))?;
    Ok(archive)
}

pub struct Application {
    port: u16,
    server: Server,
    handle: ServerHandle,
    worker: Worker,
    supervisor: Supervisor,
    maintenance: ArchiveMaintenance,
    names: NameResolver,
    store: Store,
    runtime: Runtime,
    shutdown: CancellationToken,
}

/// Cancels `token` at SIGTERM or Ctrl-C (the broker's and the agent's shutdown).
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

/// The runtime the settings ask for: agents when `agents.urls` lists any (instances not yet
/// seen are looked up in `store`), else clusters on this machine under `data_dir`, backed up to
/// and restored from `archive`.
pub fn build_runtime(
    settings: &Settings,
    data_dir: &std::path::Path,
    store: &crate::store::Store,
    archive: ArchiveAccess,
) -> anyhow::Result<Runtime> {
    if settings.agents.urls.is_empty() {
        let local = LocalRuntime::new(data_dir.to_path_buf(), settings.postgres.clone());
        return Ok(Arc::new(local.with_archive(archive)));
    }
    let remote = crate::runtime::RemoteRuntime::new(&settings.agents)?;
    let store = store.clone();
    remote.set_resolver(Box::new(move |id| {
        let store = store.clone();
        Box::pin(async move {
            match store.get_instance(&id).await {
                Ok(record) => record.and_then(|r| r.agent),
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "cannot look up the instance's agent");
                    None
                }
            }
        })
    }));
    tracing::info!(agents = ?remote.agent_names(), "clusters run on agents");
    Ok(Arc::new(remote))
}

impl Application {
    /// Validates settings, opens the store (running migrations), prepares the runtime and
    /// binds the listener. Nothing runs until [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate()?;
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("create data directory {}", settings.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&settings.data_dir)?;
        let catalog = Arc::new(Catalog::load(settings.catalog.as_deref())?);
        let password = broker_password(&settings, &data_dir)?;
        let (store, _) = open_state_store(&settings, &data_dir).await?;
        let metrics = Metrics::default();

        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("listen on {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let external_url = settings
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{port}", settings.listen.ip()));
        let mut settings = settings;
        settings.archive = archive_settings(&settings, &data_dir);
        let archive = open_reachable_archive(&settings.archive).await?;
        let wayback_bin = match &settings.wal.wayback_bin {
            Some(p) => p.clone(),
            None => {
                std::env::current_exe().context("find the wayback binary for archive_command")?
            }
        };
        let archive_command = crate::runtime::ArchiveCommand {
            wayback_bin: stage_binary(&wayback_bin, &data_dir)?,
            archive_timeout_secs: settings.wal.archive_timeout_secs,
        };
        let settings = Arc::new(settings);
        let runtime = build_runtime(
            &settings,
            &data_dir,
            &store,
            ArchiveAccess {
                store: archive.clone(),
                settings: settings.clone(),
                wayback_bin: archive_command.wayback_bin.clone(),
            },
        )?;
        runtime
            .prepare()
            .await
            .context("prepare the PostgreSQL runtime")?;
        // Prunes and reaps archives and keeps instance.json current, next to the supervisor.
        let maintenance = ArchiveMaintenance::new(
            store.clone(),
            catalog.clone(),
            archive.clone(),
            settings.retention.clone(),
            Duration::from_secs(settings.supervisor.interval_secs),
        );
        let ctx = Arc::new(JobContext {
            store: store.clone(),
            runtime: runtime.clone(),
            catalog: catalog.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            archive,
            archive_command,
        });
        // Names the platform's requests did not carry come from the Cloud Controller.
        let cc = crate::cc::CloudController::from_settings(&settings.cc)
            .context("set up the Cloud Controller client")?
            .map(Arc::new);
        let api_parts = (catalog.clone(), ctx.archive.clone(), cc.clone());
        let names = NameResolver::new(
            ctx.clone(),
            cc,
            Duration::from_secs(settings.cc.reconcile_interval_secs),
        );
        let worker = Worker::new(ctx);
        let broker = Broker::new(
            store.clone(),
            catalog.clone(),
            worker.clone(),
            external_url,
            settings.advertise_host(),
        );
        let supervisor = Supervisor::new(
            store.clone(),
            runtime.clone(),
            metrics.clone(),
            catalog,
            Duration::from_secs(settings.supervisor.interval_secs),
            Duration::from_secs(settings.wal.archive_timeout_secs),
        );
        let api = web::Data::new(crate::api::ApiState {
            store: store.clone(),
            catalog: api_parts.0,
            archive: api_parts.1,
            runtime: runtime.clone(),
            auth: crate::api::Authenticator::new(
                BasicAuth::new(&settings.broker.username, &password),
                api_parts.2,
            ),
        });
        let state = web::Data::new(AppState {
            broker,
            auth: BasicAuth::new(&settings.broker.username, &password),
            metrics,
            max_body_bytes: settings.http.max_body_bytes,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(api.clone())
                .wrap(actix_web::middleware::from_fn(osb::request_context))
                .configure(crate::api::configure)
                .configure(osb::configure)
        })
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(10)
        .run();
        let handle = server.handle();
        tracing::info!(port, data_dir = %data_dir.display(), "wayback broker ready");
        Ok(Application {
            port,
            server,
            handle,
            worker,
            supervisor,
            maintenance,
            names,
            store,
            runtime,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The job worker (tests may drive it directly).
    pub fn worker(&self) -> Worker {
        self.worker.clone()
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime.clone()
    }

    /// Cancelling this token stops the application gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves HTTP, runs jobs and supervises clusters until the shutdown token is cancelled.
    /// Clusters keep running after the broker stops: they are the users' databases.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            server,
            handle,
            worker,
            supervisor,
            maintenance,
            names,
            store,
            shutdown,
            ..
        } = self;
        let jobs = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        let supervise = tokio::spawn(supervisor.run_until_stopped(shutdown.clone()));
        let maintain = tokio::spawn(maintenance.run_until_stopped(shutdown.clone()));
        let name = tokio::spawn(names.run_until_stopped(shutdown.clone()));
        let stopper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                handle.stop(true).await;
            })
        };
        let served = server.await;
        shutdown.cancel();
        let _ = tokio::join!(jobs, supervise, maintain, name, stopper);
        store.close().await;
        tracing::info!("wayback broker stopped");
        served.context("HTTP server")
    }
}

/// Puts the `wayback` binary where the clusters' OS user can run it: `<data_dir>/bin/wayback`
/// (a hard link, or a copy across file systems). PostgreSQL runs archive_command as that user,
/// and the binary's own location (a build tree under /root, say) may be closed to it. Renewed
/// at every start, so an upgraded broker archives with the new binary.
pub(crate) fn stage_binary(binary: &Path, data_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = data_dir.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let staged = dir.join("wayback");
    // A name of our own: another broker sharing the directory may be staging at the same time,
    // and copying onto a link to the source would truncate the source.
    let tmp = dir.join(format!("wayback.new.{}", uuid::Uuid::new_v4().simple()));
    if std::fs::hard_link(binary, &tmp).is_err() {
        std::fs::copy(binary, &tmp)
            .with_context(|| format!("copy {} to {}", binary.display(), tmp.display()))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &staged).with_context(|| format!("install {}", staged.display()))?;
    Ok(staged)
}

/// The configured broker password, or one generated once into `<data_dir>/broker-password`
/// (mode 0600). The password itself is never logged; its file is named instead.
fn broker_password(settings: &Settings, data_dir: &Path) -> anyhow::Result<SecretString> {
    if let Some(p) = &settings.broker.password {
        return Ok(p.clone());
    }
    let path = data_dir.join("broker-password");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_string();
        if !existing.is_empty() {
            return Ok(SecretString::from(existing));
        }
    }
    let password = crate::broker::new_password();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("write {}", path.display()))?;
    std::io::Write::write_all(&mut file, password.expose_secret().as_bytes())?;
    file.sync_all()?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(user = %settings.broker.username, file = %path.display(), "no broker password configured; generated one into this file");
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(vcap: &str) -> Option<(String, &'static str, String)> {
        vcap_state_database(vcap)
            .expect("valid JSON")
            .map(|f| (f.name, f.field, f.url.expose_secret().to_string()))
    }

    #[test]
    fn a_service_named_or_tagged_wayback_state_wins() {
        let vcap = r#"{
          "a-postgres": [{"name": "other-db", "label": "a-postgres", "tags": ["postgresql"],
                          "credentials": {"uri": "postgres://u:p@other:5432/x"}}],
          "user-provided": [{"name": "wayback-state", "label": "user-provided", "tags": [],
                             "credentials": {"uri": "postgresql://u:p@state:5432/wayback"}}]
        }"#;
        assert_eq!(
            pick(vcap),
            Some((
                "wayback-state".into(),
                "uri",
                "postgresql://u:p@state:5432/wayback".into()
            ))
        );
        let tagged = r#"{"p": [
          {"name": "db1", "tags": ["postgres"], "credentials": {"uri": "postgres://one/db"}},
          {"name": "db2", "tags": ["Wayback-State"], "credentials": {"uri": "postgres://two/db"}}
        ]}"#;
        assert_eq!(pick(tagged).unwrap().0, "db2");
    }

    #[test]
    fn else_a_postgres_tag_or_label_else_the_first_postgres_uri() {
        let by_tag = r#"{"databases": [
          {"name": "plain", "tags": [], "credentials": {"uri": "postgres://plain/db"}},
          {"name": "pg", "tags": ["relational", "PostgreSQL"], "credentials": {"uri": "postgres://pg/db"}}
        ]}"#;
        assert_eq!(pick(by_tag).unwrap().0, "pg");
        let by_label = r#"{
          "a-db": [{"name": "plain", "credentials": {"uri": "postgres://plain/db"}}],
          "postgresql-db": [{"name": "labelled", "credentials": {"uri": "postgres://l/db"}}]
        }"#;
        assert_eq!(pick(by_label).unwrap().0, "labelled");
        let untagged = r#"{"x": [{"name": "only", "credentials": {"uri": "postgres://o/db"}}]}"#;
        assert_eq!(pick(untagged).unwrap().0, "only");
    }

    #[test]
    fn uri_before_jdbc_url_and_only_postgres_urls() {
        let both = r#"{"p": [{"name": "db", "tags": ["postgres"], "credentials": {
          "uri": "postgres://u:p@h:5432/d",
          "jdbcUrl": "jdbc:postgresql://h:5432/d?user=u&password=p"}}]}"#;
        assert_eq!(pick(both).unwrap().1, "uri");
        let jdbc = r#"{"p": [{"name": "db", "tags": ["postgres"], "credentials": {
          "jdbcUrl": "jdbc:postgresql://h:5432/d?user=u&password=p"}}]}"#;
        assert_eq!(
            pick(jdbc),
            Some((
                "db".into(),
                "jdbcUrl",
                "postgresql://h:5432/d?user=u&password=p".into()
            ))
        );
        let mysql = r#"{"p-mysql": [{"name": "wayback-state", "tags": ["mysql"], "credentials": {
          "uri": "mysql://u:p@h:3306/d", "jdbcUrl": "jdbc:mysql://h:3306/d"}}]}"#;
        assert_eq!(pick(mysql), None);
    }

    #[test]
    fn none_without_a_postgres_service_and_errors_on_bad_json() {
        assert_eq!(pick("{}"), None);
        assert_eq!(
            pick(r#"{"s3": [{"name": "bucket", "credentials": {"bucket": "b"}}], "odd": "x"}"#),
            None
        );
        assert_eq!(pick(r#"{"p": [{"name": "no-credentials"}]}"#), None);
        assert!(vcap_state_database("not json").is_err());
    }

    #[test]
    fn the_found_url_stays_out_of_debug_output() {
        let found = vcap_state_database(
            r#"{"p": [{"name": "db", "credentials": {"uri": "postgres://u:hunter2@h/d"}}]}"#,
        )
        .unwrap()
        .unwrap();
        assert!(!format!("{found:?}").contains("hunter2"));
    }

    #[test]
    fn the_setting_wins_over_vcap_services() {
        let settings = Settings {
            database_url: Some(SecretString::from("postgres://configured/db")),
            ..Settings::default()
        };
        assert_eq!(
            database_url(&settings, Path::new("/tmp/x")),
            "postgres://configured/db"
        );
    }
}
