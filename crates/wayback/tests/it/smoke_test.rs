//! `wayback smoke-test` as an operator runs it: the real binary, configured by flags and
//! environment variables, against a broker started in this process (`spawn_app`, real
//! PostgreSQL clusters, the local archive in its data directory). The happy path walks all nine
//! steps and leaves no instance behind; a wrong password and an unknown plan fail at step 1.
//! An HA plan (`ha-small`, with the test's own etcd and Patroni) walks eleven steps, its
//! members checked and a switchover made through the operator API (`bash scripts/test
//! smoke_test::`; the HA test needs `patroni` and `etcd`: `bash scripts/setup`). The fast
//! tier's `fast::smoke_ha` takes an HA plan as far as the fake runtime allows.

use crate::common;

use std::process::Output;

use common::osb_client::iid;
use common::*;
use reqwest::Method;
use serde_json::Value;

/// Runs `wayback smoke-test ARGS` against `app` with a clean environment and `password`.
pub(crate) async fn smoke(app: &TestApp, password: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .arg("smoke-test")
        .arg("--broker-url")
        .arg(&app.address)
        .args(args)
        .env_clear()
        .env("WAYBACK_BROKER_USERNAME", USER)
        .env("WAYBACK_BROKER_PASSWORD", password)
        .env("WAYBACK_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run wayback")
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_passes_every_step_and_leaves_nothing_behind() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let out = smoke(
        &app,
        &app.password,
        &["--json", "--space-guid", SPACE, "--timeout-secs", "300"],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(report["ok"], true, "{report:#}");
    let names: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{s}");
            assert!(s["secs"].as_f64().is_some(), "{s}");
            s["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "catalog",
            "provision",
            "bind",
            "write",
            "unbind",
            "deprovision",
            "clone",
            "verify",
            "cleanup"
        ]
    );
    assert!(
        !stdout.contains("postgres://") && !stdout.contains("postgresql://"),
        "a uri (with its password) was printed: {stdout}"
    );

    // Both instances are gone from the broker: their deprovision is kept as a tombstone.
    for key in ["instance_id", "clone_id"] {
        let id = report[key].as_str().expect("an instance id");
        let r = app
            .osb(
                Method::GET,
                &format!("/v2/service_instances/{id}/last_operation?service_id={SERVICE_ID}&plan_id={SMALL}"),
            )
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_delete_finished(status, &body);
        assert!(
            body["description"].is_string(),
            "{key} {id}: the tombstone says what happened: {body}"
        );
        let r = app
            .osb(Method::GET, &format!("/v2/service_instances/{id}"))
            .send()
            .await
            .unwrap();
        assert!(
            matches!(r.status().as_u16(), 404 | 410),
            "{key} {id}: {}",
            r.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_at_the_catalog_with_401() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let out = smoke(&app, "not-the-password", &[]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("[1/9] catalog … FAILED"), "{stdout}");
    assert!(
        stderr.contains("step 1/9 (catalog) failed") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(!stdout.contains("[2/9]"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_plan_is_named() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let out = smoke(&app, &app.password, &["--plan", "huge", "--json"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(report["ok"], false);
    let step = &report["steps"][0];
    assert_eq!(
        (step["name"].as_str(), step["ok"].as_bool()),
        (Some("catalog"), Some(false))
    );
    let detail = step["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"huge\"") && detail.contains("small"),
        "{detail}"
    );
    assert!(stderr.contains("step 1/9 (catalog) failed"), "{stderr}");
    assert_eq!(report["instance_id"], Value::Null);
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args([
            "smoke-test",
            "--broker-url",
            "ftp://example.org",
            "--space-guid",
            "x",
        ])
        .env_clear()
        .env("WAYBACK_BROKER_PASSWORD", "pw")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run wayback");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ftp://example.org"));
}

/// An HA plan on real PostgreSQL, a real etcd and real Patroni (both members on the broker's
/// machine): the walk takes eleven steps, `ha` and `switchover` among them, and passes; the
/// clone goes into `small` (the broker clones only into plans without HA) with every row,
/// the one written after the switchover included; no member directory, Patroni or member row
/// is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ha_plan_walks_eleven_steps_with_its_members_and_a_switchover() {
    if !pg_available() || !common::etcd::ha_binaries_available() {
        return;
    }
    let etcd = common::etcd::Etcd::start().await;
    let app = spawn_app_with(|s| s.ha.dcs_endpoints = vec![etcd.endpoint()]).await;
    let out = smoke(
        &app,
        &app.password,
        &[
            "--plan",
            "ha-small",
            "--json",
            "--space-guid",
            SPACE,
            "--timeout-secs",
            "900",
        ],
    )
    .await;
    // Whatever the walk left running (it failed before its clean-up): Patroni would start
    // its servers again after the app's drop.
    let members: Vec<std::path::PathBuf> = std::fs::read_dir(app.data_dir.join("clusters"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains('~'))
                .collect()
        })
        .unwrap_or_default();
    let left = members.clone();
    let _cleanup = crate::ha_broker::Cleanup(members);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(left.is_empty(), "member directories left: {left:?}");
    assert_eq!(
        patroni_under(&app.data_dir),
        0,
        "a Patroni of the walk still runs"
    );
    let report: Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(report["ok"], true, "{report:#}");
    let steps = report["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "catalog",
            "provision",
            "bind",
            "ha",
            "write",
            "switchover",
            "unbind",
            "deprovision",
            "clone",
            "verify",
            "cleanup"
        ]
    );
    let detail = |name: &str| {
        steps
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["detail"].as_str())
            .unwrap()
            .to_string()
    };
    let took: Vec<String> = steps
        .iter()
        .map(|s| {
            let secs = s["secs"].as_f64().unwrap_or_default();
            format!("{} {secs:.1} s", s["name"].as_str().unwrap())
        })
        .collect();
    eprintln!("smoke_test: {}", took.join(", "));
    for name in ["ha", "switchover", "verify"] {
        eprintln!("smoke_test: {name}: {}", detail(name));
    }
    let ha = detail("ha");
    assert!(
        ha.contains("2 members (sync)")
            && ha.contains(" leader on broker:")
            && ha.contains(" sync_standby on broker:")
            && ha.contains("target_session_attrs=read-write")
            && ha.contains("targetServerType=primary"),
        "{ha}"
    );
    let switchover = detail("switchover");
    assert!(
        switchover.contains("m1 → m2") && switchover.contains("row 4 written"),
        "{switchover}"
    );
    assert!(detail("catalog").contains("the clone goes into plan small"));
    assert!(
        detail("verify").contains("the 4 rows"),
        "{}",
        detail("verify")
    );
    assert!(
        !stdout.contains("postgres://") && !stdout.contains("postgresql://"),
        "a uri (with its password) was printed: {stdout}"
    );
    assert!(
        app.store
            .ha_members(&iid(report["instance_id"].as_str().unwrap()))
            .await
            .unwrap()
            .is_empty(),
        "the HA instance's members are forgotten"
    );
}

/// How many Patroni processes run with a configuration under `dir`.
fn patroni_under(dir: &std::path::Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("patroni") && cmdline.contains(&dir)
        })
        .count()
}
