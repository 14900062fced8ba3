//! Signing in to the dashboard in tests, for real: the UAA's side of the authorization-code
//! flow on [`FakeCf::uaa`] ([`SsoUaa`]), the CC's permissions endpoint, and a "browser" that
//! follows the redirects by hand and keeps the cookies ([`login`], or the steps one by one).
//!
//! [`SsoUaa`] checks what a real UAA checks: `GET /oauth/authorize` needs `response_type=code`,
//! the dashboard client, its redirect URI, a scope, a state and an S256 `code_challenge`, and
//! answers 302 to the redirect URI with a fresh code and the same state (the user signed in is
//! [`SsoUaa::sign_in_as`]'s). `POST /oauth/token` with `grant_type=authorization_code` needs the
//! dashboard client's basic auth, a code it issued (once), the same redirect URI and the
//! verifier whose S256 is the challenge; it answers a token [`FakeCf`]'s key signs, with the
//! claims a UAA gives for the dashboard's scopes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use reqwest::{header, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use super::fake_cf::{rs256_header, uaa_key, BearerUser, Claims, FakeCf, KID};
use super::TestApp;

pub const DASHBOARD_CLIENT_ID: &str = "wayback-dashboard";
/// Distinctive, so that a test can look for it in logs and bodies.
pub const DASHBOARD_CLIENT_SECRET: &str = "dashb0ard-client-s3cret-XYZZY";
/// The user [`SsoUaa`] signs in unless told otherwise.
pub const DEFAULT_USER: &str = "alice";

/// The dashboard's settings with the test client.
pub fn dashboard_settings() -> wayback::config::DashboardSettings {
    wayback::config::DashboardSettings {
        client_id: DASHBOARD_CLIENT_ID.into(),
        client_secret: Some(DASHBOARD_CLIENT_SECRET.to_string().into()),
        ..Default::default()
    }
}

/// Settings of a broker that talks to `fake` and signs dashboard users in with it.
pub fn with_sso(fake: &FakeCf) -> impl FnOnce(&mut wayback::config::Settings) {
    let cc = fake.cc_settings();
    move |s| {
        s.cc = cc;
        s.dashboard = dashboard_settings();
    }
}

/// A fast test app (fake runtime) with dashboard sign-in against `fake`, and its UAA side.
pub async fn spawn_sso_app(fake: &FakeCf) -> (TestApp, SsoUaa) {
    let uaa = SsoUaa::mount(fake).await;
    (super::spawn_fast_app_with(with_sso(fake)).await, uaa)
}

struct Grant {
    user: String,
    challenge: String,
    redirect_uri: String,
}

struct UaaState {
    user: String,
    token_life: Duration,
    issuer: String,
    codes: HashMap<String, Grant>,
    /// Every `/oauth/authorize` query, for assertions.
    authorize_queries: Vec<HashMap<String, String>>,
    /// Every access token the code grant issued.
    issued: Vec<String>,
}

/// The UAA's side of the dashboard's sign-in (see the module doc).
#[derive(Clone)]
pub struct SsoUaa {
    state: Arc<Mutex<UaaState>>,
}

impl SsoUaa {
    /// Mounts `/oauth/authorize` and the authorization-code grant on `fake`'s UAA.
    pub async fn mount(fake: &FakeCf) -> SsoUaa {
        let uaa = SsoUaa {
            state: Arc::new(Mutex::new(UaaState {
                user: DEFAULT_USER.into(),
                token_life: Duration::from_secs(3600),
                issuer: fake.issuer(),
                codes: HashMap::new(),
                authorize_queries: Vec::new(),
                issued: Vec::new(),
            })),
        };
        Mock::given(method("GET"))
            .and(path("/oauth/authorize"))
            .respond_with(Authorize(uaa.clone()))
            .mount(&fake.uaa)
            .await;
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .and(body_string_contains("grant_type=authorization_code"))
            .respond_with(CodeGrant(uaa.clone()))
            .mount(&fake.uaa)
            .await;
        uaa
    }

