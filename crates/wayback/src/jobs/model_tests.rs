use chrono::{DateTime, Utc};

use super::*;
use crate::archive::restore::RestoreTarget;

/// A row as the store hands it over, with its payload text as brokers before typed jobs wrote
/// it (`payload.to_string()` of the `json!` built by `new_job`, `backup_job` and the clone
/// check).
fn row(kind: &str, step: &str, payload: &str) -> JobRecord {
    JobRecord {
        id: "op-1".into(),
        kind: kind.into(),
        instance_id: InstanceId::parse("i-1").unwrap(),
        binding_id: None,
        operation_id: Some("op-1".into()),
        payload: serde_json::from_str(payload).unwrap(),
        step: step.into(),
        state: "pending".into(),
        attempts: 2,
        run_after: 0,
        lease_owner: None,
        lease_until: None,
        last_error: None,
    }
}

const CLONE_PAYLOAD: &str = r#"{"clone":{"backup_stop_time":"2026-11-21T08:00:05.123+00:00","deleted_at":1795254127000,"live":false,"name":"production","source":"6c1f0e7a-9f3b-4d2e-8a11-2b3c4d5e6f70","system_identifier":"7441839221348675302","target":"2026-11-21T09:30:00+00:00"},"requested_at":1795254200000}"#;

