//! [`FakeRuntime`]: the broker's `ClusterRuntime` in memory, for the fast tier. No `initdb`, no
//! PostgreSQL, no files: a cluster is a record (status, port, settings, databases, login roles)
//! that the broker's jobs move the way a real runtime would — create → stopped, start → running,
//! destroy → gone. A cluster never archives, so `seal_wal` answers None (a deprovision does not
//! wait for WAL), and `take_backup` answers a plausible manifest without writing an object.
//!
//! A test controls it three ways, all without sleeping:
//! - [`FakeRuntime::hold`] makes every call of one kind wait until the returned [`Gate`] is
//!   released (or dropped), so an operation stays "in progress" for exactly as long as the test
//!   needs; [`Gate::reached`] waits until a call is waiting at it;
//! - [`FakeRuntime::fail_next`] makes the next call of a kind fail with a given error (transient
//!   or permanent, as `RuntimeError::is_permanent` says);
//! - [`FakeRuntime::calls`] and [`FakeRuntime::cluster`] tell what was asked and what exists.
//!
//! Test code only: nothing under `src/` may use it. Imports only `wayback`'s public API.

mod calls;
mod ha;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use wayback::domain::InstanceId;
use wayback::pg::PgError;
use wayback::runtime::{ClusterStatus, RuntimeError};

/// One kind of runtime call: one per method of `ClusterRuntime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Prepare,
    Place,
    Survey,
    CreateCluster,
    ConfigureArchive,
    Start,
    Stop,
    Status,
    Destroy,
    ApplySettings,
    EnsureDatabase,
    CreateLoginRole,
    DropLoginRole,
    RevokeCopiedLogins,
    SealWal,
    ReopenDatabase,
    SwitchWal,
    SwitchWalSegment,
    WalPosition,
    ArchiverStats,
    TakeBackup,
    StartRestore,
    RestoreStatus,
    PrepareReplication,
    DropReplication,
    ReplicationStatus,
    StandbyStatus,
    StartFollow,
    Promote,
    /// A restore drill (issue 18): passes unless `fail_next(Call::Drill, …)`.
    Drill,
    HaStartMember,
    HaStatus,
    HaSwitchover,
    /// An HA member made a single cluster again (a plan change from an HA plan).
    HaReleaseMember,
    /// A running drill asked to stop (issue 18 point 4): recorded, nothing else.
    CancelDrill,
    /// An idle cluster stopped, its port held (issue 17): `Parked` until a start or a
    /// [`FakeRuntime::wake`].
    Park,
    /// Its sessions counted: none unless a test set some ([`FakeRuntime::set_sessions`]).
    Sessions,
}

/// Where every fake cluster's WAL is (`wal_position`) and every standby replayed to.
pub const FAKE_LSN: u64 = 0x300_0000;

/// A cluster as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCluster {
    pub status: ClusterStatus,
    pub port: u16,
    pub settings: BTreeMap<String, String>,
    /// Whether `configure_archive` pointed it at an archive.
    pub archiving: bool,
    /// Database → owner role.
    pub databases: BTreeMap<String, String>,
    /// Login roles (bindings' roles).
    pub roles: BTreeSet<String>,
    /// Those of `roles` made read-only (`RoleAccess::ReadOnly`).
    pub read_only_roles: BTreeSet<String>,
    /// On a leader: its followers' slots → replication role and follower address.
    pub replication: BTreeMap<String, (String, String)>,
    /// A follower not yet promoted (made by `start_follow`).
    pub standby: bool,
}

impl FakeCluster {
    fn new(status: ClusterStatus, port: u16) -> Self {
        FakeCluster {
            status,
            port,
            settings: BTreeMap::new(),
            archiving: false,
            databases: BTreeMap::new(),
            roles: BTreeSet::new(),
            read_only_roles: BTreeSet::new(),
            replication: BTreeMap::new(),
            standby: false,
        }
    }
}

/// Where calls of one kind wait while a test holds them.
struct Hold {
    released: watch::Sender<bool>,
    arrived: watch::Sender<usize>,
}

/// Releases held calls when released or dropped (a failing test never leaves a job hanging).
pub struct Gate {
    hold: Arc<Hold>,
}

impl Gate {
    /// Lets every waiting and later call of the held kind through.
    pub fn release(self) {}

    /// Waits until at least one call is waiting at this gate.
    pub async fn reached(&self) {
        let mut arrived = self.hold.arrived.subscribe();
        let _ = arrived.wait_for(|n| *n > 0).await;
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.hold.released.send_replace(true);
    }
}

