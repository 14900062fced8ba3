//! The one place everything is wired: [`Application::build`] then
//! [`Application::run_until_stopped`]. Tests build the same `Application` the binary runs.
//!
//! Object storage that does not answer does not stop the broker (README "When object storage
//! is down"): the outage is recorded in the context's `archive_health`, which [`ArchiveWatch`]
//! keeps true while the broker runs and `/health` reports.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::catalog::Catalog;
use crate::config::{resolve, MetricsAuth, Settings};
use crate::context::AppContext;
use crate::jobs::Worker;
use crate::maintenance::{ArchiveMaintenance, NameResolver, Supervisor, WakeWatch};
use crate::metrics::Metrics;
use crate::open;
use crate::osb::{self, AppState, BasicAuth};
use crate::runtime::{ArchiveAccess, Runtime};
use crate::storage::{ObjectStore, Reachability};
use crate::store::Store;

pub struct Application {
    port: u16,
    server: Server,
    handle: ServerHandle,
    worker: Worker,
    supervisor: Supervisor,
    /// Wakes of clusters stopped when idle, when the runtime reports them (issue 17).
    wakes: Option<WakeWatch>,
    maintenance: ArchiveMaintenance,
    names: NameResolver,
    watch: ArchiveWatch,
    store: Store,
    runtime: Runtime,
    shutdown: CancellationToken,
}

impl Application {
    /// Validates settings, opens the store (running migrations), prepares the runtime and
    /// binds the listener. Nothing runs until [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        Self::assemble(settings, None).await
    }

    /// As [`Application::build`], with `runtime` instead of the one the settings name: the
    /// fast test tier runs the whole broker on a fake runtime this way.
    pub async fn build_with_runtime(
        settings: Settings,
        runtime: Runtime,
    ) -> anyhow::Result<Application> {
        Self::assemble(settings, Some(runtime)).await
    }

    async fn assemble(settings: Settings, runtime: Option<Runtime>) -> anyhow::Result<Application> {
        settings.validate()?;
        let data_dir = resolve::data_dir(&settings)?;
        let password = resolve::broker_password(&settings, &data_dir)?;
        let (store, _) = open::state_store(&settings, &data_dir).await?;
        let metrics = Metrics::default();

        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("listen on {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let external_url = settings
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{port}", settings.listen.ip()));
        // The catalog advertises the dashboard's UAA client (redirect URI under external_url).
        let catalog = Arc::new(
            Catalog::load(settings.catalog.as_deref())?.with_dashboard_client(
                crate::dashboard::catalog_client(&settings.dashboard, &external_url),
            ),
        );
        let mut settings = settings;
        settings.archive = resolve::archive(&settings, &data_dir);
        // Object storage that is down does not stop the broker (README "When object storage
        // is down"): the watcher keeps checking, /health says so, jobs wait for it.
        let (archive, unreachable) = open::archive_for_service(&settings.archive).await?;
        let archive_health = Reachability::default();
        if let Some(e) = &unreachable {
            archive_health.failed(&archive.location(""), e, chrono::Utc::now());
        }
        let archive_command = crate::runtime::ArchiveCommand {
            wayback_bin: resolve::wayback_binary(&settings, &data_dir)?,
            archive_timeout_secs: settings.wal.archive_timeout_secs,
        };
        // The CA bindings carry: the one this machine's clusters (or, with agents, the agents'
        // clusters, given the same pair) are issued from.
        let client_tls = crate::broker::ClientTls {
            ca_certificate: open::cluster_tls(&settings, &data_dir)?
                .ca_certificate()
                .to_string(),
            verify_full: settings.tls.client_sslmode.verifies(),
        };
        let settings = Arc::new(settings);
        let runtime = match runtime {
            Some(given) => given,
            None => open::runtime(
                &settings,
                &data_dir,
                &store,
                ArchiveAccess {
                    store: archive.clone(),
                    settings: settings.clone(),
                    wayback_bin: archive_command.wayback_bin.clone(),
                    keyring: Some(Arc::new(open::keyring(&settings, &data_dir)?)),
                },
            )?,
        };
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
        )
        .with_state_retention(settings.state.retention_days)
        .with_audit_retention_days(settings.audit.retention_days);
        let ctx = Arc::new(AppContext {
            store: store.clone(),
            runtime: runtime.clone(),
            catalog: catalog.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            archive,
            archive_command,
            archive_health: archive_health.clone(),
        });
        let watch = ArchiveWatch {
            archive: ctx.archive.clone(),
            health: archive_health,
        };
        // Names the platform's requests did not carry come from the Cloud Controller.
        let cc = crate::cc::CloudController::from_settings(&settings.cc)
            .context("set up the Cloud Controller client")?
            .map(Arc::new);
        let api_parts = (catalog.clone(), ctx.archive.clone(), cc.clone());
        let dashboard = web::Data::new(
            crate::dashboard::DashboardState::new(
                &settings.dashboard,
                &external_url,
                cc.clone(),
                &store,
            )
            .map_err(|e| anyhow::anyhow!("set up the dashboard's sign-in: {e}"))?,
        );
        let names = NameResolver::new(
            ctx.clone(),
            cc,
            Duration::from_secs(settings.cc.reconcile_interval_secs),
        );
        let worker = Worker::new(ctx.clone());
        let broker = Broker::new(
            ctx.clone(),
            worker.clone(),
            external_url,
            settings.advertise_host(),
            client_tls,
        );
        let supervisor = Supervisor::new(ctx.clone());
        // Subscribed before anything can wake a cluster (the runtime is prepared, nothing
        // serves yet), so that no wake goes unrecorded.
        let wakes = runtime
            .subscribe_wakes()
            .map(|rx| WakeWatch::new(store.clone(), metrics.clone(), rx));
        let api = web::Data::new(crate::api::ApiState {
            store: store.clone(),
            catalog: api_parts.0,
            archive: api_parts.1,
            runtime: runtime.clone(),
            auth: crate::api::Authenticator::new(
                BasicAuth::new(&settings.broker.username, &password),
                api_parts.2,
            ),
            diagnose: crate::api::diagnose::Thresholds {
                long_transaction_secs: settings.diagnose.long_transaction_secs as f64,
            },
        });
        let state = web::Data::new(AppState {
            broker,
            auth: BasicAuth::new(&settings.broker.username, &password),
            metrics,
            metrics_auth: metrics_auth(&settings, &password)?,
            max_body_bytes: settings.http.max_body_bytes,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(api.clone())
                .app_data(dashboard.clone())
                .wrap(actix_web::middleware::from_fn(osb::request_context))
                .configure(crate::api::configure)
                .configure(crate::dashboard::configure)
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
            wakes,
            maintenance,
            names,
            watch,
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
            wakes,
            maintenance,
            names,
            watch,
            store,
            shutdown,
            ..
        } = self;
        let jobs = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        let supervise = tokio::spawn(supervisor.run_until_stopped(shutdown.clone()));
        let maintain = tokio::spawn(maintenance.run_until_stopped(shutdown.clone()));
        let name = tokio::spawn(names.run_until_stopped(shutdown.clone()));
        let watching = tokio::spawn(watch.run_until_stopped(shutdown.clone()));
        let woken = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                if let Some(wakes) = wakes {
                    wakes.run_until_stopped(shutdown).await;
                }
            }
        });
        let stopper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                handle.stop(true).await;
            })
        };
        let served = server.await;
        shutdown.cancel();
        let _ = tokio::join!(jobs, supervise, maintain, name, watching, woken, stopper);
        store.close().await;
        tracing::info!("wayback broker stopped");
        served.context("HTTP server")
    }
}

