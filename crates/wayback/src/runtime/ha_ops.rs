//! What operations read from an HA instance's members (issue 15 point 5), pure: the scope's
//! timeline switches from Patroni's `GET /history` ([`parse_history`]), the leader changes and
//! the last one ([`HaStatus::failovers`], [`HaStatus::last_failover`]), and whether a
//! switchover can be asked and to whom ([`HaStatus::switchover_plan`]), all pure; and
//! [`switch_over`], which asks any runtime for the status, checks it and has Patroni do it (the
//! broker API's endpoint, `wayback switchover` and the drain share it).
//!
//! Patroni 3.0.2 keeps the history in etcd as `[[timeline, lsn, reason, timestamp,
//! new_leader], …]`: one line per timeline that ended, `lsn` (an integer) where it ended. A
//! line Patroni saw happen carries the time the new timeline began and the member that began it;
//! older lines (a restored cluster's own history file) have only the first three. The scope's
//! first leader also began a timeline (Patroni promotes an adopted data directory), so leader
//! changes — failovers and switchovers, which Patroni does not tell apart — are the lines with
//! a new leader after the first such line.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ha::{HaMember, HaRole, HaStatus};
use super::{ClusterRuntime, RuntimeError};
use crate::domain::InstanceId;

/// One timeline switch of an HA instance's scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSwitch {
    /// The timeline that ended; the next one began.
    pub from_timeline: u32,
    pub to_timeline: u32,
    /// Where `from_timeline` ended, as PostgreSQL writes an LSN (`0/3000060`).
    pub lsn: String,
    /// PostgreSQL's reason in the history file (`no recovery target specified` for a
    /// promotion).
    pub reason: String,
    /// When `to_timeline` began; None for a line Patroni did not see happen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// The member that began `to_timeline`; None for a line Patroni did not see happen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_leader: Option<String>,
}

/// Reads Patroni's `GET /history` answer; a line that does not read is left out.
pub fn parse_history(body: &serde_json::Value) -> Vec<TimelineSwitch> {
    body.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|line| {
            let line = line.as_array()?;
            let from = u32::try_from(line.first()?.as_u64()?).ok()?;
            let lsn = line.get(1)?.as_u64()?;
            Some(TimelineSwitch {
                from_timeline: from,
                to_timeline: from.checked_add(1)?,
                lsn: format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
                reason: line.get(2)?.as_str().unwrap_or_default().to_string(),
                at: line
                    .get(3)
                    .and_then(|t| t.as_str())
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                new_leader: line.get(4).and_then(|n| n.as_str()).map(String::from),
            })
        })
        .collect()
}

/// Why a switchover is not asked of Patroni.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverRefusal {
    #[error("no member leads now, so there is nothing to switch over from")]
    NoLeader,
    #[error("no healthy standby to switch over to ({0})")]
    NoHealthyStandby(String),
    #[error("{0:?} is not a member of this instance (its members: {1})")]
    UnknownMember(String, String),
    #[error("{0:?} leads already")]
    TargetLeads(String),
    #[error("{0:?} is not a healthy standby ({1})")]
    TargetUnhealthy(String, String),
}

/// A switchover Patroni can be asked for: from `leader` to `candidate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverPlan {
    pub leader: String,
    pub candidate: String,
}

fn healthy_standby(m: &HaMember) -> bool {
    matches!(m.role, HaRole::SyncStandby | HaRole::Replica)
        && matches!(m.state.as_str(), "streaming" | "running")
}

fn describe(m: &HaMember) -> String {
    let role = match &m.role {
        HaRole::Leader => "leader",
        HaRole::SyncStandby => "sync_standby",
        HaRole::Replica => "replica",
        HaRole::Other(o) => o,
    };
    format!("{} is {role}, {}", m.name, m.state)
}

impl HaStatus {
    /// The leader changes since the scope's first leader (failovers and switchovers), oldest
    /// first.
    pub fn leader_changes(&self) -> &[TimelineSwitch] {
        match self.history.iter().position(|s| s.new_leader.is_some()) {
            Some(first) => &self.history[first + 1..],
            None => &[],
        }
    }

    /// How many times another member took the lead.
    pub fn failovers(&self) -> u64 {
        self.leader_changes().len() as u64
    }

    /// The newest leader change, if any happened.
    pub fn last_failover(&self) -> Option<&TimelineSwitch> {
        self.leader_changes().last()
    }

    /// Whom a switchover goes to: `to` when it is a healthy standby, else the healthy standby
    /// Patroni would pick (the sync standby first, then the least lag), never one of `avoid`
    /// (members on a machine being drained).
    pub fn switchover_plan(
        &self,
        to: Option<&str>,
        avoid: &[String],
    ) -> Result<SwitchoverPlan, SwitchoverRefusal> {
        let leader = self
            .leader()
            .ok_or(SwitchoverRefusal::NoLeader)?
            .name
            .clone();
        if let Some(to) = to {
            let m = self.member(to).ok_or_else(|| {
                let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
                SwitchoverRefusal::UnknownMember(to.into(), names.join(", "))
            })?;
            if m.name == leader {
                return Err(SwitchoverRefusal::TargetLeads(to.into()));
            }
            if !healthy_standby(m) {
                return Err(SwitchoverRefusal::TargetUnhealthy(to.into(), describe(m)));
            }
            return Ok(SwitchoverPlan {
                leader,
                candidate: to.into(),
            });
        }
        let mut standbys: Vec<&HaMember> = self
            .members
            .iter()
            .filter(|m| healthy_standby(m) && !avoid.contains(&m.name))
            .collect();
        standbys.sort_by_key(|m| {
            (
                m.role != HaRole::SyncStandby,
                m.lag_bytes.unwrap_or(u64::MAX),
            )
        });
        match standbys.first() {
            Some(m) => Ok(SwitchoverPlan {
                leader,
                candidate: m.name.clone(),
            }),
            None => {
                let others: Vec<String> = self
                    .members
                    .iter()
                    .filter(|m| m.name != leader)
                    .map(|m| {
                        if avoid.contains(&m.name) {
                            format!("{} is on the same machine", m.name)
                        } else {
                            describe(m)
                        }
                    })
                    .collect();
                let seen = if others.is_empty() {
                    "no other member".to_string()
                } else {
                    others.join("; ")
                };
                Err(SwitchoverRefusal::NoHealthyStandby(seen))
            }
        }
    }
}

