//! HA members on this machine (issue 15): a cluster run by Patroni instead of `pg_ctl`.
//!
//! [`LocalRuntime::ha_start_member`] makes a member out of a cluster directory. The scope's
//! first member *adopts* the data directory Wayback made (`create_cluster`): while its server
//! still runs under the runtime, the superuser gets the instance's shared password and the
//! replication role is made, and `pg_hba.conf` gets the role's lines through the managed
//! replication block; then the server is stopped and Patroni takes the data directory over
//! (Patroni starts it and takes the scope's leader key). A later member starts with an empty
//! data directory, which Patroni seeds with `pg_basebackup` from the leader. Either way the
//! runtime writes, in `<cluster>/patroni/`: Wayback's own `postgresql.conf` for this member
//! (`wayback.conf`, Patroni's `custom_conf`, with its own ports, sockets and the archive
//! include `wayback-archive.conf` beside it: `archive_command`, and `restore_command` =
//! `wal-fetch` from the instance's own prefix, so a lagging standby and Patroni's `pg_rewind
//! --restore-target-wal` read the archive), `patroni.yml` (0600: it holds the passwords),
//! `rest-auth` (0600: the REST API's password, which the runtime's switchover sends) and
//! `member.json` (how to find the member again). Patroni's REST API listens on the member's
//! advertised address only. See `pg::patroni` for why the base file is
//! outside the data directory.
//!
//! A cluster with `patroni.yml` is an HA member for every lifecycle call: `start` starts
//! Patroni (which starts PostgreSQL), `stop` stops Patroni (which stops PostgreSQL), `status`
//! says stopped while Patroni does not run, `destroy` kills Patroni, then PostgreSQL, and
//! removes the member's keys from etcd (the whole scope's when no other member is left).
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use nix::sys::signal::Signal;
use secrecy::{ExposeSecret, SecretString};

