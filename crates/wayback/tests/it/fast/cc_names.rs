//! Instance names from the Cloud Controller, against wiremock stand-ins of the CC and the UAA
//! that answer with the response shapes of their API docs (`tests/fixtures/cc/`, copied from
//! `shared/cc-fixtures/`).
//!
//! The client tests drive `wayback::cc::CloudController` directly; the broker tests provision
//! through the OSB API on the fake runtime and poll the store with a deadline while the
//! application's name resolver works in the background. None needs PostgreSQL.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wayback::cc::CloudController;
use wayback::config::CcSettings;
use wayback::domain::InstanceId;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockGuard, MockServer, ResponseTemplate};

const CLIENT_ID: &str = "wayback-broker";
const CLIENT_SECRET: &str = "broker-client-s3cret";
/// The `access_token` of the UAA fixture.
const TOKEN: &str = "2YotnFZFEjr1zCsicMWpAA";

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/cc/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The CC (serving `GET /` whose `uaa` link points at the UAA) and the UAA.
struct Platform {
    cc: MockServer,
    uaa: MockServer,
}

impl Platform {
    async fn start() -> Platform {
        let cc = MockServer::start().await;
        let uaa = MockServer::start().await;
        let mut root = fixture("cc-get-root.json");
        for (link, href) in [
            ("self", cc.uri()),
            ("cloud_controller_v3", format!("{}/v3", cc.uri())),
            ("login", uaa.uri()),
            ("uaa", uaa.uri()),
        ] {
            root["links"][link]["href"] = json!(href);
        }
        Mock::given(method("GET"))
            .and(path("/"))
            .respond_with(ResponseTemplate::new(200).set_body_json(root))
            .mount(&cc)
            .await;
        Platform { cc, uaa }
    }

    fn settings(&self) -> CcSettings {
        CcSettings {
            api_url: Some(self.cc.uri()),
            client_id: CLIENT_ID.into(),
            client_secret: Some(CLIENT_SECRET.to_string().into()),
            attempts: 3,
            ..CcSettings::default()
        }
    }

    fn client(&self) -> CloudController {
        CloudController::from_settings(&self.settings())
            .unwrap()
            .expect("configured")
    }

