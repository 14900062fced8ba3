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
use crate::runtime::{LocalRuntime, Runtime};
use crate::storage::{ObjectStore, StorageSettings};
use crate::store::Store;

/// The state database's URL: `database_url` if the settings name one, else the SQLite file in
/// `data_dir`.
pub(crate) fn database_url(settings: &Settings, data_dir: &Path) -> String {
    settings
        .database_url
        .as_ref()
        .map(|u| u.expose_secret().to_string())
        .unwrap_or_else(|| Store::default_sqlite_url(data_dir))
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
        let runtime = Runtime::Local(Arc::new(LocalRuntime::new(
            data_dir.clone(),
            settings.postgres.clone(),
        )));
        runtime
            .prepare()
            .await
            .context("prepare the PostgreSQL runtime")?;
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
fn stage_binary(binary: &Path, data_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
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
