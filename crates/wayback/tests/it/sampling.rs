//! Sampling what running instances do (issue 19 point 1), on a real broker with real
//! PostgreSQL 15 clusters:
//!
//! - one session holds a row lock (`SELECT … FOR UPDATE` in an open transaction) and another
//!   waits for it (an `UPDATE` of that row): the wait is seen in the ring
//!   (`ClusterRuntime::activity`) with both backends' pids and the table, and in `/metrics`
//!   (`wayback_lock_waiters` 1, the lock-wait counter rising, labelled with the instance's
//!   name, which a rename changes); released, it is gone;
//! - a statement run with a literal shows in the top statements as `$1`, and the literal is
//!   nowhere in the activity's JSON;
//! - a parked (idle-stopped) instance is not woken by the sampler while another is sampled;
//! - through an agent, `/metrics` shows the agent's instance, and its blocking tree and
//!   diagnose facts are read on the agent's cluster.
//!
//! Run: `bash scripts/test sampling::`.

use std::time::Duration;

use crate::agents::Fleet;
use crate::common;
use crate::idle_stop::{idle_catalog, postmaster_runs, provision_dev, wait_stopped};

use common::osb_client::iid;
use common::*;
use serde_json::Value;
use wayback::runtime::{InspectKind, Inspection};
use wayback_api::activity::{Activity, LockWait};

/// The ring of `id` as the broker's runtime holds it.
async fn activity(app: &TestApp, id: &str) -> Activity {
    app.worker
        .context()
        .runtime
        .activity(&iid(id), None)
        .await
        .expect("the local runtime reads its rings")
}

/// The newest sample's waiters of `id`.
async fn waits(app: &TestApp, id: &str) -> Vec<LockWait> {
    activity(app, id)
        .await
        .samples
        .last()
        .map(|s| s.waits.clone())
        .unwrap_or_default()
}

/// The sample of metric `name` for instance `id` whose labels contain `with`: (labels, value).
fn metric_of(text: &str, name: &str, id: &str, with: &str) -> Option<(String, f64)> {
    let prefix = format!("{name}{{instance=\"{id}\",");
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        let (labels, value) = rest.rsplit_once("} ")?;
        if !labels.contains(with) {
            return None;
        }
        Some((labels.to_string(), value.parse().ok()?))
    })
}

async fn backend_pid(c: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(c)
        .await
        .unwrap()
}

