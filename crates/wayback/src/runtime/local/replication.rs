//! Followers' replication on this machine's clusters: on a leader, the grant of one follower
//! (a `REPLICATION LOGIN` role, a physical slot, a `pg_hba.conf` line) and its withdrawal, and
//! what its walsenders and slots report; on a follower, its replay and its promotion.
//!
//! The `pg_hba.conf` lines are recorded in `<cluster>/replication-hba` (one `role address` per
//! line) and rendered into the managed file at every rewrite ([`LocalRuntime::hba_text`]), so a
//! start, a plan change or a TLS upgrade keeps them. Withdrawal removes the line and reloads
//! *before* it ends the walsender, else the follower would reconnect at once and keep the slot
//! busy. Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::{Duration, Instant};

use sqlx::Row;

use super::layout::Layout;
use super::{io, rt, ClusterTls, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::sql::{self, quote_literal, ADMIN_DATABASE};
use crate::pg::{conf, fsutil, scram, PgError};
use crate::runtime::{ReplicationGrant, ReplicationStatus, RuntimeError, StandbyStatus};

/// How long a withdrawn follower's walsender may take to let go of its slot.
const SLOT_RELEASE: Duration = Duration::from_secs(30);

/// An LSN as a byte position, in SQL (NULL stays NULL).
fn lsn(expr: &str) -> String {
    format!("pg_wal_lsn_diff({expr}, '0/0')::bigint")
}

/// The whole `pg_hba.conf` of `id` (see [`LocalRuntime::hba_text`]), for the runtime and for
/// a follower's restore, which writes it before the runtime knows the cluster.
pub(super) fn hba_text_at(
    layout: &Layout,
    tls: Option<&ClusterTls>,
    id: &InstanceId,
) -> Result<String, RuntimeError> {
    let mut out = String::new();
    if super::follow::admin_by_peer(layout, id) {
        out += &conf::render_admin_peer(&super::follow::runtime_os_user()?)
            .map_err(rt)?
            .0;
    }
    let block =
        conf::render_replication_hba(&hba_entries(layout, id)?, tls.is_some()).map_err(rt)?;
    let required = tls.is_some_and(|t| t.required_for(layout, id));
    Ok(out + &conf::render_pg_hba(required) + &block)
}

fn hba_entries_file(layout: &Layout, id: &InstanceId) -> std::path::PathBuf {
    layout.cluster(id).join("replication-hba")
}

/// The followers' (role, address) pairs recorded for `id`.
fn hba_entries(layout: &Layout, id: &InstanceId) -> Result<Vec<(String, String)>, RuntimeError> {
    let path = hba_entries_file(layout, id);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(format!("read {}", path.display()))(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(r, a)| (r.to_string(), a.to_string()))
        .collect())
}

impl LocalRuntime {
    fn hba_entries_file(&self, id: &InstanceId) -> std::path::PathBuf {
        hba_entries_file(&self.layout, id)
    }

    /// The followers' (role, address) pairs recorded for `id`.
    pub(super) fn hba_entries(
        &self,
        id: &InstanceId,
    ) -> Result<Vec<(String, String)>, RuntimeError> {
        hba_entries(&self.layout, id)
    }

    /// Records the replication lines of `id` without touching `pg_hba.conf` (a cluster whose
    /// data directory is still to come gets them at the next rewrite of the file).
    pub(super) fn record_hba_entries(
        &self,
        id: &InstanceId,
        entries: &[(String, String)],
    ) -> Result<(), RuntimeError> {
        // Rendered first: an invalid entry is refused before anything is written.
        conf::render_replication_hba(entries, self.tls.is_some()).map_err(rt)?;
        let path = self.hba_entries_file(id);
        let text: String = entries.iter().map(|(r, a)| format!("{r} {a}\n")).collect();
        fsutil::write_atomic(&path, text.as_bytes(), 0o600, None)
            .map_err(io(format!("write {}", path.display())))
    }

