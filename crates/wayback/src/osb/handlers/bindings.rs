//! PUT / DELETE / GET binding, and binding last_operation.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::instances::last_operation_response;
use super::State;
use crate::broker::{BindRequest, Bound, Unbound};
use crate::domain::{BindingId, InstanceId};
use crate::osb::body::{self, field, id};
use crate::osb::identity;
use crate::osb::wire::{BindBody, OperationBody};
use crate::osb::OsbError;

fn ids(path: web::Path<(String, String)>) -> Result<(InstanceId, BindingId), OsbError> {
    let (instance, binding) = path.into_inner();
    let ids = (
        id(InstanceId::parse, instance)?,
        id(BindingId::parse, binding)?,
    );
    let span = tracing::Span::current();
    span.record("instance", tracing::field::display(&ids.0));
    span.record("binding", tracing::field::display(&ids.1));
    Ok(ids)
}

pub async fn bind(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    let (instance_id, binding_id) = ids(path)?;
    let q = body::query(&req)?;
    let accepts_incomplete = body::accepts_incomplete(&q)?;
    let b: BindBody = body::json(payload, state.max_body_bytes).await?;
    let app_guid = match b.app_guid {
        Some(a) => Some(field(Some(a), "app_guid")?),
        None => None,
    };
    let request = BindRequest {
        instance_id,
        binding_id,
        service_id: field(b.service_id, "service_id")?,
        plan_id: field(b.plan_id, "plan_id")?,
        app_guid,
        bind_resource: b.bind_resource.map(Value::Object).unwrap_or(Value::Null),
        parameters: b.parameters.unwrap_or(Value::Null),
        accepts_incomplete,
        originator: identity::of(&req),
    };
    Ok(match state.broker.bind(request).await? {
        Bound::Created(c) => HttpResponse::Created().json(json!({ "credentials": c })),
        Bound::Exists(c) => HttpResponse::Ok().json(json!({ "credentials": c })),
        Bound::Accepted { operation } => HttpResponse::Accepted().json(OperationBody {
            operation: Some(operation),
            dashboard_url: None,
        }),
    })
}

pub async fn unbind(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OsbError> {
    let (instance_id, binding_id) = ids(path)?;
    let q = body::query(&req)?;
    let service_id = body::required(&q, "service_id")?;
    let plan_id = body::required(&q, "plan_id")?;
    let accepts_incomplete = body::accepts_incomplete(&q)?;
    Ok(
        match state
            .broker
            .unbind(
                &instance_id,
                &binding_id,
                service_id,
                plan_id,
                accepts_incomplete,
                identity::of(&req).as_ref(),
            )
            .await?
        {
            Unbound::Done => HttpResponse::Ok().json(json!({})),
            Unbound::Accepted { operation } => HttpResponse::Accepted().json(OperationBody {
                operation: Some(operation),
                dashboard_url: None,
            }),
        },
    )
}

pub async fn fetch(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OsbError> {
    let (instance_id, binding_id) = ids(path)?;
    let q = body::query(&req)?;
    body::optional(&q, "service_id")?;
    body::optional(&q, "plan_id")?;
    let view = state
        .broker
        .fetch_binding(&instance_id, &binding_id)
        .await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "credentials": view.credentials, "parameters": view.parameters })))
}

pub async fn last_operation(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OsbError> {
    let (instance_id, binding_id) = ids(path)?;
    let q = body::query(&req)?;
    body::optional(&q, "service_id")?;
    body::optional(&q, "plan_id")?;
    let operation = body::optional(&q, "operation")?;
    let last = state
        .broker
        .binding_last_operation(&instance_id, &binding_id, operation)
        .await?;
    Ok(last_operation_response(last))
}