/// Runs `sql` on `conn` over the simple query protocol on a thread of its own (sqlx's executor
/// future is not `Send` across `tokio::spawn` here), so the test goes on while it waits for a
/// lock; the receiver gets the rows it affected.
fn on_own_thread(
    mut conn: sqlx::PgConnection,
    sql: &'static str,
) -> tokio::sync::oneshot::Receiver<Result<u64, sqlx::Error>> {
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rows = rt.block_on(async {
            sqlx::raw_sql(sql)
                .execute(&mut conn)
                .await
                .map(|r| r.rows_affected())
        });
        let _ = done_tx.send(rows);
    });
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_lock_wait_is_seen_in_the_ring_and_the_metrics_until_released() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let id = app.provision_ready("orders").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let uri = creds["uri"].as_str().expect("credentials.uri").to_string();
    let mut holder = connect(&uri).await.unwrap();
    let mut waiter = connect(&uri).await.unwrap();
    exec(
        &mut holder,
        "CREATE TABLE accounts (id int PRIMARY KEY, secret text, v int); \
         INSERT INTO accounts VALUES (1, 'x', 0)",
    )
    .await;
    // A literal the statistics must never show.
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM accounts WHERE secret = 'hunter2-literal'")
            .fetch_one(&mut holder)
            .await
            .unwrap();
    assert_eq!(n, 0);
    let (holder_pid, waiter_pid) = (
        backend_pid(&mut holder).await,
        backend_pid(&mut waiter).await,
    );

    exec(&mut waiter, "UPDATE accounts SET v = v + 1 WHERE id = 1").await;
    exec(
        &mut holder,
        "BEGIN; SELECT * FROM accounts WHERE id = 1 FOR UPDATE",
    )
    .await;
    // Statement text comes from pg_stat_statements, which has a statement once it finished
    // once: the same update runs first. Over the simple query protocol, as PostgreSQL 15 may
    // report no `query_id` for a statement of the extended protocol (then no text is shown;
    // the wait itself is seen either way).
    let update = on_own_thread(waiter, "UPDATE accounts SET v = v + 1 WHERE id = 1");

    // The ring: the waiter, who blocks it, the table, and the statement's normalised text.
    eventually("the wait is sampled", 60, || async {
        waits(&app, &id).await.iter().any(|w| w.pid == waiter_pid)
    })
    .await;
    let w = waits(&app, &id).await;
    let w = w.iter().find(|w| w.pid == waiter_pid).unwrap();
    assert_eq!(w.blocked_by, vec![holder_pid], "{w:?}");
    assert_eq!(w.relation.as_deref(), Some("public.accounts"), "{w:?}");
    assert_eq!(w.database.as_deref(), Some("app"), "{w:?}");
    assert!(!w.lock_type.is_empty() && !w.mode.is_empty(), "{w:?}");
    let text = w.query.as_deref().unwrap_or_default();
    assert!(
        text.contains("UPDATE accounts") && text.contains("$1"),
        "{w:?}"
    );
    let latest = activity(&app, &id).await.samples.last().cloned().unwrap();
    assert_eq!(latest.lock_waiters, 1);
    assert!(latest.longest_transaction_secs > 0.0, "{latest:?}");
    assert!(latest.sessions.active >= 1, "{latest:?}");

    // The metrics, labelled with the broker's name of the instance; the counter rises.
    let counter = format!("lock_type=\"{}\",mode=\"{}\"", w.lock_type, w.mode);
    let first = std::sync::Mutex::new(None);
    eventually("/metrics shows one waiter and its counter", 60, || async {
        let text = app.metrics().await;
        let waiters = metric_of(&text, "wayback_lock_waiters", &id, "name=\"orders\"");
        let seconds = metric_of(&text, "wayback_lock_wait_seconds_total", &id, &counter);
        match (waiters, seconds) {
            (Some((labels, 1.0)), Some((_, s))) => {
                assert!(labels.contains(&format!("space=\"{SPACE}\"")), "{labels}");
                assert!(labels.contains("plan=\"small\""), "{labels}");
                *first.lock().unwrap() = Some(s);
                true
            }
            _ => false,
        }
    })
    .await;
    let first = first.lock().unwrap().unwrap();
    eventually("the lock-wait counter rises", 60, || async {
        metric_of(
            &app.metrics().await,
            "wayback_lock_wait_seconds_total",
            &id,
            &counter,
        )
        .is_some_and(|(_, s)| s > first)
    })
    .await;
    app.rename(&id, "orders-eu").await;
    eventually("a rename relabels the series", 60, || async {
        metric_of(
            &app.metrics().await,
            "wayback_lock_waiters",
            &id,
            "name=\"orders-eu\"",
        )
        .is_some()
    })
    .await;

    // Released: the update finishes, the wait is gone from the ring and the metric.
    exec(&mut holder, "COMMIT").await;
    let updated = tokio::time::timeout(Duration::from_secs(30), update)
        .await
        .expect("the update finishes once the lock is released")
        .unwrap()
        .unwrap();
    assert_eq!(updated, 1);
    eventually("the wait is gone", 60, || async {
        let latest = activity(&app, &id).await.samples.last().cloned().unwrap();
        let text = app.metrics().await;
        latest.lock_waiters == 0
            && latest.waits.is_empty()
            && metric_of(&text, "wayback_lock_waiters", &id, "name=").is_some_and(|(_, n)| n == 0.0)
    })
    .await;

    // The 15 s facts: the literal's statement normalised, the literal nowhere.
    eventually("the statement shows in the top statements", 60, || async {
        activity(&app, &id).await.stats.last().is_some_and(|s| {
            s.statements_available
                && s.top_statements
                    .iter()
                    .any(|t| t.query.contains("secret = $1"))
        })
    })
    .await;
    let json = serde_json::to_string(&activity(&app, &id).await).unwrap();
    assert!(!json.contains("hunter2"), "a literal leaked: {json}");
    let stats = activity(&app, &id).await.stats.last().cloned().unwrap();
    assert!(
        stats.xact_commit > 0 && stats.database_size_bytes > 0,
        "{stats:?}"
    );
    assert!(stats.max_connections > 0 && stats.cache_hit_ratio.is_some());
    let text = app.metrics().await;
    for name in [
        "wayback_pg_stat_database_xact_commit_total",
        "wayback_database_size_bytes",
        "wayback_wraparound_age",
        "wayback_sessions",
    ] {
        assert!(
            metric_of(&text, name, &id, "name=").is_some(),
            "{name}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_instance_is_not_woken_by_the_sampler() {
    if !pg_available() {
        return;
    }
    let dir = test_root();
    let catalog = idle_catalog(dir.path());
    let app = spawn_app_with(move |s| s.catalog = Some(catalog)).await;
    let parked = provision_dev(&app, "sleepy").await;
    // Another instance that never stops: its ring shows the sampler keeps ticking.
    let awake = app.provision_ready("awake").await;
    let cluster = app.cluster_dir(&parked);
    wait_stopped(&app, &parked, &cluster).await;
    eventually("the sampler sees it parked", 30, || async {
        !activity(&app, &parked).await.sampling
    })
    .await;

    let before = activity(&app, &awake).await.samples.len();
    eventually(
        "the sampler passes over every cluster ten times",
        60,
        || async { activity(&app, &awake).await.samples.len() >= before + 10 },
    )
    .await;
    assert!(
        !postmaster_runs(&cluster),
        "the sampler woke a parked cluster"
    );
    let record = app
        .store
        .get_instance(&iid(&parked))
        .await
        .unwrap()
        .unwrap();
    assert!(record.stopped_at.is_some(), "{record:?}");
    assert!(!activity(&app, &parked).await.sampling);
    // No gauge for it while parked.
    let text = app.metrics().await;
    assert!(metric_of(&text, "wayback_lock_waiters", &parked, "name=").is_none());
    assert!(metric_of(&text, "wayback_lock_waiters", &awake, "name=\"awake\"").is_some());
}

/// Through an agent: the instance's figures in the broker's `/metrics`, its ring, and the
/// inspections `cf db-locks` and `cf db-diagnose` ask for (`POST /v1/clusters/{id}/inspect`),
/// read on the agent's cluster while one session blocks another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agents_instance_shows_in_the_brokers_metrics_and_is_inspected_through_it() {
    if !pg_available() {
        return;
    }
    let fleet = Fleet::start(1, |_| {}).await;
    let id = fleet.app.provision_ready("remote-orders").await;
    assert_eq!(fleet.placed_on(&id).await.as_deref(), Some("agent-a"));
    eventually("the agent's instance is in /metrics", 60, || async {
        let text = fleet.app.metrics().await;
        metric_of(&text, "wayback_lock_waiters", &id, "name=\"remote-orders\"")
            .is_some_and(|(_, n)| n == 0.0)
            && metric_of(&text, "wayback_max_connections", &id, "name=").is_some()
    })
    .await;
    // The ring itself, read through the agent.
    let ring: Value = serde_json::to_value(
        fleet
            .app
            .worker
            .context()
            .runtime
            .activity(&iid(&id), None)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ring["sampling"], true, "{ring}");
    assert!(!ring["samples"].as_array().unwrap().is_empty(), "{ring}");

    // A lock wait on the agent's cluster, inspected through the agent.
    let creds = fleet.app.bind_sync(&id, &new_id()).await;
    let uri = creds["uri"].as_str().expect("credentials.uri").to_string();
    let mut holder = connect(&uri).await.unwrap();
    let mut waiter = connect(&uri).await.unwrap();
    exec(&mut holder, "CREATE TABLE t (n int)").await;
    let (holder_pid, waiter_pid) = (
        backend_pid(&mut holder).await,
        backend_pid(&mut waiter).await,
    );
    exec(&mut holder, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await;
    let waiting = on_own_thread(waiter, "SELECT count(*) FROM t");
    let runtime = &fleet.app.worker.context().runtime;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let locks = loop {
        let Inspection::Locks(l) = runtime
            .inspect(&iid(&id), InspectKind::Locks)
            .await
            .unwrap()
        else {
            panic!("a locks inspection answers locks")
        };
        if l.roots
            .iter()
            .any(|r| r.pid == holder_pid && r.blocking.iter().any(|b| b.pid == waiter_pid))
        {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's blocking tree never showed the wait: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let root = &locks.roots[0];
    let wait = root.blocking[0]
        .waiting_for
        .as_ref()
        .expect("the waiter waits");
    assert_eq!(
        (wait.mode.as_str(), wait.relation.as_deref()),
        ("AccessShareLock", Some("public.t")),
        "{wait:?}"
    );
    let Inspection::Diagnose(facts) = runtime
        .inspect(&iid(&id), InspectKind::Diagnose)
        .await
        .unwrap()
    else {
        panic!("a diagnose inspection answers facts")
    };
    assert!(
        facts.locks.roots.iter().any(|r| r.pid == holder_pid),
        "{:?}",
        facts.locks
    );
    assert!(
        facts.max_connections > 0 && facts.connections >= 2,
        "{facts:?}"
    );
    exec(&mut holder, "COMMIT").await;
    waiting.await.unwrap().unwrap();
}
