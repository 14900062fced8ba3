//! A fake Cloud Foundry for tests of the broker's own API and of the `cf-wayback` CLI: a UAA and
//! a Cloud Controller, each a wiremock server, answering with the shapes of their API docs
//! (`shared/cc-fixtures/`).
//!
//! - CC `GET /` links `uaa` and `login` to the UAA mock (shape of `cc-get-root.json`).
//! - UAA `GET /token_keys` serves `{"keys": [...]}` with one RSA-2048 public key, both as the
//!   `value` PEM and as JWK `n`/`e` (base64url, the current UAA's form), under [`FakeCf::kid`].
//! - UAA `POST /oauth/token` with `grant_type=client_credentials` grants the broker's own
//!   client a token (for its name resolver); other grants are the test's to mount.
//! - [`FakeCf::mint`] / [`FakeCf::token_for`] sign RS256 access tokens with that key, claims
//!   shaped like `uaa-access-token-claims-example.json`.
//! - [`FakeCf::allow_space`] / [`FakeCf::deny_space`] answer CC `GET /v3/spaces/:guid`.
//!
//! Key generation is slow in debug builds, so the keys are made once per test process.
//! Mount anything else (`/v3/service_instances`, password grants, jobs) on [`FakeCf::cc`] and
//! [`FakeCf::uaa`] directly.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

/// The key id the UAA mock publishes and tokens name.
pub const KID: &str = "wayback-test-key";
/// The broker's UAA client, as [`FakeCf::cc_settings`] configures it.
pub const CLIENT_ID: &str = "wayback-broker";
pub const CLIENT_SECRET: &str = "broker-client-s3cret";

/// An RSA key pair in the forms the fake needs.
pub struct TestKey {
    /// PKCS#1 private key PEM (for `EncodingKey::from_rsa_pem`).
    pub private_pem: String,
    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), the UAA's `value`.
    pub public_pem: String,
    /// JWK modulus and exponent, base64url without padding.
    pub n: String,
    pub e: String,
}

impl TestKey {
    fn generate() -> TestKey {
        let mut rng = rand::thread_rng();
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("generate an RSA key");
        let public = private.to_public_key();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        TestKey {
            private_pem: private
                .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                .expect("encode the private key")
                .to_string(),
            public_pem: public
                .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .expect("encode the public key"),
            n: b64.encode(public.n().to_bytes_be()),
            e: b64.encode(public.e().to_bytes_be()),
        }
    }

    pub fn encoding_key(&self) -> EncodingKey {
        EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).expect("RSA private key")
    }
}

/// The key the fake UAA publishes.
pub fn uaa_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(TestKey::generate)
}

/// Another key, never published: tokens signed with it must be refused.
pub fn foreign_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(TestKey::generate)
}

/// The claims of a UAA access token (the fields the broker and CLI read, plus the usual rest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub jti: String,
    pub sub: String,
    pub user_id: String,
    pub user_name: String,
    pub email: String,
    pub scope: Vec<String>,
    pub client_id: String,
    pub cid: String,
    pub grant_type: String,
    pub iss: String,
    pub aud: Vec<String>,
    /// Unix seconds.
    pub iat: i64,
    pub exp: i64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The user id the fake gives `user` (stable, so tests can match on it).
pub fn user_id(user: &str) -> String {
    format!("uid-{user}")
}

/// The UAA and CC stand-ins. Dropping it stops both servers.
pub struct FakeCf {
    pub uaa: MockServer,
    pub cc: MockServer,
}

