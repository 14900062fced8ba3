//! Dashboard sign-ins started and not yet finished (migration 0016): the OAuth2 `state` as a
//! SHA-256 digest (the table never holds a value a browser could replay), the instance the
//! sign-in is for, and the PKCE code verifier sealed with the keyring, bound to that digest.
//!
//! [`Store::take_dashboard_login`] deletes the row and returns it in one statement, so that of
//! two callbacks with one state (a replay, or a double click reaching two brokers) exactly one
//! gets it. Rows older than the caller's limit are refused and pruned.

use secrecy::SecretString;
use sqlx::Row;

use super::{Store, StoreError};
use crate::domain::InstanceId;

/// A sign-in taken back at its callback.
#[derive(Debug)]
pub struct PendingLogin {
    pub instance_id: InstanceId,
    /// The PKCE `code_verifier`, opened.
    pub verifier: SecretString,
    /// Unix milliseconds.
    pub created_at: i64,
}

fn verifier_context(state_hash: &str) -> String {
    format!("dashboard-login:{state_hash}")
}

impl Store {
    /// Records a sign-in under `state_hash`, after pruning those created before `prune_before`
    /// (Unix ms).
    pub async fn insert_dashboard_login(
        &self,
        state_hash: &str,
        instance: &InstanceId,
        verifier: &SecretString,
        now_ms: i64,
        prune_before: i64,
    ) -> Result<(), StoreError> {
        self.prune_dashboard_logins(prune_before).await?;
        let sealed = self
            .keyring()?
            .seal_secret(verifier, &verifier_context(state_hash));
        sqlx::query(
            "INSERT INTO dashboard_logins (state_hash, instance_id, verifier, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(state_hash)
        .bind(instance.as_str())
        .bind(sealed)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(super::conflict_on_unique(state_hash))?;
        Ok(())
    }

    /// Deletes the sign-in `state_hash` names and returns it, if there was one created at or
    /// after `not_before` (Unix ms); an older one is deleted and `None`.
    pub async fn take_dashboard_login(
        &self,
        state_hash: &str,
        not_before: i64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM dashboard_logins WHERE state_hash = $1 \
             RETURNING instance_id, verifier, created_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let created_at: i64 = row.try_get("created_at")?;
        if created_at < not_before {
            return Ok(None);
        }
        let id: String = row.try_get("instance_id")?;
        let instance_id = InstanceId::parse(id.clone()).map_err(|e| StoreError::Corrupt {
            id,
            message: format!("dashboard_logins.instance_id: {e}"),
        })?;
        let sealed: String = row.try_get("verifier")?;
        let verifier = self
            .keyring()?
            .open_secret(&sealed, &verifier_context(state_hash))
            .map_err(|e| StoreError::Secret(format!("a dashboard sign-in's verifier: {e}")))?;
        Ok(Some(PendingLogin {
            instance_id,
            verifier,
            created_at,
        }))
    }

    /// Deletes the sign-ins created before `before` (Unix ms); how many.
    pub async fn prune_dashboard_logins(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM dashboard_logins WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Re-seals under the current key the verifiers of sign-ins an older key sealed
    /// (`wayback rekey`), so that a sign-in started before a rekey still finishes after the old
    /// key is removed; returns how many. Each row is updated only if it still holds the value
    /// read (a callback that took it meanwhile wins). One that no configured key opens could
    /// never finish: it is deleted (its user signs in again). These rows live minutes, so the
    /// start-up check for missing keys leaves them out.
    pub async fn reseal_dashboard_logins(&self) -> Result<usize, StoreError> {
        let keyring = self.keyring()?;
        let rows = sqlx::query("SELECT state_hash, verifier FROM dashboard_logins")
            .fetch_all(&self.pool)
            .await?;
        let mut resealed = 0;
        for row in rows {
            let state_hash: String = row.try_get("state_hash")?;
            let old: String = row.try_get("verifier")?;
            if !keyring.is_stale(&old) {
                continue;
            }
            let context = verifier_context(&state_hash);
            let Ok(clear) = keyring.open(&old, &context) else {
                tracing::info!("a pending dashboard sign-in no configured key opens is dropped");
                sqlx::query("DELETE FROM dashboard_logins WHERE state_hash = $1 AND verifier = $2")
                    .bind(&state_hash)
                    .bind(&old)
                    .execute(&self.pool)
                    .await?;
                continue;
            };
            let sealed = keyring.seal(&clear, &context);
            let done = sqlx::query(
                "UPDATE dashboard_logins SET verifier = $1 WHERE state_hash = $2 AND verifier = $3",
            )
            .bind(&sealed)
            .bind(&state_hash)
            .bind(&old)
            .execute(&self.pool)
            .await?;
            resealed += done.rows_affected() as usize;
        }
        Ok(resealed)
    }

    /// Sign-ins waiting for their callback (for tests and diagnostics).
    pub async fn dashboard_login_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM dashboard_logins")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}
