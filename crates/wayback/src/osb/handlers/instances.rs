//! PUT / PATCH / DELETE / GET instance, and instance last_operation.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{State, RETRY_AFTER_SECS};
use crate::broker::{Deprovisioned, ProvisionRequest, Provisioned, UpdateRequest, Updated};
use crate::domain::{InstanceId, OperationState, OrgGuid, SpaceGuid};
use crate::osb::body::{self, field, id};
use crate::osb::identity;
use crate::osb::wire::{LastOperationBody, OperationBody, ProvisionBody, UpdateBody};
use crate::osb::OsbError;

fn instance_id(path: web::Path<String>) -> Result<InstanceId, OsbError> {
    id(InstanceId::parse, path.into_inner())
}

fn record_instance(id: &InstanceId) {
    tracing::Span::current().record("instance", tracing::field::display(id));
}

pub async fn provision(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    let instance_id = instance_id(path)?;
    record_instance(&instance_id);
    let q = body::query(&req)?;
    let accepts_incomplete = body::accepts_incomplete(&q)?;
    let b: ProvisionBody = body::json(payload, state.max_body_bytes).await?;
    let context = b.context.unwrap_or_default();
    // OSB v2.17 marks the top-level organization_guid and space_guid REQUIRED (deprecated in
    // favour of `context`, which SHOULD carry them as well): a body with them only in context
    // is refused, and when both are given they must agree.
    let from_context = |key: &str| context.get(key).and_then(Value::as_str).map(str::to_string);
    let org = top_level_guid(b.organization_guid, "organization_guid")?;
    let space = top_level_guid(b.space_guid, "space_guid")?;
    for (key, top) in [("organization_guid", &org), ("space_guid", &space)] {
        if let Some(c) = from_context(key) {
            if &c != top {
                return Err(OsbError::bad_request(format!(
                    "Field {key:?} differs from context.{key}; send the same value in both."
                )));
            }
        }
    }
    let request = ProvisionRequest {
        instance_id,
        service_id: field(b.service_id, "service_id")?,
        plan_id: field(b.plan_id, "plan_id")?,
        organization_guid: id(OrgGuid::parse, org)?,
        space_guid: id(SpaceGuid::parse, space)?,
        context: Value::Object(context),
        parameters: b.parameters.unwrap_or(Value::Null),
        maintenance_version: b.maintenance_info.and_then(|m| m.version),
        accepts_incomplete,
        originator: identity::of(&req),
    };
    Ok(match state.broker.provision(request).await? {
        Provisioned::Exists { dashboard_url } => HttpResponse::Ok().json(OperationBody {
            operation: None,
            dashboard_url: Some(dashboard_url),
        }),
        Provisioned::Accepted {
            operation,
            dashboard_url,
        } => HttpResponse::Accepted().json(OperationBody {
            operation: Some(operation),
            dashboard_url: Some(dashboard_url),
        }),
    })
}

/// A top-level `organization_guid` / `space_guid`: present and not blank, whatever `context`
/// holds (checkers send bodies without them and expect a 400 that names the field).
fn top_level_guid(value: Option<String>, name: &str) -> Result<String, OsbError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => Err(OsbError::bad_request(format!(
            "Field {name:?} must not be empty: send the GUID at the top level of the body (and the same in context.{name})."
        ))),
        None => Err(OsbError::bad_request(format!(
            "Field {name:?} is required at the top level of the body (OSB v2.17), even when context carries it: send the same GUID as \"{name}\" and as context.{name}."
        ))),
    }
}

