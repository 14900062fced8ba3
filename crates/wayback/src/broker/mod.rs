//! Business rules of each OSB call: validation against the catalog, idempotency, and the
//! 409/410/422 decisions. No HTTP types here: `osb` turns [`BrokerError`] into responses.
//!
//! Every state change that starts work is one store transaction (record + operation + job), so
//! a crash between the answer and the work leaves a job that the worker resumes.
//! Holds the application context (`context`: store, catalog, archive, …) and the job worker.
//! Imports `context`, `store`, `catalog`, `jobs` (its executor), `archive` (clone checks read
//! the restore window), `storage` and `domain`; never `osb`, `pg`, `runtime`, `maintenance`.

mod activity;
mod audit;
mod bindings;
pub(crate) mod clone;
mod credentials;
mod deprovision;
mod fetch;
mod follow;
mod followers;
mod ha;
mod ha_ops;
mod instances;
mod update;

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::context::AppContext;
use crate::jobs::Worker;
use crate::store::{Store, StoreError};

pub use activity::ActivityMetric;
pub use bindings::{BindRequest, BindingView, Bound, Unbound};
pub use credentials::{new_password, ClientTls, Credentials};
pub use followers::{FollowerMetric, Replication};
pub use ha::{HaMemberView, HaView};
pub use ha_ops::{FailoverView, HaMemberMetric, HaMetric};
pub use instances::{
    Deprovisioned, InstanceView, LastOperation, ProvisionRequest, Provisioned, UpdateRequest,
    Updated,
};

/// A refusal or failure, with what the user should do. `osb` maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("gone")]
    Gone,
    #[error("{0}")]
    Conflict(String),
    #[error("This service plan requires client support for asynchronous service operations.")]
    AsyncRequired,
    #[error("{0}")]
    Concurrency(String),
    #[error("{0}")]
    MaintenanceInfoConflict(String),
    #[error("{0}")]
    Unprocessable(String),
    /// Something the request needs is out of reach for now (object storage down): retrying
    /// later may succeed. The text names what and says so.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        BrokerError::Internal(e.into())
    }
}

/// The broker's business logic; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    ctx: Arc<AppContext>,
    worker: Worker,
    external_url: String,
    advertise_host: String,
    /// The CA and sslmode bindings' credentials carry.
    client_tls: Arc<ClientTls>,
}

impl Broker {
    pub fn new(
        ctx: Arc<AppContext>,
        worker: Worker,
        external_url: String,
        advertise_host: String,
        client_tls: ClientTls,
    ) -> Self {
        Self {
            ctx,
            worker,
            external_url: external_url.trim_end_matches('/').to_string(),
            advertise_host,
            client_tls: Arc::new(client_tls),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.ctx.catalog
    }

    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    /// The object-storage outage in progress, if any (for `/health`).
    pub fn archive_outage(&self) -> Option<crate::storage::Outage> {
        self.ctx.archive_health.outage()
    }

    fn dashboard_url(&self, instance: &crate::domain::InstanceId) -> String {
        format!("{}/dashboard/instances/{}", self.external_url, instance)
    }
}

/// The refusal for a request that needs object storage while it does not answer (`what` is the
/// part of the request that needed it). A storage error that retrying cannot fix (bad
/// credentials, no such bucket) stays internal: the operator must act, and the log says why.
pub(crate) fn storage_refusal(
    what: &str,
    location: &str,
    e: crate::storage::StorageError,
) -> BrokerError {
    if e.is_permanent() || e.is_cancelled() {
        return BrokerError::Internal(
            anyhow::Error::new(e).context(format!("{what} at {location}")),
        );
    }
    tracing::warn!(archive = %location, error = %e, "object storage does not answer; request refused for now");
    BrokerError::Unavailable(format!(
        "Object storage (the archive at {location}) does not answer, so {what} is not possible \
         right now; nothing was created. Try again in a few minutes, and tell your operator if it \
         lasts."
    ))
}

/// A new operation id: opaque to the platform, unique, and safe in a URL.
fn new_operation_id(kind: crate::domain::OperationKind) -> String {
    format!("{}-{}", kind.as_str(), uuid::Uuid::new_v4())
}
