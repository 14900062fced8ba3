//! `clone-from` and `point-in-time`: checked in the provision PUT, before the 202, so that the
//! user reads every refusal in `cf create-service` itself (docs/architecture.md §6).
//!
//! Resolution reads only the requester's space: a name (or GUID) of another space is answered
//! exactly like an unknown one, and the answer lists the names that *can* be cloned here, live
//! or deleted. Several instances that had the name: the one that took it last wins. Then the
//! source's restore window is read from the archive (rule 5: the target must lie inside it)
//! and the base backup the restore would start from is chosen, so that a plan below that
//! backup's hot-standby floors (rule 6) is refused now rather than failing after the 202, and
//! so is an encrypted source whose data key the configured keys cannot unwrap.
//!
//! A follower named in `clone-from` has no archive of its own: it resolves to its leader, whose
//! archive it replays, and every line of the clone says so (`CloneSource::via_follower`).
//!
//! The resolved source is a `jobs::CloneSource`, the provision job's payload (see
//! `jobs::steps::clone`). Imports `store`, `catalog`, `archive`, `jobs` and `domain`; never
//! `osb`, `pg`, `runtime`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{Broker, BrokerError};
use crate::archive::layout::InstancePrefix;
use crate::archive::manifest::SettingFloors;
use crate::archive::restore::RestoreTarget;
use crate::archive::window::restore_window;
use crate::archive::ArchiveError;
use crate::catalog::Plan;
use crate::domain::{InstanceId, InstanceState, SpaceGuid};
use crate::jobs::CloneSource;
use crate::store::SpaceName;

pub(super) const CLONE_FROM: &str = "clone-from";
pub(super) const POINT_IN_TIME: &str = "point-in-time";

/// The clone parameters of a provision, as the user wrote them (validated for form only).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CloneParams {
    pub from: String,
    pub point_in_time: Option<DateTime<Utc>>,
}

/// `clone-from` / `point-in-time` from the provision parameters (pure). 400 on a bad form.
pub(super) fn parse_params(
    params: &Map<String, Value>,
) -> Result<Option<CloneParams>, BrokerError> {
    let pit = match params.get(POINT_IN_TIME) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_time(s)?),
        Some(other) => return Err(bad_time(&other.to_string())),
    };
    let from = match params.get(CLONE_FROM) {
        None | Some(Value::Null) if pit.is_some() => {
            return Err(BrokerError::BadRequest(format!(
                "\"{POINT_IN_TIME}\" needs \"{CLONE_FROM}\": say which instance to restore, e.g. \
                 -c '{{\"{CLONE_FROM}\":\"production\",\"{POINT_IN_TIME}\":\"2026-11-21T09:30:00Z\"}}'."
            )))
        }
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(_) => {
            return Err(BrokerError::BadRequest(format!(
                "\"{CLONE_FROM}\" must be the name (or GUID) of a service instance of this space, \
                 as a string, e.g. -c '{{\"{CLONE_FROM}\":\"production\"}}'."
            )))
        }
    };
    Ok(Some(CloneParams {
        from,
        point_in_time: pit,
    }))
}

/// RFC 3339 with an explicit offset (`Z` or `±hh:mm`), e.g. `2026-11-21T09:30:00Z`.
fn parse_time(s: &str) -> Result<DateTime<Utc>, BrokerError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| bad_time(s))
}

fn bad_time(got: &str) -> BrokerError {
    BrokerError::BadRequest(format!(
        "\"{POINT_IN_TIME}\" {got:?} is not a time in RFC 3339 format with an explicit offset: \
         write e.g. \"2026-11-21T09:30:00Z\" or \"2026-11-21T10:30:00+01:00\"."
    ))
}

/// Picks the instance `from` names among `names` (one space's, newest first): a GUID, else the
/// instance that took the name last. Excludes `requester` and instances with nothing to restore.
pub(super) fn pick<'a>(
    names: &'a [SpaceName],
    from: &str,
    requester: &InstanceId,
) -> Option<&'a SpaceName> {
    let usable =
        |n: &&SpaceName| &n.instance_id != requester && can_be_cloned(n.state, n.has_backup);
    names
        .iter()
        .filter(usable)
        .find(|n| n.instance_id.as_str() == from)
        .or_else(|| names.iter().filter(usable).find(|n| n.name == from))
}

