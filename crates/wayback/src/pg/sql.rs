//! SQL administration of a cluster, as its superuser over the unix socket: the app database and
//! its NOLOGIN owner role, login roles for bindings, reloading settings.
//!
//! Administrative sessions use `template1` ([`ADMIN_DATABASE`]): it exists in every cluster,
//! while a template copy has no `postgres` database (see [`initdb`](super::initdb)). Databases we
//! create are copied from `template0`, so a session in `template1` never makes `CREATE DATABASE`
//! fail with "source database is being accessed by other users".
//!
//! The model: an instance's objects belong to one NOLOGIN *owner role*. Each binding gets a LOGIN
//! role that is a member of it and whose sessions start with `SET ROLE owner` (a per-role
//! setting), so tables an app creates are owned by the owner role and survive unbind. Passwords
//! are sent only as SCRAM verifiers ([`scram`](super::scram)); statement logging of the client is
//! off. Identifiers are always quoted, literals always escaped; DDL goes over the simple query
//! protocol (a bare `&str`, no arguments) because `CREATE DATABASE` cannot run inside a transaction block and
//! utility statements gain nothing from being prepared. Imports only `pg` siblings.

use std::path::Path;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

use super::{scram, PgError, SUPERUSER};

/// The database administrative sessions connect to; present in every cluster.
pub const ADMIN_DATABASE: &str = "template1";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection options for the superuser over the unix socket in `socket_dir`.
pub fn admin_options(socket_dir: &Path, port: u16, password: &SecretString) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .socket(socket_dir)
        .port(port)
        .username(SUPERUSER)
        .password(password.expose_secret())
        .database(ADMIN_DATABASE)
        .ssl_mode(PgSslMode::Disable)
        .application_name("wayback")
        .disable_statement_logging()
}

/// Whether a SQL failure will fail again: bad names, missing objects, privileges, data errors,
/// authentication. Connection problems and a server still starting are worth a retry.
pub fn is_permanent(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| ["42", "22", "28", "3D"].iter().any(|p| c.starts_with(p))),
        sqlx::Error::Configuration(_) => true,
        _ => false,
    }
}

