//! `cf-wayback` end to end: the real binary against a real broker (real PostgreSQL clusters),
//! with wiremock stand-ins for the Cloud Controller and the UAA (`common::fake_cf`).
//!
//! - standalone, from a fixture `config.json` in a temp `CF_HOME` whose access token has
//!   expired: the CLI refreshes it at the UAA, writes it back, and lists the space's
//!   instances (table and `--json`), finding the broker from a dashboard URL, and shows an
//!   instance's audit trail (`audit`) and its followers (`followers`);
//! - as a plugin under the cf plugin harness (`tests/fixtures/cf-plugin-harness`): metadata
//!   install, `backups`, `db-diagnose`, `db-locks`, `db-outliers --json`, and `undo --wait`, where the fake CC's `POST /v3/service_instances`
//!   is forwarded to the broker as the real OSB provision with `clone-from`, and the fake
//!   CC's `last_operation` is the broker's own, so the progress lines are the broker's.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake_cf::FakeCf;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use wiremock::matchers::{body_string_contains, method, path, path_regex, query_param};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const CC_PLAN_SMALL: &str = "cc-plan-guid-small";
const SPACE_NAME: &str = "staging";

/// The `cf-wayback` binary of this build. It is another package's binary, which cargo does not
/// hand to this one (`CARGO_BIN_EXE_*` names only a package's own); `cargo nextest run
/// --workspace` (scripts/test) builds every binary of the workspace into the directory above
/// this test binary's `deps/`.
fn cf_wayback_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/it-…");
    let bin = dir.join(format!("cf-wayback{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p cf-wayback`; scripts/test does)",
        bin.display()
    );
    bin
}

/// The plugin's own fixtures (config.json, the cf plugin harness) in the cf-wayback package.
fn cf_wayback_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cf-wayback/tests/fixtures")
}

// ---- a fake Cloud Controller's service instances, fed by the real broker ----

/// The CC's service instances (v3 resource shape), shared by the responders and the proxy.
#[derive(Clone, Default)]
struct CcInstances(Arc<Mutex<Vec<Value>>>);

impl CcInstances {
    fn add(
        &self,
        guid: &str,
        name: &str,
        dashboard_url: Option<String>,
        state: &str,
        description: &str,
    ) {
        self.0.lock().unwrap().push(json!({
            "guid": guid, "name": name, "type": "managed",
            "created_at": "2026-11-21T09:00:00Z", "updated_at": "2026-11-21T09:00:00Z",
            "dashboard_url": dashboard_url,
            "last_operation": {"type": "create", "state": state, "description": description,
                               "created_at": "2026-11-21T09:00:00Z", "updated_at": "2026-11-21T09:00:00Z"},
            "relationships": {"space": {"data": {"guid": SPACE}},
                              "service_plan": {"data": {"guid": CC_PLAN_SMALL}}},
            "metadata": {"labels": {}, "annotations": {}},
        }));
    }

    fn set_operation(&self, guid: &str, state: &str, description: &str) {
        for i in self.0.lock().unwrap().iter_mut() {
            if i["guid"] == guid {
                i["last_operation"]["state"] = json!(state);
                i["last_operation"]["description"] = json!(description);
            }
        }
    }
}

fn query(request: &Request, key: &str) -> Option<String> {
    request
        .url
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `GET /v3/service_instances?space_guids=&names=`.
struct ListInstances(CcInstances);
impl Respond for ListInstances {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let names = query(request, "names");
        let spaces = query(request, "space_guids");
        let resources: Vec<Value> = (self.0 .0.lock().unwrap().iter())
            .filter(|i| {
                names
                    .as_deref()
                    .map_or(true, |n| n.split(',').any(|n| i["name"] == n))
            })
            .filter(|i| {
                spaces.as_deref().map_or(true, |s| {
                    s.split(',')
                        .any(|s| i["relationships"]["space"]["data"]["guid"] == s)
                })
            })
            .cloned()
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({
            "pagination": {"total_results": resources.len(), "total_pages": 1,
                           "first": {"href": "x"}, "last": {"href": "x"}, "next": null, "previous": null},
            "resources": resources,
        }))
    }
}