pub async fn update(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    let instance_id = instance_id(path)?;
    record_instance(&instance_id);
    let q = body::query(&req)?;
    let accepts_incomplete = body::accepts_incomplete(&q)?;
    let b: UpdateBody = body::json(payload, state.max_body_bytes).await?;
    let plan_id = match b.plan_id {
        Some(p) => Some(field(Some(p), "plan_id")?),
        None => None,
    };
    let request = UpdateRequest {
        instance_id,
        service_id: field(b.service_id, "service_id")?,
        plan_id,
        context: Value::Object(b.context.unwrap_or_default()),
        parameters: b.parameters,
        maintenance_version: b.maintenance_info.and_then(|m| m.version),
        accepts_incomplete,
        originator: identity::of(&req),
    };
    Ok(match state.broker.update(request).await? {
        Updated::Done { dashboard_url } => HttpResponse::Ok().json(OperationBody {
            operation: None,
            dashboard_url: Some(dashboard_url),
        }),
        Updated::Accepted {
            operation,
            dashboard_url,
        } => HttpResponse::Accepted().json(OperationBody {
            operation: Some(operation),
            dashboard_url: Some(dashboard_url),
        }),
    })
}

pub async fn deprovision(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, OsbError> {
    let instance_id = instance_id(path)?;
    record_instance(&instance_id);
    let q = body::query(&req)?;
    let service_id = body::required(&q, "service_id")?;
    let plan_id = body::required(&q, "plan_id")?;
    let accepts_incomplete = body::accepts_incomplete(&q)?;
    Ok(
        match state
            .broker
            .deprovision(
                &instance_id,
                service_id,
                plan_id,
                accepts_incomplete,
                identity::of(&req).as_ref(),
            )
            .await?
        {
            Deprovisioned::Accepted { operation } => HttpResponse::Accepted().json(OperationBody {
                operation: Some(operation),
                dashboard_url: None,
            }),
        },
    )
}

pub async fn fetch(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, OsbError> {
    let instance_id = instance_id(path)?;
    record_instance(&instance_id);
    let q = body::query(&req)?;
    body::optional(&q, "service_id")?;
    body::optional(&q, "plan_id")?;
    let view = state.broker.fetch_instance(&instance_id).await?;
    let mut body = json!({
        "service_id": view.service_id,
        "plan_id": view.plan_id,
        "dashboard_url": view.dashboard_url,
        "parameters": view.parameters,
    });
    // A follower's `follower`, a leader's `followers` (Wayback's own keys; platforms ignore
    // them).
    if let Some(replication) = view.replication {
        if let (Some(body), Ok(serde_json::Value::Object(extra))) =
            (body.as_object_mut(), serde_json::to_value(replication))
        {
            body.extend(extra);
        }
    }
    // An HA instance's members (Wayback's own key).
    if let Some(ha) = view.ha {
        if let (Some(body), Ok(ha)) = (body.as_object_mut(), serde_json::to_value(ha)) {
            body.insert("ha".into(), ha);
        }
    }
    // Stopped when idle (issue 17): where OSB lets a broker describe an instance's state.
    if let Some(attributes) = view
        .stopped_at
        .and_then(|at| stopped_attributes(at, view.wake_error))
    {
        body["metadata"] = json!({ "attributes": attributes });
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `metadata.attributes` of an instance stopped when idle since `stopped_at` (Unix ms), with
/// why its last wake failed and when, if one did.
fn stopped_attributes(
    stopped_at: i64,
    wake_error: Option<(String, i64)>,
) -> Option<serde_json::Value> {
    let rfc3339 = |ms| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    let mut attributes = json!({
        "state": "stopped",
        "stopped_at": rfc3339(stopped_at)?,
        "wakes_on": "the next connection to its port",
    });
    if let Some((reason, at)) = wake_error {
        attributes["wake_error"] = reason.into();
        attributes["wake_error_at"] = rfc3339(at).into();
    }
    Some(attributes)
}

pub async fn last_operation(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, OsbError> {
    let instance_id = instance_id(path)?;
    record_instance(&instance_id);
    let q = body::query(&req)?;
    body::optional(&q, "service_id")?;
    body::optional(&q, "plan_id")?;
    let operation = body::optional(&q, "operation")?;
    let last = state.broker.last_operation(&instance_id, operation).await?;
    Ok(last_operation_response(last))
}

/// 200 with state and description; `Retry-After` while in progress.
pub fn last_operation_response(last: crate::broker::LastOperation) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if last.state == OperationState::InProgress {
        response.insert_header(("Retry-After", RETRY_AFTER_SECS));
    }
    response.json(LastOperationBody {
        state: last.state.as_str(),
        description: last.description,
    })
}
