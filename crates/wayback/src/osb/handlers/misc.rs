//! Catalog, health, metrics, the JSON 404 and the JSON 405.
//!
//! `GET /metrics` asks for basic auth when `metrics.auth` says so (the same constant-time
//! [`crate::osb::BasicAuth`] as `/v2`). The page behind `dashboard_url` is the dashboard module's (`src/dashboard/`).

use actix_web::http::header::{HeaderValue, ALLOW};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use super::State;
use crate::osb::OsbError;

pub async fn catalog(state: State) -> HttpResponse {
    HttpResponse::Ok().json(state.broker.catalog().served_document())
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

pub async fn metrics(state: State, req: HttpRequest) -> Result<HttpResponse, OsbError> {
    if let Some(auth) = &state.metrics_auth {
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if !auth.check(authorization) {
            let e = OsbError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Basic authentication with the metrics credentials is required.",
            );
            let mut response = e.error_response();
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"wayback metrics\""),
            );
            return Ok(response);
        }
    }
    let store = state.broker.store();
    let (instances, operations) = match (
        store.instance_counts().await,
        store.operation_counts().await,
    ) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => return Err(crate::broker::BrokerError::from(e).into()),
    };
    let mut text = state.metrics.render(&instances, &operations);
    match store.stopped_count().await {
        Ok(n) => text.push_str(&crate::metrics::render_stopped(n)),
        Err(e) => tracing::warn!(error = %e, "cannot count the instances stopped when idle"),
    }
    // Followers' lag, measured now (each cluster asked with a short timeout).
    match state.broker.follower_metrics().await {
        Ok(followers) => {
            let rows: Vec<crate::metrics::FollowerRow> = followers
                .iter()
                .map(|f| crate::metrics::FollowerRow {
                    instance: f.lag.follower.as_str(),
                    leader: f.leader.as_str(),
                    lag: &f.lag,
                })
                .collect();
            text.push_str(&crate::metrics::render_followers(&rows));
        }
        Err(e) => tracing::warn!(error = %e, "cannot list followers for the metrics"),
    }
    // HA members' roles, lag and failovers, read from Patroni now (issue 15).
    match state.broker.ha_metrics().await {
        Ok(ha) => {
            let rows: Vec<crate::metrics::HaRow> = ha
                .iter()
                .map(|h| crate::metrics::HaRow {
                    instance: h.instance.as_str(),
                    members: h
                        .members
                        .iter()
                        .map(|m| crate::metrics::HaMemberRow {
                            member: &m.member,
                            role: &m.role,
                            lag_bytes: m.lag_bytes,
                        })
                        .collect(),
                    failovers: h.failovers,
                })
                .collect();
            text.push_str(&crate::metrics::render_ha(&rows));
        }
        Err(e) => tracing::warn!(error = %e, "cannot list HA instances for the metrics"),
    }
    // What running instances are doing (issue 19): the sampler's figures, one call per agent.
    match state.broker.activity_metrics().await {
        Ok(activity) => {
            let rows: Vec<crate::metrics::ActivityRow> = activity
                .iter()
                .map(|a| crate::metrics::ActivityRow {
                    summary: &a.summary,
                    name: a.name.as_deref(),
                    space: &a.space,
                    plan: &a.plan,
                })
                .collect();
            text.push_str(&crate::metrics::render_activity(&rows));
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the instances' activity for the metrics"),
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
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
