//! Recording who asked: one audit row and one structured log line per operation a request
//! started (`store::audit`). Called once the operation is stored; a failure to write the row
//! does not undo the operation the platform was already promised, so it is logged (with every
//! field of the event) and the request goes on.

use serde_json::{json, Value};

use super::Broker;
use crate::archive::restore::RestoreTarget;
use crate::domain::{BindingId, InstanceId, Originator};
use crate::jobs::CloneSource;
use crate::store::{now_millis, AuditEvent, AuditKind};

/// What a request started, for the audit trail.
pub(super) struct Audit<'a> {
    pub kind: AuditKind,
    pub instance: &'a InstanceId,
    pub binding: Option<&'a BindingId>,
    pub operation: Option<&'a str>,
    pub originator: Option<&'a Originator>,
    pub detail: Value,
}

impl<'a> Audit<'a> {
    pub fn new(
        kind: AuditKind,
        instance: &'a InstanceId,
        originator: Option<&'a Originator>,
    ) -> Self {
        Self {
            kind,
            instance,
            binding: None,
            operation: None,
            originator,
            detail: json!({}),
        }
    }

    pub fn binding(mut self, binding: &'a BindingId) -> Self {
        self.binding = Some(binding);
        self
    }

    pub fn operation(mut self, operation: &'a str) -> Self {
        self.operation = Some(operation);
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// A clone's source as the audit trail and `instance.json` record it.
pub(super) fn clone_detail(source: &CloneSource) -> Value {
    json!({ "source": {
        "instance_id": source.id,
        "name": source.name,
        "point_in_time": match source.target {
            RestoreTarget::Latest => "latest".to_string(),
            RestoreTarget::PointInTime(t) => t.to_rfc3339(),
        },
    }})
}

impl Broker {
    pub(super) async fn audit(&self, a: Audit<'_>) {
        let platform = a.originator.map_or("none", |o| o.platform.as_str());
        let user_id = a.originator.map_or("unknown", Originator::user);
        let binding_id = a.binding.map(BindingId::as_str).unwrap_or("");
        tracing::info!(
            event = a.kind.as_str(),
            instance_id = %a.instance,
            binding_id,
            platform,
            user_id,
            "audit"
        );
        let row = AuditEvent {
            id: uuid::Uuid::new_v4().to_string(),
            at: now_millis(),
            kind: a.kind,
            instance_id: a.instance.clone(),
            binding_id: a.binding.cloned(),
            operation_id: a.operation.map(str::to_string),
            originator: a.originator.cloned(),
            detail: a.detail,
        };
        if let Err(e) = self.ctx.store.insert_audit_event(&row).await {
            tracing::warn!(
                event = a.kind.as_str(),
                instance_id = %a.instance,
                binding_id,
                platform,
                user_id,
                "the audit row was not stored: {e}"
            );
        }
    }
}