    /// The UAA grants `token` to our client (basic auth, client-credentials form).
    fn token_mock(token: &str, expires_in: u64) -> Mock {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        let mut body = fixture("uaa-post-oauth-token-client-credentials-response.json");
        body["access_token"] = json!(token);
        body["expires_in"] = json!(expires_in);
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .and(header("authorization", format!("Basic {basic}").as_str()))
            .and(body_string_contains("grant_type=client_credentials"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
    }

    /// `GET /v3/service_instances/:id` answering, with `token`, the managed-instance fixture
    /// named `name`, last updated at `updated_at`.
    fn instance_mock(id: &str, name: &str, updated_at: &str, token: &str) -> Mock {
        let mut body = fixture("cc-get-service-instance-managed.json");
        body["guid"] = json!(id);
        body["name"] = json!(name);
        body["updated_at"] = json!(updated_at);
        body["relationships"]["space"]["data"]["guid"] = json!(SPACE);
        Mock::given(method("GET"))
            .and(path(format!("/v3/service_instances/{id}")))
            .and(header("authorization", format!("Bearer {token}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
    }

    /// The CC failing every lookup of `id` with a 500 and its error envelope.
    fn failing_mock(id: &str) -> Mock {
        let mut body = fixture("cc-error-unprocessable-entity.json");
        body["errors"][0] =
            json!({"code": 10001, "title": "UnknownError", "detail": "An unknown error occurred."});
        Mock::given(method("GET"))
            .and(path(format!("/v3/service_instances/{id}")))
            .respond_with(ResponseTemplate::new(500).set_body_json(body))
    }

    /// Requests the CC received for instance `id`.
    async fn lookups_of(&self, id: &str) -> usize {
        let p = format!("/v3/service_instances/{id}");
        self.cc
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == p)
            .count()
    }
}

fn instance_id() -> InstanceId {
    InstanceId::parse(new_id()).unwrap()
}

#[tokio::test]
async fn one_token_serves_many_lookups_and_the_uaa_is_found_from_the_cc_root() {
    let platform = Platform::start().await;
    Platform::token_mock(TOKEN, 3600)
        .expect(1)
        .mount(&platform.uaa)
        .await;
    let ids: Vec<InstanceId> = (0..3).map(|_| instance_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        Platform::instance_mock(
            id.as_str(),
            &format!("db-{i}"),
            "2020-03-10T15:49:29Z",
            TOKEN,
        )
        .expect(1)
        .mount(&platform.cc)
        .await;
    }
    let cc = platform.client();
    let (a, b, c) = tokio::join!(
        cc.service_instance(&ids[0]),
        cc.service_instance(&ids[1]),
        cc.service_instance(&ids[2]),
    );
    let names: Vec<String> = [a, b, c]
        .into_iter()
        .map(|r| r.unwrap().expect("known").name)
        .collect();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);

    // An instance the CC does not know: 404 with its error envelope means gone, not a failure.
    let unknown = instance_id();
    Mock::given(method("GET"))
        .and(path(format!("/v3/service_instances/{unknown}")))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"errors": [{"code": 10010, "title": "CF-ResourceNotFound", "detail": "Service instance not found"}]})))
        .mount(&platform.cc)
        .await;
    assert_eq!(cc.service_instance(&unknown).await.unwrap(), None);

    let roots = platform
        .cc
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/")
        .count();
    assert_eq!(roots, 1, "the UAA's address is found once");
    // `expect(1)` on the token mock is verified when the UAA server drops.
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_the_lookup_retried() {
    let platform = Platform::start().await;
    Platform::token_mock("first-token", 3600)
        .up_to_n_times(1)
        .expect(1)
        .mount(&platform.uaa)
        .await;
    Platform::token_mock("second-token", 3600)
        .expect(1)
        .mount(&platform.uaa)
        .await;
    let id = instance_id();
    Mock::given(method("GET"))
        .and(path(format!("/v3/service_instances/{id}")))
        .and(header("authorization", "Bearer first-token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"errors": [{"code": 1000, "title": "CF-InvalidAuthToken", "detail": "Invalid Auth Token"}]})))
        .expect(1)
        .mount(&platform.cc)
        .await;
    Platform::instance_mock(
        id.as_str(),
        "production",
        "2020-03-10T15:49:29Z",
        "second-token",
    )
    .expect(2)
    .mount(&platform.cc)
    .await;
    let cc = platform.client();
    let found = cc.service_instance(&id).await.unwrap().expect("known");
    assert_eq!(found.name, "production");
    assert_eq!(found.space_guid.as_deref(), Some(SPACE));
    // The renewed token is cached.
    cc.service_instance(&id).await.unwrap().expect("known");
}

#[tokio::test]
async fn transient_cc_failures_are_retried_and_a_bad_client_is_permanent() {
    let platform = Platform::start().await;
    Platform::token_mock(TOKEN, 3600).mount(&platform.uaa).await;
    let id = instance_id();
    Platform::failing_mock(id.as_str())
        .up_to_n_times(2)
        .expect(2)
        .mount(&platform.cc)
        .await;
    Platform::instance_mock(id.as_str(), "production", "2020-03-10T15:49:29Z", TOKEN)
        .expect(1)
        .mount(&platform.cc)
        .await;
    let cc = platform.client();
    let found = cc.service_instance(&id).await.unwrap().expect("known");
    assert_eq!(found.name, "production", "third attempt succeeds");

    // A UAA that refuses the client: permanent, and the secret is in no error.
    let platform = Platform::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": "unauthorized", "error_description": "Bad credentials"}),
        ))
        .mount(&platform.uaa)
        .await;
    let e = platform
        .client()
        .service_instance(&id)
        .await
        .expect_err("refused");
    assert!(e.is_permanent(), "{e}");
    assert!(!format!("{e} {e:?}").contains(CLIENT_SECRET), "{e:?}");
}

