//! Read-only login roles: what a `read_only` binding (and every binding of a follower) gets.
//!
//! Such a role is not a member of the instance's owner role (so it owns nothing and can grant
//! nothing): it reads through `pg_read_all_data` (PostgreSQL 14+), which covers every table,
//! view and sequence of every schema, including tables the owner creates after the bind, and
//! its sessions start read-only (`default_transaction_read_only = on`), so a write fails with
//! PostgreSQL's own "cannot execute … in a read-only transaction" before any privilege check.
//! It may CONNECT to the app database (PUBLIC may not, [`super::sql::app_database_sql`]).
//! Dropping it is [`super::sql::drop_login_role`]'s job (its `DROP OWNED` takes the CONNECT
//! grant back). Everything it does is in the shared catalogs, so a role made on a leader exists
//! on its followers once they replay it. Imports only `pg` siblings.

use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;

use super::scram;
use super::sql::{
    connect, exec, exec_create, quote_ident, quote_literal, role_exists, ADMIN_DATABASE,
};
use super::PgError;

/// Creates `role` (LOGIN, reads everything in `database`, never writes) or resets its password.
pub async fn create_read_only_role(
    opts: &PgConnectOptions,
    role: &str,
    password: &SecretString,
    database: &str,
) -> Result<(), PgError> {
    let role_q = quote_ident("role", role)?;
    let db_q = quote_ident("database", database)?;
    let pw = quote_literal(&scram::verifier(password)?);
    let mut conn = connect(opts, ADMIN_DATABASE).await?;
    let alter = format!("ALTER ROLE {role_q} WITH LOGIN INHERIT PASSWORD {pw}");
    if role_exists(&mut conn, role).await? {
        exec(&mut conn, &alter, "reset the read-only role's password").await?;
    } else {
        exec_create(
            &mut conn,
            &format!("CREATE ROLE {role_q} WITH LOGIN INHERIT PASSWORD {pw}"),
            "create the read-only role",
        )
        .await?;
        exec(&mut conn, &alter, "set the read-only role's password").await?;
    }
    for (sql, context) in [
        (
            format!("GRANT pg_read_all_data TO {role_q}"),
            "let the role read every table",
        ),
        (
            format!("ALTER ROLE {role_q} SET default_transaction_read_only = on"),
            "make the role's sessions read-only",
        ),
        (
            format!("GRANT CONNECT ON DATABASE {db_q} TO {role_q}"),
            "let the role connect to the app database",
        ),
    ] {
        exec(&mut conn, &sql, context).await?;
    }
    let _ = conn.close().await;
    Ok(())
}