/// A provision in flight has nothing to restore, nor has one that failed; but a failed
/// instance that had a base backup (a delete that could not reach its VM, say) can be restored.
fn can_be_cloned(state: InstanceState, has_backup: bool) -> bool {
    match state {
        InstanceState::Provisioning => false,
        InstanceState::Failed => has_backup,
        _ => true,
    }
}

/// The refusal for an unknown name: lists each current name that can be cloned in the space.
pub(super) fn unknown(names: &[SpaceName], from: &str, requester: &InstanceId) -> BrokerError {
    let mut seen = std::collections::BTreeSet::new();
    let listed: Vec<String> = names
        .iter()
        .filter(|n| &n.instance_id != requester && can_be_cloned(n.state, n.has_backup))
        .filter(|n| seen.insert(n.name.clone()))
        .map(|n| match (n.state, n.deleted_at) {
            (InstanceState::Deleted, Some(at)) => format!("{} (deleted {})", n.name, fmt_ms(at)),
            (InstanceState::Deleted, None) => format!("{} (deleted)", n.name),
            _ => n.name.clone(),
        })
        .collect();
    let candidates = if listed.is_empty() {
        "no instance of this space can be cloned yet".to_string()
    } else {
        format!(
            "the names that can be cloned in this space are: {}",
            listed.join(", ")
        )
    };
    BrokerError::Unprocessable(format!(
        "No service instance named {from:?} can be cloned in this space; {candidates}."
    ))
}

