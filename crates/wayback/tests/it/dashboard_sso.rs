//! The dashboard's single sign-on end to end (issue 19), against the wiremock UAA and Cloud
//! Controller of `common::fake_cf` with the UAA's side of the authorization-code flow from
//! `common::dashboard` (which checks the client, the redirect URI and PKCE like a UAA does).
//! The broker is the whole application on the fake runtime; its state store is real SQLite.

use std::io::Write;
use std::sync::{Arc, Mutex};

use reqwest::{header, StatusCode};
use serde_json::Value;

use crate::common::dashboard::{
    authorize, browser, callback, location, login, permit, refuse, set_cookie, set_cookie_line,
    spawn_sso_app, start, DASHBOARD_CLIENT_ID, DASHBOARD_CLIENT_SECRET,
};
use crate::common::fake_cf::FakeCf;
use crate::common::{new_id, spawn_fast_app, TestApp};
use wayback::dashboard::{Session, SessionKeys, COOKIE, STATE_COOKIE};

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut r = browser().get(format!("{}{path}", app.address));
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.send().await.unwrap()
}

fn assert_security_headers(r: &reqwest::Response, what: &str) {
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    assert_eq!(h("content-security-policy"), CSP, "{what}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(h("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(h("cache-control"), "no-store", "{what}");
}

#[tokio::test]
async fn the_page_without_a_session_redirects_to_the_uaa_with_state_and_pkce() {
    let fake = FakeCf::start().await;
    let (app, uaa) = spawn_sso_app(&fake).await;
    let id = app.provision_ready("orders").await;

    let r = get(&app, &format!("/dashboard/instances/{id}"), None).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_security_headers(&r, "the sign-in redirect");
    let to = reqwest::Url::parse(&location(&r)).unwrap();
    assert_eq!(
        format!(
            "{}://{}:{}{}",
            to.scheme(),
            to.host_str().unwrap(),
            to.port().unwrap(),
            to.path()
        ),
        format!("{}/oauth/authorize", fake.uaa_url())
    );
    let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], DASHBOARD_CLIENT_ID);
    assert_eq!(
        q["redirect_uri"],
        format!("{}/dashboard/callback", app.address)
    );
    assert_eq!(
        q["scope"],
        "openid cloud_controller_service_permissions.read"
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43, "base64url SHA-256");
    assert_eq!(q["state"].len(), 43, "256 random bits");
    // The state is bound to this browser by a cookie only the callback sees.
    let line = set_cookie_line(&r, STATE_COOKIE).unwrap();
    assert!(
        line.starts_with(&format!("{STATE_COOKIE}={}; ", q["state"])),
        "{line}"
    );
    for attribute in [
        "Path=/dashboard/callback",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
    ] {
        assert!(line.contains(attribute), "{attribute} missing: {line}");
    }
    // Kept in the store (any broker can finish it), but never the state itself.
    assert_eq!(app.store.dashboard_login_count().await.unwrap(), 1);

    // A second visit starts another sign-in, with other values.
    let (second, _) = start(&app, &browser(), &id).await;
    let q2: std::collections::HashMap<_, _> = reqwest::Url::parse(&second)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_ne!(q2["state"], q["state"]);
    assert_ne!(q2["code_challenge"], q["code_challenge"]);
    assert_eq!(
        uaa.authorize_queries().len(),
        0,
        "nothing reached the UAA yet"
    );
}

