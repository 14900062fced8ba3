//! HA operations (issue 15 point 5) on real PostgreSQL, a real etcd and real Patroni, two
//! `LocalRuntime`s standing for two machines (`common/ha_pair.rs`): the failover history read
//! from Patroni's `GET /history` (the first leader's promotion is no failover; a switchover is
//! one, with its time, timelines and new leader); the operator's switchover path
//! (`runtime::switch_over`, which the broker API's endpoint and `wayback switchover` call); and
//! `wayback drain --agent` of the leader's machine, which switches over first while writes
//! through the multi-host URI go on: every acknowledged row is on the new primary (sync
//! mode), and the drained machine's member is a standby the WAL step skips.
//!
//! Run: `bash scripts/test ha_ops::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::process::Command;
use std::time::Instant;

use crate::common::etcd::ha_binaries_available;
use crate::common::ha_pair::*;
use crate::common::*;
use wayback::runtime::{switch_over, SwitchoverError, SwitchoverRefusal};

/// `wayback drain --agent --json` of `machine`'s data directory, run as a BOSH drain would.
fn drain_agent(pair: &Pair, machine: &Machine) -> (bool, serde_json::Value) {
    drain_report(
        Command::new(env!("CARGO_BIN_EXE_wayback"))
            .args(["drain", "--agent", "--json", "--timeout-secs", "150"])
            .env("WAYBACK_DATA_DIR", &machine.data_dir)
            .env("WAYBACK_LOG", "warn")
            .envs(pair.s3.env(ARCHIVE_PREFIX)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_switchover_and_a_drain_that_hands_the_lead_over_first() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let Some(pair) = Pair::start().await else {
        return;
    };
    let (id, tl) = (pair.id.clone(), pair.timeline);

    eprintln!("ha_ops: the history before any switchover");
    let status = pair.a.rt().ha_status(&id).await.unwrap();
    assert!(
        status
            .history
            .iter()
            .any(|s| s.to_timeline == tl && s.new_leader.as_deref() == Some("m1")),
        "Patroni's history shows the first leader's promotion: {:?}",
        status.history
    );
    assert_eq!(status.failovers(), 0, "{:?}", status.history);
    assert!(status.last_failover().is_none());

    eprintln!("ha_ops: the operator's switchover");
    // Refused without asking Patroni: the leader is not a target, nor is an unknown member.
    let refused = switch_over(pair.b.rt(), &id, Some("m1"), &[]).await;
    assert!(
        matches!(
            refused,
            Err(SwitchoverError::Refused(SwitchoverRefusal::TargetLeads(_)))
        ),
        "{refused:?}"
    );
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let plan = switch_over(pair.b.rt(), &id, None, &[]).await.unwrap();
    assert_eq!(
        (plan.leader.as_str(), plan.candidate.as_str()),
        ("m1", "m2")
    );
    let status = wait_status(&pair.b, &id, "m1 follows m2", |s| {
        streams_in_sync(s, "m2", "m1", tl + 1)
    })
    .await;
    assert_eq!(status.failovers(), 1, "{:?}", status.history);
    let last = status.last_failover().unwrap();
    assert_eq!(
        (
            last.from_timeline,
            last.to_timeline,
            last.new_leader.as_deref()
        ),
        (tl, tl + 1, Some("m2")),
        "{last:?}"
    );
    assert!(
        last.at.is_some_and(|at| at >= before),
        "the switchover's time is recorded: {last:?}"
    );

    eprintln!("ha_ops: the drain of the leader's machine");
    // m2 leads on b. Writes through the multi-host URI go on while b is drained.
    let both = pair.uri();
    let writer = Writer::start(both.clone(), 1000);
    let begun = Instant::now();
    writer.wait_acked_since(begun, 10, "before the drain").await;
    let (ok, report) = tokio::task::block_in_place(|| drain_agent(&pair, &pair.b));
    let drained = Instant::now();
    assert!(ok, "{report}");
    let switchovers = report["switchovers"]
        .as_array()
        .expect("switchovers listed");
    assert_eq!(switchovers.len(), 1, "{report}");
    let s = &switchovers[0];
    assert_eq!(
        (&s["instance_id"], &s["member"], &s["to"], &s["switched"]),
        (
            &serde_json::json!(id.as_str()),
            &serde_json::json!("m2"),
            &serde_json::json!("m1"),
            &serde_json::json!(true)
        ),
        "{report}"
    );
    let mine = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        mine["detail"]
            .as_str()
            .unwrap()
            .contains("an HA standby here"),
        "the standby's WAL is its leader's to archive: {report}"
    );
    let status = pair.a.rt().ha_status(&id).await.unwrap();
    assert_eq!(status.leader().map(|l| l.name.as_str()), Some("m1"));
    assert_eq!(status.failovers(), 2, "{:?}", status.history);

    // Writes go on through the same URI, and none acknowledged is missing.
    writer
        .wait_acked_since(drained, 5, "writes after the drain")
        .await;
    let acked = writer.finish().await;
    let present = rows_on(pair.a.pg_port);
    let missing: Vec<&i64> = acked.iter().filter(|n| !present.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "sync mode lost {} of {} acknowledged rows across the drain's switchover: {missing:?}",
        missing.len(),
        acked.len()
    );

    eprintln!("ha_ops: a drain with no healthy standby elsewhere");
    // b's member is a standby now: draining b again hands nothing over. Draining a, whose
    // standby is stopped, reports the member it could not hand over and goes on.
    let (ok, report) = tokio::task::block_in_place(|| drain_agent(&pair, &pair.b));
    assert!(ok, "{report}");
    assert!(report.get("switchovers").is_none(), "{report}");
    pair.b.rt().stop(&id).await.unwrap();
    wait_status(&pair.a, &id, "m2 is gone", |s| {
        s.member("m2")
            .is_none_or(|m| !matches!(m.state.as_str(), "streaming" | "running"))
    })
    .await;
    let (_, report) = tokio::task::block_in_place(|| drain_agent(&pair, &pair.a));
    let s = &report["switchovers"][0];
    assert_eq!(
        (&s["member"], &s["switched"]),
        (&serde_json::json!("m1"), &serde_json::json!(false)),
        "{report}"
    );
    assert!(
        s["detail"].as_str().unwrap().contains("no healthy standby"),
        "{report}"
    );
    let mine = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        mine["wal_file"].is_string(),
        "the leader that stayed had its WAL switched: {report}"
    );
}