/// `GET /v3/service_instances/:guid`.
struct GetInstance(CcInstances);
impl Respond for GetInstance {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let guid = request.url.path().rsplit('/').next().unwrap_or("");
        match self.0 .0.lock().unwrap().iter().find(|i| i["guid"] == guid) {
            Some(i) => ResponseTemplate::new(200).set_body_json(i),
            None => ResponseTemplate::new(404).set_body_json(json!({"errors": [
                {"code": 60004, "title": "CF-ServiceInstanceNotFound", "detail": "not found"}]})),
        }
    }
}

/// `POST /v3/service_instances`: records the instance, hands it to the proxy, answers 202.
struct CreateInstance {
    instances: CcInstances,
    to_broker: mpsc::UnboundedSender<(String, Value)>,
}
impl Respond for CreateInstance {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let guid = new_id();
        let name = body["name"].as_str().unwrap().to_string();
        self.instances.add(&guid, &name, None, "in progress", "");
        self.to_broker.send((guid, body)).unwrap();
        ResponseTemplate::new(202).insert_header("Location", format!("/v3/jobs/{}", new_id()))
    }
}

/// What the CC does after a 202: the OSB provision to the broker, then `last_operation`
/// polls whose state and description become the CC instance's.
async fn proxy_to_broker(
    broker: String,
    password: String,
    instances: CcInstances,
    mut from_cc: mpsc::UnboundedReceiver<(String, Value)>,
) {
    let http = reqwest::Client::new();
    let osb = |m: Method, p: String| {
        http.request(m, format!("{broker}{p}"))
            .basic_auth(USER, Some(&password))
            .header("X-Broker-API-Version", "2.17")
    };
    while let Some((guid, request)) = from_cc.recv().await {
        assert_eq!(
            request["relationships"]["service_plan"]["data"]["guid"],
            CC_PLAN_SMALL
        );
        let name = request["name"].as_str().unwrap();
        let body = clone_body(name, SPACE, request["parameters"].clone());
        let r = osb(
            Method::PUT,
            format!("/v2/service_instances/{guid}?accepts_incomplete=true"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
        let status = r.status();
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        if status != StatusCode::ACCEPTED {
            let d = answer["description"]
                .as_str()
                .unwrap_or("provision refused")
                .to_string();
            instances.set_operation(&guid, "failed", &d);
            continue;
        }
        let op = answer["operation"].as_str().unwrap_or("").to_string();
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let r = osb(
                Method::GET,
                format!("/v2/service_instances/{guid}/last_operation?operation={op}"),
            )
            .send()
            .await
            .unwrap();
            let last: Value = r.json().await.unwrap_or(Value::Null);
            let state = last["state"].as_str().unwrap_or("failed");
            instances.set_operation(&guid, state, last["description"].as_str().unwrap_or(""));
            if state != "in progress" || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

// ---- the world: broker, fake CF, a space with a live and a deleted instance ----

struct World {
    fake: FakeCf,
    app: TestApp,
    instances: CcInstances,
    deleted: String,
    live: String,
    home: tempfile::TempDir,
}

async fn world() -> Option<World> {
    if !pg_available() {
        return None;
    }
    let fake = FakeCf::start().await;
    fake.allow_space(SPACE).await;
    let cc = fake.cc_settings();
    let app = spawn_app_with(|s| s.cc = cc).await;

    let deleted = app.provision_ready("production").await;
    app.deprovision_done(&deleted).await;
    let live = app.provision_ready("orders").await;

    let instances = CcInstances::default();
    let dashboard = format!("{}/dashboard/instances/{live}", app.address);
    instances.add(&live, "orders", Some(dashboard), "succeeded", "");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(proxy_to_broker(
        app.address.clone(),
        app.password.clone(),
        instances.clone(),
        rx,
    ));
    Mock::given(method("GET"))
        .and(path("/v3/service_instances"))
        .respond_with(ListInstances(instances.clone()))
        .mount(&fake.cc)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("^/v3/service_instances/[^/]+$"))
        .respond_with(GetInstance(instances.clone()))
        .mount(&fake.cc)
        .await;
    Mock::given(method("POST"))
        .and(path("/v3/service_instances"))
        .respond_with(CreateInstance {
            instances: instances.clone(),
            to_broker: tx,
        })
        .mount(&fake.cc)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/service_plans"))
        .and(query_param("broker_catalog_ids", SMALL))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "pagination": {"total_results": 1, "total_pages": 1, "next": null},
            "resources": [{"guid": CC_PLAN_SMALL, "name": "small"}],
        })))
        .mount(&fake.cc)
        .await;
    Some(World {
        fake,
        app,
        instances,
        deleted,
        live,
        home: tempfile::tempdir().unwrap(),
    })
}

