//! `GET /metrics` behind basic auth (`metrics.auth`), what it exposes, and the dashboard page
//! that tells an instance GUID's holder nothing.

use reqwest::{Method, StatusCode};
use wayback::config::MetricsAuth;

use crate::common::*;

/// (credentials offered, expected status, why).
type Case<'a> = (Option<(&'a str, &'a str)>, StatusCode, &'a str);

async fn metrics_status(app: &TestApp, credentials: Option<(&str, &str)>) -> StatusCode {
    let mut req = app.client.get(format!("{}/metrics", app.address));
    if let Some((user, password)) = credentials {
        req = req.basic_auth(user, Some(password));
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn metrics_auth_none_leaves_metrics_open() {
    let app = spawn_fast_app().await;
    assert_eq!(metrics_status(&app, None).await, StatusCode::OK);
    assert_eq!(
        metrics_status(&app, Some(("anyone", "anything"))).await,
        StatusCode::OK,
        "credentials are ignored when none are asked for"
    );
}

#[tokio::test]
async fn metrics_auth_broker_asks_for_the_brokers_credentials() {
    let app = spawn_fast_app_with(|s| s.metrics.auth = MetricsAuth::Broker).await;
    let password = app.password.clone();
    // (credentials, expected status, why)
    let cases: [Case; 4] = [
        (None, StatusCode::UNAUTHORIZED, "no credentials"),
        (
            Some((USER, "wrong")),
            StatusCode::UNAUTHORIZED,
            "wrong password",
        ),
        (
            Some(("metrics", &password)),
            StatusCode::UNAUTHORIZED,
            "wrong user",
        ),
        (
            Some((USER, &password)),
            StatusCode::OK,
            "the broker's credentials",
        ),
    ];
    for (credentials, expected, why) in cases {
        assert_eq!(metrics_status(&app, credentials).await, expected, "{why}");
    }
    let denied = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert!(denied.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["error"], "Unauthorized");
}

#[tokio::test]
async fn metrics_auth_own_asks_for_its_own_credentials() {
    let app = spawn_fast_app_with(|s| {
        s.metrics.auth = MetricsAuth::Own;
        s.metrics.username = "prometheus".into();
        s.metrics.password = Some("scrape-secret".to_string().into());
    })
    .await;
    let broker_password = app.password.clone();
    let cases: [Case; 4] = [
        (None, StatusCode::UNAUTHORIZED, "no credentials"),
        (
            Some(("prometheus", "wrong")),
            StatusCode::UNAUTHORIZED,
            "wrong password",
        ),
        (
            Some((USER, &broker_password)),
            StatusCode::UNAUTHORIZED,
            "the broker's credentials are not the metrics credentials",
        ),
        (
            Some(("prometheus", "scrape-secret")),
            StatusCode::OK,
            "the metrics credentials",
        ),
    ];
    for (credentials, expected, why) in cases {
        assert_eq!(metrics_status(&app, credentials).await, expected, "{why}");
    }
}

#[test]
fn metrics_auth_own_without_a_password_is_refused() {
    let mut s = wayback::config::Settings::default();
    s.metrics.auth = MetricsAuth::Own;
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("metrics.password"), "{err}");
}

/// The labels carry instance ids, never instance names, and the text holds no credential.
#[tokio::test]
async fn metrics_expose_no_names_and_no_secrets() {
    let app = spawn_fast_app().await;
    let id = app.provision_ready("secret-project-name").await;
    let binding = new_id();
    let credentials = app.bind_sync(&id, &binding).await;
    let text = app
        .osb(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("secret-project-name"), "{text}");
    assert!(!text.contains(&app.password), "the broker password leaks");
    if let Some(password) = credentials["password"].as_str() {
        assert!(!text.contains(password), "a binding password leaks");
    }
}

/// Without single sign-on the dashboard page says the same for an instance that exists, one
/// that does not, and one that was deleted: a GUID tells nothing. (With sign-in configured,
/// nothing is shown before the Cloud Controller's permission check: `dashboard_sso.rs`.)
#[tokio::test]
async fn the_dashboard_page_tells_nothing_about_the_instance() {
    let app = spawn_fast_app().await;
    let live = app.provision_ready("orders").await;
    let page = |id: String| {
        let client = app.client.clone();
        let url = format!("{}/dashboard/instances/{id}", app.address);
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let (status, known) = page(live.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, unknown) = page(new_id()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(known, unknown, "the page depends on the instance");
    assert!(
        !known.contains(&live) && !known.contains("orders"),
        "{known}"
    );
}
