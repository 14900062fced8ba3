//! From aws-sdk-s3 errors to [`StorageError`]: which failures a retry can cure.
//!
//! The SDK has already retried transient failures (with backoff, up to the configured attempts)
//! by the time an error reaches us, so this only decides what the *caller* should do next. The
//! rule: a failure to get an answer (timeout, refused or reset connection, a garbled response) is
//! transient; an answer is judged by its status and code — 5xx, 408, 429 and the throttling /
//! timeout / digest codes are transient, any other 4xx (403 bad signature or access denied, 404
//! NoSuchBucket, 400 malformed) is permanent. Not-found of the *key* never gets here: the callers
//! turn it into `Ok(None)` first.

use std::error::Error;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::{Op, StorageError};

/// Error codes that S3-compatible servers send for conditions that pass.
const TRANSIENT_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "InternalError",
    "ServiceUnavailable",
    // The bytes were damaged on the way: sending them again is the cure.
    "BadDigest",
    "InvalidDigest",
    "XAmzContentChecksumMismatch",
    "IncompleteBody",
];

/// Is an answer with this status and error code worth retrying?
pub(crate) fn is_transient_answer(status: u16, code: Option<&str>) -> bool {
    status >= 500
        || status == 408
        || status == 429
        || code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
}

/// Converts an SDK error, keeping the service's code and message (never credentials: neither the
/// request's headers nor its signature are part of an SDK error's text).
pub(crate) fn classify<E>(op: Op, location: String, err: &SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    let detail = describe(err);
    let transient = match err {
        SdkError::ConstructionFailure(_) => false,
        SdkError::DispatchFailure(failure) => !failure.is_user(),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => {
            is_transient_answer(service.raw().status().as_u16(), service.err().code())
        }
        _ => true,
    };
    if transient {
        StorageError::transient(op, location, detail)
    } else {
        StorageError::permanent(op, location, detail)
    }
}

/// A one-line description: "HTTP 403 AccessDenied: message" for answers, the error's chain of
/// causes for everything else.
fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("no error code");
            match service.err().message() {
                Some(message) => format!("HTTP {status} {code}: {message}"),
                None => format!("HTTP {status} {code}"),
            }
        }
        other => chain(other),
    }
}

/// Is the error an answer with this HTTP status (e.g. 404)?
pub(crate) fn has_status<E>(err: &SdkError<E, HttpResponse>, status: u16) -> bool {
    matches!(err, SdkError::ServiceError(s) if s.raw().status().as_u16() == status)
}

/// A body that failed while being read: a checksum mismatch or a broken connection. Both may pass.
pub(crate) fn body_error(op: Op, location: String, err: &(dyn Error + 'static)) -> StorageError {
    StorageError::transient(
        op,
        location,
        format!("reading the body failed: {}", chain(err)),
    )
}

/// `outer: cause: root cause`, skipping a cause that repeats its parent's text.
pub(crate) fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut last = text.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !last.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        last = line;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_by_status_and_code() {
        assert!(is_transient_answer(500, Some("InternalError")));
        assert!(is_transient_answer(503, Some("SlowDown")));
        assert!(is_transient_answer(502, None));
        assert!(is_transient_answer(429, None));
        assert!(is_transient_answer(400, Some("RequestTimeout")));
        assert!(is_transient_answer(400, Some("BadDigest")));
        assert!(!is_transient_answer(403, Some("AccessDenied")));
        assert!(!is_transient_answer(403, Some("SignatureDoesNotMatch")));
        assert!(!is_transient_answer(403, Some("InvalidAccessKeyId")));
        assert!(!is_transient_answer(404, Some("NoSuchBucket")));
        assert!(!is_transient_answer(400, Some("InvalidArgument")));
    }
}
