//! `wayback register-broker` as an operator runs it: the real binary, configured by environment
//! variables, against a wiremock UAA and Cloud Controller ([`FakeCf`]) answering with the shapes
//! of the CC v3 docs (`shared/cc-fixtures/`). The requests the CC received are checked as JSON.

use crate::common;

use std::process::Output;

use common::fake_cf::{FakeCf, CLIENT_ID, CLIENT_SECRET};
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

const BROKER_GUID: &str = "7b1a4e3c-0000-4000-8000-00000000b001";
const JOB_GUID: &str = "b19ae525-cbd3-4155-b156-dc0c2a431b4c";
const BROKER_URL: &str = "https://wayback.apps.example.org";
const PASSWORD: &str = "osb-s3cret";

/// Runs `wayback register-broker ARGS` with a clean environment naming the fake CF.
async fn register(cf: &FakeCf, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .arg("register-broker")
        .args(args)
        .env_clear()
        .env("WAYBACK_CC_API_URL", cf.cc_url())
        .env("WAYBACK_CC_CLIENT_ID", CLIENT_ID)
        .env("WAYBACK_CC_CLIENT_SECRET", CLIENT_SECRET)
        .env("WAYBACK_CC_ATTEMPTS", "1")
        .env("WAYBACK_EXTERNAL_URL", BROKER_URL)
        .env("WAYBACK_BROKER_USERNAME", "broker-admin")
        .env("WAYBACK_BROKER_PASSWORD", PASSWORD)
        .env("WAYBACK_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run wayback")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A v3 list page of `resources`.
fn page(cf: &FakeCf, resources: Vec<Value>) -> Value {
    let n = resources.len();
    json!({
        "pagination": {
            "total_results": n, "total_pages": 1,
            "first": {"href": format!("{}/v3/x?page=1", cf.cc_url())},
            "last": {"href": format!("{}/v3/x?page=1", cf.cc_url())},
            "next": null, "previous": null
        },
        "resources": resources
    })
}

fn broker(space: Option<&str>) -> Value {
    let relationships = match space {
        Some(s) => json!({"space": {"data": {"guid": s}}}),
        None => json!({}),
    };
    json!({
        "guid": BROKER_GUID,
        "name": "wayback",
        "url": BROKER_URL,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "relationships": relationships,
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": {"href": format!("https://api.example.org/v3/service_brokers/{BROKER_GUID}")},
            "service_offerings": {"href": format!("https://api.example.org/v3/service_offerings?service_broker_guids={BROKER_GUID}")}
        }
    })
}

fn job(state: &str, errors: Value) -> Value {
    json!({
        "guid": JOB_GUID,
        "created_at": "2016-10-19T20:25:04Z",
        "updated_at": "2016-11-08T16:41:26Z",
        "operation": "service_broker.catalog.synchronize",
        "state": state,
        "links": {"self": {"href": format!("https://api.example.org/v3/jobs/{JOB_GUID}")}},
        "errors": errors,
        "warnings": []
    })
}

fn plan(guid: &str, name: &str) -> Value {
    json!({
        "guid": guid, "name": name, "visibility_type": "admin", "available": true, "free": true,
        "description": "a plan", "broker_catalog": {"id": format!("catalog-{name}")},
        "relationships": {"service_offering": {"data": {"guid": "0ffe0000-0000-4000-8000-000000000001"}}}
    })
}

/// The broker list: empty for the first `empty_first` lookups, then the broker.
async fn mount_broker_lookup(cf: &FakeCf, empty_first: u64, space: Option<&str>) {
    if empty_first > 0 {
        Mock::given(method("GET"))
            .and(path("/v3/service_brokers"))
            .and(query_param("names", "wayback"))
            .respond_with(ResponseTemplate::new(200).set_body_json(page(cf, vec![])))
            .up_to_n_times(empty_first)
            .with_priority(1)
            .mount(&cf.cc)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/v3/service_brokers"))
        .and(query_param("names", "wayback"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(cf, vec![broker(space)])))
        .mount(&cf.cc)
        .await;
}

/// `verb path` answers 202 with the job's Location; the job is PROCESSING once, then `end`.
async fn mount_job(cf: &FakeCf, verb: &str, p: &str, end: Value) {
    Mock::given(method(verb))
        .and(path(p))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Location", format!("{}/v3/jobs/{JOB_GUID}", cf.cc_url())),
        )
        .mount(&cf.cc)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v3/jobs/{JOB_GUID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(job("PROCESSING", json!([]))))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&cf.cc)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v3/jobs/{JOB_GUID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(end))
        .mount(&cf.cc)
        .await;
}

