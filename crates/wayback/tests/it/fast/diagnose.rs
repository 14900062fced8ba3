//! `GET /wayback/v1/instances/{id}/diagnose | locks | outliers | activity` (issue 19) on the
//! fake runtime: the same authentication and space rule as the instance itself (a foreign
//! instance is as unknown as an id nobody has), a bad `since` refused with a reason, and a
//! runtime that cannot inspect giving SKIPPED cluster checks and a 503, never a 500. The
//! checks against a real cluster are the real tier's `cf_diagnose`.

use crate::common;

use common::fake_cf::FakeCf;
use common::wayback_client::*;
use common::*;
use reqwest::StatusCode;

const DOCUMENTS: [&str; 4] = ["diagnose", "locks", "outliers", "activity"];

#[tokio::test]
async fn a_foreign_or_unknown_instance_is_the_same_404_for_every_document() {
    let cf = FakeCf::start().await;
    cf.allow_space_for("alice", SPACE).await;
    cf.deny_space(SPACE, 403).await;
    let settings = cf.cc_settings();
    let app = spawn_fast_app_with(move |s| s.cc = settings).await;
    let id = app.provision_ready("orders").await;
    let alice = cf.token_for("alice", HOUR);
    let mallory = cf.token_for("mallory", HOUR);
    for doc in DOCUMENTS {
        let hidden = get(
            &app,
            &format!("/instances/{id}/{doc}"),
            Auth::Bearer(&mallory),
        )
        .await;
        let nobody = get(
            &app,
            &format!("/instances/{}/{doc}", new_id()),
            Auth::Bearer(&alice),
        )
        .await;
        assert_refused(
            &hidden,
            StatusCode::NOT_FOUND,
            "NotFound",
            "No such service instance",
            doc,
        );
        assert_eq!(
            hidden.body, nobody.body,
            "{doc}: a foreign instance must look unknown"
        );
        let anonymous = get(&app, &format!("/instances/{id}/{doc}"), Auth::None).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{doc}");
    }

    // The owner: the fake runtime cannot inspect, so the cluster's checks are SKIPPED with a
    // reason and the broker's own are judged; locks and outliers are a 503 that says why.
    let d = get(
        &app,
        &format!("/instances/{id}/diagnose"),
        Auth::Bearer(&alice),
    )
    .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    let checks = d.body["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 15, "{}", d.body);
    assert_eq!(checks[0]["name"], "connections");
    assert_eq!(checks[0]["verdict"], "SKIPPED");
    assert!(checks[0]["summary"]
        .as_str()
        .unwrap()
        .contains("could not be read"));
    assert_eq!(checks[14]["name"], "follower_lag");
    assert_eq!(checks[14]["verdict"], "GREEN");
    for doc in ["locks", "outliers"] {
        let a = get(
            &app,
            &format!("/instances/{id}/{doc}"),
            Auth::Bearer(&alice),
        )
        .await;
        assert_refused(
            &a,
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "try again",
            doc,
        );
    }
}

#[tokio::test]
async fn a_since_that_is_not_rfc_3339_is_refused_with_a_reason() {
    let cf = FakeCf::start().await;
    cf.allow_space_for("alice", SPACE).await;
    let settings = cf.cc_settings();
    let app = spawn_fast_app_with(move |s| s.cc = settings).await;
    let id = app.provision_ready("orders").await;
    let alice = cf.token_for("alice", HOUR);
    for since in ["yesterday", "2026-12-07", "2026-12-07T03:00:00"] {
        let a = get(
            &app,
            &format!("/instances/{id}/activity?since={since}"),
            Auth::Bearer(&alice),
        )
        .await;
        assert_refused(&a, StatusCode::BAD_REQUEST, "BadRequest", "RFC 3339", since);
    }
}
