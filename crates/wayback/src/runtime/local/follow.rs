//! A follower's standby restore on this machine: the clone's background machinery
//! ([`LocalRuntime::start_work`], polled with `restore_status`) with the engine's standby target.
//!
//! The follower's connection to its leader holds no secret in its configuration: the
//! replication password is in `<cluster>/replication.pass` (a libpq passfile, 0600, the
//! cluster user's, outside `pgdata`), and with TLS the leader is verified against the
//! operator's CA (`<cluster>/replication-ca.crt`): `sslmode=verify-full`. The follower's
//! `admin-password` is its leader's superuser password, since its roles are its leader's.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::path::PathBuf;
use std::sync::Arc;

use secrecy::ExposeSecret;

use super::layout::Layout;
use super::restore::{Site, Work};
use super::{io, LocalRuntime};
use crate::archive::keydoc;
use crate::archive::restore::{self as engine, RestoreProgress, RestoreReport, StandbySource};
use crate::domain::InstanceId;
use crate::pg::fsutil;
use crate::runtime::{FollowSpec, RestoreStatus, RuntimeError};

/// The follower's libpq passfile.
pub(super) fn passfile(layout: &Layout, id: &InstanceId) -> PathBuf {
    layout.cluster(id).join("replication.pass")
}

/// One field of a passfile line (`:` and `\` escaped).
fn pass_field(s: &str) -> String {
    s.replace('\\', r"\\").replace(':', r"\:")
}

/// One value of a libpq connection string, always quoted.
fn conn_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', r"\\").replace('\'', r"\'"))
}

/// `primary_conninfo` (pure): no password, a passfile; verify-full against `ca` when given.
pub(super) fn conninfo(spec: &FollowSpec, passfile: &str, ca: Option<&str>) -> String {
    let mut out = format!(
        "host={} port={} user={} passfile={} application_name={}",
        conn_value(&spec.leader_host),
        spec.leader_port,
        conn_value(&spec.role),
        conn_value(passfile),
        conn_value(&spec.slot),
    );
    match ca {
        Some(ca) => out += &format!(" sslmode=verify-full sslrootcert={}", conn_value(ca)),
        None => out += " sslmode=prefer",
    }
    out
}

impl LocalRuntime {
    /// Starts making `id` a follower (a standby restore) in the background, or joins the one
    /// that runs or succeeded; poll it with `restore_status`.
    pub async fn start_follow(
        &self,
        id: &InstanceId,
        spec: &FollowSpec,
    ) -> Result<RestoreStatus, RuntimeError> {
        self.start_work(id, Work::Follow(spec.clone())).await
    }
}

impl Site {
    /// Restores the leader's newest base backup into `id` as a standby and waits until it is
    /// consistent. None: an earlier run already did.
    pub(super) async fn follow(
        &self,
        id: &InstanceId,
        spec: FollowSpec,
        progress: Arc<RestoreProgress>,
    ) -> Result<Option<RestoreReport>, RuntimeError> {
        let keyring = self.archive.keyring.as_deref();
        let source_key = keydoc::data_key(&self.archive.store, keyring, spec.leader.as_str())
            .await
            .map_err(|e| RuntimeError::Restore(e.into()))?
            .map(keydoc::ArchiveKey);
        let Some(slot) = self
            .prepare(id, spec.port, None, Some(&spec.superuser_password))
            .await?
        else {
            return Ok(None);
        };
        let owner = self.tools.run_as.owner();
        let cluster = self.layout.cluster(id);
        let pass = passfile(&self.layout, id);
        let line = format!(
            "*:*:replication:{}:{}\n",
            pass_field(&spec.role),
            pass_field(spec.password.expose_secret())
        );
        fsutil::write_atomic(&pass, line.as_bytes(), 0o600, owner)
            .map_err(io(format!("write {}", pass.display())))?;
        let ca = match &self.tls {
            Some(tls) => {
                let path = cluster.join("replication-ca.crt");
                fsutil::write_atomic(&path, tls.ca_certificate().as_bytes(), 0o644, owner)
                    .map_err(io(format!("write {}", path.display())))?;
                Some(path)
            }
            None => None,
        };
        let utf8 = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let settings = &self.archive.settings;
        let req = engine::RestoreRequest {
            standby: Some(StandbySource {
                conninfo: conninfo(&spec, &utf8(&pass), ca.as_deref().map(utf8).as_deref()),
                slot: spec.slot.clone(),
            }),
            store: self.archive.store.clone(),
            storage: crate::archive::target::capture_environment(&settings.archive),
            source: spec.leader,
            system_identifier: spec.leader_system_identifier,
            source_key,
            target: engine::RestoreTarget::Latest,
            dirs: self.layout.dirs(id),
            port: spec.port,
            listen_address: self.listen_address.clone(),
            tools: self.tools.clone(),
            wayback_bin: self.archive.wayback_bin.clone(),
            target_file: slot.target_file,
            archive: None,
            archive_timeout_secs: 0,
            fetch_ahead: settings.wal.fetch_ahead,
            fetch_retry_secs: 60,
            parallel: 4,
            superuser_verifier: None,
            progress: Some(progress),
            prefilled: false,
        };
        self.run_engine(id, req).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn the_conninfo_names_a_passfile_and_verifies_the_leader() {
        let spec = FollowSpec {
            port: 5501,
            leader: crate::archive::layout::InstancePrefix::new(
                &crate::domain::SpaceGuid::parse("5ace0000-0000-4000-8000-000000000001").unwrap(),
                &InstanceId::parse("0a0a0a0a-0000-4000-8000-000000000001").unwrap(),
            ),
            leader_system_identifier: 1,
            leader_host: "10.0.0.1".into(),
            leader_port: 5433,
            role: "wb_repl_0a0a".into(),
            password: SecretString::from("s3cr:et'".to_string()),
            slot: "wb_follower_0a0a".into(),
            superuser_password: SecretString::from("x".to_string()),
        };
        let text = conninfo(&spec, "/d/c/replication.pass", Some("/d/c/ca.crt"));
        assert_eq!(
            text,
            "host='10.0.0.1' port=5433 user='wb_repl_0a0a' passfile='/d/c/replication.pass' \
             application_name='wb_follower_0a0a' sslmode=verify-full sslrootcert='/d/c/ca.crt'"
        );
        assert!(!text.contains("s3cr"));
        assert_eq!(pass_field(r"a:b\c"), r"a\:b\\c");
        assert!(conninfo(&spec, "/p", None).ends_with("sslmode=prefer"));
    }
}
