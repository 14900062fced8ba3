//! The HTTP edge: actix-web routes, extractors, wire types and the one error type.
//!
//! Checks happen here, in this order, before any business code runs: route (404), basic auth
//! (401), `X-Broker-API-Version` (412), `X-Broker-API-Originating-Identity` (400 when
//! malformed, `identity`), method (405, with `Allow`), ids and query parameters (400), body
//! size (413) and JSON shape (400). Handlers then call [`crate::broker::Broker`] with domain types. Imports `broker`,
//! `domain` and `metrics` only (the catalog comes through the broker) — never `store`, `pg`, `runtime`.

mod auth;
mod body;
mod error;
mod handlers;
mod identity;
mod middleware;
mod wire;

use actix_web::web;

pub use auth::BasicAuth;
pub use error::OsbError;
pub use middleware::request_context;

use crate::broker::Broker;
use crate::metrics::Metrics;

/// What handlers share.
pub struct AppState {
    pub broker: Broker,
    pub auth: BasicAuth,
    pub metrics: Metrics,
    /// Credentials `GET /metrics` requires (`metrics.auth`); `None`: open to anyone.
    pub metrics_auth: Option<BasicAuth>,
    pub max_body_bytes: usize,
}

/// The OSB versions this broker speaks.
pub const MIN_MINOR: u32 = 13;
pub const MAX_MINOR: u32 = 17;

/// Registers every route. A method a route does not serve is a 405 with an OSB error body and
/// an `Allow` header (`misc::method_not_allowed`); a path no route serves is the JSON 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use handlers::{bindings, instances, misc};
    let not_allowed = misc::method_not_allowed;
    cfg.service(
        web::resource("/health")
            .route(web::get().to(misc::health))
            .default_service(not_allowed("GET")),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(misc::metrics))
            .default_service(not_allowed("GET")),
    )
    .service(
        web::scope("/v2")
            .wrap(actix_web::middleware::from_fn(middleware::osb_guard))
            .service(
                web::resource("/catalog")
                    .route(web::get().to(misc::catalog))
                    .default_service(not_allowed("GET")),
            )
            .service(
                web::resource("/service_instances/{instance_id}")
                    .route(web::put().to(instances::provision))
                    .route(web::patch().to(instances::update))
                    .route(web::delete().to(instances::deprovision))
                    .route(web::get().to(instances::fetch))
                    .default_service(not_allowed("GET, PUT, PATCH, DELETE")),
            )
            .service(
                web::resource("/service_instances/{instance_id}/last_operation")
                    .route(web::get().to(instances::last_operation))
                    .default_service(not_allowed("GET")),
            )
            .service(
                web::resource("/service_instances/{instance_id}/service_bindings/{binding_id}")
                    .route(web::put().to(bindings::bind))
                    .route(web::delete().to(bindings::unbind))
                    .route(web::get().to(bindings::fetch))
                    .default_service(not_allowed("GET, PUT, DELETE")),
            )
            .service(
                web::resource(
                    "/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation",
                )
                .route(web::get().to(bindings::last_operation))
                .default_service(not_allowed("GET")),
            ),
    )
    .default_service(web::to(misc::not_found));
}
