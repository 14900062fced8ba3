//! Undo through the OSB API (`clone-from`, `point-in-time`) against real clusters and a real
//! archive (the local directory, and the shared S3 server when the test script provides one):
//! a deleted instance comes back by name with new credentials only, a live one is forked with
//! everything committed before the request, a point in time splits two commits exactly, and the
//! PUT refuses — before its 202 — another space's instance, unknown names (listing the
//! candidates), malformed times and times outside the restore window.

use crate::common;
use crate::common::archive_wait::{archive_now, wait_for_backup};

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wayback::archive::layout::InstancePrefix;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::storage::ObjectStore;

const OTHER_SPACE: &str = "5ace0000-0000-4000-8000-0000000000ff";

fn local_store(app: &TestApp) -> ObjectStore {
    ObjectStore::local(&app.data_dir.join("archive")).unwrap()
}

async fn rows(conn: &mut sqlx::PgConnection, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(conn).await.unwrap()
}

/// `uri` pointed at another port (the clone's), keeping its user and password.
fn at_port(uri: &str, port: u16) -> String {
    let mut u = reqwest::Url::parse(uri).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

/// The server's clock, to the microsecond.
async fn now(conn: &mut sqlx::PgConnection) -> DateTime<Utc> {
    let text: String = sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    text.parse().unwrap()
}

/// provision "production" → rows → delete → clone-from "production": the rows are back, the
/// clone's credentials work, the source's are refused, and the clone archives on its own.
async fn whole_story(app: TestApp, store: ObjectStore) {
    let src = app.provision_ready("production").await;
    wait_for_backup(&store, &src).await;
    // Written through a binding, as an app writes: the tables belong to the app's owner role.
    let old = app.bind_sync(&src, &new_id()).await;
    let mut writer = connect(old["uri"].as_str().unwrap()).await.unwrap();
    exec(
        &mut writer,
        "CREATE TABLE orders (what text); INSERT INTO orders VALUES ('one'), ('two')",
    )
    .await;
    drop(writer);
    let old_admin = std::fs::read_to_string(app.cluster_dir(&src).join("admin-password")).unwrap();
    app.deprovision_done(&src).await;

    let (clone, seen) = app
        .clone_ready("production", json!({"clone-from": "production"}))
        .await;
    // Every line the platform showed names the source; the last one keeps naming it, with when
    // it was deleted (the progress lines themselves come and go too fast to assert on).
    assert_names_source(&seen, &src);
    assert!(
        seen.last().unwrap().contains("deleted at"),
        "says the source was deleted: {seen:?}"
    );

    let new = app.bind_sync(&clone, &new_id()).await;
    let mut conn = connect(new["uri"].as_str().unwrap())
        .await
        .expect("the clone's own binding connects");
    assert_eq!(
        rows(&mut conn, "SELECT what FROM orders ORDER BY 1").await,
        ["one", "two"]
    );
    // The source's binding, pointed at the clone: refused.
    let port = reqwest::Url::parse(new["uri"].as_str().unwrap())
        .unwrap()
        .port()
        .unwrap();
    let stale = at_port(old["uri"].as_str().unwrap(), port);
    assert!(
        connect(&stale).await.is_err(),
        "the source's binding must not log in to the clone"
    );
    // The source's superuser password: refused too.
    let new_admin =
        std::fs::read_to_string(app.cluster_dir(&clone).join("admin-password")).unwrap();
    assert_ne!(old_admin, new_admin);
    let stale_admin = format!(
        "postgres://wayback_admin:{}@127.0.0.1:{port}/app",
        old_admin.trim()
    );
    assert!(connect(&stale_admin).await.is_err());

    // The clone archives into its own prefix. (Taken from the copy kept at delete time, it
    // stays on its source's timeline: no history file, see `trash::adopt`.)
    let own = InstancePrefix::new(
        &SpaceGuid::parse(SPACE).unwrap(),
        &InstanceId::parse(clone.clone()).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys = store.list(&format!("{}/wal/", own.as_str())).await.unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the clone archives nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn undo_a_deleted_instance_by_name_on_a_local_archive() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = local_store(&app);
    whole_story(app, store).await;
}

#[tokio::test]
async fn undo_a_deleted_instance_by_name_on_s3() {
    let s3 = shared_s3_settings("cl");
    if !require("an S3 server in WAYBACK_TEST_S3_*", s3.is_some()) || !pg_available() {
        return;
    }
    let s3 = s3.unwrap();
    let store = ObjectStore::open(&s3).unwrap();
    let app = spawn_app_with(|s| s.archive = s3.clone()).await;
    whole_story(app, store).await;
}

#[tokio::test]
async fn fork_of_a_live_instance_holds_what_was_committed_before_the_request() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = local_store(&app);
    let src = app.provision_ready("live").await;
    wait_for_backup(&store, &src).await;
    let mut admin = app.admin_on(&src, "app").await;
    exec(
        &mut admin,
        "CREATE TABLE t AS SELECT generate_series(1, 500) AS n",
    )
    .await;
    // No WAL switch here: the fork must do it.
    let (clone, _) = app
        .clone_ready("live-fork", json!({"clone-from": src}))
        .await;
    let mut forked = app.admin_on(&clone, "app").await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut forked)
        .await
        .unwrap();
    assert_eq!(n, 500);
    // The source still serves its database.
    exec(&mut admin, "INSERT INTO t VALUES (501)").await;
    let mut again = app.admin_on(&src, "app").await;
    exec(&mut again, "SELECT 1").await;
}

