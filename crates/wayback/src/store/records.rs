//! Row types and their decoding from `AnyRow`.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::StoreError;
use crate::domain::{
    BindingId, BindingState, InstanceId, InstanceState, OperationKind, OperationState,
};

/// A service instance as stored. Deleted instances are kept (undo needs them).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub id: InstanceId,
    pub service_id: String,
    pub plan_id: String,
    pub organization_guid: String,
    pub space_guid: String,
    pub parameters: Value,
    pub context: Value,
    pub state: InstanceState,
    pub port: Option<u16>,
    pub database_name: String,
    pub owner_role: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    /// The agent running the cluster (None: the broker's own machine) and the host binding
    /// credentials name there.
    pub agent: Option<String>,
    pub agent_host: Option<String>,
    /// The leader a follower streams from (None: not a follower).
    pub leader_id: Option<InstanceId>,
    /// When its cluster was stopped because it was idle (Unix ms; issue 17); None while it
    /// runs.
    pub stopped_at: Option<i64>,
    /// Why a client's connection could not wake it, and when (Unix ms); None once a start
    /// worked (issue 17).
    pub wake_error: Option<String>,
    pub wake_error_at: Option<i64>,
}

/// One name an instance had, from `recorded_at` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRecord {
    pub name: String,
    /// Where the name came from: `provision`, `update` (a rename), `cloud_controller`.
    pub source: String,
    pub recorded_at: i64,
}

/// A binding; `password` is the login role's password, needed to answer GET binding.
#[derive(Clone)]
pub struct BindingRecord {
    pub id: BindingId,
    pub instance_id: InstanceId,
    /// The identity-relevant attributes of the PUT, as canonical JSON (for the 409 check).
    pub request: Value,
    pub role_name: String,
    pub password: secrecy::SecretString,
    pub state: BindingState,
    /// The role may read the app database and never write.
    pub read_only: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
}

impl std::fmt::Debug for BindingRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingRecord")
            .field("id", &self.id)
            .field("instance_id", &self.instance_id)
            .field("role_name", &self.role_name)
            .field("state", &self.state)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// An OSB operation, as the platform polls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    pub id: String,
    pub instance_id: InstanceId,
    pub binding_id: Option<BindingId>,
    pub kind: OperationKind,
    pub state: OperationState,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub kind: String,
    pub instance_id: InstanceId,
    pub binding_id: Option<BindingId>,
    pub operation_id: Option<String>,
    pub payload: Value,
    pub first_step: String,
}

/// A claimed or stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    pub instance_id: InstanceId,
    pub binding_id: Option<BindingId>,
    pub operation_id: Option<String>,
    pub payload: Value,
    pub step: String,
    pub state: String,
    pub attempts: u32,
    pub run_after: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
}

fn corrupt(id: &str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        message: message.to_string(),
    }
}

fn json(id: &str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(id, e))
}

fn parsed<T: std::str::FromStr>(id: &str, text: &str) -> Result<T, StoreError>
where
    T::Err: ToString,
{
    text.parse::<T>().map_err(|e| corrupt(id, e))
}

fn instance_id(id: &str, text: String) -> Result<InstanceId, StoreError> {
    InstanceId::parse(text).map_err(|e| corrupt(id, e))
}

fn binding_id(id: &str, text: Option<String>) -> Result<Option<BindingId>, StoreError> {
    text.map(BindingId::parse)
        .transpose()
        .map_err(|e| corrupt(id, e))
}

impl InstanceRecord {
    pub(crate) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        let port: Option<i64> = row.try_get("port")?;
        Ok(Self {
            service_id: row.try_get("service_id")?,
            plan_id: row.try_get("plan_id")?,
            organization_guid: row.try_get("organization_guid")?,
            space_guid: row.try_get("space_guid")?,
            parameters: json(&id, &row.try_get::<String, _>("parameters")?)?,
            context: json(&id, &row.try_get::<String, _>("context")?)?,
            state: parsed(&id, &row.try_get::<String, _>("state")?)?,
            port: port
                .map(|p| u16::try_from(p).map_err(|e| corrupt(&id, e)))
                .transpose()?,
            database_name: row.try_get("database_name")?,
            owner_role: row.try_get("owner_role")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            deleted_at: row.try_get("deleted_at")?,
            agent: Some(row.try_get::<String, _>("agent")?).filter(|a| !a.is_empty()),
            agent_host: row.try_get("agent_host")?,
            leader_id: row
                .try_get::<Option<String>, _>("leader_id")?
                .map(|leader| instance_id(&id, leader))
                .transpose()?,
            stopped_at: row.try_get("stopped_at")?,
            wake_error: row.try_get("wake_error")?,
            wake_error_at: row.try_get("wake_error_at")?,
            id: instance_id(&id, id.clone())?,
        })
    }
}

impl BindingRecord {
    /// Reads a row, opening its sealed password with `keyring`.
    pub(crate) fn from_row(
        row: &AnyRow,
        keyring: &crate::crypto::Keyring,
    ) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        let sealed: String = row.try_get("password")?;
        let password = keyring
            .open_secret(&sealed, &super::secrets::binding_password_context(&id))
            .map_err(|e| corrupt(&id, format!("binding password: {e}")))?;
        Ok(Self {
            instance_id: instance_id(&id, row.try_get("instance_id")?)?,
            request: json(&id, &row.try_get::<String, _>("request")?)?,
            role_name: row.try_get("role_name")?,
            password,
            state: parsed(&id, &row.try_get::<String, _>("state")?)?,
            read_only: row.try_get::<i64, _>("read_only")? != 0,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            deleted_at: row.try_get("deleted_at")?,
            id: BindingId::parse(id.clone()).map_err(|e| corrupt(&id, e))?,
        })
    }
}

impl OperationRecord {
    pub(crate) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        Ok(Self {
            instance_id: instance_id(&id, row.try_get("instance_id")?)?,
            binding_id: binding_id(&id, row.try_get("binding_id")?)?,
            kind: parsed(&id, &row.try_get::<String, _>("kind")?)?,
            state: parsed(&id, &row.try_get::<String, _>("state")?)?,
            description: row.try_get("description")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            finished_at: row.try_get("finished_at")?,
            id,
        })
    }
}

impl JobRecord {
    pub(crate) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        let attempts: i64 = row.try_get("attempts")?;
        Ok(Self {
            kind: row.try_get("kind")?,
            instance_id: instance_id(&id, row.try_get("instance_id")?)?,
            binding_id: binding_id(&id, row.try_get("binding_id")?)?,
            operation_id: row.try_get("operation_id")?,
            payload: json(&id, &row.try_get::<String, _>("payload")?)?,
            step: row.try_get("step")?,
            state: row.try_get("state")?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            run_after: row.try_get("run_after")?,
            lease_owner: row.try_get("lease_owner")?,
            lease_until: row.try_get("lease_until")?,
            last_error: row.try_get("last_error")?,
            id,
        })
    }
}

/// An instance's labels in `/metrics` (issue 19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricLabels {
    pub id: String,
    /// The newest recorded name; None while unknown.
    pub name: Option<String>,
    pub space_guid: String,
    pub service_id: String,
    pub plan_id: String,
}