/// The in-memory runtime. Share it as `Arc<FakeRuntime>`; it is a `wayback::runtime::Runtime`.
#[derive(Default)]
pub struct FakeRuntime {
    clusters: Mutex<HashMap<String, FakeCluster>>,
    log: Mutex<Vec<(Call, Option<String>)>>,
    holds: Mutex<HashMap<Call, Arc<Hold>>>,
    failures: Mutex<HashMap<Call, VecDeque<RuntimeError>>>,
    /// HA scopes by instance id (`ha.rs`).
    ha: Mutex<HashMap<String, wayback::runtime::HaStatus>>,
    /// Sessions by instance id, as a test set them (none otherwise).
    sessions: Mutex<HashMap<String, wayback::runtime::Sessions>>,
    /// What the sampler and an inspection say of an instance, as a test set them
    /// ([`FakeRuntime::set_activity`]); none otherwise (the runtime cannot sample).
    activity: Mutex<
        HashMap<
            String,
            (
                wayback_api::activity::Activity,
                wayback_api::activity::Locks,
            ),
        >,
    >,
    /// Wakes of parked clusters, for the broker's subscription ([`FakeRuntime::wake`]).
    wakes: Mutex<Option<tokio::sync::broadcast::Sender<wayback::runtime::WakeEvent>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeRuntime {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Holds every call of kind `call` (from now on) until the gate is released.
    pub fn hold(&self, call: Call) -> Gate {
        let hold = Arc::new(Hold {
            released: watch::Sender::new(false),
            arrived: watch::Sender::new(0),
        });
        lock(&self.holds).insert(call, hold.clone());
        Gate { hold }
    }

    /// The next call of kind `call` fails with `error` (after any hold); later ones succeed.
    pub fn fail_next(&self, call: Call, error: RuntimeError) {
        lock(&self.failures)
            .entry(call)
            .or_default()
            .push_back(error);
    }

    /// Every call so far, in order, with the instance it was about (None: no instance).
    pub fn calls(&self) -> Vec<(Call, Option<String>)> {
        lock(&self.log).clone()
    }

    /// The calls about instance `id`, in order.
    pub fn calls_for(&self, id: &str) -> Vec<Call> {
        let log = lock(&self.log);
        let about = |(_, i): &&(Call, Option<String>)| i.as_deref() == Some(id);
        log.iter().filter(about).map(|(c, _)| *c).collect()
    }

    /// The cluster of instance `id`, if it exists.
    pub fn cluster(&self, id: &str) -> Option<FakeCluster> {
        lock(&self.clusters).get(id).cloned()
    }

    pub fn exists(&self, id: &str) -> bool {
        self.cluster(id).is_some()
    }

    /// The samples (the last hour) and blocking tree `id`'s cluster reports from now on. A
    /// read with `since` gets the samples after it.
    pub fn set_activity(
        &self,
        id: &str,
        activity: wayback_api::activity::Activity,
        locks: wayback_api::activity::Locks,
    ) {
        lock(&self.activity).insert(id.to_string(), (activity, locks));
    }

    /// The client and replication sessions `id`'s cluster reports from now on.
    pub fn set_sessions(&self, id: &str, clients: u32, replication: u32) {
        lock(&self.sessions).insert(
            id.to_string(),
            wayback::runtime::Sessions {
                clients,
                replication,
            },
        );
    }

    /// A client's connection could not wake the parked cluster of `id` for `reason` (as the
    /// wake listener reports a failed start): it stays parked, and the broker hears of it
    /// through `subscribe_wakes`.
    pub fn fail_wake(&self, id: &str, reason: &str) {
        let status = self.cluster(id).expect("a cluster to wake").status;
        assert_eq!(status, ClusterStatus::Parked, "only a parked cluster wakes");
        self.send_wake(id, Some(reason.to_string()));
    }

    fn send_wake(&self, id: &str, error: Option<String>) {
        if let Some(tx) = lock(&self.wakes).as_ref() {
            let _ = tx.send(wayback::runtime::WakeEvent {
                instance: InstanceId::parse(id.to_string()).expect("an instance id"),
                seconds: 0.07,
                error,
            });
        }
    }

    /// A client's connection wakes the parked cluster of `id` (as the wake listener would):
    /// it runs again, and the broker hears of it through `subscribe_wakes`.
    pub fn wake(&self, id: &str) {
        {
            let mut clusters = lock(&self.clusters);
            let cluster = clusters.get_mut(id).expect("a cluster to wake");
            assert_eq!(
                cluster.status,
                ClusterStatus::Parked,
                "only a parked cluster wakes"
            );
            cluster.status = ClusterStatus::Running;
        }
        self.send_wake(id, None);
    }

    /// Makes the (running) cluster of `id` a follower's standby, as `start_follow` would.
    pub fn make_standby(&self, id: &str) {
        let mut clusters = lock(&self.clusters);
        let cluster = clusters.get_mut(id).expect("a cluster to make a standby");
        cluster.standby = true;
    }

    /// Records the call, waits while it is held, then fails it if a test asked for that.
    async fn enter(&self, call: Call, id: Option<&InstanceId>) -> Result<(), RuntimeError> {
        lock(&self.log).push((call, id.map(|i| i.to_string())));
        let hold = lock(&self.holds).get(&call).cloned();
        if let Some(hold) = hold {
            let mut released = hold.released.subscribe();
            hold.arrived.send_modify(|n| *n += 1);
            let _ = released.wait_for(|open| *open).await;
        }
        match lock(&self.failures)
            .get_mut(&call)
            .and_then(VecDeque::pop_front)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Changes the cluster of `id`; it must exist (and run, if `running`), as for PostgreSQL.
    fn with<T>(
        &self,
        id: &InstanceId,
        running: bool,
        change: impl FnOnce(&mut FakeCluster) -> T,
    ) -> Result<T, RuntimeError> {
        let mut clusters = lock(&self.clusters);
        let instance = id.to_string();
        let Some(cluster) = clusters.get_mut(&instance) else {
            return Err(PgError::NoCluster { instance }.into());
        };
        if running && cluster.status != ClusterStatus::Running {
            return Err(PgError::NotRunning { instance }.into());
        }
        Ok(change(cluster))
    }
}
