//! The dashboard page in a real headless Chromium (`common::browser`, DevTools protocol over a
//! pipe), signed in through the real single sign-on flow against the wiremock UAA and CC
//! (`common::dashboard`). Each page is checked at a desktop and a phone viewport: no console
//! error, uncaught exception or browser error log (a CSP violation, a failed load), the restore
//! timeline and the charts drawn from the JSON, the "restore to this point" hint with the exact
//! command, and a screenshot written as a test artifact (the path is printed).
//!
//! - an instance with backups, a rename, a delete and an undo (`clone-from`), on real
//!   PostgreSQL: the deleted original's timeline and the restored copy's;
//! - the last hour's charts and the blocking tree, with samples the fake runtime reports (the
//!   sampler's own tests run against real PostgreSQL).

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::browser::{chromium, Browser};
use common::dashboard::{login, with_sso, SsoUaa};
use common::fake_cf::FakeCf;
use common::*;
use serde_json::{json, Value};
use wayback::domain::InstanceId;
use wayback_api::activity::{
    Activity, DatabaseStats, LockNode, LockWait, Locks, Sample, SessionStates, Statement,
};

/// A desktop and a phone (an iPhone 12/13/14's CSS pixels).
const VIEWPORTS: [(&str, u32, u32, bool); 2] =
    [("desktop", 1280, 900, false), ("phone", 390, 844, true)];

fn browser_available() -> Option<PathBuf> {
    let program = chromium();
    require("chromium (scripts/setup --with-browser)", program.is_some()).then(|| program.unwrap())
}

/// Where screenshots go: `target/tmp/dashboard-screenshots/` (it outlives the run, unlike the
/// run's root, which `scripts/test` removes), one PNG per page and viewport.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

/// The page of `instance` loaded with `cookie` at each viewport: no problem reported, the
/// timeline and the charts drawn; `check` looks further. Returns the screenshots' paths.
async fn load_page(
    browser: &mut Browser,
    app: &TestApp,
    instance: &str,
    cookie: &str,
    label: &str,
    mut check: impl FnMut(&str, &Value),
) -> Vec<PathBuf> {
    let (name, value) = cookie.split_once('=').unwrap();
    let url = format!("{}/dashboard/instances/{instance}", app.address);
    let mut shots = Vec::new();
    for (viewport, width, height, mobile) in VIEWPORTS {
        let page = browser.new_page().await;
        browser.viewport(&page, width, height, mobile).await;
        browser.set_cookie(&page, &url, name, value).await;
        browser.navigate(&page, &url).await;
        browser
            .wait_for(
                &page,
                "(() => { const r = document.getElementById('refresh'); \
                 return !!r && /updated/.test(r.textContent) && !!document.querySelector('#timeline svg') \
                 && !!document.querySelector('#chart-xact svg'); })()",
                &format!("{label} at {viewport}: the page is drawn"),
            )
            .await;
        let drawn = browser.eval(&page, DRAWN).await;
        eprintln!("{label} at {viewport}: {drawn}");
        assert_eq!(
            drawn["scrollWidth"], drawn["innerWidth"],
            "{label} at {viewport}: nothing is wider than the viewport"
        );
        check(&page, &drawn);
        let path = artifacts().join(format!("{label}-{viewport}.png"));
        browser.screenshot(&page, &path).await;
        eprintln!("screenshot: {}", path.display());
        shots.push(path);
        assert_eq!(
            browser.problems(),
            Vec::<String>::new(),
            "{label} at {viewport}: console errors, exceptions or browser errors"
        );
    }
    shots
}

