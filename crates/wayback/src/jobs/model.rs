//! What a job is: its kind and payload ([`JobSpec`]), the steps of each kind in order, and a
//! claimed job as the job layer works on it ([`Job`]).
//!
//! The store keeps a job as a row (`store::NewJob`, `store::JobRecord`): `kind` and `step` as
//! names, the payload as JSON text. Here they are Rust values whose serde form is exactly that
//! row: [`JobKind`] and [`Step`] by their stored names, one payload type per kind in the shape
//! brokers have always written, so that a job queued by an older broker resumes after an
//! upgrade. A row is read once, when a worker claims it ([`Job::from_record`]); a row that does
//! not read is refused with the reason, never half-understood.
//!
//! The order of each kind's steps is written here, one table per sequence
//! ([`JobSpec::steps`]); a step finishes by asking for the next one of its table
//! ([`Job::next_step`]). What each step does is in `steps`.
//!
//! Imports `store` (rows), `domain` and the clone source; never `broker` or `steps`.

use std::fmt;

use serde::de::value::{BorrowedStrDeserializer, Error as NameError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clone_source::CloneSource;
use super::follow_source::FollowSource;
use crate::domain::{BindingId, InstanceId};
use crate::store::{now_millis, JobRecord, NewJob};

/// An enum stored by name: each variant's serde name is the literal beside it, and `as_str`,
/// `from_name` and `Display` use the same literal.
macro_rules! stored_names {
    ($(#[$doc:meta])* pub enum $name:ident {
        $($(#[$vdoc:meta])* $variant:ident = $text:literal,)*
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name in the state database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// Reads a stored name.
            pub fn from_name(name: &str) -> Result<Self, NameError> {
                Self::deserialize(BorrowedStrDeserializer::<NameError>::new(name))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_names! {
    /// The kinds of job.
    pub enum JobKind {
        Provision = "provision",
        Update = "update",
        Deprovision = "deprovision",
        Bind = "bind",
        Unbind = "unbind",
        /// A base backup (no OSB operation; see `steps::backup`).
        Backup = "backup",
        /// A restore drill (issue 18; no OSB operation; see `steps::drill`).
        Drill = "drill",
        /// An idle instance's cluster stopped, to be started by its next connection (issue 17;
        /// no OSB operation; see `steps::idle_stop`).
        IdleStop = "idle_stop",
    }
}

/// Which of the worker's two lanes runs a kind of job. User-facing operations never wait behind
/// background work: each lane has its own slots (`jobs.concurrency`,
/// `jobs.background_concurrency`) and claims only its own kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// What a platform's user asked for and is waiting on: provision (clone included), update,
    /// deprovision, bind, unbind.
    User,
    /// What the broker does on its own: base backups, restore drills and idle stops.
    Background,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::User, Lane::Background];

    /// The stored names of the kinds this lane runs.
    pub fn kinds(self) -> Vec<&'static str> {
        JobKind::ALL
            .iter()
            .filter(|k| k.lane() == self)
            .map(|k| k.as_str())
            .collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::User => "user",
            Lane::Background => "background",
        }
    }
}

impl JobKind {
    /// The lane that runs this kind.
    pub fn lane(self) -> Lane {
        match self {
            JobKind::Provision
            | JobKind::Update
            | JobKind::Deprovision
            | JobKind::Bind
            | JobKind::Unbind => Lane::User,
            JobKind::Backup | JobKind::Drill | JobKind::IdleStop => Lane::Background,
        }
    }
}

stored_names! {
    /// A step of a job. The worker records the step before running it, and a job resumed
    /// after a restart runs its recorded step again.
    pub enum Step {
        AllocatePort = "allocate_port",
        CreateCluster = "create_cluster",
        ConfigureArchive = "configure_archive",
        Start = "start",
        CreateDatabase = "create_database",
        CloneFork = "clone_fork",
        CloneRestore = "clone_restore",
        CloneRestart = "clone_restart",
        CloneRotate = "clone_rotate",
        CloneFirstArchive = "clone_first_archive",
        ApplySettings = "apply_settings",
        WaitExclusive = "wait_exclusive",
        FinalBackup = "final_backup",
        FinalWal = "final_wal",
        WriteInstanceDoc = "write_instance_doc",
        Destroy = "destroy",
        CreateRole = "create_role",
        DropRole = "drop_role",
        TakeBackup = "take_backup",
        // Followers (issue 14): see `steps::follow`.
        FollowGrant = "follow_grant",
        FollowRestore = "follow_restore",
        FollowPromote = "follow_promote",
        FollowRelease = "follow_release",
        // Restore drills (issue 18): see `steps::drill`.
        RunDrill = "run_drill",
        // HA instances (issue 15): see `steps::ha`.
        HaPlace = "ha_place",
        HaAdopt = "ha_adopt",
        HaFirstBackup = "ha_first_backup",
        HaSeedStandby = "ha_seed_standby",
        HaWaitStandby = "ha_wait_standby",
        // Plan changes between single and HA (issue 15): see `steps::ha_update`.
        HaAdoptSingle = "ha_adopt_single",
        HaKeepFirst = "ha_keep_first",
        HaDropStandby = "ha_drop_standby",
        HaRelease = "ha_release",
        HaForget = "ha_forget",
        // Idle stop (issue 17): see `steps::idle_stop`.
        IdleStop = "idle_stop",
    }
}

/// A provision: a port, a new cluster, its continuous archiving, then the app database.
const PROVISION: &[Step] = &[
    Step::AllocatePort,
    Step::CreateCluster,
    Step::ConfigureArchive,
    Step::Start,
    Step::CreateDatabase,
];

/// A clone-from provision: the source's latest WAL archived (a fork, for a live source), its
/// base backup restored into the new cluster, the plan's configuration and the clone's own
/// archiving written over the restored ones, a restart to apply them, every password copied
/// from the source taken away, and its first WAL on the new timeline archived (a clone that
/// cannot archive cannot be undone, so it does not succeed).
const CLONE: &[Step] = &[
    Step::AllocatePort,
    Step::CloneFork,
    Step::CloneRestore,
    Step::CreateCluster,
    Step::ConfigureArchive,
    Step::CloneRestart,
    Step::Start,
    Step::CloneRotate,
    Step::CloneFirstArchive,
];

/// An HA plan's provision (issue 15): the primary member's port, then every member's machine
/// and ports recorded (`ha_members`), the primary's cluster made as a provision makes one (under
/// its member key), Patroni adopting it (it leads on the next timeline), a first base backup
/// (the standby's archive target needs the cluster's system identifier, and undo needs a
/// backup), the standby seeded by Patroni from the leader, and a wait until it streams (in
/// `sync` mode as the sync standby).
const HA_PROVISION: &[Step] = &[
    Step::AllocatePort,
    Step::HaPlace,
    Step::CreateCluster,
    Step::ConfigureArchive,
    Step::Start,
    Step::CreateDatabase,
    Step::HaAdopt,
    Step::HaFirstBackup,
    Step::HaSeedStandby,
    Step::HaWaitStandby,
];

/// A plan change: the new plan's settings, applied (and a restart if one needs it).
const UPDATE: &[Step] = &[Step::ApplySettings];

/// A plan change from a single-member plan to an HA plan (issue 15): every member placed (the
/// first keeps the instance's port), Patroni adopting the running cluster as the first member
/// (moved under its member key: one restart), then as an HA provision's tail.
const HA_ADD_STANDBY: &[Step] = &[
    Step::HaPlace,
    Step::HaAdoptSingle,
    Step::HaFirstBackup,
    Step::HaSeedStandby,
    Step::HaWaitStandby,
];

/// A plan change from an HA plan to a single-member one: the first member made the leader (a
/// switchover if it is not), the others destroyed, the first taken out of Patroni under the
/// instance's own id, the members forgotten, its archiving for the single plan, its start.
const HA_REMOVE_STANDBY: &[Step] = &[
    Step::HaKeepFirst,
    Step::HaDropStandby,
    Step::HaRelease,
    Step::HaForget,
    Step::ConfigureArchive,
    Step::Start,
];

/// A `follow` provision: a port (on another agent than the leader's when one has room), the
/// follower's grant on its leader (replication role, slot, `pg_hba` line), the standby restore
/// from the leader's archive until it streams, then its own plan's configuration in place of
/// the leader's restored one, applied by a reload (a restart only when a setting needs one: a
/// standby's restart replays again from its last restartpoint, which under load costs
/// seconds), and a start should it be down. A follower archives nothing and takes no base
/// backups.
const FOLLOW: &[Step] = &[
    Step::AllocatePort,
    Step::FollowGrant,
    Step::FollowRestore,
    Step::CreateCluster,
    Step::ApplySettings,
    Step::Start,
];

/// `{"unfollow":true}`: promotion on a new timeline, then the clone's tail (the plan's own
/// configuration in place of the restored one, its own archive and data key, a restart into
/// them, the leader's roles' logins taken away, its first WAL archived), and last the grant
/// withdrawn on the leader. Its first base backup follows.
const UNFOLLOW: &[Step] = &[
    Step::FollowPromote,
    Step::CreateCluster,
    Step::ConfigureArchive,
    Step::CloneRestart,
    Step::Start,
    Step::CloneRotate,
    Step::CloneFirstArchive,
    Step::FollowRelease,
];

/// A deprovision loses nothing: it waits for the instance's other job to stop, takes a base
/// backup if there is none, archives the last WAL and records the instance's history in its
/// archive, and only then destroys the cluster. A follower has no archive of its own: its
/// backup, WAL and history steps pass, and `follow_release` withdraws its grant on the leader.
const DEPROVISION: &[Step] = &[
    Step::WaitExclusive,
    Step::FinalBackup,
    Step::FinalWal,
    Step::WriteInstanceDoc,
    Step::FollowRelease,
    Step::Destroy,
];

const BIND: &[Step] = &[Step::CreateRole];
const UNBIND: &[Step] = &[Step::DropRole];
const BACKUP: &[Step] = &[Step::TakeBackup];
/// A restore drill: the archive restored into a scratch copy, checked, recorded, deleted.
const DRILL: &[Step] = &[Step::RunDrill];
/// An idle stop: the conditions checked again, the cluster parked, `stopped_at` recorded.
const IDLE_STOP: &[Step] = &[Step::IdleStop];

/// What a job is asked to do: its kind, and the payload of that kind.
#[derive(Debug, Clone, PartialEq)]
pub enum JobSpec {
    Provision(ProvisionPayload),
    Update(UpdatePayload),
    Deprovision(Requested),
    Bind(Requested),
    Unbind(Requested),
    Backup(BackupPayload),
    Drill(DrillPayload),
    IdleStop(Requested),
}

/// A payload with nothing but when the job was asked for: `{"requested_at": <Unix ms>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    pub requested_at: i64,
}

/// `{"requested_at": …}`, with `"clone": {…}` for a clone-from or `"follow": {…}` for a
/// follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionPayload {
    pub requested_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowSource>,
    /// An HA plan's provision (`"ha": true`); absent for every other.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ha: bool,
}

/// `{"requested_at": …, "plan_id": "…"}`: the plan to change to; `"unfollow": true` for a
/// follower's promotion (the plan stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePayload {
    pub requested_at: i64,
    pub plan_id: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unfollow: bool,
    /// A plan change between a single-member plan and an HA plan (`"ha_change"`); absent for
    /// every other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_change: Option<HaChange>,
}

