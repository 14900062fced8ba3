//! `ApiError`: every refusal of `/wayback/v1` as `{"error", "description"}`
//! ([`wayback_api::v1::ErrorBody`]), with the status table of `docs/wayback-api.md`. Descriptions say what to do and never name another space,
//! another instance or a token.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use wayback_api::v1::{ErrorBody, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub description: String,
}

impl ApiError {
    pub fn unauthorized(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            description,
        )
    }

    /// The one body for a space the caller may not see, whether it exists or not.
    pub fn forbidden_space() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "You may not see this space: the Cloud Controller does not let your user read it. \
             Check the space GUID (cf space SPACE --guid) and your role in it.",
        )
    }

    /// The one body for an instance that is unknown or in a space the caller may not see.
    pub fn instance_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "No such service instance in a space you may see. Check the instance GUID \
             (cf service NAME --guid).",
        )
    }

    pub fn unavailable(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            description,
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "The broker failed to answer; the operator will find the cause in its log.",
        )
    }

    /// 409: the operator's request cannot be done in the instance's present state (a
    /// switchover of an instance that is not HA, or without a healthy standby).
    pub fn conflict(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            ErrorCode::Other("Conflict".into()),
            description,
        )
    }

    /// 403: a user's token where only the operator may act.
    pub fn operator_only(description: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, description)
    }

    /// 400: a body that does not read.
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Other("BadRequest".into()),
            description,
        )
    }

    /// 500 with what failed, for the operator's own requests (never a user's).
    pub fn operator_failure(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            description,
        )
    }

    fn new(status: StatusCode, code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
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

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer realm=\"wayback\""));
        }
        response.json(ErrorBody {
            description: self.description.clone(),
            error: self.code.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's bytes, key order included: CLIs already installed read them.
    #[tokio::test]
    async fn the_body_is_error_and_description() {
        let response = ApiError::instance_not_found().error_response();
        let bytes = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "{\"description\":\"No such service instance in a space you may see. Check the \
             instance GUID (cf service NAME --guid).\",\"error\":\"NotFound\"}"
        );
    }
}