/// The JSON bodies of the `verb path` requests the CC received, in order.
async fn bodies(cf: &FakeCf, verb: &str, p: &str) -> Vec<Value> {
    cf.cc
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == p)
        .map(|r| {
            assert_eq!(
                r.headers.get("authorization").unwrap().to_str().unwrap(),
                "Bearer fake-client-credentials-token",
                "{verb} {p} carries the client's token"
            );
            serde_json::from_slice(&r.body).expect("a JSON body")
        })
        .collect()
}

fn authentication() -> Value {
    json!({"type": "basic", "credentials": {"username": "broker-admin", "password": PASSWORD}})
}

#[tokio::test]
async fn creates_the_broker_and_waits_for_its_catalog_job() {
    let cf = FakeCf::start().await;
    mount_broker_lookup(&cf, 1, None).await;
    mount_job(
        &cf,
        "POST",
        "/v3/service_brokers",
        job("COMPLETE", json!([])),
    )
    .await;

    let out = register(&cf, &[]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("created service broker wayback ({BROKER_GUID}) at {BROKER_URL}; catalog synchronised (job {JOB_GUID} COMPLETE)\n")
    );
    assert_eq!(
        bodies(&cf, "POST", "/v3/service_brokers").await,
        vec![json!({"name": "wayback", "url": BROKER_URL, "authentication": authentication()})]
    );
    assert_eq!(
        bodies(&cf, "PATCH", &format!("/v3/service_brokers/{BROKER_GUID}"))
            .await
            .len(),
        0
    );
    let polls = cf.cc.received_requests().await.unwrap();
    let polls = polls
        .iter()
        .filter(|r| r.url.path() == format!("/v3/jobs/{JOB_GUID}"))
        .count();
    assert_eq!(polls, 2, "polled until COMPLETE");
}

#[tokio::test]
async fn a_space_scoped_broker_names_its_space() {
    let cf = FakeCf::start().await;
    let space = "5ace0000-0000-4000-8000-000000000002";
    mount_broker_lookup(&cf, 1, Some(space)).await;
    mount_job(
        &cf,
        "POST",
        "/v3/service_brokers",
        job("COMPLETE", json!([])),
    )
    .await;

    let out = register(
        &cf,
        &[
            "--space-scoped",
            space,
            "--url",
            "https://other.example.org",
        ],
    )
    .await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        bodies(&cf, "POST", "/v3/service_brokers").await,
        vec![json!({
            "name": "wayback",
            "url": "https://other.example.org",
            "authentication": authentication(),
            "relationships": {"space": {"data": {"guid": space}}}
        })]
    );
}

#[tokio::test]
async fn an_existing_broker_is_updated() {
    let cf = FakeCf::start().await;
    mount_broker_lookup(&cf, 0, None).await;
    let patch = format!("/v3/service_brokers/{BROKER_GUID}");
    mount_job(&cf, "PATCH", &patch, job("COMPLETE", json!([]))).await;

    let out = register(&cf, &["--json"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["action"], "updated");
    assert_eq!(report["broker"]["guid"], BROKER_GUID);
    assert_eq!(report["job"]["state"], "COMPLETE");
    assert_eq!(report["access"], json!([]));
    assert_eq!(
        bodies(&cf, "PATCH", &patch).await,
        vec![json!({"url": BROKER_URL, "authentication": authentication()})]
    );
    assert_eq!(bodies(&cf, "POST", "/v3/service_brokers").await.len(), 0);
}

#[tokio::test]
async fn a_failed_job_fails_the_command_with_the_cc_error() {
    let cf = FakeCf::start().await;
    mount_broker_lookup(&cf, 1, None).await;
    let errors = json!([{
        "code": 270012,
        "title": "CF-ServiceBrokerCatalogInvalid",
        "detail": "Service broker catalog is invalid: \nService dev-service\n  Plan small\n    Plan id must be unique\n"
    }]);
    mount_job(&cf, "POST", "/v3/service_brokers", job("FAILED", errors)).await;

    let out = register(&cf, &["--enable-access"]).await;
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("service broker wayback was created, but the Cloud Controller could not read its catalog"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "job {JOB_GUID} (service_broker.catalog.synchronize) FAILED"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("CF-ServiceBrokerCatalogInvalid (270012): Service broker catalog is invalid: \nService dev-service\n  Plan small\n    Plan id must be unique"),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
    let visibility = cf.cc.received_requests().await.unwrap();
    assert!(
        !visibility
            .iter()
            .any(|r| r.url.path().contains("visibility")),
        "no access after a failed job"
    );
}

/// An existing broker with two plans, each accepting a visibility.
async fn mount_plans(cf: &FakeCf) {
    mount_broker_lookup(cf, 0, None).await;
    mount_job(
        cf,
        "PATCH",
        &format!("/v3/service_brokers/{BROKER_GUID}"),
        job("COMPLETE", json!([])),
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/v3/service_plans"))
        .and(query_param("service_broker_guids", BROKER_GUID))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            cf,
            vec![
                plan("9a110000-0000-4000-8000-000000000001", "small"),
                plan("9a110000-0000-4000-8000-000000000002", "medium"),
            ],
        )))
        .mount(&cf.cc)
        .await;
    for p in [
        "9a110000-0000-4000-8000-000000000001",
        "9a110000-0000-4000-8000-000000000002",
    ] {
        Mock::given(method("POST"))
            .and(path(format!("/v3/service_plans/{p}/visibility")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"type": "public"})))
            .mount(&cf.cc)
            .await;
    }
}