/// Which way a plan change crosses between single and HA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaChange {
    /// Single → HA: the running cluster becomes the first member, a standby is added.
    AddStandby,
    /// HA → single: the first member is kept as the single cluster, the others go.
    RemoveStandby,
}

/// `{"requested_at": …, "reason": "…"}`: `provision`, `schedule`, `wal-volume` or `manual`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPayload {
    pub requested_at: i64,
    #[serde(default = "manual")]
    pub reason: String,
}

/// `{"requested_at": …, "reason": "…"}`: `schedule`, `retry` (after a failed drill) or `manual`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillPayload {
    pub requested_at: i64,
    #[serde(default = "manual")]
    pub reason: String,
}

fn manual() -> String {
    "manual".into()
}

impl JobSpec {
    /// A provision, a clone when `clone` names a source; requested now.
    pub fn provision(clone: Option<CloneSource>) -> Self {
        JobSpec::Provision(ProvisionPayload {
            requested_at: now_millis(),
            clone,
            follow: None,
            ha: false,
        })
    }

    /// An HA plan's provision (a primary and its standby under Patroni); requested now.
    pub fn provision_ha() -> Self {
        JobSpec::Provision(ProvisionPayload {
            requested_at: now_millis(),
            clone: None,
            follow: None,
            ha: true,
        })
    }

