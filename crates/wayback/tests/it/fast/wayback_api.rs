//! The authentication and space rules of the broker's own API, `/wayback/v1`
//! (docs/wayback-api.md), on the fake runtime, against a fake Cloud Foundry (`common::fake_cf`:
//! wiremock UAA and CC, RS256 tokens). None of them needs what a cluster archived; the
//! operator's view of names, windows and backups is the real tier's `wayback_api`.
//!
//! Every refusal is checked for its status, its `error`, a description that says what went
//! wrong, and that it names no space: nothing about a space the caller may not see leaks.

use crate::common;

use std::time::Duration;

use common::fake_cf::{self, rs256_header, FakeCf};
use common::wayback_client::*;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::Value;

/// A broker on the fake runtime whose Cloud Controller (and, through its root, UAA) is `cf`.
async fn app_with(cf: &FakeCf) -> TestApp {
    let settings = cf.cc_settings();
    spawn_fast_app_with(move |s| s.cc = settings).await
}

#[tokio::test]
async fn a_user_sees_their_space_and_nothing_of_others() {
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

#[tokio::test]
async fn an_unknown_key_id_refetches_the_keys_once_per_interval() {
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
    let cf = FakeCf::start().await;
    let mut settings = cf.cc_settings();
    settings.api_url = Some(format!("http://127.0.0.1:{}", free_port()));
    settings.uaa_url = Some(cf.uaa_url());
    let app = spawn_fast_app_with(move |s| s.cc = settings).await;
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
    let cf = FakeCf::start().await;
    let app = spawn_fast_app().await;
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