#[tokio::test]
async fn a_permitted_user_signs_in_sees_the_page_and_its_data_and_signs_out() {
    let fake = FakeCf::start().await;
    let (app, uaa) = spawn_sso_app(&fake).await;
    let id = app.provision_ready("orders").await;
    permit(&fake, &id, "alice", true).await;

    let b = browser();
    let (authorize_url, state) = start(&app, &b, &id).await;
    let callback_url = authorize(&b, &authorize_url).await;
    let r = callback(&b, &callback_url, &[&state]).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_security_headers(&r, "the callback");
    assert_eq!(location(&r), format!("/dashboard/instances/{id}"));
    let line = set_cookie_line(&r, COOKIE).expect("a session cookie");
    for attribute in [
        "Path=/dashboard/",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=1800",
    ] {
        assert!(line.contains(attribute), "{attribute} missing: {line}");
    }
    assert!(
        !line.contains("Secure"),
        "the test broker is plain http: {line}"
    );
    let state_cleared = set_cookie_line(&r, STATE_COOKIE).unwrap();
    assert!(state_cleared.contains("Max-Age=0"), "{state_cleared}");
    assert_eq!(uaa.open_codes(), 0, "the code was exchanged");
    assert_eq!(app.store.dashboard_login_count().await.unwrap(), 0);
    let session = set_cookie(&r, COOKIE).unwrap();
    // No token in the cookie: it is a signed session of a few fields.
    assert!(session.len() < 400, "{session}");

    let page = get(&app, &format!("/dashboard/instances/{id}"), Some(&session)).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_security_headers(&page, "the page");
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let data = get(
        &app,
        &format!("/dashboard/instances/{id}/data"),
        Some(&session),
    )
    .await;
    assert_eq!(data.status(), StatusCode::OK);
    assert_security_headers(&data, "the data");
    let _: Value = data.json().await.expect("JSON");

    // The permissions were asked with the user's own token (the mock matches alice's only).
    let asked = fake
        .cc
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == format!("/v3/service_instances/{id}/permissions"))
        .count();
    assert_eq!(asked, 1);

    let out = browser()
        .post(format!("{}/dashboard/logout", app.address))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::OK);
    let cleared = set_cookie_line(&out, COOKIE).unwrap();
    assert!(
        cleared.starts_with(&format!("{COOKIE}=;")) && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test]