#[tokio::test]
async fn point_in_time_splits_two_commits() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = local_store(&app);
    let src = app.provision_ready("pitr").await;
    wait_for_backup(&store, &src).await;
    let mut admin = app.admin_on(&src, "app").await;
    exec(&mut admin, "CREATE TABLE events (what text)").await;
    exec(&mut admin, "INSERT INTO events VALUES ('T1')").await;
    let target = now(&mut admin).await;
    exec(&mut admin, "INSERT INTO events VALUES ('T2')").await;
    archive_now(&mut admin, &store, &src).await;

    let (clone, seen) = app
        .clone_ready(
            "pitr-0930",
            json!({"clone-from": "pitr", "point-in-time": target.to_rfc3339()}),
        )
        .await;
    let mut restored = app.admin_on(&clone, "app").await;
    assert_eq!(
        rows(&mut restored, "SELECT what FROM events ORDER BY 1").await,
        ["T1"]
    );
    assert_names_source(&seen, &src);
    assert!(
        seen.last().unwrap().contains(&target.to_rfc3339()),
        "names the point in time: {seen:?}"
    );
}

/// Each description after the PUT names `src` (by GUID), including the final one.
fn assert_names_source(seen: &[String], src: &str) {
    for d in seen.iter().filter(|d| !d.is_empty()) {
        assert!(
            d.contains(src),
            "{d:?} does not name the source; seen: {seen:?}"
        );
    }
    assert!(
        seen.last().unwrap().contains("ready, cloned from"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn refusals_come_before_the_202() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = local_store(&app);
    let src = app.provision_ready("production").await;
    wait_for_backup(&store, &src).await;

    let put = |space: &'static str, parameters: Value| {
        let app = &app;
        async move {
            let r = app
                .put_instance(&new_id(), &clone_body("x", space, parameters))
                .await;
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (
                status,
                body["description"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    // Another space: by name and by GUID, refused like an unknown name, nothing leaked.
    let (s1, d1) = put(OTHER_SPACE, json!({"clone-from": "production"})).await;
    let (s2, d2) = put(OTHER_SPACE, json!({"clone-from": src})).await;
    assert_eq!(s1, StatusCode::UNPROCESSABLE_ENTITY, "{d1}");
    assert_eq!(s2, StatusCode::UNPROCESSABLE_ENTITY, "{d2}");
    assert!(
        d1.contains("no instance of this space can be cloned"),
        "{d1}"
    );
    assert!(
        !d2.contains("production") && !d1.contains(&src),
        "{d1} / {d2}"
    );
    // Unknown name in the right space: the candidates are listed.
    let (s, d) = put(SPACE, json!({"clone-from": "prodution"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{d}");
    assert!(
        d.contains("can be cloned in this space are: production"),
        "{d}"
    );
    // Malformed times: 400 with the format.
    for bad in ["2026-11-21T09:30:00", "yesterday", "2026-11-21 09:30 UTC"] {
        let (s, d) = put(
            SPACE,
            json!({"clone-from": "production", "point-in-time": bad}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {d}");
        assert!(d.contains("RFC 3339"), "{d}");
    }
    // Outside the window: 422 saying the window.
    let (s, d) = put(
        SPACE,
        json!({"clone-from": "production", "point-in-time": "2001-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{d}");
    assert!(d.contains("restore window") && d.contains(" to "), "{d}");

    // A plan below the source's hot-standby floors: a medium source (max_connections 200)
    // cannot be restored into a small instance (50).
    let big = new_id();
    let r = app.put_instance(&big, &provision_body(MEDIUM, "big")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (_, body) = app.poll_instance(&big, op["operation"].as_str()).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    wait_for_backup(&store, &big).await;
    let (s, d) = put(SPACE, json!({"clone-from": "big"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{d}");
    assert!(d.contains("max_connections") && d.contains("200"), "{d}");
}

/// Writes `value` into `orders` through a new binding (the table is created when missing).
async fn write_through_binding(app: &TestApp, id: &str, value: &str) {
    let creds = app.bind_sync(id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    exec(&mut conn, "CREATE TABLE IF NOT EXISTS orders (what text)").await;
    exec(&mut conn, &format!("INSERT INTO orders VALUES ('{value}')")).await;
}

/// The rows of `orders` in a clone, read through its own new binding.
async fn clone_rows(app: &TestApp, clone: &str) -> Vec<String> {
    let creds = app.bind_sync(clone, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    rows(&mut conn, "SELECT what FROM orders ORDER BY 1").await
}

/// A rename keeps the old name: "orders" renamed to "orders-2025" can be cloned by either name
/// until another instance takes "orders"; then "orders" means the newest to have had it (live
/// or deleted), and last_operation says which one it picked.
#[tokio::test]
async fn renamed_and_reused_names_pick_the_newest_holder() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = local_store(&app);
    let first = app.provision_ready("orders").await;
    wait_for_backup(&store, &first).await;
    write_through_binding(&app, &first, "first").await;
    app.rename(&first, "orders-2025").await;

    // By the new name and by the old one: the same instance.
    for name in ["orders-2025", "orders"] {
        let (clone, seen) = app
            .clone_ready(&format!("{name}-copy"), json!({"clone-from": name}))
            .await;
        assert_names_source(&seen, &first);
        assert_eq!(clone_rows(&app, &clone).await, ["first"], "by {name}");
    }

    // A second instance takes the name "orders": it is now the newest to have had it.
    let second = app.provision_ready("orders").await;
    wait_for_backup(&store, &second).await;
    write_through_binding(&app, &second, "second").await;
    let (clone, seen) = app
        .clone_ready("orders-now", json!({"clone-from": "orders"}))
        .await;
    assert_names_source(&seen, &second);
    assert_eq!(clone_rows(&app, &clone).await, ["second"]);

    // Deleted, it is still the newest "orders"; the first stays reachable by its GUID.
    app.deprovision_done(&second).await;
    let (clone, seen) = app
        .clone_ready("orders-undo", json!({"clone-from": "orders"}))
        .await;
    assert_names_source(&seen, &second);
    assert!(seen.last().unwrap().contains("deleted at"), "{seen:?}");
    assert_eq!(clone_rows(&app, &clone).await, ["second"]);
    let (clone, seen) = app
        .clone_ready("orders-by-guid", json!({"clone-from": first}))
        .await;
    assert_names_source(&seen, &first);
    assert_eq!(clone_rows(&app, &clone).await, ["first"]);
}

/// Deleted right after provisioning, before the provision's base backup job ran: the delete
/// takes a base backup itself, so even this instance can be undone.
#[tokio::test]
async fn an_instance_deleted_at_once_can_still_be_undone() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let src = app.provision_ready("fleeting").await;
    app.deprovision_done(&src).await;
    let (clone, seen) = app
        .clone_ready("fleeting", json!({"clone-from": "fleeting"}))
        .await;
    assert_names_source(&seen, &src);
    let creds = app.bind_sync(&clone, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    exec(&mut conn, "CREATE TABLE after_undo (n int)").await;
}

/// An app on the shared S3 server when there is one (else its local archive), and its archive.
async fn app_on_s3() -> (TestApp, ObjectStore) {
    match shared_s3_settings("lf") {
        Some(s3) => {
            let store = ObjectStore::open(&s3).unwrap();
            (spawn_app_with(|s| s.archive = s3.clone()).await, store)
        }
        None => {
            let app = spawn_app().await;
            let store = local_store(&app);
            (app, store)
        }
    }
}

/// A clone of a live instance on its machine copies the running server (issue 16): what was
/// committed before the request is there, the source's credentials are refused, the fork
/// archives into its own prefix on a new timeline and gets its first base backup. A point in
/// time of the same instance still needs the archive's history.
#[tokio::test]
async fn a_live_fork_copies_the_running_server_and_a_point_in_time_uses_the_archive() {
    if !pg_available() {
        return;
    }
    let (app, store) = app_on_s3().await;
    let src = app.provision_ready("forked").await;
    // (It also waits until the window's start, rounded up to the second, has passed.)
    wait_for_backup(&store, &src).await;
    let old = app.bind_sync(&src, &new_id()).await;
    let old_uri = old["uri"].as_str().unwrap();
    let mut writer = connect(old_uri).await.unwrap();
    exec(
        &mut writer,
        "CREATE TABLE orders (what text); INSERT INTO orders VALUES ('one'), ('two')",
    )
    .await;
    let target = now(&mut writer).await;
    exec(&mut writer, "INSERT INTO orders VALUES ('three')").await;

    let (fork, seen) = app
        .clone_ready("forked-now", json!({"clone-from": src}))
        .await;
    assert!(
        seen.iter()
            .any(|d| d.contains("forking the running instance")),
        "{seen:?}"
    );
    let last = seen.last().unwrap();
    assert!(
        last.contains("forked from the running instance (pg_basebackup, ")
            && last.contains(" MB), in "),
        "{seen:?}"
    );
    assert_eq!(clone_rows(&app, &fork).await, ["one", "three", "two"]);
    // New credentials only: the source's binding is refused on the fork.
    let new = app.bind_sync(&fork, &new_id()).await;
    let port = reqwest::Url::parse(new["uri"].as_str().unwrap())
        .unwrap()
        .port()
        .unwrap();
    assert!(connect(&at_port(old_uri, port)).await.is_err());
    // Its own archive: a new timeline's history and its first base backup.
    wait_for_backup(&store, &fork).await;
    let space = SpaceGuid::parse(SPACE.to_string()).unwrap();
    let prefix = InstancePrefix::new(&space, &InstanceId::parse(fork.clone()).unwrap());
    let own: Vec<String> = store
        .list(&format!("{}/", prefix.as_str()))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(own.iter().any(|k| k.ends_with(".history")), "{own:?}");

    archive_now(&mut app.admin_on(&src, "app").await, &store, &src).await;
    let (pitr, seen) = app
        .clone_ready(
            "forked-then",
            json!({"clone-from": src, "point-in-time": target.to_rfc3339()}),
        )
        .await;
    assert!(
        !seen.iter().any(|d| d.contains("forking")),
        "a point in time is not forked: {seen:?}"
    );
    assert!(
        seen.last().unwrap().contains("restored from the archive"),
        "{seen:?}"
    );
    assert_eq!(clone_rows(&app, &pitr).await, ["one", "two"]);
}
