//! `follow` and `unfollow`: checked in the provision PUT and the update PATCH, before the 202,
//! so that the user reads every refusal in `cf create-service` / `cf update-service` itself
//! (docs/architecture.md §6).
//!
//! `follow` is resolved exactly like `clone-from` (`clone::pick`: a GUID, else the newest holder
//! of the name, in the requester's space only), then the leader must be a live, ready instance
//! that is not itself a follower (no chains). Its newest base backup in the archive seeds the
//! follower, and a standby needs at least its leader's values of the hot-standby settings
//! (`max_connections`, …; archive rule 6), else it pauses: a plan below the higher of the
//! backup's and the leader's current plan's values is refused, and so, in the other direction,
//! is a leader's plan change above a follower's plan or a follower's below its leader's
//! (`check_plan_change`). A leader whose cluster does not answer (its agent down) is a
//! retryable 503. Every refusal changes nothing.
//!
//! Imports `store`, `catalog`, `archive`, `jobs` and `domain`; never `osb`, `pg`, `runtime`.

use serde_json::{Map, Value};

use super::clone::{below_floors, pick, CLONE_FROM, POINT_IN_TIME};
use super::instances::busy_word;
use super::{Broker, BrokerError};
use crate::archive::layout::InstancePrefix;
use crate::archive::manifest::SettingFloors;
use crate::archive::window::restore_window;
use crate::archive::ArchiveError;
use crate::catalog::Plan;
use crate::domain::{InstanceId, InstanceState, SpaceGuid};
use crate::jobs::FollowSource;
use crate::store::{InstanceRecord, SpaceName};

pub(super) const FOLLOW: &str = "follow";
pub(super) const UNFOLLOW: &str = "unfollow";

/// `follow` from the provision parameters (pure): the leader's name or GUID. 400 on a bad form
/// or beside `clone-from` / `point-in-time`.
pub(super) fn parse_params(params: &Map<String, Value>) -> Result<Option<String>, BrokerError> {
    let leader = match params.get(FOLLOW) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(_) => {
            return Err(BrokerError::BadRequest(format!(
                "\"{FOLLOW}\" must be the name (or GUID) of a service instance of this space, \
                 as a string, e.g. -c '{{\"{FOLLOW}\":\"production\"}}'."
            )))
        }
    };
    if [CLONE_FROM, POINT_IN_TIME]
        .iter()
        .any(|k| params.get(*k).is_some_and(|v| !v.is_null()))
    {
        return Err(BrokerError::BadRequest(format!(
            "\"{FOLLOW}\" and \"{CLONE_FROM}\" cannot be used together: a follower streams from \
             a live leader, a clone restores an archive. Give one of them."
        )));
    }
    Ok(Some(leader))
}

/// `unfollow` from the update parameters (pure): true to promote. 400 on anything but a
/// boolean.
pub(super) fn parse_unfollow(params: Option<&Value>) -> Result<bool, BrokerError> {
    match params.and_then(|p| p.get(UNFOLLOW)) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => Ok(true),
        Some(_) => Err(BrokerError::BadRequest(format!(
            "\"{UNFOLLOW}\" must be true, e.g. -c '{{\"{UNFOLLOW}\":true}}'."
        ))),
    }
}

/// The names a follower could follow in this space: live, not followers (pure).
fn followable(
    names: &[SpaceName],
    requester: &InstanceId,
    followers: &[InstanceId],
) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    names
        .iter()
        .filter(|n| &n.instance_id != requester && n.state.is_live())
        .filter(|n| !followers.contains(&n.instance_id))
        .filter(|n| seen.insert(n.name.clone()))
        .map(|n| n.name.clone())
        .collect()
}

/// A plan's values of the hot-standby settings, PostgreSQL's defaults where it sets none (pure).
pub(super) fn plan_floors(plan: &Plan) -> SettingFloors {
    let value = |name: &str| {
        plan.settings
            .get(name)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or_else(|| super::clone::pg_default(name))
    };
    SettingFloors {
        max_connections: value("max_connections"),
        max_worker_processes: value("max_worker_processes"),
        max_locks_per_transaction: value("max_locks_per_transaction"),
        max_prepared_transactions: value("max_prepared_transactions"),
        max_wal_senders: value("max_wal_senders"),
    }
}

/// The higher of two sets of floors, setting by setting (pure).
fn higher(a: &SettingFloors, b: &SettingFloors) -> SettingFloors {
    SettingFloors {
        max_connections: a.max_connections.max(b.max_connections),
        max_worker_processes: a.max_worker_processes.max(b.max_worker_processes),
        max_locks_per_transaction: a.max_locks_per_transaction.max(b.max_locks_per_transaction),
        max_prepared_transactions: a.max_prepared_transactions.max(b.max_prepared_transactions),
        max_wal_senders: a.max_wal_senders.max(b.max_wal_senders),
    }
}

