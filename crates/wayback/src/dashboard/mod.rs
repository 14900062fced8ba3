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
mod login;
pub mod page;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

pub use data::DataQuery;
pub use login::{AUDIENCE, CALLBACK_PATH, LOGIN_TTL, SCOPE, STATE_COOKIE};
pub use session::{Session, SessionKeys, COOKIE};

use crate::api::jwt::TokenVerifier;
use crate::api::ApiState;
use crate::catalog::DashboardClient;
use crate::cc::CloudController;
use crate::config::DashboardSettings;
use crate::domain::InstanceId;
use crate::store::Store;
use login::{LoginError, Sso};

/// The path every dashboard cookie is scoped to.
const COOKIE_PATH: &str = "/dashboard/";

/// What the dashboard's handlers share.
pub struct DashboardState {
    /// None: single sign-on is not configured (the pages say so).
    sso: Option<Sso>,
}

/// The catalog's `dashboard_client` for these settings (None when sign-in is off).
pub fn catalog_client(settings: &DashboardSettings, external_url: &str) -> Option<DashboardClient> {
    if !settings.enabled() {
        return None;
    }
    Some(DashboardClient {
        id: settings.client_id.clone(),
        secret: settings.client_secret.clone()?,
        redirect_uri: redirect_uri(external_url),
    })
}

/// The registered redirect URI: `<external_url>/dashboard/callback`.
pub fn redirect_uri(external_url: &str) -> String {
    format!("{}{CALLBACK_PATH}", external_url.trim_end_matches('/'))
}

impl DashboardState {
    /// The dashboard the settings describe: sign-in needs `dashboard.client_id` and its secret,
    /// the Cloud Controller client (`cc.api_url`) and the store's keyring (session keys).
    pub fn new(
        settings: &DashboardSettings,
        external_url: &str,
        cc: Option<Arc<CloudController>>,
        store: &Store,
    ) -> Result<DashboardState, String> {
        let Some(client) = catalog_client(settings, external_url) else {
            tracing::info!("dashboard sign-in is off (dashboard.client_id is not set)");
            return Ok(DashboardState { sso: None });
        };
        let cc = cc.ok_or("dashboard.client_id needs cc.api_url")?;
        let keyring = store
            .keyring_handle()
            .ok_or("the state store has no keyring to sign dashboard sessions with")?;
        let secure = external_url.starts_with("https://");
        if !secure {
            tracing::warn!(
                external_url,
                "the broker's external URL is not https: dashboard cookies are sent without Secure"
            );
        }
        Ok(DashboardState {
            sso: Some(Sso {
                client_id: client.id,
                client_secret: client.secret,
                redirect_uri: client.redirect_uri,
                verifier: TokenVerifier::for_audience(cc.clone(), AUDIENCE),
                cc,
                store: store.clone(),
                sessions: SessionKeys::new(keyring),
                secure,
                session_life: Duration::from_secs(settings.session_minutes * 60),
            }),
        })
    }

    /// A dashboard without sign-in (every page says it is not configured).
    pub fn disabled() -> DashboardState {
        DashboardState { sso: None }
    }
}

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
            .service(
                web::resource("/callback")
                    .route(web::get().to(callback))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/logout")
                    .route(web::post().to(logout))
                    .default_service(web::to(not_allowed)),
            )
            .default_service(web::to(not_found)),
    );
}

fn not_configured() -> HttpResponse {
    html_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is not configured",
        "This broker's dashboard needs Cloud Foundry single sign-on, which the operator has \
         not set up (dashboard.client_id and dashboard.client_secret, with cc.api_url). \
         Meanwhile, cf service NAME and the cf-wayback plugin (cf backups) show the instance.",
    )
}

/// The session the request's cookie carries, if it verifies and is for instance `id`.
fn session_for(sso: &Sso, req: &HttpRequest, id: &InstanceId) -> Option<Session> {
    let cookies = req
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok());
    let value = session::cookie_value(cookies, COOKIE)?;
    match sso.sessions.verify(value, chrono::Utc::now().timestamp()) {
        Ok(s) if s.is_for(id) => Some(s),
        Ok(_) => {
            tracing::debug!("a dashboard session for another instance; signing in again");
            None
        }
        Err(reason) => {
            tracing::debug!(?reason, "a dashboard session cookie was refused");
            None
        }
    }
}

/// `GET /dashboard/instances/{id}`: the page for a session of this instance, else sign-in.
async fn instance_page(
    state: web::Data<DashboardState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let Ok(id) = InstanceId::parse(id.into_inner()) else {
        return not_found().await;
    };
    let Some(sso) = &state.sso else {
        return not_configured();
    };
    if session_for(sso, &req, &id).is_some() {
        return HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(page::html(&id));
    }
    match sso.start(&id).await {
        Ok(started) => HttpResponse::Found()
            .insert_header((header::LOCATION, started.authorize_url))
            .append_header((
                header::SET_COOKIE,
                session::set_cookie(
                    STATE_COOKIE,
                    &started.state,
                    CALLBACK_PATH,
                    LOGIN_TTL.as_secs() as i64,
                    sso.secure,
                ),
            ))
            .finish(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a dashboard sign-in");
            unavailable()
        }
    }
}

