//! The broker's own API, `/wayback/v1` (docs/wayback-api.md), against a real broker with real
//! clusters and a fake Cloud Foundry (`common::fake_cf`: wiremock UAA and CC, RS256 tokens).
//!
//! Every refusal is checked for its status, its `error`, a description that says what went
//! wrong, and that it names no space: nothing about a space the caller may not see leaks.

use crate::common;

use std::time::{Duration, Instant};

use common::fake_cf::{self, rs256_header, FakeCf};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::Value;
use wayback::domain::InstanceId;

const HOUR: Duration = Duration::from_secs(3600);
const OTHER_SPACE: &str = "5ace0000-0000-4000-8000-0000000000ff";

enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
    Raw(&'a str),
}

struct Answer {
    status: StatusCode,
    www_authenticate: Option<String>,
    body: Value,
}

async fn get(app: &TestApp, path: &str, auth: Auth<'_>) -> Answer {
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

fn operator(app: &TestApp) -> Auth<'_> {
    Auth::Basic(USER, &app.password)
}

/// A broker whose Cloud Controller (and, through its root, UAA) is `cf`.
async fn app_with(cf: &FakeCf) -> TestApp {
    let settings = cf.cc_settings();
    spawn_app_with(move |s| s.cc = settings).await
}

/// Asserts a refusal: status, `error`, a description containing `says`, and no space named.
fn assert_refused(answer: &Answer, status: StatusCode, error: &str, says: &str, why: &str) {
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

/// Waits until the broker has recorded the instance's first base backup.
async fn wait_for_backup(app: &TestApp, id: &str) {
    let id = InstanceId::parse(id.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.store.latest_backup(&id).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no base backup of {id} in 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Commits something on `id` (so the archive holds a commit) through a binding.
async fn commit_something(app: &TestApp, id: &str) {
    let creds = app.bind_sync(id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t AS SELECT 1 AS one")
        .execute(&mut conn)
        .await
        .unwrap();
}

fn ids(body: &Value) -> Vec<String> {
    body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_operator_sees_live_and_deleted_instances_with_names_windows_and_backups() {
    if !pg_available() {
        return;
    }
    let cf = FakeCf::start().await;
    let app = app_with(&cf).await;
    let live = app.provision_ready("production").await;
    app.rename(&live, "prod-v2").await;
    wait_for_backup(&app, &live).await;
    let gone = app.provision_ready("scratch").await;
    wait_for_backup(&app, &gone).await;
    commit_something(&app, &gone).await;
    app.deprovision_done(&gone).await;

    let list = get(&app, &format!("/spaces/{SPACE}/instances"), operator(&app)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["space_guid"], SPACE);
    assert_eq!(
        ids(&list.body),
        [gone.clone(), live.clone()],
        "newest first"
    );

    let deleted = &list.body["instances"][0];
    assert_eq!(deleted["state"], "deleted", "{deleted}");
    assert_eq!(deleted["name"], "scratch");
    assert!(deleted["deleted_at"].is_string(), "{deleted}");
    assert_eq!(deleted["restore_window"]["to_now"], false, "{deleted}");
    assert!(deleted["restore_window"]["from"].is_string(), "{deleted}");
    assert!(deleted["restore_window"]["to"].is_string(), "{deleted}");
    assert_eq!(deleted["archive"]["healthy"], true, "{deleted}");
    assert_eq!(
        deleted["archive"]["last_archived_at"], deleted["restore_window"]["to"],
        "a deleted instance's archive ends at its last commit"
    );

    let instance = &list.body["instances"][1];
    assert_eq!(instance["state"], "live", "{instance}");
    assert_eq!(instance["name"], "prod-v2");
    let names: Vec<&str> = instance["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["production", "prod-v2"], "oldest first");
    assert_eq!(instance["names"][0]["source"], "provision");
    assert!(instance["names"][1]["since"].is_string());
    assert_eq!(
        (
            &instance["service_id"],
            &instance["plan_id"],
            &instance["space_guid"],
            &instance["organization_guid"]
        ),
        (
            &Value::from(SERVICE_ID),
            &Value::from(SMALL),
            &Value::from(SPACE),
            &Value::from(ORG)
        )
    );
    assert!(instance["service_name"].is_string() && instance["plan_name"].is_string());
    assert!(instance["deleted_at"].is_null());
    let window = &instance["restore_window"];
    assert_eq!(
        (&window["to"], &window["to_now"]),
        (&Value::Null, &Value::Bool(true))
    );
    let backups = instance["base_backups"].as_array().unwrap();
    assert!(!backups.is_empty(), "{instance}");
    let first = &backups[0];
    assert!(first["backup_id"].is_string() && first["time"].is_string());
    assert!(first["raw_bytes"].as_u64().unwrap() > 0);
    assert!(first["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        instance["last_base_backup"],
        backups.last().unwrap()["time"]
    );
    assert!(window["from"].as_str().unwrap() >= first["time"].as_str().unwrap());
    let archive = &instance["archive"];
    for field in [
        "healthy",
        "last_archived_at",
        "lag_segments",
        "last_failure_at",
        "detail",
    ] {
        assert!(
            archive.get(field).is_some(),
            "archive.{field} missing: {archive}"
        );
    }

    // `name` keeps instances that have or had the name.
    for (name, want) in [
        ("prod-v2", vec![live.clone()]),
        ("production", vec![live.clone()]),
        ("scratch", vec![gone.clone()]),
        ("nothing-by-this-name", vec![]),
    ] {
        let r = get(
            &app,
            &format!("/spaces/{SPACE}/instances?name={name}"),
            operator(&app),
        )
        .await;
        assert_eq!(
            (r.status, ids(&r.body)),
            (StatusCode::OK, want),
            "name={name}"
        );
    }

    // One instance: the same view as in the list.
    let one = get(&app, &format!("/instances/{live}"), operator(&app)).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    for field in [
        "instance_id",
        "names",
        "state",
        "base_backups",
        "restore_window",
    ] {
        assert_eq!(one.body[field], instance[field], "{field}");
    }
    let deleted_one = get(&app, &format!("/instances/{gone}"), operator(&app)).await;
    assert_eq!(deleted_one.body["state"], "deleted");

    // The operator sees every space, including one without instances.
    let empty = get(
        &app,
        &format!("/spaces/{OTHER_SPACE}/instances"),
        operator(&app),
    )
    .await;
    assert_eq!((empty.status, ids(&empty.body)), (StatusCode::OK, vec![]));
    let unknown = get(&app, &format!("/instances/{}", new_id()), operator(&app)).await;
    assert_refused(
        &unknown,
        StatusCode::NOT_FOUND,
        "NotFound",
        "No such service instance",
        "unknown id",
    );
    assert_eq!(
        cf.space_checks(SPACE).await,
        0,
        "basic auth never asks the CC"
    );
}

#[tokio::test]
async fn a_user_sees_their_space_and_nothing_of_others() {
    if !pg_available() {
        return;
    }
    let cf = FakeCf::start().await;
    cf.allow_space_for("alice", SPACE).await;
    cf.deny_space(SPACE, 403).await;
    cf.deny_space(OTHER_SPACE, 404).await;
    let app = app_with(&cf).await;
    let id = app.provision_ready("orders").await;
    let alice = cf.token_for("alice", HOUR);
    let mallory = cf.token_for("mallory", HOUR);

    let list = get(
        &app,
        &format!("/spaces/{SPACE}/instances"),
        Auth::Bearer(&alice),
    )
    .await;
    assert_eq!(
        (list.status, ids(&list.body)),
        (StatusCode::OK, vec![id.clone()]),
        "{}",
        list.body
    );
    assert_eq!(list.body["instances"][0]["name"], "orders");
    let filtered = get(
        &app,
        &format!("/spaces/{SPACE}/instances?name=orders"),
        Auth::Bearer(&alice),
    )
    .await;
    assert_eq!(ids(&filtered.body), vec![id.clone()]);
    let other_name = get(
        &app,
        &format!("/spaces/{SPACE}/instances?name=invoices"),
        Auth::Bearer(&alice),
    )
    .await;
    assert_eq!(
        (other_name.status, ids(&other_name.body)),
        (StatusCode::OK, vec![])
    );
    let one = get(&app, &format!("/instances/{id}"), Auth::Bearer(&alice)).await;
    assert_eq!(
        (one.status, &one.body["instance_id"]),
        (StatusCode::OK, &Value::from(id.clone()))
    );
    assert_eq!(
        cf.space_checks(SPACE).await,
        1,
        "the verdict is cached per (token, space)"
    );

    // Another user's space (CC 403) and a space that does not exist (CC 404): one body.
    let foreign = get(
        &app,
        &format!("/spaces/{SPACE}/instances"),
        Auth::Bearer(&mallory),
    )
    .await;
    assert_refused(
        &foreign,
        StatusCode::FORBIDDEN,
        "Forbidden",
        "may not see this space",
        "CC 403",
    );
    let missing = get(
        &app,
        &format!("/spaces/{OTHER_SPACE}/instances"),
        Auth::Bearer(&alice),
    )
    .await;
    assert_refused(
        &missing,
        StatusCode::FORBIDDEN,
        "Forbidden",
        "may not see this space",
        "CC 404",
    );
    assert_eq!(foreign.body, missing.body, "403 and 404 must look alike");

    // An instance in a foreign space is as unknown as an id nobody has.
    let hidden = get(&app, &format!("/instances/{id}"), Auth::Bearer(&mallory)).await;
    let nobody = get(
        &app,
        &format!("/instances/{}", new_id()),
        Auth::Bearer(&mallory),
    )
    .await;
    assert_refused(
        &hidden,
        StatusCode::NOT_FOUND,
        "NotFound",
        "No such service instance",
        "foreign",
    );
    assert_eq!(
        hidden.body, nobody.body,
        "a foreign instance must look unknown"
    );
    assert!(!hidden.body.to_string().contains(&id));
}

#[tokio::test]
async fn bad_credentials_are_refused_with_a_reason() {
    if !pg_available() {
        return;
    }
    let cf = FakeCf::start().await;
    cf.allow_space(SPACE).await;
    let app = app_with(&cf).await;
    let path = format!("/spaces/{SPACE}/instances");

    let claims = cf.claims("alice", HOUR);
    let foreign_signed = cf.mint_with(&rs256_header(fake_cf::KID), &claims, fake_cf::foreign_key());
    let mut expired = cf.claims("alice", Duration::ZERO);
    expired.exp -= 120; // past the 60 s leeway
    let mut wrong_issuer = claims.clone();
    wrong_issuer.iss = "https://uaa.elsewhere.example.org/oauth/token".into();
    let mut wrong_audience = claims.clone();
    wrong_audience.aud = vec!["openid".into(), "uaa".into()];
    let hs256 = jsonwebtoken::encode(
        &Header {
            kid: Some(fake_cf::KID.into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims,
        &EncodingKey::from_secret(b"tokenKey"),
    )
    .unwrap();
    let none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT","kid":"wayback-test-key"}"#),
            b64.encode(serde_json::to_vec(&claims).unwrap())
        )
    };
    let (expired, wrong_issuer, wrong_audience) = (
        cf.mint(&expired),
        cf.mint(&wrong_issuer),
        cf.mint(&wrong_audience),
    );
    let cases: Vec<(&str, Auth, &str)> = vec![
        ("missing header", Auth::None, "No Authorization header"),
        (
            "unknown scheme",
            Auth::Raw("Token abc"),
            "Malformed Authorization",
        ),
        (
            "empty bearer",
            Auth::Raw("bearer "),
            "Malformed Authorization",
        ),
        ("garbage token", Auth::Bearer("not-a-jwt"), "not a JWT"),
        (
            "bad signature",
            Auth::Bearer(&foreign_signed),
            "signature does not verify",
        ),
        ("expired", Auth::Bearer(&expired), "expired"),
        (
            "wrong issuer",
            Auth::Bearer(&wrong_issuer),
            "not issued by this platform's UAA",
        ),
        (
            "wrong audience",
            Auth::Bearer(&wrong_audience),
            "audience lacks cloud_controller",
        ),
        ("HS256", Auth::Bearer(&hs256), "only RS256"),
        ("alg none", Auth::Bearer(&none), "only RS256"),
        (
            "wrong basic password",
            Auth::Basic(USER, "wrong"),
            "Wrong basic credentials",
        ),
        (
            "wrong basic user",
            Auth::Basic("root", &app.password),
            "Wrong basic credentials",
        ),
    ];
    for (why, auth, says) in cases {
        for p in [path.clone(), format!("/instances/{}", new_id())] {
            let answer = get(&app, &p, auth_clone(&auth)).await;
            assert_refused(&answer, StatusCode::UNAUTHORIZED, "Unauthorized", says, why);
        }
    }
    assert_eq!(
        cf.space_checks(SPACE).await,
        0,
        "no refused token reaches the CC"
    );
    // And a good token passes, so the refusals above were the token's fault.
    let ok = get(&app, &path, Auth::Bearer(&cf.mint(&claims))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

fn auth_clone<'a>(auth: &Auth<'a>) -> Auth<'a> {
    match auth {
        Auth::None => Auth::None,
        Auth::Basic(u, p) => Auth::Basic(u, p),
        Auth::Bearer(t) => Auth::Bearer(t),
        Auth::Raw(r) => Auth::Raw(r),
    }
}

#[tokio::test]
async fn an_unknown_key_id_refetches_the_keys_once_per_interval() {
    if !pg_available() {
        return;
    }
    let cf = FakeCf::start().await;
    cf.allow_space(SPACE).await;
    let app = app_with(&cf).await;
    let path = format!("/spaces/{SPACE}/instances");
    let good = get(&app, &path, Auth::Bearer(&cf.token_for("alice", HOUR))).await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.body);
    assert_eq!(
        cf.token_keys_fetches().await,
        1,
        "keys fetched on first use"
    );

    let claims = cf.claims("alice", HOUR);
    let rotated = cf.mint_with(&rs256_header("rotated-key"), &claims, fake_cf::uaa_key());
    let answer = get(&app, &path, Auth::Bearer(&rotated)).await;
    assert_refused(
        &answer,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "signing key the UAA does not publish",
        "unknown kid",
    );
    assert_eq!(
        cf.token_keys_fetches().await,
        2,
        "an unknown kid refetches the keys"
    );

    let again = cf.mint_with(&rs256_header("another-key"), &claims, fake_cf::uaa_key());
    let answer = get(&app, &path, Auth::Bearer(&again)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        cf.token_keys_fetches().await,
        2,
        "at most one refetch per 30 s"
    );
}

#[tokio::test]
async fn an_unreachable_cloud_controller_is_a_503() {
    if !pg_available() {
        return;
    }
    let cf = FakeCf::start().await;
    let mut settings = cf.cc_settings();
    settings.api_url = Some(format!("http://127.0.0.1:{}", free_port()));
    settings.uaa_url = Some(cf.uaa_url());
    let app = spawn_app_with(move |s| s.cc = settings).await;
    let token = cf.token_for("alice", HOUR);
    let answer = get(
        &app,
        &format!("/spaces/{SPACE}/instances"),
        Auth::Bearer(&token),
    )
    .await;
    assert_refused(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "cannot reach the Cloud Controller",
        "CC down",
    );
    let answer = get(
        &app,
        &format!("/instances/{}", new_id()),
        Auth::Bearer(&token),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_FOUND,
        "an unknown id needs no space check"
    );
    // The operator does not depend on the CC.
    let op = get(&app, &format!("/spaces/{SPACE}/instances"), operator(&app)).await;
    assert_eq!(op.status, StatusCode::OK);
}

#[tokio::test]
async fn bearer_tokens_need_the_cloud_controller_configured() {
    if !pg_available() {
        return;
    }
    let cf = FakeCf::start().await;
    let app = spawn_app().await;
    let token = cf.token_for("alice", HOUR);
    let answer = get(
        &app,
        &format!("/spaces/{SPACE}/instances"),
        Auth::Bearer(&token),
    )
    .await;
    assert_refused(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "WAYBACK_CC_API_URL",
        "no cc.api_url",
    );
    let op = get(&app, &format!("/spaces/{SPACE}/instances"), operator(&app)).await;
    assert_eq!((op.status, ids(&op.body)), (StatusCode::OK, vec![]));
}
