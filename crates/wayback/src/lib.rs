//! Wayback: PostgreSQL for Cloud Foundry with undo.
//!
//! An Open Service Broker (OSB API v2.17) that gives every service instance its own PostgreSQL
//! cluster. The crate map, one line per module (see `docs/architecture.md` for the picture):

/// `wayback agent`: one VM's clusters behind an authenticated HTTP(S) API for the broker.
pub mod agent;
/// Wayback's own read-only API (`/wayback/v1`) for the CLI: bearer UAA tokens, space checks.
pub mod api;
/// WAL archiving: `wal-push` / `wal-fetch`, the archive's layout and object format.
pub mod archive;
/// Business rules of each OSB call (idempotency, 409/410/422); no HTTP types.
pub mod broker;
/// The OSB catalog: load and validate `catalog.json`, plan settings.
pub mod catalog;
/// Cloud Controller v3 client (UAA client-credentials token): instance names the platform did not send.
pub mod cc;
/// Operator commands (`wayback prune`, …): open from settings, call the library, print.
pub mod cli;
/// Settings: compiled defaults → optional TOML file → environment; secrets typed as secrets.
pub mod config;
/// What the broker, the job worker and maintenance share: store, runtime, archive, catalog, settings, metrics.
pub mod context;
/// Test builds only: SIGKILL this process at a named step of a job (`WAYBACK_TEST_KILL_AT`).
pub mod crash_point;
/// The operator's key family: sealed secrets and wrapped data keys.
pub mod crypto;
/// The instance dashboard behind `dashboard_url`: Cloud Foundry single sign-on, the page, its JSON.
pub mod dashboard;
/// Newtypes and states shared by every layer; imports nothing else from the crate.
pub mod domain;
/// Durable asynchronous operations: claim → run step → record; resumes after a restart.
pub mod jobs;
/// Periodic work beside the broker: supervisor, archive retention, names, reindex.
pub mod maintenance;
/// Prometheus text exposition of the broker's counters and gauges.
pub mod metrics;
/// Opening what the settings name: the state store, the reachable archive, the runtime.
pub mod open;
/// actix-web only: extractors (auth, version, ids), wire types, handlers, `OsbError`.
pub mod osb;
/// PostgreSQL process driver: initdb/template, conf files, pg_ctl, readiness, SQL admin.
pub mod pg;
/// Where clusters live: one `ClusterRuntime` interface, on this machine or on agents.
pub mod runtime;
/// One root signal (SIGTERM, Ctrl-C) that stops everything.
pub mod shutdown;
/// The one place everything is wired: `Application::build` / `run_until_stopped`.
pub mod startup;
/// Object storage: S3 (aws-sdk-s3), a local directory and a fault injector behind one handle.
pub mod storage;
/// sqlx store (SQLite by default, PostgreSQL by URL): instances, names, bindings, operations, jobs.
pub mod store;
/// Logging set-up (plain or JSON) with tracing.
pub mod telemetry;
/// The CA behind every cluster's TLS certificate (the operator's or generated once), and issuing.
pub mod tls;