    /// A follower's provision, streaming from `source`; requested now.
    pub fn follow(source: FollowSource) -> Self {
        JobSpec::Provision(ProvisionPayload {
            requested_at: now_millis(),
            clone: None,
            follow: Some(source),
            ha: false,
        })
    }

    pub fn update(plan_id: impl Into<String>) -> Self {
        JobSpec::Update(UpdatePayload {
            requested_at: now_millis(),
            plan_id: plan_id.into(),
            unfollow: false,
            ha_change: None,
        })
    }

    /// A plan change between single and HA (`change` says which way).
    pub fn ha_update(plan_id: impl Into<String>, change: HaChange) -> Self {
        JobSpec::Update(UpdatePayload {
            requested_at: now_millis(),
            plan_id: plan_id.into(),
            unfollow: false,
            ha_change: Some(change),
        })
    }

    /// A follower's promotion into an independent instance (its plan stays `plan_id`).
    pub fn unfollow(plan_id: impl Into<String>) -> Self {
        JobSpec::Update(UpdatePayload {
            requested_at: now_millis(),
            plan_id: plan_id.into(),
            unfollow: true,
            ha_change: None,
        })
    }

    pub fn deprovision() -> Self {
        JobSpec::Deprovision(Requested::now())
    }

    pub fn bind() -> Self {
        JobSpec::Bind(Requested::now())
    }

