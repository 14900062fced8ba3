//! The sampler (issue 19): one task per [`LocalRuntime`] (the broker's machine, every agent)
//! that looks at every running cluster here once a second and keeps what it saw in a
//! [`ring::Ring`] per instance; `activity` and `activity_summaries` read the rings.
//!
//! The rules, each kept in the code:
//!
//! 1. **Never wake, never hold a stopped cluster**: before every look (and so before every
//!    connect) a cluster must have a live postmaster and no park marker; a cluster that
//!    stopped, was parked or left this machine loses its session at once. The session goes
//!    over the unix socket, which the wake listener (a TCP hold) never answers.
//! 2. **Titles first** (`pg::activity::census`): when no client does anything but `idle`,
//!    the sample is taken from `/proc` and no SQL runs.
//! 3. **One session per busy cluster**, the superuser's (left out of every count, and of the
//!    idle clock, so sampling keeps no cluster awake), `application_name` `wayback-sampler`,
//!    in the admin database; it is closed after [`IDLE_CLOSE`] without clients.
//! 4. **The 15 s facts** are read when a client was seen since the last ones, else every
//!    [`STATS_REFRESH`] (an idle cluster's counters do not move, and a connect costs more
//!    than a title read).
//! 5. **Bounded**: a ring holds an hour; an instance destroyed or gone from this machine loses
//!    its ring; a cluster the sampler cannot reach (a follower or HA member whose admin login
//!    differs, a broken one) is logged once until it works again and asked again only every
//!    [`RETRY_AFTER`], its sessions counted from titles meanwhile.
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

pub mod ring;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use wayback_api::activity::{Activity, ActivitySummary, Sample};

use super::wake::marker;
use super::LocalRuntime;
use crate::domain::InstanceId;
use crate::pg::activity::{self as pga, RelationName};
use crate::pg::{sessions, sql, SUPERUSER};
use ring::Ring;

/// How often every cluster is looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the 15 s facts are read while clients are about.
pub const STATS_EVERY: Duration = Duration::from_secs(15);
/// How often an idle cluster's facts are read all the same.
pub const STATS_REFRESH: Duration = Duration::from_secs(300);
/// A session unused this long (no client seen) is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Clusters looked at at once.
const CONCURRENCY: usize = 16;
/// Relation names are asked again after this long (a table may be renamed).
const NAMES_TTL: Duration = Duration::from_secs(60);
/// After a failed look (no session could be opened, a statement failed), SQL waits this long:
/// a cluster the sampler cannot reach costs a connect attempt now and then, not every second.
const RETRY_AFTER: Duration = Duration::from_secs(30);

type Rings = Arc<Mutex<HashMap<InstanceId, Ring>>>;

/// The sampler of one runtime: its rings, and the task that fills them.
pub(crate) struct Sampler {
    rings: Rings,
    enabled: bool,
    started: AtomicBool,
    cancel: CancellationToken,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Sampler {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            rings: Arc::default(),
            enabled,
            started: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Ring>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn forget(&self, id: &InstanceId) {
        self.lock().remove(id);
    }

    pub(crate) fn activity(
        &self,
        id: &InstanceId,
        since: Option<chrono::DateTime<Utc>>,
    ) -> Activity {
        self.lock()
            .get(id)
            .map(|r| r.read(since))
            .unwrap_or_default()
    }

    pub(crate) fn summaries(&self) -> Vec<ActivitySummary> {
        let rings = self.lock();
        let mut out: Vec<ActivitySummary> = rings
            .iter()
            .map(|(id, ring)| ring.summary(id.as_str()))
            .collect();
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        out
    }
}

impl LocalRuntime {
    /// This runtime samples its clusters once `prepare` ran (`metrics.sampling`; the broker
    /// and agents turn it on, a runtime made for one command leaves it off).
    pub fn with_sampling(mut self, enabled: bool) -> Self {
        self.activity = Sampler::new(enabled);
        self
    }

    /// An instance's ring from `since` on; `sampling: false` when its cluster is not sampled
    /// now (stopped, parked, not here, or sampling is off).
    pub fn activity(&self, id: &InstanceId, since: Option<chrono::DateTime<Utc>>) -> Activity {
        self.activity.activity(id, since)
    }

    /// The newest sample, facts and counters of every instance sampled here.
    pub fn activity_summaries(&self) -> Vec<ActivitySummary> {
        self.activity.summaries()
    }

