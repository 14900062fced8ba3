//! Catalog, health, metrics, the instance dashboard page, the JSON 404 and the JSON 405.

use actix_web::http::header::{HeaderValue, ALLOW};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use super::State;
use crate::domain::InstanceId;
use crate::osb::OsbError;

pub async fn catalog(state: State) -> HttpResponse {
    HttpResponse::Ok().json(state.broker.catalog().document())
}

/// Liveness and readiness: 200 when the state database answers.
pub async fn health(state: State) -> HttpResponse {
    if let Err(e) = state.broker.store().ping().await {
        tracing::warn!(error = %e, "health check: state database unreachable");
        return HttpResponse::ServiceUnavailable().json(
            json!({ "status": "unavailable", "description": "the state database does not answer" }),
        );
    }
    // Up but without object storage: 200, so that load balancers keep the broker in rotation
    // (it still answers last_operation, binds, deletes and plain provisions), and a body that
    // says what is degraded, for monitoring.
    match state.broker.archive_outage() {
        None => HttpResponse::Ok().json(json!({ "status": "ok" })),
        Some(outage) => HttpResponse::Ok().json(json!({
            "status": "degraded",
            "archive": "unreachable",
            "archive_unreachable_since": outage.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "description": format!(
                "object storage at {} does not answer (since {}): WAL archiving, base backups and clones wait for it; everything else works",
                outage.location,
                outage.since.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        })),
    }
}

pub async fn metrics(state: State) -> Result<HttpResponse, OsbError> {
    let store = state.broker.store();
    let (instances, operations) = match (
        store.instance_counts().await,
        store.operation_counts().await,
    ) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => return Err(crate::broker::BrokerError::from(e).into()),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&instances, &operations)))
}

/// The page behind `dashboard_url`: state only, nothing secret.
pub async fn dashboard(state: State, path: web::Path<String>) -> Result<HttpResponse, OsbError> {
    let Ok(id) = InstanceId::parse(path.into_inner()) else {
        return Err(OsbError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "No such instance.",
        ));
    };
    let Some(instance) = state
        .broker
        .store()
        .get_instance(&id)
        .await
        .map_err(crate::broker::BrokerError::from)?
    else {
        return Err(OsbError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "No such instance.",
        ));
    };
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Wayback PostgreSQL</title>\
         <h1>Wayback PostgreSQL</h1><p>Instance <code>{}</code> is <b>{}</b>.</p>\
         <p>Bind it to an app with <code>cf bind-service</code>. Deleted by mistake? \
         <code>cf create-service … -c '{{\"clone-from\":\"NAME\"}}'</code> brings it back.</p>",
        instance.id, instance.state
    );
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body))
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, OsbError> {
    Err(OsbError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("No such endpoint: {} {}.", req.method(), req.path()),
    ))
}

/// The answer to a method a route does not serve: 405 with the OSB error body and an `Allow`
/// header listing `allow` (actix-web's own 405 has an empty body, which checkers refuse).
pub fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move |req: HttpRequest| async move {
        let e = OsbError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "{} is not allowed on {}: this route serves {allow}.",
                req.method(),
                req.path()
            ),
        );
        let mut response = e.error_response();
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        response
    })
}