    pub fn unbind() -> Self {
        JobSpec::Unbind(Requested::now())
    }

    pub fn backup(reason: impl Into<String>) -> Self {
        JobSpec::Backup(BackupPayload {
            requested_at: now_millis(),
            reason: reason.into(),
        })
    }

    /// A restore drill; `reason` is `schedule`, `retry` or `manual`.
    pub fn drill(reason: impl Into<String>) -> Self {
        JobSpec::Drill(DrillPayload {
            requested_at: now_millis(),
            reason: reason.into(),
        })
    }
    /// An idle stop; requested now.
    pub fn idle_stop() -> Self {
        JobSpec::IdleStop(Requested::now())
    }

    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::IdleStop(_) => JobKind::IdleStop,
            JobSpec::Drill(_) => JobKind::Drill,
            JobSpec::Provision(_) => JobKind::Provision,
            JobSpec::Update(_) => JobKind::Update,
            JobSpec::Deprovision(_) => JobKind::Deprovision,
            JobSpec::Bind(_) => JobKind::Bind,
            JobSpec::Unbind(_) => JobKind::Unbind,
            JobSpec::Backup(_) => JobKind::Backup,
        }
    }

    /// When the job was asked for (Unix ms).
    pub fn requested_at(&self) -> i64 {
        match self {
            JobSpec::Provision(p) => p.requested_at,
            JobSpec::Update(p) => p.requested_at,
            JobSpec::Deprovision(p)
            | JobSpec::Bind(p)
            | JobSpec::Unbind(p)
            | JobSpec::IdleStop(p) => p.requested_at,
            JobSpec::Backup(p) => p.requested_at,
            JobSpec::Drill(p) => p.requested_at,
        }
    }

    /// The source of a clone-from provision.
    pub fn clone_source(&self) -> Option<&CloneSource> {
        match self {
            JobSpec::Provision(p) => p.clone.as_ref(),
            _ => None,
        }
    }

    /// The leader of a follower's provision.
    pub fn follow_source(&self) -> Option<&FollowSource> {
        match self {
            JobSpec::Provision(p) => p.follow.as_ref(),
            _ => None,
        }
    }

    /// Whether this is an HA plan's provision.
    pub fn is_ha(&self) -> bool {
        matches!(self, JobSpec::Provision(p) if p.ha)
    }

    /// Whether this is a follower's promotion (`unfollow`).
    pub fn is_unfollow(&self) -> bool {
        matches!(self, JobSpec::Update(u) if u.unfollow)
    }

    /// This job's steps, in the order they run.
    pub fn steps(&self) -> &'static [Step] {
        match self {
            JobSpec::Provision(ProvisionPayload {
                follow: Some(_), ..
            }) => FOLLOW,
            JobSpec::Provision(ProvisionPayload { ha: true, .. }) => HA_PROVISION,
            JobSpec::Provision(ProvisionPayload { clone: None, .. }) => PROVISION,
            JobSpec::Provision(ProvisionPayload { clone: Some(_), .. }) => CLONE,
            JobSpec::Update(UpdatePayload { unfollow: true, .. }) => UNFOLLOW,
            JobSpec::Update(UpdatePayload {
                ha_change: Some(HaChange::AddStandby),
                ..
            }) => HA_ADD_STANDBY,
            JobSpec::Update(UpdatePayload {
                ha_change: Some(HaChange::RemoveStandby),
                ..
            }) => HA_REMOVE_STANDBY,
            JobSpec::Update(_) => UPDATE,
            JobSpec::Deprovision(_) => DEPROVISION,
            JobSpec::Bind(_) => BIND,
            JobSpec::Unbind(_) => UNBIND,
            JobSpec::Backup(_) => BACKUP,
            JobSpec::Drill(_) => DRILL,
            JobSpec::IdleStop(_) => IDLE_STOP,
        }
    }

    /// The row that stores this job, runnable from its first step.
    pub fn to_row(
        &self,
        id: String,
        instance: &InstanceId,
        binding: Option<&BindingId>,
        operation_id: Option<String>,
    ) -> NewJob {
        NewJob {
            id,
            kind: self.kind().as_str().to_string(),
            instance_id: instance.clone(),
            binding_id: binding.cloned(),
            operation_id,
            payload: self.payload(),
            first_step: self.steps()[0].as_str().to_string(),
        }
    }

    fn payload(&self) -> Value {
        let value = match self {
            JobSpec::Provision(p) => serde_json::to_value(p),
            JobSpec::Update(p) => serde_json::to_value(p),
            JobSpec::Deprovision(p)
            | JobSpec::Bind(p)
            | JobSpec::Unbind(p)
            | JobSpec::IdleStop(p) => serde_json::to_value(p),
            JobSpec::Backup(p) => serde_json::to_value(p),
            JobSpec::Drill(p) => serde_json::to_value(p),
        };
        // Plain structs of strings, numbers and options: serializing cannot fail.
        value.expect("a job payload serializes to JSON")
    }

    fn from_payload(kind: JobKind, payload: &Value) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            JobKind::Provision => JobSpec::Provision(ProvisionPayload::deserialize(payload)?),
            JobKind::Update => JobSpec::Update(UpdatePayload::deserialize(payload)?),
            JobKind::Deprovision => JobSpec::Deprovision(Requested::deserialize(payload)?),
            JobKind::Bind => JobSpec::Bind(Requested::deserialize(payload)?),
            JobKind::Unbind => JobSpec::Unbind(Requested::deserialize(payload)?),
            JobKind::Backup => JobSpec::Backup(BackupPayload::deserialize(payload)?),
            JobKind::Drill => JobSpec::Drill(DrillPayload::deserialize(payload)?),
            JobKind::IdleStop => JobSpec::IdleStop(Requested::deserialize(payload)?),
        })
    }
}

