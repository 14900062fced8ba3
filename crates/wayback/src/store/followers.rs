//! A follower's rows: its replication password (sealed like a binding's, `secrets`), and the
//! end of its following (`leader_id` cleared by `unfollow`). The set of followers of a leader
//! is `Store::followers_of` (`instances`). Must not import `osb`, `broker`, `runtime` or `pg`.

use secrecy::SecretString;
use sqlx::Row;

use super::{now_millis, Store, StoreError};
use crate::domain::InstanceId;

/// The associated data a follower's sealed replication password is bound to.
pub(crate) fn replication_password_context(follower: &InstanceId) -> String {
    replication_password_context_of(follower.as_str())
}

/// [`replication_password_context`] of a stored id.
pub(super) fn replication_password_context_of(follower: &str) -> String {
    format!("replication:{follower}")
}

impl Store {
    /// The follower's replication password, opened; None when none is stored yet.
    pub async fn replication_password(
        &self,
        follower: &InstanceId,
    ) -> Result<Option<SecretString>, StoreError> {
        let row = sqlx::query("SELECT replication_password FROM instances WHERE id = $1")
            .bind(follower.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(sealed) = row
            .map(|r| r.try_get::<Option<String>, _>("replication_password"))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        let keyring = self.keyring()?;
        keyring
            .open_secret(&sealed, &replication_password_context(follower))
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                id: follower.to_string(),
                message: format!("replication password: {e}"),
            })
    }

    /// Stores `password` sealed unless the follower has one already, and returns the one
    /// stored: a step run twice (or twice at once) agrees on one password.
    pub async fn ensure_replication_password(
        &self,
        follower: &InstanceId,
        password: &SecretString,
    ) -> Result<SecretString, StoreError> {
        let keyring = self.keyring()?;
        let sealed = keyring.seal_secret(password, &replication_password_context(follower));
        sqlx::query(
            "UPDATE instances SET replication_password = $1, replication_password_key = $2 \
             WHERE id = $3 AND replication_password IS NULL",
        )
        .bind(&sealed)
        .bind(keyring.current_id())
        .bind(follower.as_str())
        .execute(&self.pool)
        .await?;
        self.replication_password(follower)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                id: follower.to_string(),
                message: "the instance is gone".into(),
            })
    }

    /// The follower is an independent instance now: no leader, no replication password.
    pub async fn end_following(&self, follower: &InstanceId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET leader_id = NULL, replication_password = NULL, \
             replication_password_key = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(now_millis())
        .bind(follower.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