use super::archive::shell_word;
use super::ha_patroni::{self as patroni, MemberRecord, PatroniFiles};
use super::{fsutil, io, rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::patroni::{render_patroni_config, rest_password, Login, PatroniInput, REST_USER};
use crate::pg::sql::{self, quote_literal, ADMIN_DATABASE};
use crate::pg::{conf, ctl, scram, PgError, Tools, SUPERUSER};
use crate::runtime::ha::{Durability, HaMemberSpec, HaSeed, HaStatus};
use crate::runtime::RuntimeError;

/// How long Patroni may take to stop its PostgreSQL and exit.
pub(super) const PATRONI_STOP: Duration = Duration::from_secs(60);
/// How long after Patroni accepted a switchover the new leader may take to appear.
const SWITCHOVER_SETTLE: Duration = Duration::from_secs(60);

fn invalid(reason: String) -> RuntimeError {
    rt(PgError::InvalidSetting {
        name: "HA member".into(),
        reason,
    })
}

impl LocalRuntime {
    pub(super) fn patroni_files(&self, id: &InstanceId) -> PatroniFiles {
        PatroniFiles::new(&self.layout.cluster(id))
    }

    /// Whether the cluster of `id` is run by Patroni.
    pub(super) fn is_ha_member(&self, id: &InstanceId) -> bool {
        self.patroni_files(id).config().is_file()
    }

    /// Whether the Patroni of `id` runs.
    pub(super) fn ha_running(&self, id: &InstanceId) -> bool {
        self.patroni_files(id).running().is_some()
    }

    /// Makes (or joins again) this machine's member of an HA instance and starts its Patroni;
    /// returns once Patroni runs. Idempotent: a member already made is only started.
    pub async fn ha_start_member(&self, spec: &HaMemberSpec) -> Result<(), RuntimeError> {
        let id = &spec.cluster.instance;
        let name_ok = !spec.member.is_empty()
            && spec
                .member
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(invalid(format!(
                "a member name is letters, digits, '-' and '_': {:?}",
                spec.member
            )));
        }
        let _guard = self.lock(id).await;
        let tools = self.tools().await?;
        let files = self.patroni_files(id);
        if files.running().is_some() {
            return Ok(());
        }
        self.layout
            .check_socket_path(id, spec.cluster.port)
            .map_err(|m| rt(PgError::Setup(m)))?;
        let owner = tools.run_as.owner();
        let mut entries = self.hba_entries(id)?;
        for peer in &spec.peer_addresses {
            let entry = (spec.replication_role.clone(), peer.clone());
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        let dirs = self.layout.dirs(id);
        match spec.seed {
            HaSeed::Adopt if !files.config().is_file() => {
                self.existing(id)?;
                self.start_unlocked(tools, id).await?;
                self.share_superuser_password(id, &spec.superuser_password)
                    .await?;
                self.ensure_replication_role(id, spec).await?;
                self.set_hba_entries(id, &entries).await?;
                ctl::stop(tools, &dirs.pgdata, ctl::StopMode::Fast, self.timeout())
                    .await
                    .map_err(rt)?;
            }
            HaSeed::AdoptSingle if !files.config().is_file() => {
                self.adopt_single(tools, id, spec).await?;
            }
            HaSeed::Adopt | HaSeed::AdoptSingle => self.existing(id).map(drop)?,
            HaSeed::FromLeader => {
                self.prepare_empty_member(tools, id, &spec.superuser_password)?;
                self.record_hba_entries(id, &entries)?;
            }
        }
        fsutil::ensure_dir(&files.dir, 0o700, owner)
            .map_err(io(format!("create {}", files.dir.display())))?;
        self.write_member_files(tools, spec, &files).await?;
        patroni::spawn(tools, &files).await?;
        tracing::info!(instance = %id, member = %spec.member, seed = ?spec.seed, "patroni started for an HA member");
        Ok(())
    }

    /// `AdoptSingle` before Patroni's files are written: while the single-member cluster (under
    /// the instance's own id) still serves, its superuser gets the shared password, the
    /// replication role is made and `pg_hba.conf` lets it in from the peers; then the server
    /// stops (the one restart of the plan change begins) and its directory is renamed to the
    /// member's key — an atomic rename, so a run again after a crash finds the cluster either
    /// still under the id (and does it all again: each part is idempotent) or already moved
    /// (and only Patroni is left to start).
    async fn adopt_single(
        &self,
        tools: &Tools,
        key: &InstanceId,
        spec: &HaMemberSpec,
    ) -> Result<(), RuntimeError> {
        let single = key.instance();
        if key == &single {
            return Err(invalid(format!(
                "adopting a single cluster needs a member key, not the instance id {key}"
            )));
        }
        if self.layout.dirs(key).exists() {
            return Ok(());
        }
        let _guard = self.lock(&single).await;
        let dirs = self.existing(&single)?;
        self.start_unlocked(tools, &single).await?;
        self.share_superuser_password(&single, &spec.superuser_password)
            .await?;
        self.ensure_replication_role(&single, spec).await?;
        let mut entries = self.hba_entries(&single)?;
        for peer in &spec.peer_addresses {
            let entry = (spec.replication_role.clone(), peer.clone());
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        self.set_hba_entries(&single, &entries).await?;
        ctl::stop(tools, &dirs.pgdata, ctl::StopMode::Fast, self.timeout())
            .await
            .map_err(rt)?;
        let (from, to) = (self.layout.cluster(&single), self.layout.cluster(key));
        std::fs::rename(&from, &to).map_err(io(format!(
            "move {} to {}",
            from.display(),
            to.display()
        )))?;
        let clusters = self.layout.clusters();
        fsutil::fsync_dir(&clusters).map_err(io(format!("fsync {}", clusters.display())))?;
        self.forget_restore(&single);
        tracing::info!(instance = %single, member = %spec.member, "single cluster moved under its member key for Patroni");
        Ok(())
    }

    /// The cluster directory of a member Patroni seeds: what `create_cluster` makes around a
    /// data directory, and the data directory itself empty (the cluster user's, 0700: the
    /// cluster directory is not theirs to create it in).
    fn prepare_empty_member(
        &self,
        tools: &Tools,
        id: &InstanceId,
        superuser_password: &SecretString,
    ) -> Result<(), RuntimeError> {
        let owner = tools.run_as.owner();
        let dirs = self.layout.dirs(id);
        let cluster = self.layout.cluster(id);
        fsutil::ensure_dir(&cluster, 0o711, None)
            .map_err(io(format!("create {}", cluster.display())))?;
        for dir in [&dirs.socket_dir, &dirs.log_dir, &dirs.pgdata] {
            fsutil::ensure_dir(dir, 0o700, owner)
                .map_err(io(format!("create {}", dir.display())))?;
        }
        fsutil::ensure_file(&dirs.log_file, 0o600, owner)
            .map_err(io(format!("create {}", dirs.log_file.display())))?;
        if let Some(tls) = &self.tls {
            tls.ensure(&self.layout, owner, id, true)?;
        }
        let pw_file = self.layout.password_file(id);
        fsutil::write_atomic(
            &pw_file,
            superuser_password.expose_secret().as_bytes(),
            0o600,
            None,
        )
        .map_err(io(format!("write {}", pw_file.display())))
    }

    /// Gives the running cluster's superuser the instance's shared password, and its
    /// `admin-password` file with it. Run again after a crash between the two, the file's old
    /// password no longer works and the shared one does: only the file is written then.
    async fn share_superuser_password(
        &self,
        id: &InstanceId,
        password: &SecretString,
    ) -> Result<(), RuntimeError> {
        let dirs = self.existing(id)?;
        let port = self.running_port(id, &dirs)?;
        let pw_file = self.layout.password_file(id);
        let shared = sql::admin_options(&dirs.socket_dir, port, password);
        match sql::connect(&self.admin_options_at(&dirs, port)?, ADMIN_DATABASE).await {
            Ok(mut conn) => {
                let verifier = scram::verifier(password).map_err(rt)?;
                // `quote_ident` refuses the reserved superuser name (apps may never take it);
                // the constant is a plain lower-case identifier.
                let text = format!(
                    "ALTER ROLE \"{SUPERUSER}\" PASSWORD {}",
                    quote_literal(&verifier)
                );
                sql::exec(&mut conn, &text, "set the shared superuser password")
                    .await
                    .map_err(rt)?;
            }
            Err(first) => {
                sql::connect(&shared, ADMIN_DATABASE)
                    .await
                    .map_err(|_| rt(first))?;
            }
        }
        fsutil::write_atomic(&pw_file, password.expose_secret().as_bytes(), 0o600, None)
            .map_err(io(format!("write {}", pw_file.display())))
    }

    /// The replication role standbys stream with (made, or its password reset).
    async fn ensure_replication_role(
        &self,
        id: &InstanceId,
        spec: &HaMemberSpec,
    ) -> Result<(), RuntimeError> {
        let opts = self.admin_options(id).await?;
        let mut conn = sql::connect(&opts, ADMIN_DATABASE).await.map_err(rt)?;
        super::replication::upsert_replication_role(
            &mut conn,
            &spec.replication_role,
            &spec.replication_password,
        )
        .await
    }

    /// `wayback.conf`, the archive include beside it, `patroni.yml` and `member.json`.
    async fn write_member_files(
        &self,
        tools: &Tools,
        spec: &HaMemberSpec,
        files: &PatroniFiles,
    ) -> Result<(), RuntimeError> {
        let id = &spec.cluster.instance;
        let owner = tools.run_as.owner();
        let dirs = self.layout.dirs(id);
        self.record_plan_tls(id, spec.cluster.require_tls)?;
        let base = conf::render_postgresql_conf(&conf::ConfInput {
            listen_address: &self.settings.listen_address,
            port: spec.cluster.port,
            socket_dir: &dirs.socket_dir,
            cluster_name: id.as_str(),
            settings: &spec.cluster.settings,
            log_budget: self.log_budget(),
            tls: self.tls.is_some(),
        })
        .map_err(rt)?;
        let archive = match &spec.archive {
            Some((target, command)) => {
                let mut target = target.clone();
                if matches!(spec.seed, HaSeed::Adopt | HaSeed::AdoptSingle) {
                    target.system_identifier = self.system_identifier(id)?;
                }
                let conf = self
                    .write_archive_target(id, target, command, owner, true)
                    .await?;
                conf + &self.ha_restore_command(id, command)?
            }
            None => "# Archiving is off.\n".to_string(),
        };
        let rest = format!("{}:{}", spec.advertise_host, spec.rest_port);
        let pg_connect = format!("{}:{}", spec.advertise_host, spec.cluster.port);
        // The scope is the instance's id, also for a member kept under its own key.
        let scope = id.instance();
        let record = MemberRecord {
            scope: scope.to_string(),
            name: spec.member.clone(),
            rest: rest.clone(),
            dcs: spec.dcs.clone(),
        };
        let rest_pw = rest_password(scope.as_str(), &spec.superuser_password);
        let config = render_patroni_config(&PatroniInput {
            scope: scope.as_str(),
            name: &spec.member,
            etcd_hosts: &spec.dcs,
            // Only the member's own address: the other members and the runtime call it there.
            rest_listen: &rest,
            rest_connect: &rest,
            pg_listen: &format!("{}:{}", self.settings.listen_address, spec.cluster.port),
            pg_connect: &pg_connect,
            data_dir: &dirs.pgdata,
            bin_dir: tools.bin.dir(),
            custom_conf: &files.base_conf(),
            pgpass: &files.pgpass(),
            socket_dir: &dirs.socket_dir,
            synchronous: spec.durability == Durability::Sync,
            superuser: Login {
                username: SUPERUSER,
                password: &spec.superuser_password,
            },
            replication: Login {
                username: &spec.replication_role,
                password: &spec.replication_password,
            },
            rest: Login {
                username: REST_USER,
                password: &rest_pw,
            },
            plan_settings: &spec.cluster.settings,
        })
        .map_err(rt)?;
        let record = serde_json::to_vec_pretty(&record).expect("a record serialises");
        let writes: [(std::path::PathBuf, &[u8]); 5] = [
            (files.base_conf(), base.as_bytes()),
            (files.rest_auth(), rest_pw.expose_secret().as_bytes()),
            (files.dir.join(conf::ARCHIVE_INCLUDE), archive.as_bytes()),
            (files.record(), &record),
            // Last: its presence makes the cluster an HA member.
            (files.config(), config.expose_secret().as_bytes()),
        ];
        for (path, bytes) in writes {
            fsutil::write_atomic(&path, bytes, 0o600, owner)
                .map_err(io(format!("write {}", path.display())))?;
        }
        Ok(())
    }

    /// The `restore_command` of a member: Wayback's `wal-fetch` from the instance's own
    /// archive prefix, as an archive standby restore runs it. A lagging standby whose leader
    /// recycled the WAL it needs reads it from there, and Patroni's `pg_rewind` gets
    /// `--restore-target-wal` (PostgreSQL 15 reads the command from the configuration).
    fn ha_restore_command(
        &self,
        id: &InstanceId,
        command: &crate::runtime::ArchiveCommand,
    ) -> Result<String, RuntimeError> {
        let target_file = self.layout.cluster(id).join("archive.json");
        let fetch = format!(
            "{} wal-fetch --target {} %f %p",
            shell_word(&command.wayback_bin.display().to_string()),
            shell_word(&target_file.display().to_string())
        );
        let value = conf::quote_value("restore_command", &fetch).map_err(rt)?;
        Ok(format!("restore_command = {value}\n"))
    }

    /// The member records of `id` on this machine: its own (a member kept under the instance's
    /// id, or the member key given), then those of the members kept under member keys
    /// (`<id>~<member>`, several members of one instance on one machine).
    fn member_records(&self, id: &InstanceId) -> Result<Vec<MemberRecord>, RuntimeError> {
        let own = self.patroni_files(id).load_record();
        let mut records: Vec<MemberRecord> = own.as_ref().ok().cloned().into_iter().collect();
        let prefix = format!("{}{}", id.instance(), crate::domain::MEMBER_SEPARATOR);
        let mut keys: Vec<String> = std::fs::read_dir(self.layout.clusters())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|name| name.starts_with(&prefix) && name != id.as_str())
            .collect();
        keys.sort();
        for key in keys {
            let files = PatroniFiles::new(&self.layout.clusters().join(key));
            if let Ok(record) = files.load_record() {
                records.push(record);
            }
        }
        match (records.is_empty(), own) {
            (true, Err(e)) => Err(e),
            _ => Ok(records),
        }
    }

    /// The members of `id`'s scope, from this machine's members' Patroni: the first that
    /// answers (a member whose Patroni is down leaves the question to another).
    pub async fn ha_status(&self, id: &InstanceId) -> Result<HaStatus, RuntimeError> {
        let mut last = None;
        for record in self.member_records(id)? {
            match patroni::cluster(&record.rest).await {
                Ok(mut status) => {
                    status.history = super::ha_history::history(id, &record.rest).await;
                    return Ok(status);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("member_records returns at least one record or an error"))
    }

    /// The password of the REST API's unsafe endpoints of `id`'s scope (the same for every
    /// member: derived from the scope and the shared superuser password), from the first member
    /// on this machine that keeps it.
    fn rest_auth(&self, id: &InstanceId) -> Option<SecretString> {
        let prefix = format!("{}{}", id.instance(), crate::domain::MEMBER_SEPARATOR);
        let mut dirs = vec![self.layout.cluster(id)];
        let mut keyed: Vec<_> = std::fs::read_dir(self.layout.clusters())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .map(|e| e.path())
            .collect();
        keyed.sort();
        dirs.extend(keyed);
        dirs.iter()
            .find_map(|d| PatroniFiles::new(d).rest_auth_password())
    }

    /// The REST address of a Patroni of `id` on this machine that answers.
    async fn answering_rest(&self, id: &InstanceId) -> Result<String, RuntimeError> {
        let mut last = None;
        for record in self.member_records(id)? {
            match patroni::cluster(&record.rest).await {
                Ok(_) => return Ok(record.rest),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("member_records returns at least one record or an error"))
    }

    /// Moves the leader of `id`'s scope to `candidate` (or to the member Patroni picks) and
    /// returns the new leader's name once Patroni has done it.
    pub async fn ha_switchover(
        &self,
        id: &InstanceId,
        candidate: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let rest = self.answering_rest(id).await?;
        let before = patroni::cluster(&rest).await?;
        let leader = before
            .leader()
            .ok_or_else(|| rt(PgError::Setup(format!("instance {id} has no leader now"))))?
            .name
            .clone();
        let auth = self.rest_auth(id);
        patroni::switchover(&rest, auth.as_ref(), &leader, candidate).await?;
        // Patroni answers once the old leader stepped down; the new one may take a loop to
        // hold the key.
        let deadline = std::time::Instant::now() + SWITCHOVER_SETTLE;
        loop {
            let after = patroni::cluster(&rest).await;
            if let Some(new) = after.as_ref().ok().and_then(|s| s.leader()) {
                if new.name != leader {
                    return Ok(new.name.clone());
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(rt(PgError::Setup(format!(
                    "instance {id}: patroni accepted the switchover from {leader}, but no other \
                     member leads after {} s",
                    SWITCHOVER_SETTLE.as_secs()
                ))));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `start` of an HA member: Patroni runs, and its PostgreSQL accepts connections.
    pub(super) async fn ha_start(
        &self,
        tools: &Tools,
        id: &InstanceId,
    ) -> Result<(), RuntimeError> {
        let files = self.patroni_files(id);
        patroni::spawn(tools, &files).await?;
        let dirs = self.layout.dirs(id);
        let deadline = std::time::Instant::now() + self.timeout();
        loop {
            if ctl::live_postmaster(&dirs.pgdata).map_err(rt)?.is_some()
                && ctl::wait_ready(tools, &dirs, self.timeout())
                    .await
                    .unwrap_or(false)
            {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(rt(PgError::Setup(format!(
                    "patroni runs but its server is not ready after {} s; patroni's log ends: {}",
                    self.timeout().as_secs(),
                    patroni::log_tail(&files)
                ))));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `stop` of an HA member: Patroni stops its PostgreSQL and exits.
    pub(super) async fn ha_stop(&self, tools: &Tools, id: &InstanceId) -> Result<(), RuntimeError> {
        let files = self.patroni_files(id);
        patroni::signal_and_wait(&files, Signal::SIGTERM, PATRONI_STOP).await?;
        let pgdata = self.layout.dirs(id).pgdata;
        ctl::stop(tools, &pgdata, ctl::StopMode::Fast, self.timeout())
            .await
            .map_err(rt)
    }

    /// Before `destroy` removes an HA member's files: Patroni is killed (it must not start the
    /// server again), and the member leaves etcd: the whole scope when it was the last member.
    pub(super) async fn ha_leave(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let files = self.patroni_files(id);
        let record = files.load_record().ok();
        let others = match &record {
            Some(r) => patroni::cluster(&r.rest)
                .await
                .map(|s| s.members.iter().filter(|m| m.name != r.name).count())
                .ok(),
            None => None,
        };
        patroni::signal_and_wait(&files, Signal::SIGKILL, Duration::from_secs(10)).await?;
        let Some(record) = record else {
            return Ok(());
        };
        let prefix = patroni::scope_prefix(&record.scope);
        let key = match others {
            Some(0) => prefix,
            _ => format!("{prefix}members/{}", record.name),
        };
        if let Err(e) = patroni::etcd_delete(&record.dcs, &key).await {
            // The member's key expires by itself (ttl); a last member's scope stays behind.
            tracing::warn!(instance = %id, key, error = %e, "could not remove the member from etcd");
        }
        Ok(())
    }
}
