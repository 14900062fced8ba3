//! `OsbError`: every refusal as an OSB error body `{"error", "description"}`.
//!
//! The table from business errors to status codes lives in `From<BrokerError>`. A 500 tells
//! the client nothing internal; the whole cause chain is logged here, once.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::broker::BrokerError;

#[derive(Debug)]
pub struct OsbError {
    pub status: StatusCode,
    /// The machine-readable `error` code (`AsyncRequired`, `ConcurrencyError`, …).
    pub code: &'static str,
    pub description: String,
}

impl OsbError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
        }
    }
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", description)
    }
}

impl std::fmt::Display for OsbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.description
        )
    }
}

impl ResponseError for OsbError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::GONE {
            // 410 is the platform's success signal for deletes; its body is `{}`.
            return response.json(json!({}));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Basic realm=\"wayback\""));
        }
        response.json(json!({ "error": self.code, "description": self.description }))
    }
}

impl From<BrokerError> for OsbError {
    fn from(e: BrokerError) -> Self {
        use BrokerError::*;
        match e {
            BadRequest(d) => OsbError::bad_request(d),
            NotFound(d) => OsbError::new(StatusCode::NOT_FOUND, "NotFound", d),
            Gone => OsbError::new(StatusCode::GONE, "Gone", ""),
            Conflict(d) => OsbError::new(StatusCode::CONFLICT, "Conflict", d),
            AsyncRequired => OsbError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "AsyncRequired",
                "This service plan requires client support for asynchronous service operations: retry with accepts_incomplete=true.",
            ),
            Concurrency(d) => OsbError::new(StatusCode::UNPROCESSABLE_ENTITY, "ConcurrencyError", d),
            MaintenanceInfoConflict(d) => OsbError::new(StatusCode::UNPROCESSABLE_ENTITY, "MaintenanceInfoConflict", d),
            Unprocessable(d) => OsbError::new(StatusCode::UNPROCESSABLE_ENTITY, "UnprocessableEntity", d),
            Unavailable(d) => OsbError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", d),
            Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
                OsbError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "The broker could not complete the request; the cause is in its log. Try again, and contact your operator if it keeps failing.",
                )
            }
        }
    }
}
