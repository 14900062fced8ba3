//! One store test suite, run against SQLite and PostgreSQL (the test script provides a server
//! in `WAYBACK_TEST_PG_URL`; each run gets its own database).

use crate::common;

use serde_json::json;
use sqlx::Connection;
use wayback::domain::{
    BindingId, BindingState, InstanceId, InstanceState, OperationKind, OperationState,
};
use wayback::store::{
    now_millis, BindingRecord, InstanceRecord, NewJob, OperationRecord, Store, StoreError, JOB_DONE,
};

/// The store with a fresh one-key keyring (bindings are sealed; see `secrets`).
pub(crate) fn keyed(store: Store) -> Store {
    let key = wayback::crypto::random_key_bytes();
    let keyring = wayback::crypto::Keyring::new(vec![("test".into(), key)], None).unwrap();
    store.with_keyring(std::sync::Arc::new(keyring))
}

pub(crate) fn instance(id: &str) -> InstanceRecord {
    let now = now_millis();
    InstanceRecord {
        id: InstanceId::parse(id).unwrap(),
        service_id: "svc".into(),
        plan_id: "plan".into(),
        organization_guid: "org".into(),
        space_guid: "space".into(),
        parameters: json!({}),
        context: json!({ "instance_name": "db" }),
        state: InstanceState::Provisioning,
        port: None,
        database_name: "app".into(),
        owner_role: "app_owner".into(),
        created_at: now,
        updated_at: now,
        deleted_at: None,
        agent: None,
        agent_host: None,
        leader_id: None,
        stopped_at: None,
        wake_error: None,
        wake_error_at: None,
    }
}

pub(crate) fn operation(
    id: &str,
    instance: &str,
    binding: Option<&str>,
    kind: OperationKind,
) -> OperationRecord {
    let now = now_millis();
    OperationRecord {
        id: id.into(),
        instance_id: InstanceId::parse(instance).unwrap(),
        binding_id: binding.map(|b| BindingId::parse(b).unwrap()),
        kind,
        state: OperationState::InProgress,
        description: "queued".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
    }
}

pub(crate) fn job(id: &str, instance: &str, binding: Option<&str>) -> NewJob {
    NewJob {
        id: id.into(),
        kind: "provision".into(),
        instance_id: InstanceId::parse(instance).unwrap(),
        binding_id: binding.map(|b| BindingId::parse(b).unwrap()),
        operation_id: Some(id.into()),
        payload: json!({ "k": "v" }),
        first_step: "first".into(),
    }
}