/// Settings of a test app that asks `platform` for names.
fn with_cc(
    platform: &Platform,
    reconcile_secs: u64,
) -> impl FnOnce(&mut wayback::config::Settings) {
    let cc = CcSettings {
        attempts: 1,
        reconcile_interval_secs: reconcile_secs,
        ..platform.settings()
    };
    move |s| s.cc = cc
}

async fn unknown_gauge(app: &TestApp) -> String {
    let text = app
        .osb(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("wayback_instances_name_unknown "))
        .expect("gauge rendered")
        .to_string()
}

/// Waits (with a deadline) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn names_of(app: &TestApp, id: &str) -> Vec<(String, String)> {
    app.store
        .instance_names(&InstanceId::parse(id.to_string()).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.name, n.source))
        .collect()
}

#[tokio::test]
async fn a_name_missing_from_the_request_arrives_from_the_cc_after_it_recovers() {
    let platform = Platform::start().await;
    Platform::token_mock(TOKEN, 3600).mount(&platform.uaa).await;
    let app = spawn_fast_app_with(with_cc(&platform, 600)).await;
    let id = new_id();
    let failing: MockGuard = Platform::failing_mock(&id)
        .mount_as_scoped(&platform.cc)
        .await;

    // An older platform: a context without instance_name.
    let mut body = provision_body(SMALL, "unused");
    body["context"]
        .as_object_mut()
        .unwrap()
        .remove("instance_name");
    let r = app.put_instance(&id, &body).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();

    // The CC fails: the name stays unknown, counted, and asked again with backoff.
    eventually("the resolver asks the failing CC twice", || async {
        platform.lookups_of(&id).await >= 2
    })
    .await;
    assert_eq!(names_of(&app, &id).await, vec![]);
    assert_eq!(
        unknown_gauge(&app).await,
        "wayback_instances_name_unknown 1"
    );

    // The CC recovers: the name arrives, recorded as the CC's.
    drop(failing);
    Platform::instance_mock(&id, "production", "2026-11-21T09:00:00Z", TOKEN)
        .mount(&platform.cc)
        .await;
    eventually("the name arrives from the CC", || async {
        !names_of(&app, &id).await.is_empty()
    })
    .await;
    assert_eq!(
        names_of(&app, &id).await,
        vec![("production".to_string(), "cloud_controller".to_string())]
    );
    eventually("the gauge drops to 0", || async {
        unknown_gauge(&app).await == "wayback_instances_name_unknown 0"
    })
    .await;
    let (status, last) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(
        (status, last["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{last}"
    );
}

#[tokio::test]
async fn the_reconcile_records_a_rename_seen_only_in_the_cc_but_never_an_older_name() {
    let platform = Platform::start().await;
    Platform::token_mock(TOKEN, 3600).mount(&platform.uaa).await;
    let app = spawn_fast_app_with(with_cc(&platform, 1)).await;
    let id = app.provision_ready("production").await;

    // The CC still shows an older name, last changed before ours was recorded (a PATCH
    // answered before the CC committed it): the reconcile must not go back to it.
    let before = platform.lookups_of(&id).await;
    let stale = Platform::instance_mock(&id, "old-name", "2020-03-10T15:49:29Z", TOKEN)
        .mount_as_scoped(&platform.cc)
        .await;
    eventually("two reconcile passes see the stale name", || async {
        platform.lookups_of(&id).await >= before + 2
    })
    .await;
    assert_eq!(
        names_of(&app, &id).await,
        vec![("production".to_string(), "provision".to_string())]
    );
    drop(stale);

    // Renamed in the CC only (no PATCH reached the broker).
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Platform::instance_mock(&id, "production-v2", &now, TOKEN)
        .mount(&platform.cc)
        .await;
    eventually("the reconcile records the CC's rename", || async {
        names_of(&app, &id).await.len() == 2
    })
    .await;
    assert_eq!(
        names_of(&app, &id).await,
        vec![
            ("production".to_string(), "provision".to_string()),
            ("production-v2".to_string(), "cloud_controller".to_string()),
        ]
    );
}