impl Requested {
    fn now() -> Self {
        Self {
            requested_at: now_millis(),
        }
    }
}

/// The row of a job for an OSB operation (the job's id is the operation's).
pub fn new_job(
    operation_id: &str,
    instance: &InstanceId,
    binding: Option<&BindingId>,
    spec: JobSpec,
) -> NewJob {
    spec.to_row(
        operation_id.to_string(),
        instance,
        binding,
        Some(operation_id.to_string()),
    )
}

/// A claimed job, read once from its row.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub instance_id: InstanceId,
    pub binding_id: Option<BindingId>,
    pub operation_id: Option<String>,
    pub spec: JobSpec,
    /// The step to run: one of `spec.steps()`.
    pub step: Step,
    /// Failed attempts at this step so far.
    pub attempts: u32,
}

/// A stored job this broker cannot read (a corrupt row, or one written by a newer version).
#[derive(Debug, thiserror::Error)]
#[error("job {id} cannot be read: {reason}")]
pub struct UnreadableJob {
    pub id: String,
    pub reason: String,
}

impl Job {
    /// Reads a stored job: its kind, its payload in that kind's shape, and a step of its
    /// sequence.
    pub fn from_record(record: &JobRecord) -> Result<Self, UnreadableJob> {
        let unreadable = |reason: String| UnreadableJob {
            id: record.id.clone(),
            reason,
        };
        let kind = JobKind::from_name(&record.kind)
            .map_err(|e| unreadable(format!("job kind {:?}: {e}", record.kind)))?;
        let spec = JobSpec::from_payload(kind, &record.payload)
            .map_err(|e| unreadable(format!("payload of a {kind} job: {e}")))?;
        let step = Step::from_name(&record.step)
            .map_err(|e| unreadable(format!("step {:?}: {e}", record.step)))?;
        if !spec.steps().contains(&step) {
            return Err(unreadable(format!(
                "{step} is not a step of this {kind} job"
            )));
        }
        Ok(Self {
            id: record.id.clone(),
            instance_id: record.instance_id.clone(),
            binding_id: record.binding_id.clone(),
            operation_id: record.operation_id.clone(),
            spec,
            step,
            attempts: record.attempts,
        })
    }

    pub fn kind(&self) -> JobKind {
        self.spec.kind()
    }

    /// The step after the current one in this job's sequence; None after the last.
    pub fn next_step(&self) -> Option<Step> {
        let steps = self.spec.steps();
        let at = steps.iter().position(|s| *s == self.step)?;
        steps.get(at + 1).copied()
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
