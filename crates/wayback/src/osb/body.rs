//! Request bodies, query strings and path ids, turned into clear 400/413s.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::OsbError;

/// Reads at most `limit` bytes and parses them as `T`, naming the offending field on error.
/// An empty body is `{}` (DELETE-like requests may send none).
pub async fn json<T: DeserializeOwned>(
    mut payload: web::Payload,
    limit: usize,
) -> Result<T, OsbError> {
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            OsbError::bad_request(format!("The request body could not be read: {e}"))
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(OsbError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("The request body is larger than {limit} bytes; send a smaller parameters object."),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| OsbError::bad_request(format!("The request body is not valid JSON: {e}.")))?;
    // Checked before typed parsing: serde would otherwise map an array onto fields by position.
    if !value.is_object() {
        let what = match value {
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(OsbError::bad_request(format!(
            "The request body must be a JSON object, not {what}."
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        OsbError::bad_request(format!(
            "Field {path:?} has the wrong type: {}.",
            e.into_inner()
        ))
    })
}

/// The query string as a map; repeated or undecodable parameters are a 400.
pub fn query(req: &HttpRequest) -> Result<HashMap<String, String>, OsbError> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| OsbError::bad_request(format!("The query string is not valid: {e}.")))
}

/// `accepts_incomplete`: absent → false; `true`/`false`; anything else → 400.
pub fn accepts_incomplete(q: &HashMap<String, String>) -> Result<bool, OsbError> {
    match q.get("accepts_incomplete").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(OsbError::bad_request(format!(
            "Query parameter accepts_incomplete must be true or false, not {other:?}."
        ))),
    }
}

/// A query parameter that must be present and non-empty (e.g. DELETE's service_id, plan_id).
pub fn required<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, OsbError> {
    match q.get(name).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(OsbError::bad_request(format!(
            "Query parameter {name} is required and must not be empty."
        ))),
    }
}

/// An optional query parameter that, when present, must not be empty.
pub fn optional<'a>(
    q: &'a HashMap<String, String>,
    name: &str,
) -> Result<Option<&'a str>, OsbError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) if !v.trim().is_empty() => Ok(Some(v.as_str())),
        Some(_) => Err(OsbError::bad_request(format!(
            "Query parameter {name} must not be empty when given."
        ))),
    }
}

/// A required body field: present, a string, not blank.
pub fn field(value: Option<String>, name: &str) -> Result<String, OsbError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => Err(OsbError::bad_request(format!(
            "Field {name:?} must not be empty."
        ))),
        None => Err(OsbError::bad_request(format!(
            "Field {name:?} is required."
        ))),
    }
}

/// Parses a path or body id with the domain's rules, as a 400.
pub fn id<T>(
    parse: impl FnOnce(String) -> Result<T, crate::domain::IdError>,
    value: String,
) -> Result<T, OsbError> {
    parse(value).map_err(|e| OsbError::bad_request(format!("{}.", capitalise(&e.to_string()))))
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
