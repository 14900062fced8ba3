//! The instance dashboard behind `dashboard_url`, signed in with Cloud Foundry's dashboard
//! single sign-on (OSB `dashboard_client`; the Cloud Controller creates that UAA client when
//! the broker is registered).
//!
//! Routes (all under `/dashboard/`, all with the headers of [`headers`]):
//! - `GET /dashboard/instances/{id}`: the page ([`page::html`]) for a session that names this
//!   instance; without one, the sign-in starts (302 to the UAA's `/oauth/authorize`).
//! - `GET /dashboard/instances/{id}/data`: the page's JSON ([`data::document`]); without a
//!   session for this instance a 401 JSON body, never a redirect (the page polls it).
//! - `GET /dashboard/assets/{file}`: static assets ([`page::asset`]), no session, cacheable.
//! - `GET /dashboard/callback?code&state`: the registered redirect URI (`login`).
//! - `POST /dashboard/logout`: clears the session cookie.
//!
//! Nothing about an instance is read or shown before the Cloud Controller, asked with the
//! user's own token, said the user may read it.
//!
//! Imports `api` (the state the JSON document is read from, the token verifier), `cc`, `config`,
//! `crypto`, `domain` and `store`; never `broker`, `jobs` or `osb`.

pub mod data;
mod headers;
pub mod page;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

pub use data::DataQuery;

use crate::api::ApiState;
use crate::domain::InstanceId;

/// What the dashboard's handlers share.
pub struct DashboardState {}

/// Registers `/dashboard/…`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/dashboard")
            .wrap(actix_web::middleware::from_fn(headers::security_headers))
            .service(
                web::resource("/instances/{instance_id}")
                    .route(web::get().to(instance_page))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/instances/{instance_id}/data")
                    .route(web::get().to(instance_data))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/assets/{file}")
                    .route(web::get().to(asset))
                    .default_service(web::to(not_allowed)),
            )
            .default_service(web::to(not_found)),
    );
}

/// `GET /dashboard/instances/{id}`
async fn instance_page(_state: web::Data<DashboardState>, id: web::Path<String>) -> HttpResponse {
    let Ok(_id) = InstanceId::parse(id.into_inner()) else {
        return not_found().await;
    };
    html_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is not configured",
        "The operator has not configured the dashboard's single sign-on yet.",
    )
}

/// `GET /dashboard/instances/{id}/data`
async fn instance_data(
    _state: web::Data<DashboardState>,
    _api: web::Data<ApiState>,
    _req: HttpRequest,
    _id: web::Path<String>,
) -> HttpResponse {
    json_error(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "Sign in to the dashboard first (open the instance's dashboard page).",
    )
}

/// `GET /dashboard/assets/{file}`
async fn asset(file: web::Path<String>) -> HttpResponse {
    match page::asset(&file) {
        Some((content_type, bytes)) => HttpResponse::Ok()
            .content_type(content_type)
            .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
            .body(bytes),
        None => not_found().await,
    }
}

async fn not_found() -> HttpResponse {
    html_page(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
}

async fn not_allowed(req: HttpRequest) -> HttpResponse {
    html_page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        &format!("{} is not allowed here.", req.method()),
    )
}

/// A small HTML page saying `message` (escaped), with `status`.
fn html_page(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html lang=en><meta charset=utf-8><title>{t} · Wayback PostgreSQL</title>\
             <h1>{t}</h1><p>{m}</p></html>",
            t = escape(title),
            m = escape(message)
        ))
}

/// A JSON refusal `{"error", "description"}` (the shape of the broker's other APIs).
fn json_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .json(serde_json::json!({ "error": error, "description": description }))
}

/// Text made safe for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