/// What the page drew, as the test reads it from the DOM.
const DRAWN: &str = r#"(() => {
  const q = (s) => document.querySelectorAll(s);
  const num = (s, a) => { const e = document.querySelector(s); return e ? Number(e.getAttribute(a)) : -1; };
  return {
    name: document.getElementById('name').textContent,
    facts: document.getElementById('facts').textContent,
    windows: q('#timeline .tl-window').length,
    backups: q('#timeline .tl-backup-g').length,
    events: Array.from(q('#timeline .tl-event')).map(e => e.getAttribute('data-kind')),
    names: Array.from(q('#timeline .tl-name-text')).map(e => e.textContent),
    timelineItems: num('#timeline svg', 'data-items'),
    sessionPoints: num('#chart-sessions svg', 'data-points'),
    sessionPaths: q('#chart-sessions svg path').length,
    lockPoints: num('#chart-locks svg', 'data-points'),
    lockPaths: q('#chart-locks svg path').length,
    xactPaths: q('#chart-xact svg path').length,
    activity: document.getElementById('activity-sub').textContent,
    tree: Array.from(q('#locks .node .who')).map(e => e.textContent),
    queries: q('#queries tbody tr').length,
    checks: document.getElementById('checks').textContent,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
  };
})()"#;

/// The page's JSON, read with the session `cookie`.
async fn data(app: &TestApp, instance: &str, cookie: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!(
            "{}/dashboard/instances/{instance}/data",
            app.address
        ))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    r.json().await.unwrap()
}