    /// The user the next `/oauth/authorize` signs in.
    pub fn sign_in_as(&self, user: &str) {
        self.state.lock().unwrap().user = user.into();
    }

    /// The life of the tokens the code grant issues.
    pub fn token_life(&self, life: Duration) {
        self.state.lock().unwrap().token_life = life;
    }

    /// The query parameters of every `/oauth/authorize` so far.
    pub fn authorize_queries(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().authorize_queries.clone()
    }

    /// The access tokens the code grant issued, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    /// Codes issued and not yet exchanged.
    pub fn open_codes(&self) -> usize {
        self.state.lock().unwrap().codes.len()
    }
}

fn query_map(url: &reqwest::Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn bad(error: &str, description: &str) -> ResponseTemplate {
    ResponseTemplate::new(400)
        .set_body_json(json!({"error": error, "error_description": description}))
}

struct Authorize(SsoUaa);

impl Respond for Authorize {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let q = query_map(&request.url);
        let mut st = self.0.state.lock().unwrap();
        st.authorize_queries.push(q.clone());
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        if get("response_type") != "code"
            || get("client_id") != DASHBOARD_CLIENT_ID
            || get("redirect_uri").is_empty()
            || get("scope").is_empty()
            || get("state").is_empty()
            || get("code_challenge").len() != 43
            || get("code_challenge_method") != "S256"
        {
            return bad("invalid_request", "the authorize request is not complete");
        }
        let code = uuid::Uuid::new_v4().simple().to_string();
        let user = st.user.clone();
        st.codes.insert(
            code.clone(),
            Grant {
                user,
                challenge: get("code_challenge").into(),
                redirect_uri: get("redirect_uri").into(),
            },
        );
        let location = reqwest::Url::parse_with_params(
            get("redirect_uri"),
            &[("code", code.as_str()), ("state", get("state"))],
        )
        .expect("the redirect URI is a URL");
        ResponseTemplate::new(302).insert_header("location", location.as_str())
    }
}

struct CodeGrant(SsoUaa);

impl Respond for CodeGrant {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: HashMap<String, String> = reqwest::Url::parse(&format!(
            "http://x/?{}",
            String::from_utf8_lossy(&request.body)
        ))
        .map(|u| query_map(&u))
        .unwrap_or_default();
        let b64 = base64::engine::general_purpose::STANDARD;
        let basic = format!(
            "Basic {}",
            b64.encode(format!("{DASHBOARD_CLIENT_ID}:{DASHBOARD_CLIENT_SECRET}"))
        );
        let auth = request
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok());
        if auth != Some(basic.as_str()) {
            return ResponseTemplate::new(401).set_body_json(
                json!({"error": "unauthorized", "error_description": "Bad credentials"}),
            );
        }
        let mut st = self.0.state.lock().unwrap();
        let Some(grant) = form.get("code").and_then(|c| st.codes.remove(c)) else {
            return bad("invalid_grant", "Invalid authorization code");
        };
        if form.get("redirect_uri") != Some(&grant.redirect_uri) {
            return bad("invalid_grant", "Redirect URI mismatch.");
        }
        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        if challenge != grant.challenge {
            return bad("invalid_grant", "Invalid code verifier");
        }
        let claims = dashboard_claims(&st.issuer, &grant.user, st.token_life);
        let token = jsonwebtoken::encode(&rs256_header(KID), &claims, &uaa_key().encoding_key())
            .expect("sign a token");
        st.issued.push(token.clone());
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token,
            "token_type": "bearer",
            "id_token": "not-checked-by-the-broker",
            "refresh_token": "fake-refresh-token",
            "expires_in": st.token_life.as_secs(),
            "scope": "openid cloud_controller_service_permissions.read",
            "jti": claims.jti,
        }))
    }
}