async fn suite(store: Store) {
    // Insert: instance + first name + operation + job, atomically; a second insert conflicts.
    let i1 = instance("i-1");
    store
        .insert_instance(
            &i1,
            Some("orders"),
            &operation("op-1", "i-1", None, OperationKind::Provision),
            &job("op-1", "i-1", None),
        )
        .await
        .unwrap();
    let again = store
        .insert_instance(
            &i1,
            Some("x"),
            &operation("op-x", "i-1", None, OperationKind::Provision),
            &job("op-x", "i-1", None),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert!(
        store.get_operation("op-x").await.unwrap().is_none(),
        "a failed insert leaves nothing"
    );
    let got = store.get_instance(&i1.id).await.unwrap().unwrap();
    assert_eq!(got, i1);

    // Names: a repeat is not recorded; a new one is, in order.
    assert!(!store.record_name(&i1.id, "orders", "update").await.unwrap());
    assert!(store
        .record_name(&i1.id, "orders-v2", "update")
        .await
        .unwrap());
    let names = store.instance_names(&i1.id).await.unwrap();
    assert_eq!(
        names
            .iter()
            .map(|n| (n.name.as_str(), n.source.as_str()))
            .collect::<Vec<_>>(),
        [("orders", "provision"), ("orders-v2", "update")]
    );

    // Ports are unique among instances.
    let i2 = instance("i-2");
    store
        .insert_instance(
            &i2,
            None,
            &operation("op-2", "i-2", None, OperationKind::Provision),
            &job("op-2", "i-2", None),
        )
        .await
        .unwrap();
    store.set_instance_port(&i1.id, Some(41000)).await.unwrap();
    assert!(matches!(
        store.set_instance_port(&i2.id, Some(41000)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.used_ports("").await.unwrap(), vec![41000]);
    // Each agent has the whole range: the same port on another machine is no conflict.
    store
        .set_instance_agent(&i2.id, "agent-b", "10.0.0.7")
        .await
        .unwrap();
    store.set_instance_port(&i2.id, Some(41000)).await.unwrap();
    assert_eq!(store.used_ports("agent-b").await.unwrap(), vec![41000]);
    let placed = store.get_instance(&i2.id).await.unwrap().unwrap();
    assert_eq!(placed.agent.as_deref(), Some("agent-b"));
    assert_eq!(placed.agent_host.as_deref(), Some("10.0.0.7"));
    assert_eq!(
        store.instances_per_agent().await.unwrap().get("agent-b"),
        Some(&1)
    );
    assert_eq!(
        store.instance_agents().await.unwrap(),
        vec![(i2.id.clone(), "agent-b".to_string())]
    );

    // Jobs: one claimer at a time; the lease excludes others until it lapses.
    let a = store
        .claim_job("worker-a", now_millis() + 60_000, Some("op-1"))
        .await
        .unwrap()
        .expect("claimable");
    assert_eq!(
        (a.step.as_str(), a.payload["k"].as_str()),
        ("first", Some("v"))
    );
    assert!(
        store
            .claim_job("worker-b", now_millis() + 60_000, Some("op-1"))
            .await
            .unwrap()
            .is_none(),
        "leased job"
    );
    assert!(store
        .advance_job("op-1", "worker-a", "second")
        .await
        .unwrap());
    assert!(
        !store
            .advance_job("op-1", "worker-b", "third")
            .await
            .unwrap(),
        "not b's lease"
    );
    assert!(store
        .renew_lease("op-1", "worker-a", now_millis() - 1)
        .await
        .unwrap());
    let b = store
        .claim_job("worker-b", now_millis() + 60_000, Some("op-1"))
        .await
        .unwrap()
        .expect("lapsed lease is claimable");
    assert_eq!(b.step, "second", "resumes at the recorded step");
    assert!(
        !store
            .renew_lease("op-1", "worker-a", now_millis() + 60_000)
            .await
            .unwrap(),
        "a lost its lease"
    );
    store
        .retry_job("op-1", "worker-b", 1, now_millis() + 60_000, "boom")
        .await
        .unwrap();
    assert!(
        store
            .claim_job("worker-b", now_millis() + 60_000, None)
            .await
            .unwrap()
            .is_some_and(|j| j.id == "op-2"),
        "op-1 waits for run_after"
    );
    store.finish_job("op-1", JOB_DONE, None).await.unwrap();
    let done = store.get_job("op-1").await.unwrap().unwrap();
    assert_eq!(
        (
            done.state.as_str(),
            done.attempts,
            done.last_error.as_deref()
        ),
        ("done", 1, Some("boom"))
    );
    assert_eq!(
        store
            .other_pending_jobs(&i1.id, "none")
            .await
            .unwrap()
            .len(),
        0
    );

    // Transitions are compare-and-set.
    store
        .set_instance_state(&i1.id, InstanceState::Ready)
        .await
        .unwrap();
    let op3 = operation("op-3", "i-1", None, OperationKind::Deprovision);
    assert!(!store
        .transition_instance(
            &i1.id,
            &[InstanceState::Updating],
            InstanceState::Deprovisioning,
            &op3,
            &job("op-3", "i-1", None)
        )
        .await
        .unwrap());
    assert!(store.get_operation("op-3").await.unwrap().is_none());
    assert!(store
        .transition_instance(
            &i1.id,
            &[InstanceState::Ready],
            InstanceState::Deprovisioning,
            &op3,
            &job("op-3", "i-1", None)
        )
        .await
        .unwrap());
    assert_eq!(
        store
            .latest_operation(&i1.id, None)
            .await
            .unwrap()
            .unwrap()
            .id,
        "op-3"
    );

    // Operations: terminal states stick.
    store
        .update_operation("op-3", OperationState::Succeeded, "done")
        .await
        .unwrap();
    store
        .update_operation("op-3", OperationState::InProgress, "again?")
        .await
        .unwrap();
    let op = store.get_operation("op-3").await.unwrap().unwrap();
    assert_eq!(
        (op.state, op.description.as_str()),
        (OperationState::Succeeded, "done")
    );
    assert!(op.finished_at.is_some());

    // Bindings.
    let binding = BindingRecord {
        id: BindingId::parse("b-1").unwrap(),
        instance_id: i1.id.clone(),
        request: json!({ "app_guid": "app" }),
        role_name: "u_x".into(),
        password: "secret".to_string().into(),
        state: BindingState::Creating,
        read_only: false,
        created_at: now_millis(),
        updated_at: now_millis(),
        deleted_at: None,
    };
    store
        .insert_binding(
            &binding,
            &operation("op-b1", "i-1", Some("b-1"), OperationKind::Bind),
            &job("op-b1", "i-1", Some("b-1")),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_binding(
                &binding,
                &operation("op-b2", "i-1", Some("b-1"), OperationKind::Bind),
                &job("op-b2", "i-1", Some("b-1"))
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    let got = store.get_binding(&binding.id).await.unwrap().unwrap();
    assert_eq!(
        (got.role_name.as_str(), got.state),
        ("u_x", BindingState::Creating)
    );
    assert!(
        !format!("{got:?}").contains("secret"),
        "Debug hides the password"
    );
    assert_eq!(
        store
            .latest_operation(&i1.id, Some(&binding.id))
            .await
            .unwrap()
            .unwrap()
            .id,
        "op-b1"
    );
    assert_eq!(
        store
            .latest_operation(&i1.id, None)
            .await
            .unwrap()
            .unwrap()
            .id,
        "op-3",
        "binding ops are separate"
    );

    // Deletion keeps the record, frees the port, and deletes the bindings.
    store.delete_bindings_of(&i1.id).await.unwrap();
    store
        .set_instance_state(&i1.id, InstanceState::Deleted)
        .await
        .unwrap();
    let deleted = store.get_instance(&i1.id).await.unwrap().unwrap();
    assert_eq!(
        (deleted.state, deleted.port),
        (InstanceState::Deleted, None)
    );
    assert!(deleted.deleted_at.is_some());
    assert_eq!(
        store.get_binding(&binding.id).await.unwrap().unwrap().state,
        BindingState::Deleted
    );
    assert_eq!(
        store.instance_names(&i1.id).await.unwrap().len(),
        2,
        "names outlive the instance"
    );
    let counts = store.instance_counts().await.unwrap();
    assert!(counts.contains(&("deleted".to_string(), 1)), "{counts:?}");

    // Followers: the leader id is kept, and a leader lists its followers until they are deleted;
    // a read-only binding reads back as read-only.
    let leader = instance("i-lead");
    store
        .insert_instance(
            &leader,
            None,
            &operation("op-l", "i-lead", None, OperationKind::Provision),
            &job("op-l", "i-lead", None),
        )
        .await
        .unwrap();
    for id in ["i-f1", "i-f2"] {
        let follower = InstanceRecord {
            leader_id: Some(leader.id.clone()),
            ..instance(id)
        };
        let op = format!("op-{id}");
        store
            .insert_instance(
                &follower,
                None,
                &operation(&op, id, None, OperationKind::Provision),
                &job(&op, id, None),
            )
            .await
            .unwrap();
    }
    let f1 = store
        .get_instance(&InstanceId::parse("i-f1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f1.leader_id.as_ref(), Some(&leader.id));
    assert_eq!(
        store
            .get_instance(&leader.id)
            .await
            .unwrap()
            .unwrap()
            .leader_id,
        None
    );
    store
        .set_instance_state(&f1.id, InstanceState::Deleted)
        .await
        .unwrap();
    let followers: Vec<String> = store
        .followers_of(&leader.id)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id.to_string())
        .collect();
    assert_eq!(followers, ["i-f2"]);
    let reader = BindingRecord {
        id: BindingId::parse("b-ro").unwrap(),
        instance_id: leader.id.clone(),
        read_only: true,
        ..binding
    };
    store
        .insert_binding(
            &reader,
            &operation("op-ro", "i-lead", Some("b-ro"), OperationKind::Bind),
            &job("op-ro", "i-lead", Some("b-ro")),
        )
        .await
        .unwrap();
    assert!(
        store
            .get_binding(&reader.id)
            .await
            .unwrap()
            .unwrap()
            .read_only
    );
    kept_copies(&store).await;
    ha_members(&store).await;
    idle_stops(&store).await;
    dashboard_logins(&store).await;
}

/// Issue 19: a dashboard sign-in is taken once (of two racing callbacks exactly one gets it),
/// an expired one is refused and gone, old ones are pruned, and the verifier is sealed and bound
/// to its row (another keyring cannot open it).
async fn dashboard_logins(store: &Store) {
    use secrecy::{ExposeSecret, SecretString};
    let id = InstanceId::parse("i-dash").unwrap();
    let verifier = SecretString::from("v".repeat(43));
    let now = now_millis();
    store
        .insert_dashboard_login("h1", &id, &verifier, now, now - 600_000)
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_dashboard_login("h1", &id, &verifier, now, now - 600_000)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let (a, b) = tokio::join!(
        store.take_dashboard_login("h1", now - 600_000),
        store.take_dashboard_login("h1", now - 600_000)
    );
    let taken: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(taken.len(), 1, "exactly one callback takes a sign-in");
    assert_eq!(taken[0].instance_id, id);
    assert_eq!(taken[0].verifier.expose_secret(), verifier.expose_secret());
    assert!(store.take_dashboard_login("h1", 0).await.unwrap().is_none());

    // Expired at its callback: refused, and gone.
    store
        .insert_dashboard_login("h2", &id, &verifier, now - 700_000, now - 800_000)
        .await
        .unwrap();
    assert!(store
        .take_dashboard_login("h2", now - 600_000)
        .await
        .unwrap()
        .is_none());
    assert!(store.take_dashboard_login("h2", 0).await.unwrap().is_none());

    // Pruned when the next sign-in starts.
    store
        .insert_dashboard_login("h3", &id, &verifier, now - 700_000, 0)
        .await
        .unwrap();
    store
        .insert_dashboard_login("h4", &id, &verifier, now, now - 600_000)
        .await
        .unwrap();
    assert_eq!(store.dashboard_login_count().await.unwrap(), 1);

    // Another keyring (another deployment's keys) cannot open the verifier.
    let stranger = keyed(store.clone());
    assert!(matches!(
        stranger.take_dashboard_login("h4", 0).await,
        Err(StoreError::Secret(_))
    ));
    assert_eq!(store.prune_dashboard_logins(i64::MAX).await.unwrap(), 0);
}

/// Issue 17: `stopped_at` (migration 0014), a failed wake's reason (0015), and at most one idle
/// stop, never beside another job.
async fn idle_stops(store: &Store) {
    let i1 = InstanceId::parse("i-1").unwrap();
    let stopped = |store: &Store| {
        let store = store.clone();
        let i1 = i1.clone();
        async move { store.get_instance(&i1).await.unwrap().unwrap().stopped_at }
    };
    assert_eq!(stopped(store).await, None);
    store.set_stopped_at(&i1, 1_000).await.unwrap();
    store.set_stopped_at(&i1, 2_000).await.unwrap();
    assert_eq!(stopped(store).await, Some(1_000), "the first stop is kept");
    assert!(store.clear_stopped_at(&i1).await.unwrap());
    assert!(!store.clear_stopped_at(&i1).await.unwrap());
    assert_eq!(stopped(store).await, None);
    assert!(store.stopped_count().await.unwrap() >= 0);

    // Migration 0015: a failed wake is recorded beside the stop, the latest one wins, and a
    // start that works forgets both.
    let wake_error = |store: &Store| {
        let store = store.clone();
        let i1 = i1.clone();
        async move {
            let r = store.get_instance(&i1).await.unwrap().unwrap();
            (r.stopped_at, r.wake_error, r.wake_error_at)
        }
    };
    store.set_stopped_at(&i1, 3_000).await.unwrap();
    store
        .set_wake_error(&i1, "it did not become ready in time", 4_000)
        .await
        .unwrap();
    store
        .set_wake_error(&i1, "its port is taken by another program", 5_000)
        .await
        .unwrap();
    assert_eq!(
        wake_error(store).await,
        (
            Some(3_000),
            Some("its port is taken by another program".into()),
            Some(5_000)
        )
    );
    assert!(store.clear_stopped_at(&i1).await.unwrap());
    assert_eq!(wake_error(store).await, (None, None, None));
    // A failure recorded without a stop (the stop not yet recorded) is cleared all the same.
    store
        .set_wake_error(&i1, "it no longer exists", 6_000)
        .await
        .unwrap();
    assert!(store.clear_stopped_at(&i1).await.unwrap());
    assert_eq!(wake_error(store).await, (None, None, None));
    assert!(!store.clear_stopped_at(&i1).await.unwrap());

    let idle = InstanceId::parse("i-idle").unwrap();
    let first = wayback::jobs::idle::idle_stop_job(&idle);
    assert!(store.enqueue_idle_stop(&first).await.unwrap());
    let second = wayback::jobs::idle::idle_stop_job(&idle);
    assert!(
        !store.enqueue_idle_stop(&second).await.unwrap(),
        "one pending"
    );
    store.finish_job(&first.id, JOB_DONE, None).await.unwrap();
    assert!(store.enqueue_idle_stop(&second).await.unwrap());
    store.finish_job(&second.id, JOB_DONE, None).await.unwrap();
    // Never beside another job of the instance.
    let backup = wayback::jobs::backup_job(&idle, "manual");
    assert!(store.enqueue_backup(&backup).await.unwrap());
    let third = wayback::jobs::idle::idle_stop_job(&idle);
    assert!(!store.enqueue_idle_stop(&third).await.unwrap());
    store.finish_job(&backup.id, JOB_DONE, None).await.unwrap();
    assert!(store.enqueue_idle_stop(&third).await.unwrap());
}

/// Issue 15: HA members (migration 0012): placement agreed once, ports held on their machine.
async fn ha_members(store: &Store) {
    use wayback::store::HaMemberRecord;
    let id = InstanceId::parse("i-ha").unwrap();
    let member = |name: &str, port: u16, rest_port: u16| HaMemberRecord {
        instance_id: id.clone(),
        member: name.into(),
        agent: "agent-ha".into(),
        agent_host: Some("10.0.0.9".into()),
        port,
        rest_port,
        created_at: 0,
    };
    assert!(store.ha_members(&id).await.unwrap().is_empty());
    let first = store
        .ensure_ha_member(&member("m1", 6001, 6101))
        .await
        .unwrap();
    assert!(first.created_at > 0);
    // A second run of the step keeps the first placement.
    let again = store
        .ensure_ha_member(&member("m1", 6002, 6102))
        .await
        .unwrap();
    assert_eq!(again, first);
    // Another member on a port held on that machine conflicts.
    let taken = store.ensure_ha_member(&member("m2", 6001, 6102)).await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    let second = store
        .ensure_ha_member(&member("m2", 6002, 6102))
        .await
        .unwrap();
    assert_eq!(store.ha_members(&id).await.unwrap(), [first, second]);
    let mut used = store.used_ports("agent-ha").await.unwrap();
    used.sort_unstable();
    assert_eq!(used, [6001, 6002, 6101, 6102]);
    assert_eq!(store.delete_ha_members(&id).await.unwrap(), 2);
    assert!(store.used_ports("agent-ha").await.unwrap().is_empty());
}

/// Issue 16: which machine keeps whose copy (migration 0010), and how a clone was restored.
async fn kept_copies(store: &Store) {
    use wayback::store::KeptCopyRecord;
    let copy = |id: &str, agent: Option<&str>, kept_at: i64| KeptCopyRecord {
        instance_id: InstanceId::parse(id).unwrap(),
        agent: agent.map(String::from),
        checkpoint_lsn: "0/3000028".into(),
        system_identifier: 7_441_839_221_348_675_302,
        size_bytes: 52_428_800,
        kept_at,
        expires_at: kept_at + 3_600_000,
    };
    let (a, b) = (
        copy("i-k2", None, 2_000),
        copy("i-k1", Some("agent-a"), 1_000),
    );
    store.record_kept_copy(&a).await.unwrap();
    store.record_kept_copy(&b).await.unwrap();
    assert_eq!(
        store.kept_copy(&a.instance_id).await.unwrap(),
        Some(a.clone())
    );
    // Oldest first; recording again replaces.
    assert_eq!(store.kept_copies().await.unwrap(), [b.clone(), a.clone()]);
    let later = KeptCopyRecord {
        expires_at: 5,
        ..a.clone()
    };
    store.record_kept_copy(&later).await.unwrap();
    assert_eq!(store.kept_copies().await.unwrap(), [b.clone(), later]);
    store.drop_kept_copy(&a.instance_id).await.unwrap();
    store.drop_kept_copy(&a.instance_id).await.unwrap();
    assert_eq!(store.kept_copies().await.unwrap(), [b]);
    let i1 = InstanceId::parse("i-1").unwrap();
    assert_eq!(store.restore_note(&i1).await.unwrap(), None);
    store
        .set_restore_note(&i1, "restored from the copy kept at delete time")
        .await
        .unwrap();
    assert_eq!(
        store.restore_note(&i1).await.unwrap().as_deref(),
        Some("restored from the copy kept at delete time")
    );
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = wayback::config::resolve::default_sqlite_url(dir.path());
    suite(keyed(Store::connect(&url).await.unwrap())).await;
    // Reopening runs migrations idempotently and keeps data.
    let reopened = keyed(Store::connect(&url).await.unwrap());
    assert!(reopened
        .get_instance(&InstanceId::parse("i-1").unwrap())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn postgres_store() {
    let base = std::env::var("WAYBACK_TEST_PG_URL").ok();
    if !common::require("a PostgreSQL server in WAYBACK_TEST_PG_URL", base.is_some()) {
        return;
    }
    let base = base.unwrap();
    let db = format!("store_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to the test server");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let url = format!("{prefix}/{db}");
    suite(keyed(Store::connect(&url).await.unwrap())).await;
    // Two brokers sharing the database: migrations are idempotent.
    keyed(Store::connect(&url).await.unwrap());
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