#[test]
fn rows_written_before_typed_jobs_are_read() {
    let job = Job::from_record(&row("provision", "clone_restore", CLONE_PAYLOAD)).unwrap();
    assert_eq!(
        (job.kind(), job.step, job.attempts),
        (JobKind::Provision, Step::CloneRestore, 2)
    );
    assert_eq!(job.spec.requested_at(), 1_795_254_200_000);
    let source = job.spec.clone_source().expect("a clone");
    assert_eq!(source.id.as_str(), "6c1f0e7a-9f3b-4d2e-8a11-2b3c4d5e6f70");
    assert_eq!(source.name, "production");
    assert!(!source.live);
    assert_eq!(source.deleted_at, Some(1_795_254_127_000));
    let t: DateTime<Utc> = "2026-11-21T09:30:00Z".parse().unwrap();
    assert_eq!(source.target, RestoreTarget::PointInTime(t));
    assert_eq!(source.system_identifier, 7_441_839_221_348_675_302);
    assert_eq!(job.next_step(), Some(Step::CreateCluster));

    let cases = [
        ("provision", "start", r#"{"requested_at":1795254200000}"#),
        (
            "update",
            "apply_settings",
            r#"{"plan_id":"0d2e9a44-1c3b-4b55-8f6e-2a7d9c0b1e02","requested_at":1795254200000}"#,
        ),
        (
            "deprovision",
            "final_wal",
            r#"{"requested_at":1795254200000}"#,
        ),
        ("bind", "create_role", r#"{"requested_at":1795254200000}"#),
        ("unbind", "drop_role", r#"{"requested_at":1795254200000}"#),
        (
            "backup",
            "take_backup",
            r#"{"reason":"wal-volume","requested_at":1795254200000}"#,
        ),
        ("provision", "clone_rotate", CLONE_PAYLOAD),
    ];
    for (kind, step, payload) in cases {
        let record = row(kind, step, payload);
        let stored = record.payload.clone();
        let job = Job::from_record(&record).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!((job.kind().as_str(), job.step.as_str()), (kind, step));
        // Written back in the same shape: a broker downgraded mid-job reads it too.
        let again = job.spec.to_row("x".into(), &job.instance_id, None, None);
        assert_eq!((again.kind.as_str(), &again.payload), (kind, &stored));
    }
    let update = Job::from_record(&row("update", "apply_settings", cases[1].2)).unwrap();
    assert!(
        matches!(&update.spec, JobSpec::Update(u) if u.plan_id == "0d2e9a44-1c3b-4b55-8f6e-2a7d9c0b1e02")
    );
    let backup = Job::from_record(&row("backup", "take_backup", cases[5].2)).unwrap();
    assert!(matches!(&backup.spec, JobSpec::Backup(b) if b.reason == "wal-volume"));
}

#[test]
fn a_row_that_does_not_read_is_refused_with_the_reason() {
    let cases = [
        (row("reindex", "start", "{}"), "job kind \"reindex\""),
        (
            row("update", "apply_settings", r#"{"requested_at":1}"#),
            "missing field `plan_id`",
        ),
        (
            row("provision", "clone_fork", r#"{"requested_at":1}"#),
            "clone_fork is not a step of this provision job",
        ),
        (
            row("provision", "create_database", CLONE_PAYLOAD),
            "create_database is not a step",
        ),
        (
            row("bind", "bind_role", r#"{"requested_at":1}"#),
            "step \"bind_role\"",
        ),
        (
            row(
                "provision",
                "start",
                r#"{"requested_at":1,"clone":{"source":"i-2"}}"#,
            ),
            "payload of a provision job",
        ),
    ];
    for (record, why) in cases {
        let e = Job::from_record(&record).unwrap_err().to_string();
        assert!(
            e.starts_with("job op-1 cannot be read: ") && e.contains(why),
            "{why}: {e}"
        );
    }
}

#[test]
fn sequences_run_in_the_documented_order() {
    let order = |spec: &JobSpec| {
        let mut job = Job {
            id: "j".into(),
            instance_id: InstanceId::parse("i").unwrap(),
            binding_id: None,
            operation_id: None,
            spec: spec.clone(),
            step: spec.steps()[0],
            attempts: 0,
        };
        let mut names = vec![job.step.as_str()];
        while let Some(next) = job.next_step() {
            job.step = next;
            names.push(next.as_str());
        }
        names.join(" → ")
    };
    let clone: CloneSource = serde_json::from_str::<Value>(CLONE_PAYLOAD)
        .map(|v| serde_json::from_value(v["clone"].clone()).unwrap())
        .unwrap();
    assert_eq!(
        order(&JobSpec::provision(None)),
        "allocate_port → create_cluster → configure_archive → start → create_database"
    );
    assert_eq!(
        order(&JobSpec::provision(Some(clone))),
        "allocate_port → clone_fork → clone_restore → create_cluster → configure_archive \
         → clone_restart → start → clone_rotate → clone_first_archive"
    );
    assert_eq!(
        order(&JobSpec::deprovision()),
        "wait_exclusive → final_backup → final_wal → write_instance_doc → follow_release \
         → destroy"
    );
    let leader = crate::jobs::FollowSource {
        leader: InstanceId::parse("l").unwrap(),
        name: "production".into(),
        system_identifier: 1,
    };
    assert_eq!(
        order(&JobSpec::follow(leader)),
        "allocate_port → follow_grant → follow_restore → create_cluster → apply_settings → start"
    );
    assert_eq!(
        order(&JobSpec::unfollow("p")),
        "follow_promote → create_cluster → configure_archive → clone_restart → start → clone_rotate \
         → clone_first_archive → follow_release"
    );
    for (spec, only) in [
        (JobSpec::update("p"), "apply_settings"),
        (JobSpec::bind(), "create_role"),
        (JobSpec::unbind(), "drop_role"),
        (JobSpec::backup("manual"), "take_backup"),
        (JobSpec::drill("manual"), "run_drill"),
    ] {
        assert_eq!(order(&spec), only);
    }
}

#[test]
fn new_rows_name_kind_step_and_payload_as_before() {
    let i = InstanceId::parse("i-1").unwrap();
    let b = BindingId::parse("b-1").unwrap();
    let job = new_job("op-9", &i, Some(&b), JobSpec::update("plan-2"));
    assert_eq!(
        (job.id.as_str(), job.kind.as_str(), job.first_step.as_str()),
        ("op-9", "update", "apply_settings")
    );
    assert_eq!(job.operation_id.as_deref(), Some("op-9"));
    assert_eq!(job.binding_id, Some(b));
    assert_eq!(job.payload["plan_id"], "plan-2");
    assert!(job.payload["requested_at"].as_i64().unwrap() > 1_700_000_000_000);
    let plain = new_job("op-8", &i, None, JobSpec::provision(None));
    assert_eq!(
        plain
            .payload
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["requested_at"],
        "no \"clone\": null in a plain provision"
    );
}

#[test]
fn stored_names_are_the_serde_names() {
    for kind in JobKind::ALL {
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        assert_eq!(JobKind::from_name(kind.as_str()).unwrap(), *kind);
    }
    for step in Step::ALL {
        assert_eq!(serde_json::to_value(step).unwrap(), step.as_str());
        assert_eq!(Step::from_name(step.as_str()).unwrap(), *step);
    }
    assert!(Step::from_name("Start").is_err());
}

#[test]
fn every_kind_runs_in_one_lane_and_only_backups_drills_and_idle_stops_in_the_background() {
    assert_eq!(Lane::Background.kinds(), ["backup", "drill", "idle_stop"]);
    assert_eq!(
        Lane::User.kinds(),
        ["provision", "update", "deprovision", "bind", "unbind"]
    );
    let in_some_lane: usize = Lane::ALL.iter().map(|l| l.kinds().len()).sum();
    assert_eq!(in_some_lane, JobKind::ALL.len());
}

#[test]
fn an_idle_stop_reads_back_from_its_row() {
    let row_ =
        JobSpec::idle_stop().to_row("j-1".into(), &InstanceId::parse("i-1").unwrap(), None, None);
    assert_eq!(
        (row_.kind.as_str(), row_.first_step.as_str()),
        ("idle_stop", "idle_stop")
    );
    let job = Job::from_record(&row("idle_stop", "idle_stop", r#"{"requested_at":1}"#)).unwrap();
    assert_eq!(job.kind(), JobKind::IdleStop);
    assert_eq!(job.next_step(), None);
}

#[test]
fn a_plan_change_between_single_and_ha_keeps_its_direction_and_plain_updates_read_as_before() {
    let up = Job::from_record(&row(
        "update",
        "ha_adopt_single",
        r#"{"ha_change":"add_standby","plan_id":"ha","requested_at":1}"#,
    ))
    .unwrap();
    assert_eq!(up.spec.steps()[0], Step::HaPlace);
    assert!(matches!(&up.spec, JobSpec::Update(u) if u.ha_change == Some(HaChange::AddStandby)));
    let down = JobSpec::ha_update("small", HaChange::RemoveStandby);
    let job = new_job("op-1", &InstanceId::parse("i-1").unwrap(), None, down);
    assert_eq!(job.payload["ha_change"], "remove_standby");
    assert_eq!(job.first_step, "ha_keep_first");
    // An update written before plan changes between single and HA has no "ha_change".
    let plain = new_job(
        "op-2",
        &InstanceId::parse("i-1").unwrap(),
        None,
        JobSpec::update("p"),
    );
    assert!(plain.payload.get("ha_change").is_none());
    let old = Job::from_record(&row(
        "update",
        "apply_settings",
        r#"{"plan_id":"p","requested_at":1}"#,
    ))
    .unwrap();
    assert_eq!(old.spec.steps(), [Step::ApplySettings]);
}