async fn a_user_without_read_permission_gets_a_403_that_names_nothing() {
    let fake = FakeCf::start().await;
    let (app, uaa) = spawn_sso_app(&fake).await;
    let id = app.provision_ready("secret-orders").await;
    permit(&fake, &id, "mallory", false).await;
    uaa.sign_in_as("mallory");

    let b = browser();
    let (authorize_url, state) = start(&app, &b, &id).await;
    let r = callback(&b, &authorize(&b, &authorize_url).await, &[&state]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_security_headers(&r, "the 403");
    assert!(set_cookie(&r, COOKIE).is_none(), "no session");
    let denied = r.text().await.unwrap();
    for leak in [id.as_str(), "secret-orders", "small", "mallory"] {
        assert!(!denied.contains(leak), "the 403 names {leak}: {denied}");
    }

    // An instance the CC does not show the user at all (404) gets the very same page.
    let other = new_id();
    refuse(&fake, &other, 404).await;
    let (authorize_url, state) = start(&app, &b, &other).await;
    let r = callback(&b, &authorize(&b, &authorize_url).await, &[&state]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.text().await.unwrap(), denied);
}

#[tokio::test]
async fn forged_replayed_and_foreign_browser_states_are_refused() {
    let fake = FakeCf::start().await;
    let (app, _uaa) = spawn_sso_app(&fake).await;
    let id = app.provision_ready("orders").await;
    permit(&fake, &id, "alice", true).await;
    let b = browser();

    // A forged state (with a matching cookie: the attacker controls both) is unknown.
    let (authorize_url, _) = start(&app, &b, &id).await;
    let url = authorize(&b, &authorize_url).await;
    let forged_state = "A".repeat(43);
    let mut forged = reqwest::Url::parse(&url).unwrap();
    let code = forged
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    forged
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code)
        .append_pair("state", &forged_state);
    let r = callback(
        &b,
        forged.as_str(),
        &[&format!("{STATE_COOKIE}={forged_state}")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&r, COOKIE).is_none());

    // A real state arriving in another browser (no state cookie: a login CSRF) is refused.
    let (authorize_url, state) = start(&app, &b, &id).await;
    let url = authorize(&b, &authorize_url).await;
    let r = callback(&b, &url, &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&r, COOKIE).is_none());
    // … and it stays usable by the browser that started it.
    let r = callback(&b, &url, &[&state]).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(set_cookie(&r, COOKIE).is_some());

    // Replayed: the same callback again is refused, even with its state cookie.
    let r = callback(&b, &url, &[&state]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&r, COOKIE).is_none());
    let body = r.text().await.unwrap();
    assert!(body.contains("already used"), "{body}");

    // Without code or state: refused, nothing taken.
    let r = callback(&b, &format!("{}/dashboard/callback", app.address), &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// The app's own session keys (the keyring generated into its data directory).
fn session_keys(app: &TestApp) -> SessionKeys {
    let keyring = wayback::crypto::keyfile::keyring(
        &Default::default(),
        None,
        &app.data_dir,
        wayback::crypto::keyfile::WhenNoKey::Existing,
    )
    .expect("the app's keyring");
    SessionKeys::new(Arc::new(keyring))
}

#[tokio::test]
async fn expired_tampered_and_other_instances_sessions_are_refused() {
    let fake = FakeCf::start().await;
    let (app, _uaa) = spawn_sso_app(&fake).await;
    let id = app.provision_ready("orders").await;
    let other = app.provision_ready("billing").await;
    let session = login(&app, &fake, &id).await;
    let page = |instance: &str| format!("/dashboard/instances/{instance}");
    let data = |instance: &str| format!("/dashboard/instances/{instance}/data");
    assert_eq!(
        get(&app, &page(&id), Some(&session)).await.status(),
        StatusCode::OK
    );

    // Another instance's cookie: sign in again for that one (page), 401 (data).
    assert_eq!(
        get(&app, &page(&other), Some(&session)).await.status(),
        StatusCode::FOUND
    );
    assert_eq!(
        get(&app, &data(&other), Some(&session)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Tampered: the payload of the session made to name the other instance.
    let value = session.strip_prefix(&format!("{COOKIE}=")).unwrap();
    let keys = session_keys(&app);
    let now = chrono::Utc::now().timestamp();
    let genuine = keys
        .verify(value, now)
        .expect("the app's keys verify its cookie");
    let mut forged = genuine.clone();
    forged.instance = other.clone();
    let stranger_keys = session_keys_of_a_stranger();
    let foreign = stranger_keys.sign(&forged);
    let (_, tag) = value.rsplit_once('.').unwrap();
    let (forged_signed, _) = foreign.rsplit_once('.').unwrap();
    let spliced = format!("{COOKIE}={forged_signed}.{tag}");
    for (what, cookie) in [
        ("spliced payload", spliced),
        ("signed by other keys", format!("{COOKIE}={foreign}")),
        ("truncated", session[..session.len() - 3].to_string()),
    ] {
        let r = get(&app, &page(&other), Some(&cookie)).await;
        assert_eq!(r.status(), StatusCode::FOUND, "{what}");
        let r = get(&app, &data(&other), Some(&cookie)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
    }

    // Expired: signed with the app's own keys, but past its expiry.
    let expired = keys.sign(&Session {
        issued_at: now - 3600,
        expires_at: now - 1,
        ..genuine.clone()
    });
    let expired = format!("{COOKIE}={expired}");
    assert_eq!(
        get(&app, &page(&id), Some(&expired)).await.status(),
        StatusCode::FOUND
    );
    let r = get(&app, &data(&id), Some(&expired)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The same, not yet expired, works: the refusal was the expiry.
    let fresh = format!(
        "{COOKIE}={}",
        keys.sign(&Session {
            expires_at: now + 60,
            ..genuine
        })
    );
    assert_eq!(
        get(&app, &data(&id), Some(&fresh)).await.status(),
        StatusCode::OK
    );
}

fn session_keys_of_a_stranger() -> SessionKeys {
    let ring = wayback::crypto::Keyring::new(
        vec![("k1".into(), wayback::crypto::random_key_bytes())],
        None,
    )
    .unwrap();
    SessionKeys::new(Arc::new(ring))
}

#[tokio::test]
async fn the_data_endpoint_answers_401_json_without_a_session_never_a_redirect() {
    let fake = FakeCf::start().await;
    let (app, _uaa) = spawn_sso_app(&fake).await;
    let id = app.provision_ready("orders").await;
    for instance in [id.clone(), new_id(), "not-a-guid".into()] {
        let r = get(&app, &format!("/dashboard/instances/{instance}/data"), None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{instance}");
        assert_security_headers(&r, "the 401");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "Unauthorized");
        let text = body.to_string();
        assert!(!text.contains("orders"), "{text}");
    }
    assert_eq!(
        app.store.dashboard_login_count().await.unwrap(),
        0,
        "no sign-in started"
    );
}

#[tokio::test]
async fn the_catalog_shows_the_dashboard_client_only_when_configured() {
    let plain = spawn_fast_app().await;
    let catalog: Value = plain
        .osb(reqwest::Method::GET, "/v2/catalog")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for service in catalog["services"].as_array().unwrap() {
        assert!(service.get("dashboard_client").is_none(), "{service}");
    }
    let id = plain.provision_ready("orders").await;
    let r = get(&plain, &format!("/dashboard/instances/{id}"), None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_security_headers(&r, "the not-configured page");
    assert!(r.text().await.unwrap().contains("dashboard.client_id"));

    let fake = FakeCf::start().await;
    let (app, _uaa) = spawn_sso_app(&fake).await;
    let catalog: Value = app
        .osb(reqwest::Method::GET, "/v2/catalog")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for service in catalog["services"].as_array().unwrap() {
        assert_eq!(
            service["dashboard_client"],
            serde_json::json!({
                "id": DASHBOARD_CLIENT_ID,
                "secret": DASHBOARD_CLIENT_SECRET,
                "redirect_uri": format!("{}/dashboard/callback", app.address),
            })
        );
    }
}

/// Everything the broker logs, at every level, while it runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_client_secret_tokens_and_codes_never_reach_the_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    // nextest runs each test in its own process: this subscriber is the process's, and the
    // app's own telemetry::init leaves it in place. Checked below (the log must not be empty).
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("this test's process has no subscriber yet (run it with nextest)");
    let fake = FakeCf::start().await;
    let (app, uaa) = spawn_sso_app(&fake).await;
    let id = app.provision_ready("orders").await;
    let _ = app
        .osb(reqwest::Method::GET, "/v2/catalog")
        .send()
        .await
        .unwrap();
    permit(&fake, &id, "alice", true).await;
    let b = browser();
    let (authorize_url, state) = start(&app, &b, &id).await;
    let url = authorize(&b, &authorize_url).await;
    let r = callback(&b, &url, &[&state]).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let session = set_cookie(&r, COOKIE).unwrap();
    // A failed exchange too (the code is used up now): its error is logged.
    let r = callback(&b, &url, &[&state]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // No wait needed: the request span's last line ("request done") is written before the
    // response leaves the broker, so the whole of both callbacks is in the capture already.
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("dashboard sign-in"),
        "the capture works: {} bytes",
        log.len()
    );
    assert!(
        log.lines().any(|l| l.contains("/callback")
            && l.contains("request done")
            && l.contains("status=400")),
        "the failed exchange's request is captured to its end: {:?}",
        log.lines()
            .filter(|l| l.contains("request done"))
            .collect::<Vec<_>>()
    );
    let q: std::collections::HashMap<_, _> = reqwest::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let token_requests = fake.uaa.received_requests().await.unwrap();
    let exchange = token_requests
        .iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains("authorization_code"))
        .unwrap();
    let verifier = reqwest::Url::parse(&format!(
        "http://x/?{}",
        String::from_utf8_lossy(&exchange.body)
    ))
    .unwrap()
    .query_pairs()
    .find(|(k, _)| k == "code_verifier")
    .unwrap()
    .1
    .to_string();
    let session_value = session.split_once('=').unwrap().1;
    for (what, secret) in [
        ("client secret", DASHBOARD_CLIENT_SECRET),
        ("code", q["code"].as_str()),
        ("state", q["state"].as_str()),
        ("PKCE verifier", verifier.as_str()),
        ("session cookie", session_value),
        ("access token", uaa.issued_tokens()[0].as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} is in the log");
    }
}
