//! A follower's standby restore on this machine: the clone's background machinery
//! ([`LocalRuntime::start_work`], polled with `restore_status`) with the engine's standby target.
//!
//! The follower's connection to its leader holds no secret in its configuration: the
//! replication password is in `<cluster>/replication.pass` (a libpq passfile, 0600, the
//! cluster user's, outside `pgdata`), and with TLS the leader is verified against the
//! operator's CA (`<cluster>/replication-ca.crt`): `sslmode=verify-full`.
//!
//! A standby's roles and passwords are its leader's, and the leader's superuser password is
//! not ours to know (on an agent it never leaves that machine). So a follower's own
//! `pg_hba.conf` and `pg_ident.conf` let this runtime's OS user in as the superuser over the
//! unix socket by `peer` authentication (`conf::render_admin_peer`), as long as the marker
//! `<cluster>/admin-peer` exists: written here once the standby is consistent, kept by every
//! rewrite of `pg_hba.conf` (`hba_text_at`), and removed by promotion, which first gives the
//! superuser the password in `admin-password` (a random one, written by the restore's
//! prepare). The admin connections need no change: they send that password, and a peer login
//! never asks for it. Followers of one leader share nothing secret, and nothing is set on the
//! leader.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use super::layout::Layout;
use super::restore::{Site, Work};
use super::{io, rt, LocalRuntime};
use crate::archive::keydoc;
use crate::archive::manifest::SettingFloors;
use crate::archive::restore::{self as engine, RestoreProgress, RestoreReport, StandbySource};
use crate::domain::InstanceId;
use crate::pg::{conf, ctl, fsutil, sql, PgError};
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
        let Some(slot) = self.prepare(id, spec.port, None, None).await? else {
            self.unpin_floors(id)?;
            self.admin_by_peer(id).await?;
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
        let report = self.run_engine(id, req).await?;
        self.unpin_floors(id)?;
        self.admin_by_peer(id).await?;
        Ok(Some(report))
    }

    /// Takes the hot-standby floors out of the standby's settings include (effective at its
    /// next start). The engine pins them to the leader's values at the backup, which would
    /// hold the follower there for life: with them, a leader whose plan grows pauses its
    /// follower whatever the follower's own plan says. The follower's own plan's
    /// `postgresql.conf` governs instead, and the broker keeps that plan at least its
    /// leader's (`broker::follow`). Repeatable.
    fn unpin_floors(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let path = self.layout.dirs(id).pgdata.join(conf::ARCHIVE_INCLUDE);
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        let kept = without_floors(&text);
        if kept != text {
            fsutil::write_atomic(&path, kept.as_bytes(), 0o600, self.tools.run_as.owner())
                .map_err(io(format!("write {}", path.display())))?;
        }
        Ok(())
    }

    /// Lets this runtime in as the follower's superuser by peer (see the module docs): the
    /// marker, `pg_ident.conf`, `pg_hba.conf`, a reload, and a wait until an admin connection
    /// works. Repeatable.
    async fn admin_by_peer(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let owner = self.tools.run_as.owner();
        let dirs = self.layout.dirs(id);
        let marker = admin_peer_marker(&self.layout, id);
        fsutil::write_atomic(&marker, b"follower\n", 0o600, None)
            .map_err(io(format!("write {}", marker.display())))?;
        let (_, ident) = conf::render_admin_peer(&runtime_os_user()?).map_err(rt)?;
        let hba = super::replication::hba_text_at(&self.layout, self.tls.as_ref(), id)?;
        for (name, text) in [("pg_ident.conf", ident), ("pg_hba.conf", hba)] {
            let path = dirs.pgdata.join(name);
            fsutil::write_atomic(&path, text.as_bytes(), 0o600, owner)
                .map_err(io(format!("write {}", path.display())))?;
        }
        if ctl::live_postmaster(&dirs.pgdata).map_err(rt)?.is_none() {
            return Ok(());
        }
        self.tools
            .cmd("pg_ctl", "reload the follower's access files")
            .args(["reload", "-s", "-D"])
            .arg(&dirs.pgdata)
            .timeout(Duration::from_secs(30))
            .run()
            .await
            .map_err(rt)?;
        // The reload is a signal: wait until the postmaster has read the new files.
        let pw_file = self.layout.password_file(id);
        let text =
            std::fs::read_to_string(&pw_file).map_err(io(format!("read {}", pw_file.display())))?;
        let password = SecretString::from(text.trim().to_string());
        let opts = sql::admin_options(&dirs.socket_dir, spec_port(&dirs)?, &password);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sql::connect(&opts, sql::ADMIN_DATABASE).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(rt(PgError::Setup(format!(
                        "the follower {id} does not let its runtime in by peer 30 s after a \
                         reload: {e}"
                    ))))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// `text` without its lines that set a hot-standby floor (pure).
fn without_floors(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !SettingFloors::NAMES.contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The port of the running postmaster in `dirs`.
fn spec_port(dirs: &crate::pg::ClusterDirs) -> Result<u16, RuntimeError> {
    ctl::live_postmaster(&dirs.pgdata)
        .map_err(rt)?
        .and_then(|pm| pm.port)
        .ok_or_else(|| {
            rt(PgError::Setup(format!(
                "no port in {}/postmaster.pid",
                dirs.pgdata.display()
            )))
        })
}

/// Present while the runtime's admin connections to `id` log in by peer (a follower).
fn admin_peer_marker(layout: &Layout, id: &InstanceId) -> PathBuf {
    layout.cluster(id).join("admin-peer")
}

/// Whether `id` is a follower whose superuser the runtime reaches by peer.
pub(super) fn admin_by_peer(layout: &Layout, id: &InstanceId) -> bool {
    admin_peer_marker(layout, id).is_file()
}

/// After promotion: the superuser has its own password again.
pub(super) fn end_admin_by_peer(layout: &Layout, id: &InstanceId) -> Result<(), RuntimeError> {
    let marker = admin_peer_marker(layout, id);
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("remove {}", marker.display()))(e))
        }
        _ => Ok(()),
    }
}

/// The OS user this process runs as: the user a peer login from it is.
pub(super) fn runtime_os_user() -> Result<String, RuntimeError> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .ok_or_else(|| rt(PgError::Setup("the current OS user has no name".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floors_come_out_of_the_standby_settings() {
        let text = "# Written by Wayback\nhot_standby = 'on'\nmax_connections = '50'\n\
                    max_wal_senders = '10'\nprimary_slot_name = 'wb_follower_x'\n";
        assert_eq!(
            without_floors(text),
            "# Written by Wayback\nhot_standby = 'on'\nprimary_slot_name = 'wb_follower_x'\n"
        );
    }

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