impl FakeCf {
    pub async fn start() -> FakeCf {
        let key = uaa_key();
        let (uaa, cc) = (MockServer::start().await, MockServer::start().await);
        Mock::given(method("GET"))
            .and(path("/token_keys"))
            .respond_with(ResponseTemplate::new(200).set_body_json(token_keys_body(key)))
            .mount(&uaa)
            .await;
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .and(body_string_contains("grant_type=client_credentials"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "fake-client-credentials-token",
                "token_type": "bearer",
                "expires_in": 43199,
                "scope": "cloud_controller.admin_read_only",
                "jti": "fake-client-credentials-jti",
            })))
            .mount(&uaa)
            .await;
        Mock::given(method("GET"))
            .and(path("/"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(root_body(&cc.uri(), &uaa.uri())),
            )
            .mount(&cc)
            .await;
        FakeCf { uaa, cc }
    }

    pub fn uaa_url(&self) -> String {
        self.uaa.uri()
    }

    pub fn cc_url(&self) -> String {
        self.cc.uri()
    }

    /// The `iss` of the UAA's tokens: `<uaa>/oauth/token`.
    pub fn issuer(&self) -> String {
        format!("{}/oauth/token", self.uaa.uri())
    }

    pub fn kid(&self) -> &'static str {
        KID
    }

    /// Broker settings for this CC (UAA found from the CC root; the broker's client).
    pub fn cc_settings(&self) -> wayback::config::CcSettings {
        wayback::config::CcSettings {
            api_url: Some(self.cc_url()),
            client_id: CLIENT_ID.into(),
            client_secret: Some(CLIENT_SECRET.to_string().into()),
            attempts: 1,
            ..wayback::config::CcSettings::default()
        }
    }

    /// The claims of a password-grant token of `user` (cf CLI client), expiring in `exp_in`.
    pub fn claims(&self, user: &str, exp_in: Duration) -> Claims {
        let now = unix_now();
        Claims {
            jti: uuid::Uuid::new_v4().simple().to_string(),
            sub: user_id(user),
            user_id: user_id(user),
            user_name: user.to_string(),
            email: format!("{user}@example.org"),
            scope: [
                "cloud_controller.read",
                "cloud_controller.write",
                "openid",
                "uaa.user",
            ]
            .map(String::from)
            .to_vec(),
            client_id: "cf".into(),
            cid: "cf".into(),
            grant_type: "password".into(),
            iss: self.issuer(),
            aud: ["cloud_controller", "openid", "uaa", "cf"]
                .map(String::from)
                .to_vec(),
            iat: now,
            exp: now + exp_in.as_secs() as i64,
        }
    }

    /// `claims` signed RS256 with the published key, header naming [`KID`].
    pub fn mint(&self, claims: &Claims) -> String {
        self.mint_with(&rs256_header(KID), claims, uaa_key())
    }

    /// `claims` under `header`, signed with `key` (another kid, another key, another alg).
    pub fn mint_with(&self, header: &Header, claims: &Claims, key: &TestKey) -> String {
        jsonwebtoken::encode(header, claims, &key.encoding_key()).expect("sign a token")
    }

    /// A valid token of `user` expiring in `exp_in`.
    pub fn token_for(&self, user: &str, exp_in: Duration) -> String {
        self.mint(&self.claims(user, exp_in))
    }

    /// The CC lets `user` (any bearer token whose `user_name` is `user`) see `space_guid`.
    pub async fn allow_space_for(&self, user: &str, space_guid: &str) {
        space_mock(space_guid, Some(user), 200)
            .mount(&self.cc)
            .await;
    }

    /// The CC lets any bearer token see `space_guid`.
    pub async fn allow_space(&self, space_guid: &str) {
        space_mock(space_guid, None, 200).mount(&self.cc).await;
    }

    /// The CC refuses `space_guid` to any bearer token with `status` (403, or 404 as the CC
    /// answers for a space the user has no role in, or that does not exist).
    pub async fn deny_space(&self, space_guid: &str, status: u16) {
        space_mock(space_guid, None, status).mount(&self.cc).await;
    }

    /// How many `GET /token_keys` the UAA answered.
    pub async fn token_keys_fetches(&self) -> usize {
        count(&self.uaa, "GET", "/token_keys").await
    }

    /// How many `GET /v3/spaces/:guid` the CC answered.
    pub async fn space_checks(&self, space_guid: &str) -> usize {
        count(&self.cc, "GET", &format!("/v3/spaces/{space_guid}")).await
    }
}