/// Why [`switch_over`] did not move the lead.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// Patroni was asked nothing: the members as they are now allow no switchover.
    #[error(transparent)]
    Refused(#[from] SwitchoverRefusal),
    /// Patroni could not be asked for the members.
    #[error("Patroni could not be asked for the members: {0}")]
    NoStatus(RuntimeError),
    /// Patroni was asked and did not do it (or did not finish in time).
    #[error("the switchover from {from} to {to} failed: {error}")]
    Failed {
        from: String,
        to: String,
        error: RuntimeError,
    },
}

/// Moves the lead of `id` to `to` (or to the best healthy standby not in `avoid`) and returns
/// who led and who leads now, once Patroni has done it.
pub async fn switch_over(
    runtime: &dyn ClusterRuntime,
    id: &InstanceId,
    to: Option<&str>,
    avoid: &[String],
) -> Result<SwitchoverPlan, SwitchoverError> {
    let status = runtime
        .ha_status(id)
        .await
        .map_err(SwitchoverError::NoStatus)?;
    let plan = status.switchover_plan(to, avoid)?;
    match runtime.ha_switchover(id, Some(&plan.candidate)).await {
        Ok(new) => Ok(SwitchoverPlan {
            leader: plan.leader,
            candidate: new,
        }),
        Err(error) => Err(SwitchoverError::Failed {
            from: plan.leader,
            to: plan.candidate,
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(name: &str, role: HaRole, state: &str, lag: Option<u64>) -> HaMember {
        HaMember {
            name: name.into(),
            role,
            state: state.into(),
            timeline: Some(3),
            lag_bytes: lag,
            host: "127.0.0.1".into(),
            port: 1,
        }
    }

    /// The shape Patroni 3.0.2 answers after an adopted primary (timeline 1 → 2) and one
    /// switchover (2 → 3), with a restored cluster's older line without time or leader.
    #[test]
    fn reads_patronis_history_and_counts_leader_changes() {
        let body = json!([
            [1, 50331744u64, "no recovery target specified"],
            [
                2,
                83886240u64,
                "no recovery target specified",
                "2026-12-06T17:40:12.345678+00:00",
                "m1"
            ],
            [
                3,
                4294967296u64 + 16,
                "no recovery target specified",
                "2026-12-06T18:40:12+01:00",
                "m2"
            ],
            ["x", 1, "bad"],
            [4]
        ]);
        let history = parse_history(&body);
        assert_eq!(history.len(), 3);
        assert_eq!(history[0].lsn, "0/3000060");
        assert_eq!(
            (history[0].at, history[0].new_leader.as_deref()),
            (None, None)
        );
        assert_eq!(history[2].lsn, "1/10");
        assert_eq!(
            history[2].at.unwrap().to_rfc3339(),
            "2026-12-06T17:40:12+00:00"
        );
        let status = HaStatus {
            members: vec![],
            history,
        };
        assert_eq!(
            status.failovers(),
            1,
            "the first leader's promotion is no failover"
        );
        let last = status.last_failover().unwrap();
        assert_eq!(
            (
                last.from_timeline,
                last.to_timeline,
                last.new_leader.as_deref()
            ),
            (3, 4, Some("m2"))
        );
        assert_eq!(parse_history(&json!({})), vec![]);
        assert_eq!(HaStatus::default().failovers(), 0);
        assert!(HaStatus::default().last_failover().is_none());
    }

    #[test]
    fn a_switchover_goes_to_a_healthy_standby_only() {
        let status = HaStatus {
            members: vec![
                member("m1", HaRole::Leader, "running", None),
                member("m2", HaRole::Replica, "running", Some(10)),
                member("m3", HaRole::SyncStandby, "streaming", Some(99)),
                member("m4", HaRole::Replica, "stopped", None),
            ],
            history: vec![],
        };
        let plan = |to, avoid: &[&str]| {
            let avoid: Vec<String> = avoid.iter().map(|s| s.to_string()).collect();
            status.switchover_plan(to, &avoid)
        };
        assert_eq!(
            plan(None, &[]).unwrap().candidate,
            "m3",
            "the sync standby first"
        );
        assert_eq!(plan(None, &["m3"]).unwrap().candidate, "m2");
        assert_eq!(plan(Some("m2"), &[]).unwrap().leader, "m1");
        assert!(matches!(
            plan(Some("m1"), &[]),
            Err(SwitchoverRefusal::TargetLeads(_))
        ));
        assert!(matches!(
            plan(Some("m4"), &[]),
            Err(SwitchoverRefusal::TargetUnhealthy(..))
        ));
        assert!(matches!(
            plan(Some("m9"), &[]),
            Err(SwitchoverRefusal::UnknownMember(..))
        ));
        let none = plan(None, &["m2", "m3"]).unwrap_err();
        assert!(
            none.to_string().contains("m4 is replica, stopped")
                && none.to_string().contains("m2 is on the same machine"),
            "{none}"
        );
        assert_eq!(
            HaStatus::default().switchover_plan(None, &[]),
            Err(SwitchoverRefusal::NoLeader)
        );
    }
}
