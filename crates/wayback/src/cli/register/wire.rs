//! The Cloud Controller's v3 JSON as `register-broker` reads it: a broker, a page of a list, a
//! job with its errors and warnings; and the CC's error envelope as text a person can act on.
//! Pure: no calls, no I/O.

use serde::Deserialize;
use serde_json::Value;

/// The broker's guid and scope, as the CC lists it.
#[derive(Deserialize)]
pub(super) struct WireBroker {
    pub(super) guid: String,
    #[serde(default)]
    pub(super) relationships: Value,
}

#[derive(Deserialize)]
pub(super) struct WireList {
    #[serde(default)]
    pub(super) resources: Vec<Value>,
    #[serde(default)]
    pub(super) pagination: Value,
}

#[derive(Deserialize)]
pub(super) struct WireJob {
    pub(super) guid: String,
    pub(super) state: String,
    #[serde(default)]
    pub(super) operation: String,
    #[serde(default)]
    pub(super) errors: Vec<WireJobError>,
    #[serde(default)]
    pub(super) warnings: Vec<WireWarning>,
}

#[derive(Deserialize)]
pub(super) struct WireJobError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
}

#[derive(Deserialize)]
pub(super) struct WireWarning {
    #[serde(default)]
    pub(super) detail: String,
}

/// `title (code): detail` for each error of the CC's envelope, else the start of the body.
pub(super) fn errors_text(body: &str) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        errors: Vec<WireJobError>,
    }
    match serde_json::from_str::<Envelope>(body) {
        Ok(e) if !e.errors.is_empty() => join_errors(&e.errors),
        _ => {
            let body = body.trim();
            match body.char_indices().nth(300) {
                Some((cut, _)) => format!("{}…", &body[..cut]),
                None if body.is_empty() => "(empty body)".into(),
                None => body.to_string(),
            }
        }
    }
}

pub(super) fn join_errors(errors: &[WireJobError]) -> String {
    errors
        .iter()
        .map(|e| match e.code {
            Some(code) => format!("{} ({code}): {}", e.title, e.detail),
            None => format!("{}: {}", e.title, e.detail),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_shown_as_the_cc_wrote_them() {
        let body = r#"{"errors":[{"code":10003,"title":"CF-NotAuthorized","detail":"You are not authorized to perform the requested action"}]}"#;
        assert_eq!(
            errors_text(body),
            "CF-NotAuthorized (10003): You are not authorized to perform the requested action"
        );
        assert_eq!(errors_text(""), "(empty body)");
        assert_eq!(errors_text("gateway down"), "gateway down");
    }
}