fn unavailable() -> HttpResponse {
    html_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is unavailable",
        "The broker cannot reach Cloud Foundry's sign-in (UAA) or the Cloud Controller right \
         now. Try again in a minute; the operator will find the cause in the broker's log.",
    )
}

/// `GET /dashboard/instances/{id}/data`: the page's JSON; 401 without a session for it.
async fn instance_data(
    state: web::Data<DashboardState>,
    api: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let Some(sso) = &state.sso else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The dashboard's sign-in is not configured on this broker.",
        );
    };
    let session = InstanceId::parse(id.into_inner())
        .ok()
        .and_then(|id| Some((session_for(sso, &req, &id)?, id)));
    let Some((_, id)) = session else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "No dashboard session for this instance, or it has expired: reload the page to \
             sign in again.",
        );
    };
    let query = match web::Query::<DataQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("The query does not read ({e}); `since` is an RFC 3339 time."),
            )
        }
    };
    match data::document(&api, &id, &query).await {
        Ok(doc) => HttpResponse::Ok().json(doc),
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /dashboard/callback?code&state`: the UAA sends the browser back here.
async fn callback(state: web::Data<DashboardState>, req: HttpRequest) -> HttpResponse {
    let Some(sso) = &state.sso else {
        return not_configured();
    };
    let Ok(query) = web::Query::<CallbackQuery>::from_query(req.query_string()) else {
        return bad_callback();
    };
    let cookies = req
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok());
    let browser_state = session::cookie_value(cookies, STATE_COOKIE);
    let clear_state = session::set_cookie(STATE_COOKIE, "", CALLBACK_PATH, 0, sso.secure);
    let outcome = match (&query.code, &query.state, &query.error) {
        (_, Some(s), Some(error)) => {
            // Cancelled or refused at the UAA: the sign-in is used up all the same.
            let _ = sso.take(s, browser_state).await;
            tracing::info!(error = %error.chars().take(64).collect::<String>(), "a dashboard sign-in came back refused by the UAA");
            Err(LoginError::Refused(
                "the UAA refused or the user cancelled".into(),
            ))
        }
        (Some(code), Some(s), None) => sso.finish(code, s, browser_state).await,
        _ => return bad_callback(),
    };
    let mut response = match outcome {
        Ok(session) => {
            tracing::info!(
                user = %session.user_name,
                instance = %session.instance,
                "dashboard sign-in"
            );
            let life = session.expires_at - session.issued_at;
            HttpResponse::Found()
                .insert_header((
                    header::LOCATION,
                    format!("/dashboard/instances/{}", session.instance),
                ))
                .append_header((
                    header::SET_COOKIE,
                    session::set_cookie(
                        COOKIE,
                        &sso.sessions.sign(&session),
                        COOKIE_PATH,
                        life,
                        sso.secure,
                    ),
                ))
                .finish()
        }
        Err(LoginError::UnknownState) => html_page(
            StatusCode::BAD_REQUEST,
            "This sign-in is not valid",
            "The sign-in was already used, has expired (10 minutes), or was started in another \
             browser. Open the instance's dashboard again to sign in.",
        ),
        Err(LoginError::Forbidden) => forbidden(),
        Err(LoginError::Refused(why)) => {
            tracing::info!(reason = %why, "a dashboard sign-in was refused");
            html_page(
                StatusCode::UNAUTHORIZED,
                "Sign-in failed",
                "Cloud Foundry's sign-in did not confirm who you are. Open the instance's \
                 dashboard again to sign in.",
            )
        }
        Err(LoginError::Unavailable(why)) => {
            tracing::warn!(error = %why, "a dashboard sign-in could not finish");
            unavailable()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&clear_state) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

fn bad_callback() -> HttpResponse {
    html_page(
        StatusCode::BAD_REQUEST,
        "This sign-in is not valid",
        "The sign-in answer lacks its code or state. Open the instance's dashboard again.",
    )
}

/// The one answer for a user the Cloud Controller does not let read the instance: it names
/// nothing about the instance (not even whether it exists).
fn forbidden() -> HttpResponse {
    html_page(
        StatusCode::FORBIDDEN,
        "Not allowed",
        "Cloud Foundry does not let your user see this service instance. Ask a space manager \
         for a role in its space, or sign in as another user.",
    )
}

/// `POST /dashboard/logout`: forgets the session.
async fn logout(state: web::Data<DashboardState>) -> HttpResponse {
    let secure = state.sso.as_ref().is_some_and(|s| s.secure);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::SET_COOKIE,
            session::set_cookie(COOKIE, "", COOKIE_PATH, 0, secure),
        ))
        .body(
            "<!doctype html><html lang=en><meta charset=utf-8><title>Signed out · Wayback \
             PostgreSQL</title><h1>Signed out</h1><p>Your dashboard session has ended.</p></html>",
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
