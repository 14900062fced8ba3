//! The dashboard's JSON document, polled by the page (owned by the page work of issue 19; this
//! is the stub the sign-in is built around). Only called once the session names this instance
//! and the Cloud Controller said the user may read it (`dashboard/mod.rs`).

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::api::{ApiError, ApiState};
use crate::domain::InstanceId;

/// The query string of `GET /dashboard/instances/{id}/data`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DataQuery {
    /// Only samples newer than this (the page asks for what it has not drawn yet).
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
}

/// The document of instance `id`.
pub async fn document(
    state: &ApiState,
    id: &InstanceId,
    query: &DataQuery,
) -> Result<serde_json::Value, ApiError> {
    let _ = (state, query);
    Ok(serde_json::json!({ "instance_id": id.as_str() }))
}