    /// The whole `pg_hba.conf` of `id`: a follower's admin peer line, the managed lines, then
    /// its followers' block.
    pub(super) fn hba_text(&self, id: &InstanceId) -> Result<String, RuntimeError> {
        hba_text_at(&self.layout, self.tls.as_ref(), id)
    }

    /// Records the followers' lines, rewrites `pg_hba.conf` and reloads the running server.
    pub(super) async fn set_hba_entries(
        &self,
        id: &InstanceId,
        entries: &[(String, String)],
    ) -> Result<(), RuntimeError> {
        // Rendered first: an invalid entry is refused before anything is written.
        conf::render_replication_hba(entries, self.tls.is_some()).map_err(rt)?;
        let tools = self.tools().await?;
        let dirs = self.existing(id)?;
        self.record_hba_entries(id, entries)?;
        let hba = dirs.pgdata.join("pg_hba.conf");
        fsutil::write_atomic(
            &hba,
            self.hba_text(id)?.as_bytes(),
            0o600,
            tools.run_as.owner(),
        )
        .map_err(io(format!("write {}", hba.display())))?;
        let opts = self.admin_options(id).await?;
        sql::reload(&opts).await.map_err(rt)?;
        Ok(())
    }

    /// On the leader `id`: the follower's role (created, or its password reset), its slot
    /// (created if missing or lost, reserving WAL from now on) and its `pg_hba.conf` line;
    /// reloads.
    pub async fn prepare_replication(
        &self,
        id: &InstanceId,
        grant: &ReplicationGrant,
    ) -> Result<(), RuntimeError> {
        let _guard = self.lock(id).await;
        let opts = self.admin_options(id).await?;
        let mut conn = sql::connect(&opts, ADMIN_DATABASE).await.map_err(rt)?;
        upsert_replication_role(&mut conn, &grant.role, &grant.password).await?;
        // A slot invalidated past `max_slot_wal_keep_size` (`lost`) can never stream again:
        // it is replaced by a new one, which reserves WAL from now on.
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND wal_status = 'lost' AND NOT active",
        )
        .bind(&grant.slot)
        .execute(&mut conn)
        .await
        .map_err(|e| rt(sql::sql_err("replace the lost replication slot")(e)))?;
        sqlx::query(
            "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS \
             (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        )
        .bind(&grant.slot)
        .execute(&mut conn)
        .await
        .map_err(|e| rt(sql::sql_err("create the replication slot")(e)))?;
        drop(conn);
        let mut entries = self.hba_entries(id)?;
        entries.retain(|(r, _)| r != &grant.role);
        entries.push((grant.role.clone(), grant.follower_address.clone()));
        self.set_hba_entries(id, &entries).await
    }