    /// Starts the sampler's task once (from `prepare`); it ends with the runtime.
    pub(super) fn start_sampler(&self) {
        if !self.activity.enabled || self.activity.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let task = Task {
            view: self.waker(),
            rings: self.activity.rings.clone(),
            slots: HashMap::new(),
        };
        let cancel = self.activity.cancel.clone();
        tokio::spawn(task.run(cancel));
        tracing::debug!("activity sampler started");
    }
}

/// What the sampler keeps per cluster between ticks.
#[derive(Default)]
struct Slot {
    session: Option<Session>,
    last_stats: Option<Instant>,
    clients_since_stats: bool,
    /// The last failure was logged; cleared when a look works again.
    failing: bool,
    /// No SQL before this (after a failure).
    retry_at: Option<Instant>,
    /// The postmaster and the server's own processes, known from earlier looks.
    titles: sessions::TitleCache,
}

struct Session {
    conn: PgConnection,
    statements: bool,
    last_client: Instant,
    names: HashMap<(String, i64), RelationName>,
    names_at: Instant,
}

struct Task {
    /// A runtime sharing this one's layout and settings (the task cannot borrow it).
    view: LocalRuntime,
    rings: Rings,
    slots: HashMap<InstanceId, Slot>,
}

impl Task {
    async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => self.tick().await,
            }
        }
        for (_, slot) in self.slots.drain() {
            if let Some(s) = slot.session {
                let _ = s.conn.close().await;
            }
        }
    }

    async fn tick(&mut self) {
        let ids = self.view.cluster_ids();
        let here: HashSet<&InstanceId> = ids.iter().collect();
        self.slots.retain(|id, _| here.contains(id));
        {
            let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
            rings.retain(|id, _| here.contains(id));
        }
        let work: Vec<(InstanceId, Slot)> = ids
            .iter()
            .map(|id| (id.clone(), self.slots.remove(id).unwrap_or_default()))
            .collect();
        let view = &self.view;
        let done: Vec<(InstanceId, Slot, Look)> = futures::stream::iter(work)
            .map(|(id, mut slot)| async move {
                let look = look(view, &id, &mut slot).await;
                (id, slot, look)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        for (id, slot, look) in done {
            match look {
                Look::NotRunning => {
                    if let Some(ring) = rings.get_mut(&id) {
                        ring.pause();
                    }
                }
                Look::Seen { sample, stats } => {
                    let ring = rings.entry(id.clone()).or_default();
                    ring.push_sample(sample);
                    if let Some(stats) = stats {
                        ring.push_stats(*stats);
                    }
                }
            }
            self.slots.insert(id, slot);
        }
    }
}

enum Look {
    /// Stopped, parked, being made, or gone: nothing to sample (rule 1).
    NotRunning,
    Seen {
        sample: Sample,
        stats: Option<Box<wayback_api::activity::DatabaseStats>>,
    },
}

/// One cluster, one tick.
async fn look(view: &LocalRuntime, id: &InstanceId, slot: &mut Slot) -> Look {
    let dirs = view.layout.dirs(id);
    let cluster = view.layout.cluster(id);
    // Rule 1: a parked cluster (its port held by the wake listener) or one without a live
    // postmaster is not looked at, and its session is dropped.
    let titles = if !dirs.exists() || marker::is_parked(&cluster) {
        None
    } else {
        sessions::titles_cached(&dirs.pgdata, &mut slot.titles)
            .ok()
            .flatten()
    };
    let Some(titles) = titles else {
        slot.titles = sessions::TitleCache::default();
        slot.session = None;
        return Look::NotRunning;
    };
    let at = Utc::now();
    let census = pga::census(titles.iter().map(String::as_str), &[SUPERUSER]);
    let clients = census.sessions.total() > 0;
    slot.clients_since_stats |= clients;
    let now = Instant::now();
    let stats_due = match slot.last_stats {
        None => true,
        Some(t) => {
            let age = now.duration_since(t);
            age >= STATS_REFRESH || (age >= STATS_EVERY && slot.clients_since_stats)
        }
    };
    let from_titles = Sample {
        at,
        sessions: census.sessions,
        ..Sample::default()
    };
    if let Some(s) = &mut slot.session {
        if clients {
            s.last_client = now;
        }
    }
    let held_off = slot.retry_at.is_some_and(|t| now < t);
    if held_off || (!census.busy && !stats_due) {
        if slot
            .session
            .as_ref()
            .is_some_and(|s| now.duration_since(s.last_client) >= IDLE_CLOSE)
        {
            if let Some(s) = slot.session.take() {
                let _ = s.conn.close().await;
            }
        }
        return Look::Seen {
            sample: from_titles,
            stats: None,
        };
    }
    match sql_look(view, id, slot, census.busy, stats_due, at).await {
        Ok((sample, stats)) => {
            if slot.failing {
                tracing::info!(instance = %id, "activity sampling works again");
                slot.failing = false;
            }
            slot.retry_at = None;
            if stats.is_some() {
                slot.last_stats = Some(now);
                slot.clients_since_stats = false;
            }
            Look::Seen {
                sample: sample.unwrap_or(from_titles),
                stats: stats.map(Box::new),
            }
        }
        Err(e) => {
            slot.session = None;
            // A cluster that stopped between the title read and the query is not a failure.
            let still_running = !marker::is_parked(&cluster)
                && crate::pg::pidfile::live_postmaster(&dirs.pgdata)
                    .ok()
                    .flatten()
                    .is_some();
            if still_running {
                if !slot.failing {
                    tracing::warn!(instance = %id, error = %e, "cannot sample the cluster's activity; its sessions are counted from process titles until it works");
                    slot.failing = true;
                }
                // Not asked again at once: a cluster the sampler cannot reach costs a connect
                // attempt every RETRY_AFTER, not every tick.
                slot.retry_at = Some(now + RETRY_AFTER);
            }
            Look::Seen {
                sample: from_titles,
                stats: None,
            }
        }
    }
}

/// The SQL part of a look: the sample when `busy`, the facts when `stats_due`.
async fn sql_look(
    view: &LocalRuntime,
    id: &InstanceId,
    slot: &mut Slot,
    busy: bool,
    stats_due: bool,
    at: chrono::DateTime<Utc>,
) -> Result<(Option<Sample>, Option<wayback_api::activity::DatabaseStats>), String> {
    if slot.session.is_none() {
        slot.session = Some(connect(view, id).await?);
    }
    let Some(session) = slot.session.as_mut() else {
        return Err("no session".into());
    };
    let sample = if busy {
        let raw = pga::read_sample(&mut session.conn, session.statements, at)
            .await
            .map_err(|e| e.to_string())?;
        Some(name_waits(view, id, session, raw).await)
    } else {
        None
    };
    let stats = if stats_due {
        Some(
            pga::read_stats(&mut session.conn, session.statements, at)
                .await
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    Ok((sample, stats))
}

/// The sampler's session (rule 3), opened only for a running, unparked cluster.
async fn connect(view: &LocalRuntime, id: &InstanceId) -> Result<Session, String> {
    let opts = admin_options(view, id, sql::ADMIN_DATABASE)?;
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, opts.connect())
        .await
        .map_err(|_| format!("connecting took more than {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    let statements = pga::prepare_session(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    if !statements {
        tracing::info!(instance = %id, "pg_stat_statements is not loaded (the cluster started before its configuration carried it; it loads at the next restart): no statement text until then");
    }
    Ok(Session {
        conn,
        statements,
        last_client: Instant::now(),
        names: HashMap::new(),
        names_at: Instant::now(),
    })
}

/// Superuser options to `database` over the socket — after checking again that the cluster
/// runs and is not parked (rule 1).
fn admin_options(
    view: &LocalRuntime,
    id: &InstanceId,
    database: &str,
) -> Result<sqlx::postgres::PgConnectOptions, String> {
    if marker::is_parked(&view.layout.cluster(id)) {
        return Err("the cluster is parked".into());
    }
    let dirs = view.layout.dirs(id);
    let port = view.running_port(id, &dirs).map_err(|e| e.to_string())?;
    let opts = view
        .admin_options_at(&dirs, port)
        .map_err(|e| e.to_string())?;
    Ok(opts.database(database).application_name(pga::SAMPLER_APP))
}

/// Gives each waiter its relation's name, asked in the waiter's database (names kept for
/// [`NAMES_TTL`]); a name that cannot be read stays unknown, the wait is kept.
async fn name_waits(
    view: &LocalRuntime,
    id: &InstanceId,
    session: &mut Session,
    raw: pga::RawSample,
) -> Sample {
    let mut sample = raw.sample;
    if session.names_at.elapsed() >= NAMES_TTL {
        session.names.clear();
        session.names_at = Instant::now();
    }
    let mut missing: HashMap<String, Vec<i64>> = HashMap::new();
    for wait in &raw.waits {
        let Some(db) = &wait.database else { continue };
        for oid in pga::relation_oids(wait) {
            if !session.names.contains_key(&(db.clone(), oid)) {
                missing.entry(db.clone()).or_default().push(oid);
            }
        }
    }
    for (db, oids) in missing {
        let found = if db == sql::ADMIN_DATABASE {
            pga::relation_names(&mut session.conn, &oids)
                .await
                .map_err(|e| e.to_string())
        } else {
            relation_names_in(view, id, &db, &oids).await
        };
        match found {
            Ok(names) => {
                for (oid, name) in names {
                    session.names.insert((db.clone(), oid), name);
                }
            }
            Err(e) => {
                tracing::debug!(instance = %id, database = %db, error = %e, "cannot name the relations of lock waiters");
            }
        }
    }
    sample.waits = raw
        .waits
        .into_iter()
        .map(|w| {
            let db = w.database.clone().unwrap_or_default();
            let names: HashMap<i64, RelationName> = pga::relation_oids(&w)
                .into_iter()
                .filter_map(|oid| {
                    session
                        .names
                        .get(&(db.clone(), oid))
                        .map(|n| (oid, n.clone()))
                })
                .collect();
            let relation = pga::pick_relation(&w, &names);
            pga::lock_wait(w, relation)
        })
        .collect();
    sample
}

/// A short session in `database` to name relations.
async fn relation_names_in(
    view: &LocalRuntime,
    id: &InstanceId,
    database: &str,
    oids: &[i64],
) -> Result<HashMap<i64, RelationName>, String> {
    let opts = admin_options(view, id, database)?;
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, opts.connect())
        .await
        .map_err(|_| format!("connecting took more than {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    let names = pga::relation_names(&mut conn, oids).await;
    let _ = conn.close().await;
    names.map_err(|e| e.to_string())
}
