//! `GET /wayback/v1/instances/{instance_id}/audit`: an instance's audit trail (who
//! provisioned, cloned from what, updated, renamed, bound, unbound, deleted), read from the
//! store's `audit_events`. The same authentication and space rule as the instance itself: an
//! instance in a space the caller may not see is a 404, like an unknown one.
//!
//! Imports `store`, `domain` and `wayback_api::v1`; the identity object the platform sent
//! stays in the store (the trail shows its platform and user only).

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Timelike, Utc};
use serde_json::Value;
use wayback_api::v1;

use super::{internal, visible_instance, ApiError, ApiState};
use crate::domain::InstanceId;
use crate::store::AuditEvent;

/// `GET /wayback/v1/instances/{instance_id}/audit`
pub(super) async fn get_audit(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = visible_instance(&state, &req, id.into_inner()).await?;
    let id = record.id.clone();
    let events = state
        .store
        .audit_events_of(&id)
        .await
        .map_err(internal("read an instance's audit trail"))?;
    Ok(HttpResponse::Ok().json(trail(&id, &events)))
}

/// The document of an instance's audit rows (oldest first, times in whole seconds).
pub fn trail(id: &InstanceId, events: &[AuditEvent]) -> v1::AuditTrail {
    v1::AuditTrail {
        instance_id: id.to_string(),
        events: events.iter().map(event).collect(),
    }
}

fn event(e: &AuditEvent) -> v1::AuditEvent {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let source = e.detail.get("source");
    let clone_from = source.and_then(|s| {
        Some(v1::CloneOrigin {
            instance_id: text(s, "instance_id")?,
            name: text(s, "name")?,
            point_in_time: text(s, "point_in_time")?,
        })
    });
    let at = DateTime::<Utc>::from_timestamp_millis(e.at).unwrap_or_default();
    v1::AuditEvent {
        at: at.with_nanosecond(0).unwrap_or(at),
        event: v1::AuditEventKind::from_name(e.kind.as_str()),
        binding_id: e.binding_id.as_ref().map(ToString::to_string),
        operation: e.operation_id.clone(),
        platform: e.originator.as_ref().map(|o| o.platform.clone()),
        user_id: e.originator.as_ref().and_then(|o| o.user_id.clone()),
        clone_from,
        plan_id: text(&e.detail, "plan_id"),
        name: text(&e.detail, "name"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::domain::{BindingId, Originator};
    use crate::store::AuditKind;

    fn row(at: i64, kind: AuditKind, detail: Value, who: Option<&str>) -> AuditEvent {
        AuditEvent {
            id: format!("e{at}"),
            at,
            kind,
            instance_id: InstanceId::parse("5b0e3c8e-6c4f-4c0b-9d7e-0c1d2e3f4a5b").unwrap(),
            binding_id: None,
            operation_id: Some(format!("{kind}-0000")),
            originator: who.map(|u| Originator {
                platform: "cloudfoundry".into(),
                user_id: Some(u.into()),
                identity: format!(r#"{{"user_id":"{u}"}}"#),
            }),
            detail,
        }
    }

    /// Every shape of event, pinned byte for byte (`WAYBACK_BLESS=1` rewrites the golden);
    /// `wayback-api` reads the same file back.
    #[test]
    fn the_audit_trail_matches_the_golden_file_byte_for_byte() {
        let alice = Some("683ea748-3092-4ff4-b656-39cacc4d5360");
        let source = json!({ "source": {
            "instance_id": "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
            "name": "production",
            "point_in_time": "2026-11-21T09:30:00+00:00",
        }});
        let mut bind = row(1_795_856_460_250, AuditKind::Bind, json!({}), alice);
        bind.binding_id = Some(BindingId::parse("c4d5e6f7-0000-4000-8000-000000000001").unwrap());
        let mut rename = row(
            1_795_856_430_000,
            AuditKind::Rename,
            json!({"name": "restored"}),
            alice,
        );
        rename.operation_id = None;
        let mut unbind = row(1_795_856_520_000, AuditKind::Unbind, json!({}), None);
        unbind.binding_id = bind.binding_id.clone();
        let rows = vec![
            row(1_795_856_400_999, AuditKind::Clone, source, alice),
            rename,
            bind,
            row(
                1_795_856_490_000,
                AuditKind::Update,
                json!({"plan_id": "p-2", "plan": "medium"}),
                alice,
            ),
            unbind,
            row(1_795_856_580_000, AuditKind::Deprovision, json!({}), alice),
        ];
        let id = rows[0].instance_id.clone();
        let text = serde_json::to_string_pretty(&trail(&id, &rows)).unwrap() + "\n";
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/api/audit.json");
        if std::env::var_os("WAYBACK_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
            return;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(text, golden, "golden {} differs", path.display());
    }
}
