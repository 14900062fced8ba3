//! The diagnose checks of what the broker knows itself, pure: the instance's `/wayback/v1`
//! document (archive health, base backups, drills, followers) and its plan's schedule in,
//! [`Check`]s out. They need no running cluster, so a stopped instance is judged too.
//! Imports `wayback_api` and the sibling `checks` only.

use chrono::{DateTime, Utc};
use wayback_api::activity::{Check, Verdict};
use wayback_api::drills::DrillResult;
use wayback_api::v1;

use super::checks::{advise, check, worst};

/// A newest base backup older than this many times the plan's interval is YELLOW (RED).
pub const BACKUP_YELLOW_FACTOR: f64 = 1.5;
pub const BACKUP_RED_FACTOR: f64 = 3.0;
/// A newest passed drill older than this many times the plan's interval is YELLOW.
pub const DRILL_YELLOW_FACTOR: f64 = 2.0;
/// A follower this far behind is YELLOW (RED).
pub const FOLLOWER_YELLOW_SECS: f64 = 30.0;
pub const FOLLOWER_RED_SECS: f64 = 300.0;

/// The plan's schedule the ages are judged against.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub base_backup_every_hours: u64,
    /// 0: the plan runs no drills.
    pub drill_every_days: u64,
}

/// The broker's checks, in the order `cf db-diagnose` shows them.
pub fn broker_checks(view: &v1::Instance, schedule: Schedule, now: DateTime<Utc>) -> Vec<Check> {
    vec![
        archive(view),
        base_backup(view, schedule, now),
        drill(view, schedule, now),
        followers(view),
    ]
}

fn archive(view: &v1::Instance) -> Check {
    let a = &view.archive;
    let failing = match (a.last_failure_at, a.last_archived_at) {
        (Some(failed), Some(archived)) => failed > archived,
        (Some(_), None) => true,
        _ => false,
    };
    let verdict = match (a.healthy, failing) {
        (true, _) => Verdict::Green,
        (false, true) => Verdict::Red,
        (false, false) => Verdict::Yellow,
    };
    let last = a
        .last_archived_at
        .map(|t| format!("last archived {}", t.to_rfc3339()))
        .unwrap_or_else(|| "nothing archived yet".into());
    let mut c = check(
        "archive",
        "Archive lag",
        verdict,
        format!(
            "{} WAL segment(s) wait to be archived; {last}.",
            a.lag_segments
        ),
    );
    c.details = a.detail.iter().cloned().collect();
    advise(
        c,
        "Until the archive catches up, a restore cannot reach the newest commits. The broker \
         retries on its own; if this stays, tell the operator (the cause is in the cluster's \
         log).",
    )
}

fn base_backup(view: &v1::Instance, s: Schedule, now: DateTime<Utc>) -> Check {
    let every = s.base_backup_every_hours.max(1) as f64;
    let Some(last) = view.last_base_backup else {
        let c = check(
            "base_backup",
            "Last base backup",
            Verdict::Red,
            "No base backup in the archive: the instance cannot be restored yet.".into(),
        );
        return advise(
            c,
            "A new instance's first backup starts right after it is created; if this stays, \
             tell the operator.",
        );
    };
    let hours = (now - last).num_seconds().max(0) as f64 / 3600.0;
    let verdict = if hours >= every * BACKUP_RED_FACTOR {
        Verdict::Red
    } else if hours >= every * BACKUP_YELLOW_FACTOR {
        Verdict::Yellow
    } else {
        Verdict::Green
    };
    let c = check(
        "base_backup",
        "Last base backup",
        verdict,
        format!(
            "The newest is {hours:.1} h old (the plan takes one every {every:.0} h); {} in the \
             archive.",
            view.base_backups.len()
        ),
    );
    advise(
        c,
        "Backups are late: restores replay more WAL and take longer. Tell the operator (the \
         broker's log says why backups fail).",
    )
}

fn drill(view: &v1::Instance, s: Schedule, now: DateTime<Utc>) -> Check {
    if s.drill_every_days == 0 {
        return check(
            "drill",
            "Last restore drill",
            Verdict::Skipped,
            "This plan runs no restore drills.".into(),
        );
    }
    let every_days = s.drill_every_days as f64;
    let Some(last) = view.drills.first() else {
        let age_days = view
            .created_at
            .map_or(f64::MAX, |c| (now - c).num_seconds() as f64 / 86_400.0);
        let verdict = match age_days < every_days {
            true => Verdict::Green,
            false => Verdict::Yellow,
        };
        let c = check(
            "drill",
            "Last restore drill",
            verdict,
            format!("No restore drill yet (the plan runs one every {every_days:.0} days)."),
        );
        return advise(
            c,
            "Tell the operator: drills should have proved this archive by now.",
        );
    };
    let age_days = (now - last.started).num_seconds().max(0) as f64 / 86_400.0;
    let verdict = match &last.result {
        DrillResult::Passed if age_days < every_days * DRILL_YELLOW_FACTOR => Verdict::Green,
        DrillResult::Passed => Verdict::Yellow,
        _ => Verdict::Red,
    };
    let result = serde_json::to_value(last.result)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into());
    let mut c = check(
        "drill",
        "Last restore drill",
        verdict,
        format!(
            "The newest drill {result} {age_days:.1} days ago (restored in {:.0} s).",
            last.duration_secs
        ),
    );
    if let Some(f) = &last.failure {
        c.details.push(format!("{}: {}", f.check, f.detail));
    }
    advise(
        c,
        "A drill that fails means a restore from this archive may fail too: tell the operator.",
    )
}

fn lag_verdict(state: &v1::FollowerState, lag_seconds: Option<f64>) -> Verdict {
    match state {
        v1::FollowerState::Disconnected => Verdict::Red,
        v1::FollowerState::Unknown => Verdict::Yellow,
        _ => match lag_seconds {
            Some(s) if s >= FOLLOWER_RED_SECS => Verdict::Red,
            Some(s) if s >= FOLLOWER_YELLOW_SECS => Verdict::Yellow,
            _ => Verdict::Green,
        },
    }
}

fn lag_line(name: Option<&str>, id: &str, state: &v1::FollowerState, secs: Option<f64>) -> String {
    format!(
        "{} {}: {}",
        name.unwrap_or(id),
        serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        secs.map_or("lag unknown".into(), |s| format!("{s:.0} s behind"))
    )
}

fn followers(view: &v1::Instance) -> Check {
    let mut rows: Vec<(Verdict, String)> = view
        .followers
        .iter()
        .map(|f| {
            (
                lag_verdict(&f.state, f.lag_seconds),
                lag_line(f.name.as_deref(), &f.id, &f.state, f.lag_seconds),
            )
        })
        .collect();
    if let Some(f) = &view.follower {
        rows.push((
            lag_verdict(&f.state, f.lag_seconds),
            format!(
                "this follower of {}",
                lag_line(
                    f.leader.name.as_deref(),
                    &f.leader.id,
                    &f.state,
                    f.lag_seconds
                )
            ),
        ));
    }
    let verdict = worst(rows.iter().map(|(v, _)| v.clone()));
    let summary = match (rows.len(), &view.follower) {
        (0, _) => "No followers.".to_string(),
        (_, Some(_)) => "Follows a leader.".to_string(),
        (n, None) => format!("{n} follower(s)."),
    };
    let mut c = check("follower_lag", "Follower lag", verdict, summary);
    c.details = rows.into_iter().map(|(_, l)| l).collect();
    advise(
        c,
        "A follower far behind or disconnected serves old data; heavy writes on the leader or a \
         stopped follower are the usual causes (`cf followers NAME`).",
    )
}