/// The credentials `GET /metrics` requires (`metrics.auth`); `None` leaves it open.
fn metrics_auth(
    settings: &Settings,
    broker_password: &secrecy::SecretString,
) -> anyhow::Result<Option<BasicAuth>> {
    Ok(match settings.metrics.auth {
        MetricsAuth::None => None,
        MetricsAuth::Broker => Some(BasicAuth::new(&settings.broker.username, broker_password)),
        MetricsAuth::Own => {
            let Some(password) = settings.metrics.password.as_ref() else {
                anyhow::bail!("metrics.auth is `own` but metrics.password is not set");
            };
            Some(BasicAuth::new(&settings.metrics.username, password))
        }
    })
}

/// Checks the archive in the background: every [`ArchiveWatch::DOWN`] while it does not answer,
/// every [`ArchiveWatch::UP`] while it does, so that `/health` tells the truth within seconds
/// and a broker that started without its storage notices when it is back.
struct ArchiveWatch {
    archive: ObjectStore,
    health: Reachability,
}

impl ArchiveWatch {
    const DOWN: Duration = Duration::from_secs(5);
    const UP: Duration = Duration::from_secs(30);

    async fn run_until_stopped(self, shutdown: CancellationToken) {
        let location = self.archive.location("");
        loop {
            let wait = if self.health.outage().is_some() {
                Self::DOWN
            } else {
                Self::UP
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            let checked = tokio::select! {
                r = self.archive.check() => r,
                _ = shutdown.cancelled() => return,
            };
            match checked {
                Ok(()) => {
                    if let Some(outage) = self.health.answered() {
                        tracing::info!(archive = %location, since = %outage.since, "object storage answers again");
                    }
                }
                Err(e) => {
                    let fresh = self.health.outage().is_none();
                    let outage = self.health.failed(&location, &e, chrono::Utc::now());
                    if fresh {
                        tracing::warn!(archive = %location, error = %e, "object storage does not answer; archiving, backups and clones wait for it");
                    } else {
                        tracing::debug!(archive = %location, since = %outage.since, error = %e, "object storage still does not answer");
                    }
                }
            }
        }
    }
}
