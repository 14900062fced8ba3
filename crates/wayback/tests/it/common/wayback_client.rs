//! A client of the broker's own API, `/wayback/v1` (docs/wayback-api.md), for its tests in both
//! tiers: a GET with each kind of `Authorization` ([`Auth`]), and [`assert_refused`], which
//! checks a refusal's status, `error`, a description that says what went wrong, and that it
//! names no space: nothing about a space the caller may not see leaks.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::{TestApp, SPACE, USER};

pub const HOUR: Duration = Duration::from_secs(3600);
pub const OTHER_SPACE: &str = "5ace0000-0000-4000-8000-0000000000ff";

pub enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
    Raw(&'a str),
}

pub struct Answer {
    pub status: StatusCode,
    pub www_authenticate: Option<String>,
    pub body: Value,
}

pub async fn get(app: &TestApp, path: &str, auth: Auth<'_>) -> Answer {
    let mut request = app.client.get(format!("{}/wayback/v1{path}", app.address));
    request = match auth {
        Auth::None => request,
        Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
        Auth::Bearer(token) => request.header("Authorization", format!("bearer {token}")),
        Auth::Raw(value) => request.header("Authorization", value),
    };
    let response = request.send().await.unwrap();
    Answer {
        status: response.status(),
        www_authenticate: response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string()),
        body: response.json().await.unwrap_or(Value::Null),
    }
}

pub fn operator(app: &TestApp) -> Auth<'_> {
    Auth::Basic(USER, &app.password)
}

/// Asserts a refusal: status, `error`, a description containing `says`, and no space named.
pub fn assert_refused(answer: &Answer, status: StatusCode, error: &str, says: &str, why: &str) {
    assert_eq!(answer.status, status, "{why}: {}", answer.body);
    assert_eq!(answer.body["error"], error, "{why}: {}", answer.body);
    let description = answer.body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains(says),
        "{why}: description {description:?} should say {says:?}"
    );
    for space in [SPACE, OTHER_SPACE] {
        assert!(
            !answer.body.to_string().contains(space),
            "{why}: leaks {space}"
        );
    }
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            answer.www_authenticate.as_deref(),
            Some("Bearer realm=\"wayback\""),
            "{why}"
        );
    }
}

pub fn ids(body: &Value) -> Vec<String> {
    body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect()
}

pub fn auth_clone<'a>(auth: &Auth<'a>) -> Auth<'a> {
    match auth {
        Auth::None => Auth::None,
        Auth::Basic(u, p) => Auth::Basic(u, p),
        Auth::Bearer(t) => Auth::Bearer(t),
        Auth::Raw(r) => Auth::Raw(r),
    }
}