/// An RS256 header naming `kid`.
pub fn rs256_header(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    header
}

fn token_keys_body(key: &TestKey) -> Value {
    json!({ "keys": [{
        "kid": KID,
        "alg": "RS256",
        "value": key.public_pem,
        "kty": "RSA",
        "use": "sig",
        "n": key.n,
        "e": key.e,
    }]})
}

fn root_body(cc: &str, uaa: &str) -> Value {
    json!({ "links": {
        "self": { "href": cc },
        "cloud_controller_v2": { "href": format!("{cc}/v2"), "meta": { "version": "2.155.0" } },
        "cloud_controller_v3": { "href": format!("{cc}/v3"), "meta": { "version": "3.90.0" } },
        "network_policy_v0": { "href": format!("{cc}/networking/v0/external") },
        "network_policy_v1": { "href": format!("{cc}/networking/v1/external") },
        "login": { "href": uaa },
        "uaa": { "href": uaa },
        "credhub": null,
        "routing": { "href": format!("{cc}/routing") },
        "logging": { "href": "wss://doppler.example.org:443" },
        "log_cache": { "href": "https://log-cache.example.org" },
        "log_stream": { "href": "https://log-stream.example.org" },
        "app_ssh": { "href": "ssh.example.org:2222",
                     "meta": { "host_key_fingerprint": "Y411oivJwZCUQnXHq83mdM5SKCK4ftyoSXI31RRe4Zs",
                               "oauth_client": "ssh-proxy" } }
    }})
}

/// `GET /v3/spaces/:guid` answering `status` to a bearer token (of `user`, if given).
fn space_mock(space_guid: &str, user: Option<&str>, status: u16) -> Mock {
    let body = if status == 200 {
        space_body(space_guid)
    } else if status == 404 {
        json!({"errors": [{"code": 10010, "title": "CF-ResourceNotFound", "detail": "Space not found"}]})
    } else {
        json!({"errors": [{"code": 10003, "title": "CF-NotAuthorized", "detail": "You are not authorized to perform the requested action"}]})
    };
    Mock::given(method("GET"))
        .and(path(format!("/v3/spaces/{space_guid}")))
        .and(BearerUser(user.map(String::from)))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
}

/// A space shaped like `cc-get-space.json`.
pub fn space_body(space_guid: &str) -> Value {
    json!({
        "guid": space_guid,
        "created_at": "2017-02-01T01:33:58Z",
        "updated_at": "2017-02-01T01:33:58Z",
        "name": "my-space",
        "suspended": false,
        "relationships": {
            "organization": { "data": { "guid": "e00705b9-7b42-4561-ae97-2520399d2133" } },
            "quota": { "data": null }
        },
        "links": {
            "self": { "href": format!("https://api.example.org/v3/spaces/{space_guid}") },
            "features": { "href": format!("https://api.example.org/v3/spaces/{space_guid}/features") },
            "organization": { "href": "https://api.example.org/v3/organizations/e00705b9-7b42-4561-ae97-2520399d2133" },
            "apply_manifest": { "href": format!("https://api.example.org/v3/spaces/{space_guid}/actions/apply_manifest"), "method": "POST" }
        },
        "metadata": { "labels": {}, "annotations": {} }
    })
}

/// Matches `Authorization: bearer <jwt>`, and, with a user, only a JWT whose `user_name` is
/// that user (the payload is read, not verified: the CC's own checks are not faked).
pub struct BearerUser(pub Option<String>);

impl Match for BearerUser {
    fn matches(&self, request: &Request) -> bool {
        let Some(token) = request
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .map(|_| &h[7..])
            })
        else {
            return false;
        };
        let Some(user) = &self.0 else {
            return true;
        };
        token_user(token.trim()).as_deref() == Some(user.as_str())
    }
}

/// The `user_name` claim of a JWT, unverified.
pub fn token_user(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["user_name"].as_str().map(String::from)
}

async fn count(server: &MockServer, verb: &str, p: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == p)
        .count()
}
