//! Secrets at rest: binding passwords are sealed with the keyring ([`crate::crypto`]) on write
//! and opened on read; the column `password_key` says which key sealed each (NULL: a row from
//! before sealing, in clear). At start the broker checks that every key id in use is
//! configured ([`Store::missing_secret_keys`]), then seals the clear rows once
//! ([`Store::seal_clear_secrets`]): row by row, each update guarded by the marker, so a crash
//! half-way leaves rows either clear-and-marked or sealed, and the next start finishes.
//! [`Store::reseal_secrets`] is `wayback rekey`'s part here. Followers' replication passwords
//! (`followers`) and HA instances' shared superuser passwords (`ha`) are sealed from the
//! start: the key check and the re-seal cover them too. Must not import `osb`, `broker`,
//! `runtime` or `pg`.

use sqlx::Row;

use super::{Store, StoreError};
use crate::crypto::Keyring;

/// The associated data a binding's sealed password is bound to: it opens for that row only.
pub(crate) fn binding_password_context(binding_id: &str) -> String {
    format!("binding-password:{binding_id}")
}

impl Store {
    pub(crate) fn keyring(&self) -> Result<&Keyring, StoreError> {
        self.keyring.as_deref().ok_or_else(|| {
            StoreError::Secret("the store was opened without encryption keys".into())
        })
    }

    /// The id of the key new secrets are sealed with.
    pub fn current_key_id(&self) -> Result<&str, StoreError> {
        Ok(self.keyring()?.current_id())
    }

    /// Key ids that sealed stored secrets but are not in the keyring (empty: all can open).
    pub async fn missing_secret_keys(&self) -> Result<Vec<String>, StoreError> {
        let keyring = self.keyring()?;
        // Followers' replication passwords (`followers`) are sealed the same way.
        let rows = sqlx::query(
            "SELECT password_key FROM bindings WHERE password_key IS NOT NULL \
             UNION SELECT replication_password_key FROM instances \
             WHERE replication_password_key IS NOT NULL \
             UNION SELECT superuser_password_key FROM instances \
             WHERE superuser_password_key IS NOT NULL ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut missing = Vec::new();
        for row in rows {
            let id: String = row.try_get(0)?;
            if !keyring.has_key(&id) {
                missing.push(id);
            }
        }
        Ok(missing)
    }

    /// Seals every secret still stored in clear under the current key; returns how many.
    pub async fn seal_clear_secrets(&self) -> Result<usize, StoreError> {
        let keyring = self.keyring()?;
        let rows = sqlx::query("SELECT id, password FROM bindings WHERE password_key IS NULL")
            .fetch_all(&self.pool)
            .await?;
        let mut sealed = 0;
        for row in rows {
            let id: String = row.try_get("id")?;
            let clear: String = row.try_get("password")?;
            let value = keyring.seal(clear.as_bytes(), &binding_password_context(&id));
            let done = sqlx::query(
                "UPDATE bindings SET password = $1, password_key = $2 \
                 WHERE id = $3 AND password_key IS NULL",
            )
            .bind(&value)
            .bind(keyring.current_id())
            .bind(&id)
            .execute(&self.pool)
            .await?;
            sealed += done.rows_affected() as usize;
        }
        Ok(sealed)
    }

    /// Re-seals under the current key every secret an older key sealed (`wayback rekey`);
    /// returns how many. A value that does not open stops it with an error naming the row.
    pub async fn reseal_secrets(&self) -> Result<usize, StoreError> {
        self.reseal(&SealedColumn::BINDING_PASSWORD).await
    }

    /// [`Self::reseal_secrets`] for followers' replication passwords.
    pub async fn reseal_replication_passwords(&self) -> Result<usize, StoreError> {
        self.reseal(&SealedColumn::REPLICATION_PASSWORD).await
    }

    /// [`Self::reseal_secrets`] for HA instances' shared superuser passwords.
    pub async fn reseal_ha_superuser_passwords(&self) -> Result<usize, StoreError> {
        self.reseal(&SealedColumn::HA_SUPERUSER_PASSWORD).await
    }

    /// Re-seals one column's values that an older key sealed; returns how many. Each row is
    /// updated only if it still holds the value read (a concurrent write wins).
    async fn reseal(&self, col: &SealedColumn) -> Result<usize, StoreError> {
        let keyring = self.keyring()?;
        let SealedColumn {
            table,
            value,
            key,
            what,
            context,
        } = col;
        let rows = sqlx::query(&format!(
            "SELECT id, {value} FROM {table} WHERE {key} IS NOT NULL AND {key} <> $1"
        ))
        .bind(keyring.current_id())
        .fetch_all(&self.pool)
        .await?;
        let mut resealed = 0;
        for row in rows {
            let id: String = row.try_get("id")?;
            let old: String = row.try_get(*value)?;
            let context = context(&id);
            let clear = keyring
                .open(&old, &context)
                .map_err(|e| StoreError::Corrupt {
                    id: id.clone(),
                    message: format!("{what}: {e}"),
                })?;
            let sealed = keyring.seal(&clear, &context);
            let done = sqlx::query(&format!(
                "UPDATE {table} SET {value} = $1, {key} = $2 WHERE id = $3 AND {value} = $4"
            ))
            .bind(&sealed)
            .bind(keyring.current_id())
            .bind(&id)
            .bind(&old)
            .execute(&self.pool)
            .await?;
            resealed += done.rows_affected() as usize;
        }
        Ok(resealed)
    }
}

/// A column of sealed secrets: its table, the column holding the sealed value, the one naming
/// the key that sealed it, what it is (for errors) and the context each row's value is bound to.
/// Names are constants of this module, never input.
struct SealedColumn {
    table: &'static str,
    value: &'static str,
    key: &'static str,
    what: &'static str,
    context: fn(&str) -> String,
}

impl SealedColumn {
    const BINDING_PASSWORD: SealedColumn = SealedColumn {
        table: "bindings",
        value: "password",
        key: "password_key",
        what: "binding password",
        context: binding_password_context,
    };
    const REPLICATION_PASSWORD: SealedColumn = SealedColumn {
        table: "instances",
        value: "replication_password",
        key: "replication_password_key",
        what: "replication password",
        context: super::followers::replication_password_context_of,
    };
    const HA_SUPERUSER_PASSWORD: SealedColumn = SealedColumn {
        table: "instances",
        value: "superuser_password",
        key: "superuser_password_key",
        what: "HA superuser password",
        context: super::ha::ha_superuser_context_of,
    };
}