    /// On the leader `id`: the follower's line goes (and a reload), then its walsender, its
    /// slot and its role. Anything already gone is fine.
    pub async fn drop_replication(
        &self,
        id: &InstanceId,
        role: &str,
        slot: &str,
    ) -> Result<(), RuntimeError> {
        let _guard = self.lock(id).await;
        let quoted = sql::quote_ident("replication role", role).map_err(rt)?;
        let mut entries = self.hba_entries(id)?;
        entries.retain(|(r, _)| r != role);
        self.set_hba_entries(id, &entries).await?;
        let opts = self.admin_options(id).await?;
        let mut conn = sql::connect(&opts, ADMIN_DATABASE).await.map_err(rt)?;
        let deadline = Instant::now() + SLOT_RELEASE;
        loop {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE usename = $1 \
                 UNION ALL SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = $2 AND active_pid IS NOT NULL",
            )
            .bind(role)
            .bind(slot)
            .execute(&mut conn)
            .await
            .map_err(|e| rt(sql::sql_err("end the follower's walsender")(e)))?;
            let dropped = sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active",
            )
            .bind(slot)
            .execute(&mut conn)
            .await;
            let left: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            )
            .bind(slot)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| rt(sql::sql_err("look up the replication slot")(e)))?;
            if !left {
                break;
            }
            if Instant::now() >= deadline {
                let detail = dropped.err().map_or(String::new(), |e| format!(": {e}"));
                return Err(rt(PgError::Setup(format!(
                    "replication slot {slot} of {id} is still in use after {} s{detail}",
                    SLOT_RELEASE.as_secs()
                ))));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sql::exec(
            &mut conn,
            &format!("DROP ROLE IF EXISTS {quoted}"),
            "drop the replication role",
        )
        .await
        .map_err(rt)
    }

    /// On the leader `id`: every physical slot, with its walsender if one is connected.
    pub async fn replication_status(
        &self,
        id: &InstanceId,
    ) -> Result<Vec<ReplicationStatus>, RuntimeError> {
        let opts = self.admin_options(id).await?;
        let mut conn = sql::connect(&opts, ADMIN_DATABASE).await.map_err(rt)?;
        let text = format!(
            "SELECT s.slot_name::text, r.usename::text, s.active, r.state, {}, {}, {}, {}, \
             {}, extract(epoch FROM r.replay_lag)::float8, \
             age(coalesce(r.backend_xmin, s.xmin))::bigint, s.wal_status \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_type = 'physical' ORDER BY 1",
            lsn("r.sent_lsn"),
            lsn("r.write_lsn"),
            lsn("r.flush_lsn"),
            lsn("r.replay_lsn"),
            lsn("pg_current_wal_lsn()") + " - " + &lsn("coalesce(r.replay_lsn, s.restart_lsn)"),
        );
        let rows = sqlx::query(&text)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| rt(sql::sql_err("read the replication status")(e)))?;
        let u = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        rows.iter()
            .map(|r| {
                Ok(ReplicationStatus {
                    slot: r.try_get(0)?,
                    role: r.try_get(1)?,
                    active: r.try_get(2)?,
                    state: r.try_get(3)?,
                    sent_lsn: u(r.try_get(4)?),
                    write_lsn: u(r.try_get(5)?),
                    flush_lsn: u(r.try_get(6)?),
                    replay_lsn: u(r.try_get(7)?),
                    lag_bytes: u(r.try_get(8)?),
                    replay_lag_secs: r.try_get(9)?,
                    xmin_age: r.try_get(10)?,
                    wal_status: r.try_get(11)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| rt(sql::sql_err("read the replication status")(e)))
    }

    /// On the follower `id`: how far it received and replayed, and whether it streams.
    pub async fn standby_status(&self, id: &InstanceId) -> Result<StandbyStatus, RuntimeError> {
        let opts = self.admin_options(id).await?;
        let mut conn = sql::connect(&opts, ADMIN_DATABASE).await.map_err(rt)?;
        let text = format!(
            "SELECT pg_is_in_recovery(), {}, {}, \
             extract(epoch FROM pg_last_xact_replay_timestamp())::float8, \
             (SELECT status FROM pg_stat_wal_receiver)",
            lsn("pg_last_wal_receive_lsn()"),
            lsn("pg_last_wal_replay_lsn()"),
        );
        let r = sqlx::query(&text)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| rt(sql::sql_err("read the standby's status")(e)))?;
        let get = || -> Result<StandbyStatus, sqlx::Error> {
            let u = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
            let receiver_status: Option<String> = r.try_get(4)?;
            Ok(StandbyStatus {
                in_recovery: r.try_get(0)?,
                receive_lsn: u(r.try_get(1)?),
                replay_lsn: u(r.try_get(2)?),
                last_replay: r.try_get(3)?,
                streaming: receiver_status.as_deref() == Some("streaming"),
                receiver_status,
            })
        };
        get().map_err(|e| rt(sql::sql_err("read the standby's status")(e)))
    }

    /// Promotes the follower `id` (waiting for it) and returns its new timeline; its standby
    /// settings and replication passfile go, so later starts are ordinary. A cluster already
    /// promoted just reports its timeline.
    pub async fn promote(&self, id: &InstanceId) -> Result<u32, RuntimeError> {
        let _guard = self.lock(id).await;
        let tools = self.tools().await?;
        let dirs = self.existing(id)?;
        let opts = self.admin_options(id).await?;
        let mut conn = sql::connect(&opts, ADMIN_DATABASE).await.map_err(rt)?;
        let sql_err = |what: &'static str| move |e| rt(sql::sql_err(what)(e));
        let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .map_err(sql_err("check recovery"))?;
        if recovering {
            let done: bool = sqlx::query_scalar("SELECT pg_promote(true, $1)")
                .bind(i32::try_from(self.timeout().as_secs()).unwrap_or(60))
                .fetch_one(&mut conn)
                .await
                .map_err(sql_err("promote the follower"))?;
            if !done {
                return Err(rt(PgError::Setup(format!(
                    "{id} was not promoted within {} s",
                    self.timeout().as_secs()
                ))));
            }
        }
        let wal: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")
            .fetch_one(&mut conn)
            .await
            .map_err(sql_err("read the timeline"))?;
        let timeline = wal
            .get(..8)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| rt(PgError::Setup(format!("unexpected WAL file name {wal:?}"))))?;
        if super::follow::admin_by_peer(&self.layout, id) {
            // Its own superuser password now (the one in `admin-password`, which the peer line
            // made unnecessary until here), then the peer line goes. Both are repeatable: a
            // crash between them leaves the marker, and the next call does them again.
            let pw_file = self.layout.password_file(id);
            let text = std::fs::read_to_string(&pw_file)
                .map_err(io(format!("read {}", pw_file.display())))?;
            let verifier = scram::verifier(&secrecy::SecretString::from(text.trim().to_string()))
                .map_err(rt)?;
            let alter = format!(
                "ALTER ROLE {} WITH PASSWORD {}",
                crate::pg::SUPERUSER,
                quote_literal(&verifier)
            );
            sql::exec(
                &mut conn,
                &alter,
                "give the promoted superuser its own password",
            )
            .await
            .map_err(rt)?;
            super::follow::end_admin_by_peer(&self.layout, id)?;
            let hba = dirs.pgdata.join("pg_hba.conf");
            fsutil::write_atomic(
                &hba,
                self.hba_text(id)?.as_bytes(),
                0o600,
                tools.run_as.owner(),
            )
            .map_err(io(format!("write {}", hba.display())))?;
        }
        let include = dirs.pgdata.join(conf::ARCHIVE_INCLUDE);
        fsutil::write_atomic(
            &include,
            b"# Archiving is off.\n",
            0o600,
            tools.run_as.owner(),
        )
        .map_err(io(format!("write {}", include.display())))?;
        for path in [
            super::follow::passfile(&self.layout, id),
            dirs.pgdata.join("standby.signal"),
        ] {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io(format!("remove {}", path.display()))(e));
                }
            }
        }
        sql::reload(&opts).await.map_err(rt)?;
        Ok(timeline)
    }
}

/// Makes the REPLICATION LOGIN role `name` (no other privilege), or resets its password: only
/// its SCRAM verifier reaches the server. A follower's grant and an HA pair's replication role
/// both go through here.
pub(super) async fn upsert_replication_role(
    conn: &mut sqlx::PgConnection,
    name: &str,
    password: &secrecy::SecretString,
) -> Result<(), RuntimeError> {
    let role = sql::quote_ident("replication role", name).map_err(rt)?;
    let verifier = scram::verifier(password).map_err(rt)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| rt(sql::sql_err("look up the replication role")(e)))?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    let text = format!(
        "{verb} ROLE {role} WITH REPLICATION LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
         PASSWORD {}",
        quote_literal(&verifier)
    );
    sql::exec(conn, &text, "create the replication role")
        .await
        .map_err(rt)
}