/// "2026-11-21 09:42:07 UTC": what `cf service` users read.
fn fmt_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or(ms.to_string(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

/// A PostgreSQL default for a floor setting the plan does not set.
pub(super) fn pg_default(name: &str) -> u32 {
    match name {
        "max_connections" => 100,
        "max_worker_processes" => 8,
        "max_locks_per_transaction" => 64,
        "max_wal_senders" => 10,
        _ => 0,
    }
}

/// The settings of `plan` below `floors`: (name, plan's value, floor) (pure).
pub(super) fn below_floors(plan: &Plan, floors: &SettingFloors) -> Vec<(&'static str, u32, u32)> {
    floors
        .as_pairs()
        .into_iter()
        .filter_map(|(name, floor)| {
            let own = plan
                .settings
                .get(name)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or_else(|| pg_default(name));
            (own < floor).then_some((name, own, floor))
        })
        .collect()
}

impl Broker {
    /// Refuses (before anything is created) a source whose archive is encrypted with a data key
    /// this broker cannot unwrap: its key is not configured, or another key has that id.
    /// `verb` says what the request would do with it ("cloned", "followed").
    pub(super) async fn check_archive_key(
        &self,
        prefix: &InstancePrefix,
        who: &str,
        verb: &str,
    ) -> Result<(), BrokerError> {
        let archive = &self.ctx.archive;
        let keyring = self.ctx.store.keyring().ok();
        match crate::archive::keydoc::data_key(archive, keyring, prefix.as_str()).await {
            Ok(_) => Ok(()),
            Err(ArchiveError::Storage(e)) => Err(super::storage_refusal(
                &format!("reading the archive key of {who}"),
                &archive.location(""),
                e,
            )),
            Err(ArchiveError::Key(m)) => Err(BrokerError::Unprocessable(format!(
                "Service instance {who} cannot be {verb}: {m}."
            ))),
            Err(e) => {
                Err(anyhow::anyhow!("read the archive key of {}: {e}", prefix.as_str()).into())
            }
        }
    }

    /// Resolves and checks a clone request; on success, the source the provision restores.
    pub(super) async fn check_clone(
        &self,
        requester: &InstanceId,
        space: &SpaceGuid,
        plan: &Plan,
        params: &CloneParams,
    ) -> Result<CloneSource, BrokerError> {
        let names = self.ctx.store.names_in_space(space.as_str()).await?;
        let mut source = pick(&names, &params.from, requester).cloned();
        if source.is_none() {
            // A GUID of an instance that never had a name: still only in this space.
            if let Ok(id) = InstanceId::parse(params.from.clone()) {
                if let Some(i) = self.ctx.store.get_instance(&id).await? {
                    let has_backup = self.ctx.store.latest_backup(&i.id).await?.is_some();
                    if i.space_guid == space.as_str()
                        && &i.id != requester
                        && can_be_cloned(i.state, has_backup)
                    {
                        source = Some(SpaceName {
                            instance_id: i.id.clone(),
                            name: i.id.to_string(),
                            recorded_at: i.created_at,
                            state: i.state,
                            deleted_at: i.deleted_at,
                            has_backup,
                        });
                    }
                }
            }
        }
        let Some(mut source) = source else {
            return Err(unknown(&names, &params.from, requester));
        };
        // A follower has no archive of its own: its leader's is what it holds.
        let mut via_follower = None;
        let leader = match self.ctx.store.get_instance(&source.instance_id).await? {
            Some(i) => match i.leader_id {
                Some(l) => self.ctx.store.get_instance(&l).await?,
                None => None,
            },
            None => None,
        };
        if let Some(l) = leader {
            via_follower = Some(source.name.clone());
            source = SpaceName {
                name: self.shown_name(&l.id).await?,
                instance_id: l.id,
                recorded_at: l.created_at,
                state: l.state,
                deleted_at: l.deleted_at,
                has_backup: true,
            };
        }
        let who = format!("{:?} ({})", source.name, source.instance_id);
        let prefix = InstancePrefix::new(space, &source.instance_id);
        let archive = &self.ctx.archive;
        let window = match restore_window(archive, &prefix).await {
            Ok(window) => window,
            Err(ArchiveError::Storage(e)) => {
                return Err(super::storage_refusal(
                    &format!("reading the restore window of {who}"),
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
        let (Some(earliest), Some(newest)) = (window.earliest, window.backups.last()) else {
            return Err(BrokerError::Unprocessable(format!(
                "Service instance {who} has no complete base backup yet, so it cannot be cloned; \
                 try again once its first backup is in the archive (minutes after it was created)."
            )));
        };
        let backup = match params.point_in_time {
            None => newest,
            Some(t) => {
                let inside = t >= earliest && window.latest.is_some_and(|l| t <= l);
                if !inside {
                    let latest = window
                        .latest
                        .map_or("no archived commit yet".to_string(), |l| l.to_rfc3339());
                    return Err(BrokerError::Unprocessable(format!(
                        "{POINT_IN_TIME} {} is outside the restore window of service instance \
                         {who}: it can be restored to any time from {} to {latest}.",
                        t.to_rfc3339(),
                        earliest.to_rfc3339()
                    )));
                }
                window
                    .backups
                    .iter()
                    .rev()
                    .find(|b| b.stop_time <= t)
                    .unwrap_or(newest)
            }
        };
        let low = below_floors(plan, &backup.floors);
        if !low.is_empty() {
            let what: Vec<String> = low
                .iter()
                .map(|(n, own, floor)| format!("{n} = {own} (the source has {floor})"))
                .collect();
            return Err(BrokerError::Unprocessable(format!(
                "Plan {:?} cannot hold a clone of service instance {who}: {}. A restored server \
                 needs at least the source's values; choose a larger plan.",
                plan.name,
                what.join(", ")
            )));
        }
        // An encrypted source whose data key this broker cannot unwrap (its key is not
        // configured, or another key has that id) is refused now, before anything is created.
        self.check_archive_key(&prefix, &who, "cloned").await?;
        Ok(CloneSource {
            live: source.state.is_live(),
            id: source.instance_id,
            name: source.name,
            deleted_at: source.deleted_at,
            target: params
                .point_in_time
                .map_or(RestoreTarget::Latest, RestoreTarget::PointInTime),
            system_identifier: backup.system_identifier,
            backup_stop_time: backup.stop_time,
            via_follower,
            final_commit_ms: window
                .latest
                .filter(|_| !source.state.is_live())
                .map(|t| t.timestamp_millis()),
        })
    }
}

#[cfg(test)]
#[path = "clone_tests.rs"]
mod tests;