/// "max_connections = 50 (LEADER has 100), …" (pure).
fn low_text(low: &[(&str, u32, u32)], whose: &str) -> String {
    low.iter()
        .map(|(n, own, floor)| format!("{n} = {own} ({whose} has {floor})"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Broker {
    /// The instance's current name (its GUID if it never had one).
    pub(super) async fn shown_name(&self, id: &InstanceId) -> Result<String, BrokerError> {
        Ok(self
            .ctx
            .store
            .instance_names(id)
            .await?
            .last()
            .map_or(id.to_string(), |n| n.name.clone()))
    }

    /// Resolves and checks a `follow` request; on success, the leader the provision follows.
    pub(super) async fn check_follow(
        &self,
        requester: &InstanceId,
        space: &SpaceGuid,
        plan: &Plan,
        from: &str,
    ) -> Result<FollowSource, BrokerError> {
        let names = self.ctx.store.names_in_space(space.as_str()).await?;
        let mut leader: Option<InstanceRecord> = None;
        if let Some(n) = pick(&names, from, requester) {
            leader = self.ctx.store.get_instance(&n.instance_id).await?;
        } else if let Ok(id) = InstanceId::parse(from.to_string()) {
            // A GUID of an instance that never had a name: still only in this space.
            leader = self
                .ctx
                .store
                .get_instance(&id)
                .await?
                .filter(|i| i.space_guid == space.as_str() && &i.id != requester);
        }
        let Some(leader) = leader.filter(|l| l.state != InstanceState::Provisioning) else {
            let mut followers = Vec::new();
            for n in &names {
                if let Some(i) = self.ctx.store.get_instance(&n.instance_id).await? {
                    if i.leader_id.is_some() {
                        followers.push(i.id);
                    }
                }
            }
            let listed = followable(&names, requester, &followers);
            let candidates = if listed.is_empty() {
                "no instance of this space can be followed yet".to_string()
            } else {
                format!(
                    "the names that can be followed in this space are: {}",
                    listed.join(", ")
                )
            };
            return Err(BrokerError::Unprocessable(format!(
                "No live service instance named {from:?} can be followed in this space; \
                 {candidates}."
            )));
        };
        let name = self.shown_name(&leader.id).await?;
        let who = format!("{name:?} ({})", leader.id);
        match leader.state {
            InstanceState::Ready => {}
            InstanceState::Deleted | InstanceState::Deprovisioning => {
                return Err(BrokerError::Unprocessable(format!(
                    "Service instance {who} was deleted; a follower streams from a live leader. \
                     To get its data back, create an instance with \
                     -c '{{\"{CLONE_FROM}\":\"{name}\"}}' and follow that one."
                )))
            }
            InstanceState::Failed => {
                return Err(BrokerError::Unprocessable(format!(
                    "Service instance {who} failed and cannot be followed; follow a ready instance."
                )))
            }
            other => {
                return Err(BrokerError::Unprocessable(format!(
                    "Service instance {who} is being {}; follow it once that operation ends.",
                    busy_word(other)
                )))
            }
        }
        if let Some(its_leader) = &leader.leader_id {
            let its_name = self.shown_name(its_leader).await?;
            return Err(BrokerError::Unprocessable(format!(
                "Service instance {who} is itself a follower of {its_name:?} ({its_leader}); \
                 followers cannot be chained. Follow {its_name:?} instead: \
                 -c '{{\"{FOLLOW}\":\"{its_name}\"}}'."
            )));
        }
        // A follower streams from one cluster through a slot on it; an HA instance's primary
        // changes at a failover, and its slot would not follow (yet).
        if !self.ctx.store.ha_members(&leader.id).await?.is_empty() {
            return Err(BrokerError::Unprocessable(format!(
                "Service instance {who} is highly available, and a follower of an HA instance \
                 is not offered yet. To read without loading its primary, bind it with \
                 -c '{{\"read_only\":true}}': that binding reads from its standby. To get a \
                 copy, create an instance with -c '{{\"{CLONE_FROM}\":\"{name}\"}}'."
            )));
        }
        // The leader's cluster must answer (its agent may be down): retry later, nothing made.
        if let Err(e) = self.ctx.runtime.status(&leader.id).await {
            if !e.is_permanent() {
                tracing::warn!(leader = %leader.id, error = %e, "the leader's cluster does not answer; follow refused for now");
                return Err(BrokerError::Unavailable(format!(
                    "The cluster of service instance {who} does not answer right now (its \
                     database VM may be restarting), so it cannot be followed; nothing was \
                     created. Try again in a few minutes, and tell your operator if it lasts."
                )));
            }
        }
        let prefix = InstancePrefix::new(space, &leader.id);
        let archive = &self.ctx.archive;
        let window = match restore_window(archive, &prefix).await {
            Ok(window) => window,
            Err(ArchiveError::Storage(e)) => {
                return Err(super::storage_refusal(
                    &format!("reading the base backups of {who}"),
                    &archive.location(""),
                    e,
                ))
            }
            Err(e) => {
                return Err(
                    anyhow::anyhow!("read the restore window of {}: {e}", prefix.as_str()).into(),
                )
            }
        };
        let Some(newest) = window.backups.last() else {
            return Err(BrokerError::Unprocessable(format!(
                "Service instance {who} has no complete base backup yet, and a follower starts \
                 from one; try again once its first backup is in the archive (minutes after \
                 it was created)."
            )));
        };
        let mut floors = newest.floors.clone();
        if let Some(leader_plan) = self.ctx.catalog.plan(&leader.service_id, &leader.plan_id) {
            floors = higher(&floors, &plan_floors(leader_plan));
        }
        let low = below_floors(plan, &floors);
        if !low.is_empty() {
            return Err(BrokerError::Unprocessable(format!(
                "Plan {:?} cannot follow service instance {who}: {}. A follower needs at least \
                 its leader's values of these settings, or it pauses; choose a plan at least as \
                 large as the leader's.",
                plan.name,
                low_text(&low, "the leader")
            )));
        }
        self.check_archive_key(&prefix, &who, "followed").await?;
        Ok(FollowSource {
            leader: leader.id,
            name,
            system_identifier: newest.system_identifier,
        })
    }

    /// A plan change that would pause a standby: a leader's above one of its followers', a
    /// follower's below its leader's. 422 naming the other instance.
    pub(super) async fn check_plan_change(
        &self,
        instance: &InstanceRecord,
        new_plan: &Plan,
    ) -> Result<(), BrokerError> {
        let new = plan_floors(new_plan);
        for follower in self.ctx.store.followers_of(&instance.id).await? {
            let Some(theirs) = self
                .ctx
                .catalog
                .plan(&follower.service_id, &follower.plan_id)
            else {
                continue;
            };
            let low = below_floors(theirs, &new);
            if !low.is_empty() {
                let name = self.shown_name(&follower.id).await?;
                return Err(BrokerError::Unprocessable(format!(
                    "Plan {:?} would raise settings above what follower {name:?} ({}) on plan \
                     {:?} has: {}. A follower needs at least its leader's values, or it pauses; \
                     move the follower to a larger plan first, or unfollow or delete it.",
                    new_plan.name,
                    follower.id,
                    theirs.name,
                    low_text(&low, "this instance on the new plan")
                )));
            }
        }
        if let Some(leader_id) = &instance.leader_id {
            if let Some(leader) = self.ctx.store.get_instance(leader_id).await? {
                if let Some(theirs) = self.ctx.catalog.plan(&leader.service_id, &leader.plan_id) {
                    let low = below_floors(new_plan, &plan_floors(theirs));
                    if !low.is_empty() {
                        let name = self.shown_name(leader_id).await?;
                        return Err(BrokerError::Unprocessable(format!(
                            "Plan {:?} cannot follow leader {name:?} ({leader_id}) on plan \
                             {:?}: {}. A follower needs at least its leader's values, or it \
                             pauses; choose a plan at least as large as the leader's.",
                            new_plan.name,
                            theirs.name,
                            low_text(&low, "the leader")
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// A leader with live followers cannot be deleted: 422 naming them.
    pub(super) async fn check_no_followers(&self, id: &InstanceId) -> Result<(), BrokerError> {
        let followers = self.ctx.store.followers_of(id).await?;
        if followers.is_empty() {
            return Ok(());
        }
        let mut named = Vec::new();
        for f in &followers {
            named.push(format!("{:?} ({})", self.shown_name(&f.id).await?, f.id));
        }
        Err(BrokerError::Unprocessable(format!(
            "Service instance {id} has followers: {}. Unfollow them \
             (cf update-service NAME -c '{{\"{UNFOLLOW}\":true}}') or delete them first, then \
             delete this instance.",
            named.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn follow_is_a_name_alone() {
        assert_eq!(parse_params(&params(json!({}))).unwrap(), None);
        assert_eq!(
            parse_params(&params(json!({"follow": " production "}))).unwrap(),
            Some("production".into())
        );
        for (bad, why) in [
            (json!({"follow": 3}), "not a string"),
            (json!({"follow": ""}), "empty"),
            (json!({"follow": "p", "clone-from": "q"}), "with clone-from"),
            (
                json!({"follow": "p", "point-in-time": "2026-11-21T09:30:00Z"}),
                "with point-in-time",
            ),
        ] {
            assert!(
                matches!(parse_params(&params(bad)), Err(BrokerError::BadRequest(_))),
                "{why}"
            );
        }
        assert!(!parse_unfollow(None).unwrap());
        assert!(parse_unfollow(Some(&json!({"unfollow": true}))).unwrap());
        assert!(parse_unfollow(Some(&json!({"unfollow": "yes"}))).is_err());
    }

    #[test]
    fn floors_take_the_higher_value_of_each_setting() {
        let a = SettingFloors {
            max_connections: 100,
            max_worker_processes: 8,
            max_locks_per_transaction: 64,
            max_prepared_transactions: 0,
            max_wal_senders: 10,
        };
        let b = SettingFloors {
            max_connections: 50,
            max_worker_processes: 16,
            ..a.clone()
        };
        let h = higher(&a, &b);
        assert_eq!((h.max_connections, h.max_worker_processes), (100, 16));
    }
}
