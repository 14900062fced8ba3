//! Request context for every route, and the OSB guard (auth, then API version) for `/v2`.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, ResponseError};
use tracing::Instrument;

use super::{identity, AppState, OsbError, MAX_MINOR, MIN_MINOR};

const REQUEST_IDENTITY: &str = "x-broker-api-request-identity";

/// Wraps every request in a span (method, route, request identity), echoes the platform's
/// request identity, and counts the response by route pattern.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let identity = req
        .headers()
        .get(REQUEST_IDENTITY)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(128).collect::<String>());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        route = %route,
        request_id = identity.as_deref().unwrap_or(""),
        instance = tracing::field::Empty,
        binding = tracing::field::Empty,
        platform = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status();
    if let Some(m) = metrics {
        m.http_response(&route, status.as_u16());
    }
    if let Some(id) = identity {
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut()
                .insert(HeaderName::from_static(REQUEST_IDENTITY), v);
        }
    }
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), "request done");
        }
    });
    Ok(res)
}

/// 401 unless basic auth matches; then 412 unless `X-Broker-API-Version` is 2.13–2.17; then
/// 400 if `X-Broker-API-Originating-Identity` is there but malformed (`identity`), else the
/// originator goes into the request's extensions and the request span.
pub async fn osb_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .expect("AppState registered");
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if !state.auth.check(authorization) {
        let e = OsbError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Basic authentication with the broker's credentials is required.",
        );
        return Ok(req.into_response(e.error_response()));
    }
    let version = req
        .headers()
        .get("x-broker-api-version")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = check_version(version) {
        return Ok(req.into_response(e.error_response()));
    }
    let header = req.headers().get(identity::HEADER).map(|v| v.as_bytes());
    match identity::parse(header) {
        Ok(None) => {}
        Ok(Some(originator)) => {
            let span = tracing::Span::current();
            span.record("platform", originator.platform.as_str());
            span.record("user_id", originator.user());
            req.extensions_mut().insert(originator);
        }
        Err(why) => {
            tracing::info!("refused: {why}");
            return Ok(req.into_response(OsbError::bad_request(why).error_response()));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

fn check_version(header: Option<&str>) -> Result<(), OsbError> {
    let supported = format!("this broker supports OSB API versions 2.{MIN_MINOR} to 2.{MAX_MINOR}");
    let precondition = |d: String| {
        OsbError::new(
            actix_web::http::StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            d,
        )
    };
    let Some(v) = header else {
        return Err(precondition(format!(
            "The X-Broker-API-Version header is required; {supported}."
        )));
    };
    let ok = v
        .trim()
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)))
        .is_some_and(|(major, minor)| major == 2 && (MIN_MINOR..=MAX_MINOR).contains(&minor));
    if ok {
        Ok(())
    } else {
        Err(precondition(format!(
            "X-Broker-API-Version {v:?} is not supported; {supported}."
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::check_version;

    #[test]
    fn versions() {
        for ok in ["2.13", "2.14", "2.17", " 2.15 "] {
            assert!(check_version(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            None,
            Some("2.12"),
            Some("2.18"),
            Some("3.0"),
            Some("2"),
            Some("two"),
            Some(""),
        ] {
            let e = check_version(bad).unwrap_err();
            assert_eq!(e.status.as_u16(), 412, "{bad:?}");
            assert!(e.description.contains("2.13 to 2.17"), "{}", e.description);
        }
    }
}