#[tokio::test]
async fn enable_access_makes_every_plan_public() {
    let cf = FakeCf::start().await;
    mount_plans(&cf).await;

    let out = register(&cf, &["--enable-access"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("updated service broker wayback ({BROKER_GUID})")),
        "{stdout}"
    );
    assert!(stdout.contains("enabled access to plan small (9a110000-0000-4000-8000-000000000001) for all organizations (public)\n"), "{stdout}");
    assert!(stdout.contains("enabled access to plan medium (9a110000-0000-4000-8000-000000000002) for all organizations (public)\n"), "{stdout}");
    for p in [
        "9a110000-0000-4000-8000-000000000001",
        "9a110000-0000-4000-8000-000000000002",
    ] {
        assert_eq!(
            bodies(&cf, "POST", &format!("/v3/service_plans/{p}/visibility")).await,
            vec![json!({"type": "public"})]
        );
    }
}

#[tokio::test]
async fn enable_access_for_named_orgs() {
    let cf = FakeCf::start().await;
    mount_plans(&cf).await;
    for (name, guid) in [
        ("org-a", "0a000000-0000-4000-8000-00000000000a"),
        ("my org", "0b000000-0000-4000-8000-00000000000b"),
    ] {
        Mock::given(method("GET"))
            .and(path("/v3/organizations"))
            .and(query_param("names", name))
            .respond_with(ResponseTemplate::new(200).set_body_json(page(
                &cf,
                vec![json!({"guid": guid, "name": name, "suspended": false, "relationships": {"quota": {"data": null}}})],
            )))
            .mount(&cf.cc)
            .await;
    }

    let out = register(
        &cf,
        &[
            "--enable-access",
            "--org",
            "org-a",
            "--org",
            "my org",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let expected = json!({"type": "organization", "organizations": [
        {"guid": "0a000000-0000-4000-8000-00000000000a"},
        {"guid": "0b000000-0000-4000-8000-00000000000b"}
    ]});
    for p in [
        "9a110000-0000-4000-8000-000000000001",
        "9a110000-0000-4000-8000-000000000002",
    ] {
        assert_eq!(
            bodies(&cf, "POST", &format!("/v3/service_plans/{p}/visibility")).await,
            vec![expected.clone()]
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["access"][0]["plan_name"], "small");
    assert_eq!(report["access"][0]["visibility"], "organization");
    assert_eq!(report["access"][1]["organizations"][1]["name"], "my org");
}

#[tokio::test]
async fn an_unknown_org_is_named() {
    let cf = FakeCf::start().await;
    mount_plans(&cf).await;
    Mock::given(method("GET"))
        .and(path("/v3/organizations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&cf, vec![])))
        .mount(&cf.cc)
        .await;

    let out = register(&cf, &["--enable-access", "--org", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("was updated, but enabling access failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no organization named \"nope\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_403_says_which_scope_the_client_lacks() {
    let cf = FakeCf::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/service_brokers"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"errors": [{
            "code": 10003, "title": "CF-NotAuthorized",
            "detail": "You are not authorized to perform the requested action"
        }]})))
        .mount(&cf.cc)
        .await;

    let out = register(&cf, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("look up the service broker: HTTP 403: CF-NotAuthorized (10003): You are not authorized to perform the requested action"), "{stderr}");
    assert!(
        stderr.contains(&format!("The UAA client {CLIENT_ID} may not do this")),
        "{stderr}"
    );
    assert!(stderr.contains("cloud_controller.admin"), "{stderr}");
    assert!(
        !stderr.contains(CLIENT_SECRET) && !stderr.contains(PASSWORD),
        "{stderr}"
    );
}

#[tokio::test]
async fn settings_it_cannot_register_without_are_named() {
    let cf = FakeCf::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args(["register-broker"])
        .env_clear()
        .env("WAYBACK_BROKER_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("WAYBACK_CC_API_URL"),
        "{}",
        text(&out.stderr)
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args(["register-broker"])
        .env_clear()
        .env("WAYBACK_CC_API_URL", cf.cc_url())
        .env("WAYBACK_CC_CLIENT_ID", CLIENT_ID)
        .env("WAYBACK_CC_CLIENT_SECRET", CLIENT_SECRET)
        .env("WAYBACK_BROKER_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no broker URL: pass --url or set external_url"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        cf.cc.received_requests().await.unwrap().is_empty(),
        "no call before the settings are complete"
    );
}