/// The claims a UAA gives a dashboard sign-in of `user`.
pub fn dashboard_claims(issuer: &str, user: &str, life: Duration) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        jti: uuid::Uuid::new_v4().simple().to_string(),
        sub: super::fake_cf::user_id(user),
        user_id: super::fake_cf::user_id(user),
        user_name: user.to_string(),
        email: format!("{user}@example.org"),
        scope: vec![
            "openid".into(),
            "cloud_controller_service_permissions.read".into(),
        ],
        client_id: DASHBOARD_CLIENT_ID.into(),
        cid: DASHBOARD_CLIENT_ID.into(),
        grant_type: "authorization_code".into(),
        iss: issuer.to_string(),
        aud: vec![
            DASHBOARD_CLIENT_ID.into(),
            "cloud_controller_service_permissions".into(),
            "openid".into(),
        ],
        iat: now,
        exp: now + life.as_secs() as i64,
    }
}

/// The CC answers `GET /v3/service_instances/{instance}/permissions` for `user`'s tokens.
pub async fn permit(fake: &FakeCf, instance: &str, user: &str, read: bool) {
    Mock::given(method("GET"))
        .and(path(format!(
            "/v3/service_instances/{instance}/permissions"
        )))
        .and(BearerUser(Some(user.into())))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"read": read, "manage": false})),
        )
        .mount(&fake.cc)
        .await;
}

/// The CC answers `status` (403, 404) to the permissions of `instance` for any token.
pub async fn refuse(fake: &FakeCf, instance: &str, status: u16) {
    Mock::given(method("GET"))
        .and(path(format!("/v3/service_instances/{instance}/permissions")))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({"errors": [
            {"code": 10010, "title": "CF-ResourceNotFound", "detail": "Service instance not found"}
        ]})))
        .mount(&fake.cc)
        .await;
}

/// A browser that follows nothing by itself (the steps below do, by hand).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The `name=value` of cookie `name` a response sets.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    set_cookie_line(response, name).map(|line| line.split(';').next().unwrap().to_string())
}

/// The whole `Set-Cookie` line of cookie `name` (with its attributes).
pub fn set_cookie_line(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(String::from)
}

pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Step 1: open the page without a session: 302 to the UAA. The authorize URL and the state
/// cookie (`name=value`).
pub async fn start(app: &TestApp, browser: &reqwest::Client, instance: &str) -> (String, String) {
    let r = browser
        .get(format!("{}/dashboard/instances/{instance}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "the page starts a sign-in");
    let state = set_cookie(&r, wayback::dashboard::STATE_COOKIE).expect("a state cookie");
    (location(&r), state)
}

/// Step 2: the UAA signs the user in and sends the browser back: the callback URL.
pub async fn authorize(browser: &reqwest::Client, authorize_url: &str) -> String {
    let r = browser.get(authorize_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "the UAA redirects back");
    location(&r)
}

/// Step 3: the callback, with the cookies given (`name=value`s).
pub async fn callback(
    browser: &reqwest::Client,
    callback_url: &str,
    cookies: &[&str],
) -> reqwest::Response {
    let mut r = browser.get(callback_url);
    if !cookies.is_empty() {
        r = r.header(header::COOKIE, cookies.join("; "));
    }
    r.send().await.unwrap()
}

/// Signs the [`SsoUaa`]'s current user (default [`DEFAULT_USER`]) in to `instance`'s dashboard,
/// the CC allowing that user to read it: the session cookie, `wayback_dashboard=…`, to send
/// as `Cookie` (or to give a headless browser). Needs [`SsoUaa::mount`] (or [`spawn_sso_app`]).
pub async fn login(app: &TestApp, fake: &FakeCf, instance: &str) -> String {
    login_as(app, fake, instance, DEFAULT_USER).await
}

/// [`login`] as `user` (who must be the [`SsoUaa`]'s current user).
pub async fn login_as(app: &TestApp, fake: &FakeCf, instance: &str, user: &str) -> String {
    permit(fake, instance, user, true).await;
    let browser = browser();
    let (authorize_url, state) = start(app, &browser, instance).await;
    let callback_url = authorize(&browser, &authorize_url).await;
    let r = callback(&browser, &callback_url, &[&state]).await;
    assert_eq!(r.status(), StatusCode::FOUND, "the callback signs in");
    assert_eq!(location(&r), format!("/dashboard/instances/{instance}"));
    set_cookie(&r, wayback::dashboard::COOKIE).expect("a session cookie")
}