fn rfc3339(v: &Value) -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Clicks (or taps) the middle of the restorable window and returns the hint's commands.
async fn pick_a_point(browser: &mut Browser, page: &str) -> Vec<String> {
    let at = browser
        .eval(
            page,
            "(() => { const r = document.querySelector('#timeline .tl-window').getBoundingClientRect(); \
             window.scrollTo(0, 0); return [r.left + r.width / 2, r.top + r.height / 2]; })()",
        )
        .await;
    let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
    for kind in ["mousePressed", "mouseReleased"] {
        browser
            .call(
                Some(page),
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
    }
    browser
        .wait_for(
            page,
            "document.querySelectorAll('#hint-commands code').length > 0",
            "the restore hint",
        )
        .await;
    let cmds = browser
        .eval(
            page,
            "Array.from(document.querySelectorAll('#hint-commands code')).map(c => c.textContent)",
        )
        .await;
    cmds.as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// The `point-in-time` a hint's command names (RFC 3339, whole seconds, UTC).
fn point_in(command: &str) -> chrono::DateTime<Utc> {
    let start = command.find("202").expect("a time in the command");
    let t: String = command[start..].chars().take(20).collect();
    chrono::DateTime::parse_from_rfc3339(&t)
        .unwrap_or_else(|e| panic!("{t}: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test]
async fn the_restore_timeline_of_a_renamed_deleted_and_restored_instance_in_a_real_browser() {
    if !pg_available() {
        return;
    }
    let Some(program) = browser_available() else {
        return;
    };
    let cf = FakeCf::start().await;
    let _uaa = SsoUaa::mount(&cf).await;
    let app = spawn_app_with(with_sso(&cf)).await;

    // production → renamed prod-v2 → backed up, a commit → deleted → undone (clone-from).
    let original = app.provision_ready("production").await;
    app.rename(&original, "prod-v2").await;
    wait_for_backup(&app, &original).await;
    let creds = app.bind_sync(&original, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t AS SELECT 1 AS one")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    app.deprovision_done(&original).await;
    let (restored, _) = app
        .clone_ready("prod-v2", json!({"clone-from": "prod-v2"}))
        .await;
    wait_for_backup(&app, &restored).await;

    let mut browser = Browser::launch(&program).await;

    // The deleted original: its names, its window, its backups, the rename and the delete.
    let cookie = login(&app, &cf, &original).await;
    load_page(
        &mut browser,
        &app,
        &original,
        &cookie,
        "deleted-original",
        |_, d| {
            assert_eq!(d["name"], "prod-v2", "{d}");
            assert!(d["facts"].as_str().unwrap().contains("Deleted"), "{d}");
            assert_eq!(d["windows"], 1, "the restorable window: {d}");
            assert!(d["backups"].as_u64().unwrap() >= 1, "{d}");
            assert_eq!(d["names"], json!(["production", "prod-v2"]), "{d}");
            let events: Vec<&str> = d["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for kind in ["provision", "rename", "deprovision"] {
                assert!(events.contains(&kind), "{kind} marker: {d}");
            }
            // Not sampled (deleted): the charts are drawn empty, saying so.
            assert_eq!(d["sessionPoints"], 0, "{d}");
            assert!(d["activity"].as_str().unwrap().contains("live"), "{d}");
        },
    )
    .await;
    // The original no longer holds its name (the copy took it last): the hint names its GUID.
    let page = browser.new_page().await;
    let url = format!("{}/dashboard/instances/{original}", app.address);
    let (name, value) = cookie.split_once('=').unwrap();
    browser.set_cookie(&page, &url, name, value).await;
    browser.navigate(&page, &url).await;
    browser
        .wait_for(
            &page,
            "!!document.querySelector('#timeline .tl-window')",
            "the window",
        )
        .await;
    let commands = pick_a_point(&mut browser, &page).await;
    assert_eq!(
        commands.len(),
        1,
        "no `cf undo prod-v2`, which means the copy: {commands:?}"
    );
    assert!(
        commands[0].starts_with("cf create-service ")
            && commands[0].contains(&format!(r#""clone-from":"{original}""#)),
        "{commands:?}"
    );
    let doc = data(&app, &original, &cookie).await;
    let window = &doc["instance"]["restore_window"];
    let (from, to) = (rfc3339(&window["from"]), rfc3339(&window["to"]));
    let point = point_in(&commands[0]);
    assert!(from <= point && point <= to, "{point} within {window}");

    // The restored copy: the clone marker, its own window and backup; the undo command.
    let cookie = login(&app, &cf, &restored).await;
    load_page(
        &mut browser,
        &app,
        &restored,
        &cookie,
        "restored-copy",
        |_, d| {
            assert_eq!(d["name"], "prod-v2", "{d}");
            assert!(d["facts"].as_str().unwrap().contains("Running"), "{d}");
            assert_eq!(d["windows"], 1, "{d}");
            assert!(d["backups"].as_u64().unwrap() >= 1, "{d}");
            assert!(
                d["events"].as_array().unwrap().contains(&json!("clone")),
                "{d}"
            );
            assert!(d["sessionPaths"].as_u64().is_some(), "{d}");
        },
    )
    .await;
    let page = browser.new_page().await;
    let url = format!("{}/dashboard/instances/{restored}", app.address);
    let (name, value) = cookie.split_once('=').unwrap();
    browser.set_cookie(&page, &url, name, value).await;
    browser.navigate(&page, &url).await;
    browser
        .wait_for(
            &page,
            "!!document.querySelector('#timeline .tl-window')",
            "the window",
        )
        .await;
    let commands = pick_a_point(&mut browser, &page).await;
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(
        commands[0].starts_with("cf undo prod-v2 --at 20"),
        "{commands:?}"
    );
    assert!(
        commands[1].contains(r#"-c '{"clone-from":"prod-v2","point-in-time":"20"#),
        "{commands:?}"
    );
    assert_eq!(point_in(&commands[0]), point_in(&commands[1]));
    assert_eq!(browser.problems(), Vec::<String>::new());
    browser.close().await;
}

/// An hour of samples: a few active and idle sessions, a lock wait for two minutes a quarter of
/// an hour ago and one for the last two minutes, a transaction open for five; a gap where the
/// sampler did not run.
fn an_hour(now: chrono::DateTime<Utc>) -> Activity {
    let mut samples = Vec::new();
    for k in 0..3600i64 {
        if (1200..1260).contains(&k) {
            continue;
        }
        // Two waits: one that ended, one going on now (so the page asks for the tree).
        let waiting = (2600..2720).contains(&k) || k >= 3480;
        samples.push(Sample {
            at: now - chrono::Duration::seconds(3600 - k),
            sessions: SessionStates {
                active: 2 + (k % 7) as u32 / 3 + u32::from(waiting) * 2,
                idle: 9 + (k % 3) as u32,
                idle_in_transaction: u32::from((2400..2700).contains(&k)),
                ..SessionStates::default()
            },
            longest_transaction_secs: if (2400..2700).contains(&k) {
                (k - 2400) as f64
            } else {
                0.2
            },
            lock_waiters: if waiting { 2 } else { 0 },
            ..Sample::default()
        });
    }
    let statement = |query: &str, calls: i64, total: f64, share: f64| Statement {
        query: query.into(),
        database: Some("orders".into()),
        calls,
        total_exec_ms: total,
        mean_exec_ms: total / calls as f64,
        rows: calls,
        share,
        ..Statement::default()
    };
    Activity {
        samples,
        stats: vec![DatabaseStats {
            at: now,
            cache_hit_ratio: Some(0.9931),
            database_size_bytes: 700 << 20,
            max_connections: 100,
            statements_available: true,
            top_statements: vec![
                statement(
                    "SELECT * FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT $2",
                    48211,
                    912345.2,
                    0.54,
                ),
                statement(
                    "UPDATE orders SET status = $1 WHERE id = $2",
                    120944,
                    301000.0,
                    0.18,
                ),
                statement(
                    "INSERT INTO events (order_id, kind) VALUES ($1, $2)",
                    250301,
                    150200.7,
                    0.09,
                ),
            ],
            ..DatabaseStats::default()
        }],
        sampling: true,
    }
}

/// pid 4123 (idle in transaction) blocks 4188, which blocks 4190.
fn a_blocking_tree(now: chrono::DateTime<Utc>) -> Locks {
    let wait = |pid: i32, by: i32, lock_type: &str, mode: &str, secs: f64| LockWait {
        pid,
        blocked_by: vec![by],
        lock_type: lock_type.into(),
        mode: mode.into(),
        relation: Some("public.orders".into()),
        waiting_secs: secs,
        ..LockWait::default()
    };
    Locks {
        at: now,
        roots: vec![LockNode {
            pid: 4123,
            user: Some("app".into()),
            database: Some("orders".into()),
            state: Some("idle in transaction".into()),
            transaction_secs: Some(184.0),
            query: Some("UPDATE orders SET status = $1 WHERE id = $2".into()),
            blocking: vec![LockNode {
                pid: 4188,
                user: Some("app".into()),
                state: Some("active".into()),
                waiting_for: Some(wait(4188, 4123, "transactionid", "ShareLock", 61.0)),
                query: Some("UPDATE orders SET paid_at = now() WHERE id = $1".into()),
                blocking: vec![LockNode {
                    pid: 4190,
                    user: Some("worker".into()),
                    state: Some("active".into()),
                    waiting_for: Some(wait(4190, 4188, "tuple", "ExclusiveLock", 12.0)),
                    query: Some("DELETE FROM orders WHERE id = $1".into()),
                    ..LockNode::default()
                }],
                ..LockNode::default()
            }],
            ..LockNode::default()
        }],
    }
}

#[tokio::test]
async fn the_last_hour_charts_the_blocking_tree_and_the_top_queries_in_a_real_browser() {
    let Some(program) = browser_available() else {
        return;
    };
    let cf = FakeCf::start().await;
    let (app, _uaa) = common::dashboard::spawn_sso_app(&cf).await;
    let id = app.provision_ready("orders").await;
    let now = Utc::now();
    let fake = app.fake.as_ref().unwrap();
    fake.set_activity(&id, an_hour(now), a_blocking_tree(now));
    let cookie = login(&app, &cf, &id).await;

    let mut browser = Browser::launch(&program).await;
    load_page(&mut browser, &app, &id, &cookie, "last-hour", |_, d| {
        assert_eq!(d["name"], "orders", "{d}");
        assert!(
            d["activity"]
                .as_str()
                .unwrap()
                .starts_with("Sampled every second"),
            "{d}"
        );
        // One point per bucket of the plot's width, at least one per two pixels of it.
        assert!(d["sessionPoints"].as_u64().unwrap() > 100, "{d}");
        // Two runs (the sampler's gap), each with a layer per state that had sessions.
        assert!(d["sessionPaths"].as_u64().unwrap() >= 4, "{d}");
        assert!(d["lockPoints"].as_u64().unwrap() > 100, "{d}");
        assert_eq!(d["lockPaths"], 2, "{d}");
        assert_eq!(d["xactPaths"], 2, "{d}");
        assert_eq!(
            d["tree"],
            json!([
                "pid 4123 · app@orders",
                "pid 4188 · app",
                "pid 4190 · worker"
            ]),
            "{d}"
        );
        assert_eq!(d["queries"], 3, "{d}");
    })
    .await;
    browser.close().await;
}
