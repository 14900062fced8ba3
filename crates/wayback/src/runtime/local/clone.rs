//! What a clone-from provision needs of the local runtime besides the restore (see
//! [`super::restore`]): a WAL switch of the source that names its segment (fork), and the
//! revocation of every login copied from the source. Must not import `osb`, `broker`, `store`
//! or `jobs`.

use super::{rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::{sql, PgError, SUPERUSER};
use crate::runtime::RuntimeError;

impl LocalRuntime {
    /// Switches WAL; (LSN, the segment just completed — or, with nothing to switch, the last
    /// one, already archived).
    pub async fn switch_wal_segment(
        &self,
        id: &InstanceId,
    ) -> Result<(String, String), RuntimeError> {
        use sqlx::Row;
        let options = self.admin_options(id).await?;
        let mut conn = sql::connect(&options, sql::ADMIN_DATABASE)
            .await
            .map_err(rt)?;
        let row = sqlx::query("SELECT l::text, pg_walfile_name(l) FROM pg_switch_wal() AS l")
            .fetch_one(&mut conn)
            .await
            .map_err(|source| {
                rt(PgError::Sql {
                    context: "switch WAL".into(),
                    source,
                })
            })?;
        Ok((row.get(0), row.get(1)))
    }

    /// Every role but the superuser loses its password and its login, and its sessions end: a
    /// clone must accept no credential of its source. Returns the roles that could log in.
    pub async fn revoke_copied_logins(&self, id: &InstanceId) -> Result<Vec<String>, RuntimeError> {
        let options = self.admin_options(id).await?;
        let mut conn = sql::connect(&options, sql::ADMIN_DATABASE)
            .await
            .map_err(rt)?;
        let roles: Vec<(String, bool)> = sqlx::query_as(
            "SELECT rolname::text, rolcanlogin FROM pg_roles \
             WHERE rolname <> $1 AND rolname !~ '^pg_' AND (rolcanlogin OR rolpassword IS NOT NULL)",
        )
        .bind(SUPERUSER)
        .fetch_all(&mut conn)
        .await
        .map_err(sql_err("list the roles copied from the source"))?;
        let mut logins = Vec::new();
        for (role, can_login) in roles {
            let ident = sql::quote_ident_unchecked(&role);
            sqlx::query(&format!("ALTER ROLE {ident} NOLOGIN PASSWORD NULL"))
                .execute(&mut conn)
                .await
                .map_err(sql_err("revoke a role's login"))?;
            if can_login {
                logins.push(role);
            }
        }
        sqlx::query(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a JOIN pg_roles r \
             ON r.rolname = a.usename WHERE NOT r.rolcanlogin AND a.pid <> pg_backend_pid()",
        )
        .execute(&mut conn)
        .await
        .map_err(sql_err("end the sessions of revoked roles"))?;
        Ok(logins)
    }
}

/// A plain fn, not a closure: a higher-ranked closure held across an await makes the job
/// future not `Send`.
fn sql_err(context: &'static str) -> impl FnOnce(sqlx::Error) -> RuntimeError {
    move |source| {
        rt(PgError::Sql {
            context: context.to_string(),
            source,
        })
    }
}
