//! `GET /wayback/v1/instances/{instance_id}/audit`: who asked for what on an instance and its
//! bindings, oldest first, as the platform's `X-Broker-API-Originating-Identity` named them.
//! Added after v1's first release: every field a newer CLI might miss carries a default (rule 3
//! of [`super`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An instance's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditTrail {
    pub instance_id: String,
    /// Oldest first.
    #[serde(default)]
    pub events: Vec<AuditEvent>,
}

/// One request that started an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When the broker accepted the request.
    pub at: DateTime<Utc>,
    pub event: AuditEventKind,
    /// The binding, for `bind` and `unbind`.
    #[serde(default)]
    pub binding_id: Option<String>,
    /// The OSB operation the request started, if it started one.
    #[serde(default)]
    pub operation: Option<String>,
    /// The originating identity's platform (`cloudfoundry`, …); `None`: the request had none.
    #[serde(default)]
    pub platform: Option<String>,
    /// The user the platform named (`user_id`); `None`: unknown.
    #[serde(default)]
    pub user_id: Option<String>,
    /// For a `clone`: the instance it was cloned from.
    #[serde(default)]
    pub clone_from: Option<CloneOrigin>,
    /// For an `update`: the new plan.
    #[serde(default)]
    pub plan_id: Option<String>,
    /// For a `rename`: the new name.
    #[serde(default)]
    pub name: Option<String>,
}

/// What a clone restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneOrigin {
    pub instance_id: String,
    /// The name `clone-from` resolved to.
    pub name: String,
    /// The `point-in-time` (RFC 3339), or `latest`.
    pub point_in_time: String,
}

/// What a request asked for. Open, like [`super::State`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEventKind {
    Provision,
    /// A provision with `clone-from`.
    Clone,
    /// A plan change.
    Update,
    /// A new instance name (`cf rename-service`).
    Rename,
    Deprovision,
    Bind,
    Unbind,
    /// An event a newer broker records and this reader does not know.
    #[serde(untagged)]
    Other(String),
}

impl AuditEventKind {
    pub fn as_str(&self) -> &str {
        match self {
            AuditEventKind::Provision => "provision",
            AuditEventKind::Clone => "clone",
            AuditEventKind::Update => "update",
            AuditEventKind::Rename => "rename",
            AuditEventKind::Deprovision => "deprovision",
            AuditEventKind::Bind => "bind",
            AuditEventKind::Unbind => "unbind",
            AuditEventKind::Other(s) => s,
        }
    }

    /// The kind with wire name `name` (`Other` for a name this reader does not know).
    pub fn from_name(name: &str) -> Self {
        serde_json::from_value(serde_json::Value::String(name.into()))
            .unwrap_or_else(|_| AuditEventKind::Other(name.into()))
    }
}

impl std::fmt::Display for AuditEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