impl World {
    /// `config.json` as the cf CLI writes it (the fixture), logged in with `access`.
    fn write_config(&self, access: &str, space: &str) -> PathBuf {
        let fixture = cf_wayback_fixtures().join("cf-wayback/cf-config.json");
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        v["Target"] = json!(self.fake.cc_url());
        v["AuthorizationEndpoint"] = json!(self.fake.uaa_url());
        v["UaaEndpoint"] = json!(self.fake.uaa_url());
        v["AccessToken"] = json!(format!("bearer {access}"));
        v["RefreshToken"] = json!("refresh-token-1");
        v["SpaceFields"]["GUID"] = json!(space);
        v["SpaceFields"]["Name"] = json!(SPACE_NAME);
        let path = self.home.path().join(".cf/config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        path
    }

    /// Runs `cf-wayback ARGS` standalone; (exit code, stdout, stderr).
    async fn standalone(&self, args: &[&str], extra_env: &[(&str, &str)]) -> (i32, String, String) {
        let mut cmd = tokio::process::Command::new(cf_wayback_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CF_HOME", self.home.path());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        output(cmd).await
    }

    /// The broker's own answer for the space, as the CLI's user sees it.
    async fn broker_list(&self, token: &str) -> Value {
        let url = format!("{}/wayback/v1/spaces/{SPACE}/instances", self.app.address);
        let r = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

async fn output(mut cmd: tokio::process::Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("cf-wayback finished in time")
        .expect("run cf-wayback");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The table's rows as cells, header first.
fn table(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .map(|l| {
            l.split("   ")
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect()
}

fn expired_token(fake: &FakeCf) -> String {
    let mut claims = fake.claims("alice", Duration::from_secs(0));
    claims.exp -= 600;
    claims.iat -= 1200;
    fake.mint(&claims)
}

#[tokio::test]
async fn standalone_refreshes_an_expired_token_and_lists_live_and_deleted_instances() {
    let Some(w) = world().await else { return };
    let fresh = w.fake.token_for("alice", Duration::from_secs(600));
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=refresh-token-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": fresh, "token_type": "bearer", "refresh_token": "refresh-token-2",
            "expires_in": 599, "scope": "cloud_controller.read cloud_controller.write openid",
            "jti": "j"})))
        .expect(1)
        .mount(&w.fake.uaa)
        .await;
    let config = w.write_config(&expired_token(&w.fake), SPACE);

    let (code, stdout, stderr) = w.standalone(&["backups"], &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(saved["AccessToken"], format!("bearer {fresh}"));
    assert_eq!(saved["RefreshToken"], "refresh-token-2");
    assert_eq!(saved["Locale"], "fr_FR", "other fields are kept");

    let rows = table(&stdout);
    assert_eq!(
        rows[0],
        [
            "name",
            "instance",
            "state",
            "restorable from",
            "restorable to",
            "last base backup",
            "verified"
        ]
    );
    let orders = rows.iter().find(|r| r[0] == "orders").expect(&stdout);
    assert_eq!(
        (orders[1].as_str(), orders[2].as_str(), orders[4].as_str()),
        (&w.live[..8], "live", "now")
    );
    let production = rows.iter().find(|r| r[0] == "production").expect(&stdout);
    assert_eq!(
        (production[1].as_str(), production[2].as_str()),
        (&w.deleted[..8], "deleted")
    );
    assert!(
        production[4].ends_with(" UTC"),
        "a deleted instance ends: {stdout}"
    );
    assert!(
        production[5].ends_with(" UTC"),
        "deprovision leaves a base backup: {stdout}"
    );
    // Its data directory is kept (the plan's default 24 hours): an undo takes it at once.
    let undo = stdout
        .lines()
        .skip_while(|l| !l.starts_with("production "))
        .nth(1)
        .unwrap_or_default();
    assert!(
        undo.starts_with("  undo: kept copy until ") && undo.ends_with(" UTC, instant"),
        "{stdout}"
    );
    // The broker found from the dashboard URL is remembered for this API endpoint.
    let memory: Value = serde_json::from_str(
        &std::fs::read_to_string(w.home.path().join(".cf/wayback.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(memory["brokers"][w.fake.cc_url()], w.app.address);

    // --json passes the broker's instance objects through.
    let (code, stdout, stderr) = w
        .standalone(&["backups", "production", "--json"], &[])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["space"], json!({"guid": SPACE, "name": SPACE_NAME}));
    assert_eq!(doc["broker"], w.app.address);
    let all = w.broker_list(&fresh).await;
    let production: Vec<&Value> = all["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == "production")
        .collect();
    assert_eq!(
        doc["instances"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        production
    );
    let kept = &doc["instances"][0]["kept_copy"];
    assert!(kept["size_bytes"].as_u64().unwrap_or(0) > 0, "{doc}");
    assert!(kept["expires_at"].is_string(), "{doc}");
    assert_eq!(
        kept["machine"],
        Value::Null,
        "the broker's own machine: {doc}"
    );

    // `audit NAME`: who did what to the newest instance of that name (the test's OSB requests
    // carry no originating identity, so no user), as a table and as the broker's document.
    let (code, stdout, stderr) = w.standalone(&["audit", "production"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let rows = table(&stdout);
    assert_eq!(rows[0], ["time", "event", "user", "detail"], "{stdout}");
    let events: Vec<(&str, &str)> = rows[1..]
        .iter()
        .map(|r| (r[1].as_str(), r[2].as_str()))
        .collect();
    assert_eq!(
        events,
        [("provision", "-"), ("deprovision", "-")],
        "{stdout}"
    );
    let (code, stdout, stderr) = w.standalone(&["audit", "production", "--json"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["instance_id"], w.deleted.as_str());
    let (code, _, stderr) = w.standalone(&["audit", "nothing-here"], &[]).await;
    assert_eq!(code, 1, "{stderr}");

    // `followers NAME`: an instance that leads and follows nobody says so; `--json` has the
    // broker's (absent) fields as null and []. (Followers themselves: `fast::osb_followers` and
    // the plugin's unit tests.)
    let (code, stdout, stderr) = w.standalone(&["followers", "orders"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.ends_with("has no followers and follows no leader.\n"),
        "{stdout}"
    );
    let (code, stdout, stderr) = w.standalone(&["followers", "orders", "--json"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&doc["instance_id"], &doc["follower"], &doc["followers"]),
        (&json!(w.live), &Value::Null, &json!([]))
    );
    let (code, _, stderr) = w.standalone(&["followers", "nothing-here"], &[]).await;
    assert_eq!(code, 1, "{stderr}");

    // Exit codes: a name nothing had (1); a bad --at (2); a broker that is not there (4).
    let (code, _, stderr) = w.standalone(&["backups", "nothing-here"], &[]).await;
    assert_eq!(code, 1, "{stderr}");
    let (code, _, stderr) = w
        .standalone(&["undo", "production", "--at", "yesterday"], &[])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("RFC 3339"), "{stderr}");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, _, stderr) = w.standalone(&["backups", "--broker-url", &dead], &[]).await;
    assert_eq!(code, 4, "{stderr}");
    let (code, _, stderr) = w
        .standalone(&["backups"], &[("WAYBACK_BROKER_URL", &dead)])
        .await;
    assert_eq!(
        code, 4,
        "the environment variable counts as the flag: {stderr}"
    );

    // A space the CC does not let the user see: the broker says 403 → exit 3.
    let other = "0ther000-0000-4000-8000-000000000009";
    w.fake.deny_space(other, 403).await;
    w.write_config(&fresh, other);
    let (code, _, stderr) = w.standalone(&["backups"], &[]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("role in space"), "{stderr}");
}

// ---- as a cf plugin, under the harness ----

fn build_harness(dir: &Path) -> Option<PathBuf> {
    let go = std::process::Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require("`go` (apt-get install golang-go)", go) {
        return None;
    }
    let binary = dir.join("cf-harness");
    let out = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(cf_wayback_fixtures().join("cf-plugin-harness"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GOCACHE", std::env::temp_dir().join("wayback-gocache"))
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(binary)
}

#[tokio::test]
async fn as_a_plugin_under_the_harness_it_installs_lists_and_undoes_with_wait() {
    let Some(w) = world().await else { return };
    let tools = tempfile::tempdir().unwrap();
    let Some(harness) = build_harness(tools.path()) else {
        return;
    };
    let token = w.fake.token_for("alice", Duration::from_secs(900));
    let serve = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&harness);
        cmd.arg("serve")
            .arg(cf_wayback_bin())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", w.home.path())
            .env("FAKE_CF_TOKEN", format!("bearer {token}"))
            .env("FAKE_CF_API", w.fake.cc_url())
            .env("FAKE_CF_SPACE_GUID", SPACE)
            .env("FAKE_CF_SPACE_NAME", SPACE_NAME);
        cmd
    };

    // cf install-plugin: the metadata alone.
    let (code, _, stderr) = output(serve(&[])).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("metadata: {Name:wayback "), "{stderr}");
    for usage in [
        "Usage:cf backups [NAME]",
        "Usage:cf undo NAME [NEW_NAME]",
        "Usage:cf db-diagnose NAME",
        "Usage:cf db-locks NAME",
        "Usage:cf db-outliers NAME",
        "broker-url:",
        "wait:Follow",
    ] {
        assert!(stderr.contains(usage), "{usage}: {stderr}");
    }

    // cf backups
    let (code, stdout, stderr) = output(serve(&["backups"])).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rows = table(&stdout);
    assert!(
        rows.iter()
            .any(|r| r[0] == "production" && r[2] == "deleted"),
        "{stdout}"
    );
    assert!(
        rows.iter().any(|r| r[0] == "orders" && r[2] == "live"),
        "{stdout}"
    );

    // cf db-diagnose, db-locks and db-outliers: through the CC's discovery to the broker's
    // inspection of the live cluster.
    let (code, stdout, stderr) = output(serve(&["db-diagnose", "orders"])).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("Blocking queries: No session waits for a lock."),
        "{stdout}"
    );
    let (code, stdout, stderr) = output(serve(&["db-locks", "orders"])).await;
    assert_eq!(
        (code, stdout.as_str()),
        (0, "No session waits for a lock.\n"),
        "{stderr}"
    );
    let (code, stdout, stderr) = output(serve(&["db-outliers", "orders", "--json"])).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let outliers: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        outliers["available"] == true && outliers["statements"].is_array(),
        "{outliers}"
    );

    // cf undo production --wait: through the CC to the broker's real clone, followed to the end.
    let (code, stdout, stderr) = output(serve(&["undo", "production", "--wait"])).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("Creating service instance production-restored from production"),
        "{stdout}"
    );
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("production-restored: "))
        .collect();
    assert!(
        !progress.is_empty(),
        "progress lines from the broker: {stdout}"
    );
    assert!(
        progress.iter().any(|l| !l.contains(": in progress (")),
        "the broker's own descriptions: {stdout}"
    );
    assert!(
        stdout.contains("OK: production-restored is ready"),
        "{stdout}"
    );

    // The broker now lists the restored instance as live.
    let list = w.broker_list(&token).await;
    let restored = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "production-restored");
    assert_eq!(
        restored.map(|i| i["state"].clone()),
        Some(json!("live")),
        "{list}"
    );
    let cc = w.instances.0.lock().unwrap().clone();
    assert!(
        cc.iter()
            .any(|i| i["name"] == "production-restored"
                && i["last_operation"]["state"] == "succeeded"),
        "{cc:?}"
    );

    // A clone-from the broker refuses (a time before the window) fails with its words, exit ≠ 0.
    let (code, stdout, stderr) = output(serve(&[
        "undo",
        "production",
        "too-early",
        "--at",
        "2001-01-01T00:00:00Z",
        "--wait",
    ]))
    .await;
    assert_ne!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("The restore of production into too-early failed"),
        "{stderr}"
    );
}
