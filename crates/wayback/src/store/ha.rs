//! HA instances' members (issue 15, migration 0012): one row per member of an instance whose
//! plan has `metadata.wayback.ha` — its Patroni member name, machine, PostgreSQL port and
//! Patroni REST port. The instance row keeps its first member's port and machine; the member
//! rows are what the HA jobs, bindings and views read. Ports here count as held on their machine
//! ([`Store::used_ports`]). The superuser password the members share (migration 0013) is
//! sealed like a binding's (`secrets`: the key check and `wayback rekey` cover it).
//! Must not import `osb`, `broker`, `runtime` or `pg`.

use secrecy::SecretString;
use sqlx::Row;

use super::{conflict_on_unique, now_millis, Store, StoreError};
use crate::domain::InstanceId;

/// The associated data an HA instance's sealed superuser password is bound to.
pub(super) fn ha_superuser_context_of(instance: &str) -> String {
    format!("ha-superuser:{instance}")
}

/// One member of an HA instance, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaMemberRecord {
    pub instance_id: InstanceId,
    /// Patroni's member name, unique in the instance's scope.
    pub member: String,
    /// The machine: the agent's name, or "" for the broker's own.
    pub agent: String,
    /// The host bindings name for this member (the agent's advertised address); None: the
    /// broker's `postgres.advertise_host`.
    pub agent_host: Option<String>,
    pub port: u16,
    pub rest_port: u16,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl HaMemberRecord {
    fn from_row(row: &sqlx::any::AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("instance_id")?;
        let corrupt = |message: String| StoreError::Corrupt {
            id: id.clone(),
            message,
        };
        let port = |col: &str| -> Result<u16, StoreError> {
            let p: i64 = row.try_get(col)?;
            u16::try_from(p).map_err(|_| corrupt(format!("ha_members.{col} {p} is not a port")))
        };
        Ok(Self {
            instance_id: InstanceId::parse(id.clone())
                .map_err(|e| corrupt(format!("ha_members.instance_id: {e}")))?,
            member: row.try_get("member")?,
            agent: row.try_get("agent")?,
            agent_host: row.try_get("agent_host")?,
            port: port("port")?,
            rest_port: port("rest_port")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl Store {
    /// The members of an HA instance, in the order they were made (none: not HA, or not yet).
    pub async fn ha_members(&self, id: &InstanceId) -> Result<Vec<HaMemberRecord>, StoreError> {
        sqlx::query("SELECT * FROM ha_members WHERE instance_id = $1 ORDER BY created_at, member")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(HaMemberRecord::from_row)
            .collect()
    }

    /// Records a member. A row for the same (instance, member) already there is kept and
    /// returned (a step run twice agrees on one placement); `Conflict` when another member holds
    /// the port or REST port on that machine.
    pub async fn ensure_ha_member(
        &self,
        member: &HaMemberRecord,
    ) -> Result<HaMemberRecord, StoreError> {
        if let Some(existing) = self.ha_member(&member.instance_id, &member.member).await? {
            return Ok(existing);
        }
        let key = format!("{}/{}", member.instance_id, member.member);
        sqlx::query(
            "INSERT INTO ha_members (instance_id, member, agent, agent_host, port, rest_port, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(member.instance_id.as_str())
        .bind(&member.member)
        .bind(&member.agent)
        .bind(member.agent_host.as_deref())
        .bind(i64::from(member.port))
        .bind(i64::from(member.rest_port))
        .bind(if member.created_at > 0 {
            member.created_at
        } else {
            now_millis()
        })
        .execute(&self.pool)
        .await
        .map_err(conflict_on_unique(&key))?;
        self.ha_member(&member.instance_id, &member.member)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                id: key,
                message: "ha member vanished".into(),
            })
    }

    /// One member by name.
    pub async fn ha_member(
        &self,
        id: &InstanceId,
        member: &str,
    ) -> Result<Option<HaMemberRecord>, StoreError> {
        sqlx::query("SELECT * FROM ha_members WHERE instance_id = $1 AND member = $2")
            .bind(id.as_str())
            .bind(member)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(HaMemberRecord::from_row)
            .transpose()
    }

    /// Forgets every member of an instance (its members were destroyed); how many rows went.
    pub async fn delete_ha_members(&self, id: &InstanceId) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM ha_members WHERE instance_id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The superuser password an HA instance's members share, opened; None when none is
    /// stored yet.
    pub async fn ha_superuser_password(
        &self,
        id: &InstanceId,
    ) -> Result<Option<SecretString>, StoreError> {
        let row = sqlx::query("SELECT superuser_password FROM instances WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(sealed) = row
            .map(|r| r.try_get::<Option<String>, _>("superuser_password"))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        self.keyring()?
            .open_secret(&sealed, &ha_superuser_context_of(id.as_str()))
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                id: id.to_string(),
                message: format!("HA superuser password: {e}"),
            })
    }

    /// Stores `password` sealed unless the instance has one already, and returns the one
    /// stored: a step run twice (or twice at once) agrees on one password.
    pub async fn ensure_ha_superuser_password(
        &self,
        id: &InstanceId,
        password: &SecretString,
    ) -> Result<SecretString, StoreError> {
        let keyring = self.keyring()?;
        let sealed = keyring.seal_secret(password, &ha_superuser_context_of(id.as_str()));
        sqlx::query(
            "UPDATE instances SET superuser_password = $1, superuser_password_key = $2 \
             WHERE id = $3 AND superuser_password IS NULL",
        )
        .bind(&sealed)
        .bind(keyring.current_id())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        self.ha_superuser_password(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                id: id.to_string(),
                message: "the instance is gone".into(),
            })
    }

    /// An HA instance's system identifier, once its first base backup recorded it.
    pub async fn ha_system_identifier(&self, id: &InstanceId) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT system_identifier FROM instances WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(text) = row
            .map(|r| r.try_get::<Option<String>, _>("system_identifier"))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        text.parse().map(Some).map_err(|_| StoreError::Corrupt {
            id: id.to_string(),
            message: format!("instances.system_identifier {text:?} is not a number"),
        })
    }

    /// Records an HA instance's system identifier.
    pub async fn set_ha_system_identifier(
        &self,
        id: &InstanceId,
        system_identifier: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET system_identifier = $1 WHERE id = $2")
            .bind(system_identifier.to_string())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The instances with two members or more recorded (the HA metrics' instances).
    pub async fn ha_instance_ids(&self) -> Result<Vec<InstanceId>, StoreError> {
        let rows = sqlx::query(
            "SELECT instance_id FROM ha_members GROUP BY instance_id HAVING COUNT(*) >= 2 \
             ORDER BY instance_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("instance_id")?;
                InstanceId::parse(id.clone()).map_err(|e| StoreError::Corrupt {
                    id,
                    message: format!("ha_members.instance_id: {e}"),
                })
            })
            .collect()
    }
}