pub fn sql_err(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> PgError {
    let context = context.into();
    move |source| PgError::Sql { context, source }
}

/// A role or database name: 1–63 bytes, no NUL. Reserved names are refused.
pub fn quote_ident(what: &'static str, name: &str) -> Result<String, PgError> {
    let bad = |reason| {
        Err(PgError::InvalidName {
            what,
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("it must be 1 to 63 bytes long");
    }
    if name.contains('\0') {
        return bad("it must not contain NUL");
    }
    let reserved = [SUPERUSER, "postgres", "public", "template0", "template1"];
    if reserved.contains(&name) || name.starts_with("pg_") {
        return bad("the name is reserved");
    }
    Ok(quote_ident_unchecked(name))
}

pub(crate) fn quote_ident_unchecked(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An `E'…'` literal: correct whatever `standard_conforming_strings` says.
pub fn quote_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Connects as the superuser to `database`.
pub async fn connect(opts: &PgConnectOptions, database: &str) -> Result<PgConnection, PgError> {
    let opts = opts.clone().database(database);
    let context = format!("connect to database {database:?} as {SUPERUSER}");
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts)).await {
        Ok(conn) => conn.map_err(sql_err(context)),
        Err(_) => Err(PgError::Sql {
            context,
            source: sqlx::Error::PoolTimedOut,
        }),
    }
}

pub async fn exec(conn: &mut PgConnection, sql: &str, context: &str) -> Result<(), PgError> {
    // A bare &str goes over the simple query protocol (no arguments, so no Parse/Bind).
    conn.execute(sql).await.map(drop).map_err(sql_err(context))
}

/// Runs `sql`; a "duplicate object/database" error (a concurrent or earlier run made it) is fine.
pub(crate) async fn exec_create(
    conn: &mut PgConnection,
    sql: &str,
    context: &str,
) -> Result<(), PgError> {
    match conn.execute(sql).await {
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42710" | "42P04")) => {
            Ok(())
        }
        other => other.map(drop).map_err(sql_err(context)),
    }
}

pub(crate) async fn role_exists(conn: &mut PgConnection, role: &str) -> Result<bool, PgError> {
    sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(conn)
        .await
        .map(|r| r.is_some())
        .map_err(sql_err(format!("look up role {role:?}")))
}

/// What the admin database holds beyond initdb's: `pg_stat_statements`, which the sampler reads
/// ([`activity`](super::activity)). Made with the cluster (in the template, or by
/// [`ensure_database`] on a cluster made without one), never by the sampler on a new cluster: a
/// `CREATE EXTENSION` is a commit, and a commit the user did not make would move the end of the
/// restore window past their last one. Creating the objects needs the library file, not its
/// preloading.
pub const ADMIN_EXTENSIONS: &[&str] = &["CREATE EXTENSION IF NOT EXISTS pg_stat_statements"];

/// The statements that make `database` and its NOLOGIN `owner` role: `shared` run in another
/// database of the cluster (roles and databases are cluster-wide), `local` inside `database`.
/// The template is made with them ([`initdb::build_template`](super::initdb::build_template)),
/// and [`ensure_database`] runs them where they are missing, so the two cannot drift apart.
#[derive(Debug, Clone)]
pub struct AppDatabaseSql {
    pub create_role: String,
    pub create_database: String,
    pub shared: Vec<String>,
    pub local: Vec<String>,
}

/// See [`AppDatabaseSql`]. Only the owner (and so its members) may connect; it owns `public`.
pub fn app_database_sql(database: &str, owner: &str) -> Result<AppDatabaseSql, PgError> {
    let (db_q, owner_q) = (
        quote_ident("database", database)?,
        quote_ident("role", owner)?,
    );
    Ok(AppDatabaseSql {
        create_role: format!("CREATE ROLE {owner_q} NOLOGIN"),
        create_database: format!("CREATE DATABASE {db_q} OWNER {owner_q} TEMPLATE template0"),
        shared: vec![
            format!("ALTER DATABASE {db_q} OWNER TO {owner_q}"),
            format!("REVOKE CONNECT, TEMPORARY ON DATABASE {db_q} FROM PUBLIC"),
            format!("GRANT CONNECT, TEMPORARY ON DATABASE {db_q} TO {owner_q}"),
        ],
        local: vec![format!("ALTER SCHEMA public OWNER TO {owner_q}")],
    })
}

/// True when, seen from a session in `database`, everything [`app_database_sql`] makes is in
/// place: the role, the database owned by it, no CONNECT or TEMPORARY for PUBLIC but both for
/// the owner, and `public` owned by the owner. (`has_database_privilege` is true if *any* listed
/// privilege is held, hence one call per privilege.)
async fn app_database_ready(
    conn: &mut PgConnection,
    database: &str,
    owner: &str,
) -> Result<bool, PgError> {
    sqlx::query_scalar::<_, bool>(
        "SELECT coalesce((
             SELECT d.datdba = r.oid
                AND NOT has_database_privilege('public', d.oid, 'CONNECT')
                AND NOT has_database_privilege('public', d.oid, 'TEMPORARY')
                AND has_database_privilege(r.oid, d.oid, 'CONNECT')
                AND has_database_privilege(r.oid, d.oid, 'TEMPORARY')
                AND (SELECT nspowner FROM pg_namespace WHERE nspname = 'public') = r.oid
             FROM pg_database d, pg_roles r
             WHERE d.datname = $1 AND r.rolname = $2 AND d.datname = current_database()
         ), false)",
    )
    .bind(database)
    .bind(owner)
    .fetch_one(conn)
    .await
    .map_err(sql_err(format!("check database {database:?}")))
}

/// Makes `database` and its NOLOGIN `owner` role as [`app_database_sql`] says, or finds them
/// made. A template copy already has them, so the common case is one connection and one query,
/// with no DDL and so no WAL; anything missing or different is (re)done, idempotently, along
/// with the admin database's [`ADMIN_EXTENSIONS`] (a cluster made without the template).
pub async fn ensure_database(
    opts: &PgConnectOptions,
    database: &str,
    owner: &str,
) -> Result<(), PgError> {
    let sql = app_database_sql(database, owner)?;
    match connect(opts, database).await {
        Ok(mut conn) => {
            let ready = app_database_ready(&mut conn, database, owner).await;
            let _ = conn.close().await;
            if ready? {
                return Ok(());
            }
        }
        // 3D000: no such database yet, so it is made below. Any other failure (connections not
        // allowed, a wrong password) is the caller's to see.
        Err(PgError::Sql {
            source: sqlx::Error::Database(e),
            ..
        }) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e),
    }
    let mut conn = connect(opts, ADMIN_DATABASE).await?;
    if !role_exists(&mut conn, owner).await? {
        exec_create(&mut conn, &sql.create_role, "create owner role").await?;
    }
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(database)
        .fetch_optional(&mut conn)
        .await
        .map_err(sql_err(format!("look up database {database:?}")))?;
    if exists.is_none() {
        exec_create(&mut conn, &sql.create_database, "create database").await?;
    }
    for statement in ADMIN_EXTENSIONS {
        exec(
            &mut conn,
            statement,
            "create the admin database's extensions",
        )
        .await?;
    }
    for statement in &sql.shared {
        exec(
            &mut conn,
            statement,
            "set the database's owner and privileges",
        )
        .await?;
    }
    let _ = conn.close().await;
    let mut conn = connect(opts, database).await?;
    for statement in &sql.local {
        exec(&mut conn, statement, "give the public schema to the owner").await?;
    }
    let _ = conn.close().await;
    Ok(())
}

