//! `wayback agent`: the clusters of one VM (a [`LocalRuntime`]) behind an HTTP API that the
//! broker's [`crate::runtime::RemoteRuntime`] calls: basic auth on every path but
//! `/v1/health`, TLS when `agent.tls_cert`/`agent.tls_key` are set. Bodies are in
//! [`wayback_api::agent`]; routes in [`handlers`], each the local runtime's
//! [`crate::runtime::ClusterRuntime`] call of the same name.
//!
//! The agent keeps no state of its own beyond its clusters: each call is the local runtime's
//! idempotent call, so a broker that retries a step after a timeout, or an agent restarted in the
//! middle of one, ends where a single run would. Base backups and restores run here, straight
//! between the clusters and the object storage (the agent's own `archive.*` settings), so any
//! agent can restore any instance's archive. Restores run in the background and are polled;
//! an agent restarted during one starts it again from nothing when the broker asks.

mod activity;
mod ha;
mod handlers;
mod inspect;

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{resolve, Settings};
use crate::osb::BasicAuth;
use crate::runtime::{ArchiveAccess, LocalRuntime};

/// What every handler shares.
pub struct AgentState {
    /// With the agent's own archive: backups and restores run here.
    pub runtime: Arc<LocalRuntime>,
    pub settings: Arc<Settings>,
    /// The staged `wayback` binary clusters run as archive_command / restore_command.
    pub wayback_bin: PathBuf,
    auth: BasicAuth,
}

/// A bound agent, ready to run.
pub struct Agent {
    server: actix_web::dev::Server,
    handle: actix_web::dev::ServerHandle,
    port: u16,
    shutdown: CancellationToken,
    runtime: Arc<LocalRuntime>,
}

impl Agent {
    /// Checks the settings, prepares the runtime (binaries, OS user, template) and binds.
    pub async fn build(settings: Settings) -> anyhow::Result<Agent> {
        settings.validate()?;
        let password = settings.agent.password.clone().context(
            "agent.password (WAYBACK_AGENT_PASSWORD) must be set: the broker authenticates with it",
        )?;
        // A key the agent generated for itself would wrap its clusters' archive data keys where
        // the broker cannot unwrap them: their clones, reindex and rekey would fail later.
        if settings.archive.encrypt && settings.encryption.keys.is_empty() {
            anyhow::bail!(
                "encryption.keys (WAYBACK_ENCRYPTION_KEYS) must be set on an agent, the same as \
                 the broker's: its clusters' archives are encrypted (archive.encrypt) with data \
                 keys wrapped by those keys; or set archive.encrypt = false \
                 (WAYBACK_ARCHIVE_ENCRYPT=false) on the broker and every agent"
            );
        }
        let data_dir = resolve::data_dir(&settings)?;
        let runtime = LocalRuntime::new(data_dir.clone(), settings.postgres.clone())
            .with_tls(crate::open::cluster_tls(&settings, &data_dir)?)
            .with_sampling(settings.metrics.sampling);
        runtime
            .prepare()
            .await
            .context("prepare the PostgreSQL runtime")?;
        let mut settings = settings;
        settings.archive = resolve::archive(&settings, &data_dir);
        // Object storage that is down does not stop the agent: its clusters keep their WAL
        // until it is back, and a clone or backup retries (the broker waits for it).
        let (archive, _unreachable) = crate::open::archive_for_service(&settings.archive).await?;
        let wayback_bin = resolve::wayback_binary(&settings, &data_dir)?;
        let shared = Arc::new(settings.clone());
        let runtime = Arc::new(runtime.with_archive(ArchiveAccess {
            store: archive,
            settings: shared.clone(),
            wayback_bin: wayback_bin.clone(),
            // The operator's keys (`encryption.keys`, as the broker's): the archive data keys
            // of the agent's clusters are wrapped with them.
            keyring: Some(Arc::new(crate::open::keyring(&settings, &data_dir)?)),
        }));
        let state = web::Data::new(AgentState {
            runtime: runtime.clone(),
            auth: BasicAuth::new(&settings.agent.username, &password),
            settings: shared,
            wayback_bin,
        });
        // Clusters that were running when the agent (or its VM) stopped come back now; the
        // broker's supervisor would start them too, but only once it can reach us.
        start_existing(&runtime).await;
        let listener = std::net::TcpListener::bind(settings.agent.listen)
            .with_context(|| format!("listen on {}", settings.agent.listen))?;
        let port = listener.local_addr()?.port();
        let body_limit = settings.http.max_body_bytes;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::JsonConfig::default().limit(body_limit))
                .configure(handlers::configure)
        })
        .disable_signals()
        .shutdown_timeout(10);
        let tls = match (&settings.agent.tls_cert, &settings.agent.tls_key) {
            (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = match tls {
            Some(config) => server.listen_rustls_0_23(listener, config)?,
            None => {
                tracing::warn!("agent.tls_cert is not set: the agent API is plain HTTP (use TLS outside tests and labs)");
                server.listen(listener)?
            }
        }
        .run();
        let handle = server.handle();
        tracing::info!(port, scheme, data_dir = %data_dir.display(), clusters = runtime.cluster_ids().len(), "wayback agent ready");
        Ok(Agent {
            server,
            handle,
            port,
            shutdown: CancellationToken::new(),
            runtime,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the token is cancelled, then stops every cluster (fast shutdown, all at
    /// once) after the API is closed, so that no broker call starts one again. Under BOSH the
    /// drain (`wayback drain --agent`) has archived their WAL first; the clusters live in the
    /// agent's bpm container and would otherwise be killed with it.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Agent {
            server,
            handle,
            shutdown,
            runtime,
            ..
        } = self;
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        let served = server.await;
        stopper.abort();
        stop_clusters(&runtime).await;
        tracing::info!("wayback agent stopped");
        served.context("agent HTTP server")
    }
}

/// Starts every complete cluster that is stopped (a VM reboot); problems are logged.
async fn start_existing(runtime: &LocalRuntime) {
    for id in runtime.cluster_ids() {
        match runtime.status(&id).await {
            Ok(crate::runtime::ClusterStatus::Stopped) => match runtime.start(&id).await {
                Ok(()) => tracing::info!(instance = %id, "cluster started"),
                Err(e) => tracing::warn!(instance = %id, error = %e, "cannot start the cluster"),
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "cannot read the cluster's status")
            }
        }
    }
}

/// Stops every cluster of this agent, eight at a time; problems are logged.
async fn stop_clusters(runtime: &LocalRuntime) {
    use futures::StreamExt;
    let ids = runtime.cluster_ids();
    let count = ids.len();
    futures::stream::iter(ids)
        .for_each_concurrent(8, |id| async move {
            if let Err(e) = runtime.stop(&id).await {
                tracing::warn!(instance = %id, error = %e, "cannot stop the cluster");
            }
        })
        .await;
    tracing::info!(clusters = count, "clusters stopped");
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read agent.tls_cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "agent.tls_cert {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    anyhow::ensure!(
        !certs.is_empty(),
        "agent.tls_cert {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("agent.tls_key {} is not a PEM private key", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("agent.tls_cert and agent.tls_key do not go together")?;
    Ok(config)
}

/// `wayback agent`: runs until SIGTERM or Ctrl-C.
pub fn main(settings: Settings) -> std::process::ExitCode {
    crate::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wayback: agent: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let agent = Agent::build(settings).await?;
        crate::shutdown::cancel_on_signal(agent.shutdown_token());
        agent.run_until_stopped().await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "wayback agent stopped with an error"
            );
            eprintln!("wayback: agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