/// Creates `role` (LOGIN, member of `owner`, sessions act as `owner`) or resets its password.
pub async fn create_login_role(
    opts: &PgConnectOptions,
    role: &str,
    password: &SecretString,
    owner: &str,
) -> Result<(), PgError> {
    let (role_q, owner_q) = (quote_ident("role", role)?, quote_ident("role", owner)?);
    let pw = quote_literal(&scram::verifier(password)?);
    let mut conn = connect(opts, ADMIN_DATABASE).await?;
    let alter = format!("ALTER ROLE {role_q} WITH LOGIN INHERIT PASSWORD {pw}");
    if role_exists(&mut conn, role).await? {
        exec(&mut conn, &alter, "reset the login role's password").await?;
    } else {
        exec_create(
            &mut conn,
            &format!("CREATE ROLE {role_q} WITH LOGIN INHERIT PASSWORD {pw}"),
            "create login role",
        )
        .await?;
        // Created concurrently by an earlier attempt: make sure the password is this one.
        exec(&mut conn, &alter, "set the login role's password").await?;
    }
    exec(
        &mut conn,
        &format!("GRANT {owner_q} TO {role_q}"),
        "grant the owner role",
    )
    .await?;
    exec(
        &mut conn,
        &format!("ALTER ROLE {role_q} SET role = {}", quote_literal(owner)),
        "make sessions act as the owner",
    )
    .await?;
    let _ = conn.close().await;
    Ok(())
}

/// Ends `role`'s sessions, hands what it owns in every database to `owner`, drops it.
pub async fn drop_login_role(
    opts: &PgConnectOptions,
    role: &str,
    owner: &str,
) -> Result<(), PgError> {
    let (role_q, owner_q) = (quote_ident("role", role)?, quote_ident("role", owner)?);
    let mut conn = connect(opts, ADMIN_DATABASE).await?;
    if !role_exists(&mut conn, role).await? {
        return Ok(());
    }
    // NOLOGIN first, so that the role cannot connect again between the terminate and the drop.
    exec(
        &mut conn,
        &format!("ALTER ROLE {role_q} NOLOGIN"),
        "lock the login role",
    )
    .await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(role)
        .execute(&mut conn)
        .await
        .map_err(sql_err("terminate the role's sessions"))?;
    let databases: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(sql_err("list databases"))?;
    for db in databases {
        let mut db_conn = connect(opts, &db).await?;
        let sql = format!("REASSIGN OWNED BY {role_q} TO {owner_q}; DROP OWNED BY {role_q}");
        exec(
            &mut db_conn,
            &sql,
            &format!("reassign what the role owns in {db:?}"),
        )
        .await?;
        let _ = db_conn.close().await;
    }
    exec(
        &mut conn,
        &format!("DROP ROLE IF EXISTS {role_q}"),
        "drop the login role",
    )
    .await?;
    let _ = conn.close().await;
    Ok(())
}

/// Reloads the configuration and returns the settings whose new value needs a restart.
/// `pg_reload_conf()` only signals the postmaster; we wait until our own session has re-read the
/// files (its `pg_conf_load_time()` moves) before reading `pending_restart`, else we could read
/// the state from before the reload.
pub async fn reload(opts: &PgConnectOptions) -> Result<Vec<String>, PgError> {
    let mut conn = connect(opts, ADMIN_DATABASE).await?;
    let before: String = sqlx::query_scalar("SELECT pg_conf_load_time()::text")
        .fetch_one(&mut conn)
        .await
        .map_err(sql_err("read the configuration load time"))?;
    exec(
        &mut conn,
        "SELECT pg_reload_conf()",
        "reload the configuration",
    )
    .await?;
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let moved: bool = sqlx::query_scalar("SELECT pg_conf_load_time() > $1::timestamptz")
            .bind(&before)
            .fetch_one(&mut conn)
            .await
            .map_err(sql_err("read the configuration load time"))?;
        if moved {
            break;
        }
        if Instant::now() >= deadline {
            return Err(PgError::Timeout {
                what: "wait for the configuration reload".into(),
                command: "SELECT pg_reload_conf()".into(),
                secs: RELOAD_TIMEOUT.as_secs(),
                output: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pending = sqlx::query_scalar(
        "SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(sql_err("read pending_restart"))?;
    let _ = conn.close().await;
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("role", "app").unwrap(), "\"app\"");
        assert_eq!(quote_ident("role", "a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "E'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
        for bad in [
            "",
            "wayback_admin",
            "pg_monitor",
            "postgres",
            "a\0b",
            &"x".repeat(64),
        ] {
            assert!(
                quote_ident("role", bad).unwrap_err().is_permanent(),
                "{bad:?}"
            );
        }
    }
}
