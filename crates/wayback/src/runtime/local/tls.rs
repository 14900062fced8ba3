//! The local runtime's cluster certificates, in `clusters/<id>/tls/` beside `pgdata` (see
//! `pg::conf::TLS_DIRECTORY`): `server.crt`, `server.key` and the `issued.json` record, 0600
//! and the cluster user's in a 0700 directory of its own.
//!
//! A certificate is issued when a cluster is made, again for every clone or restore (a fresh
//! key, never the source's: the key is not in `pgdata`, so no backup carries it), at a start
//! when it is missing or due, and by the supervisor's periodic `status` call once it is due
//! (two thirds of its life, or the names or the CA changed), which then signals the postmaster
//! (SIGHUP: PostgreSQL 15 reloads its TLS files then, no restart). A runtime built without a
//! CA (`with_tls` not called: operator commands, some tests) leaves TLS as it finds it.
//!
//! `pg_hba.conf` has `hostssl` lines only when `tls.require` is set or the cluster's plan says
//! `require_tls`; the plan's choice comes with every `ClusterSpec` and is kept in
//! `clusters/<id>/plan-requires-tls` for the starts in between.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::layout::Layout;
use super::{io, rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::fsutil::{self, Owner};
use crate::pg::{conf, ClusterDirs, PgError};
use crate::runtime::RuntimeError;
use crate::tls::{Ca, Issued};

/// How long a cluster's certificate is valid; it is renewed after 60 days.
const CERT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
const ISSUED_FILE: &str = "issued.json";

/// The CA clusters' certificates come from, and the names they are issued for.
#[derive(Clone)]
pub struct ClusterTls {
    ca: Arc<Ca>,
    hosts: Vec<String>,
    /// TCP connections must use TLS (`hostssl` only in `pg_hba.conf`).
    require: bool,
}

impl ClusterTls {
    /// Whether `id`'s TCP connections must use TLS: `tls.require`, or its plan says so.
    pub(super) fn required_for(&self, layout: &Layout, id: &InstanceId) -> bool {
        self.require || layout.plan_requires_tls(id).is_file()
    }

    /// Certificates for `advertise_host` (what credentials name), `localhost` and 127.0.0.1.
    pub fn new(ca: Arc<Ca>, advertise_host: &str) -> Self {
        let mut hosts = vec![advertise_host.to_string()];
        for h in ["localhost", "127.0.0.1"] {
            if !hosts.iter().any(|x| x == h) {
                hosts.push(h.to_string());
            }
        }
        Self {
            ca,
            hosts,
            require: false,
        }
    }

    /// With `require`, clusters refuse TCP connections without TLS (`tls.require`).
    pub fn requiring(mut self, require: bool) -> Self {
        self.require = require;
        self
    }

    /// The CA certificate (PEM) apps verify these clusters with.
    pub fn ca_certificate(&self) -> &str {
        self.ca.certificate_pem()
    }

    /// Issues `id`'s certificate when `fresh`, missing, or due; true when it did.
    pub(super) fn ensure(
        &self,
        layout: &Layout,
        owner: Option<Owner>,
        id: &InstanceId,
        fresh: bool,
    ) -> Result<bool, RuntimeError> {
        let dir = layout.tls_dir(id);
        let record = dir.join(ISSUED_FILE);
        let complete =
            dir.join(conf::TLS_CERT_FILE).is_file() && dir.join(conf::TLS_KEY_FILE).is_file();
        if !fresh && complete {
            let current = std::fs::read_to_string(&record)
                .ok()
                .and_then(|t| Issued::parse(&t));
            if current
                .is_some_and(|r| !r.due(chrono::Utc::now(), &self.hosts, &self.ca.fingerprint()))
            {
                return Ok(false);
            }
        }
        let cert = self
            .ca
            .issue_server(&self.hosts, CERT_LIFETIME)
            .map_err(|e| {
                rt(PgError::Setup(format!(
                    "issue the TLS certificate of {id}: {e}"
                )))
            })?;
        fsutil::ensure_dir(&dir, 0o700, owner).map_err(io(format!("create {}", dir.display())))?;
        // The key first: a new certificate beside the old key would stop the server's reload.
        let files = [
            (conf::TLS_KEY_FILE, cert.key_pem.expose_secret().as_bytes()),
            (conf::TLS_CERT_FILE, cert.cert_pem.as_bytes()),
        ];
        for (name, bytes) in files {
            let path = dir.join(name);
            fsutil::write_atomic(&path, bytes, 0o600, owner)
                .map_err(io(format!("write {}", path.display())))?;
        }
        let path = dir.join(ISSUED_FILE);
        fsutil::write_atomic(&path, cert.issued.to_json().as_bytes(), 0o600, owner)
            .map_err(io(format!("write {}", path.display())))?;
        tracing::info!(instance = %id, hosts = ?self.hosts, "issued the cluster's TLS certificate");
        Ok(true)
    }
}

impl LocalRuntime {
    /// Clusters serve TLS with certificates from `tls`.
    pub fn with_tls(mut self, tls: ClusterTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The CA certificate apps verify this runtime's clusters with; None without TLS.
    pub fn ca_certificate(&self) -> Option<&str> {
        self.tls.as_ref().map(ClusterTls::ca_certificate)
    }

    /// Records whether `id`'s plan requires TLS (create, a clone's configuration, a plan
    /// change).
    pub(super) fn record_plan_tls(
        &self,
        id: &InstanceId,
        require: bool,
    ) -> Result<(), RuntimeError> {
        let path = self.layout.plan_requires_tls(id);
        if require {
            fsutil::write_atomic(&path, b"the plan requires TLS\n", 0o600, None)
                .map_err(io(format!("write {}", path.display())))
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io(format!("remove {}", path.display()))(e))
                }
                _ => Ok(()),
            }
        }
    }

    /// Before a start: a current certificate, `postgresql.conf` with today's TLS lines (a
    /// cluster made before clusters served TLS gets it here) and `pg_hba.conf` as `tls.require`
    /// says (a restored one is the source's until then).
    pub(super) fn current_tls(
        &self,
        owner: Option<Owner>,
        id: &InstanceId,
        dirs: &ClusterDirs,
    ) -> Result<(), RuntimeError> {
        let Some(tls) = &self.tls else { return Ok(()) };
        tls.ensure(&self.layout, owner, id, false)?;
        let path = dirs.pgdata.join("postgresql.conf");
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        if let Some(current) = conf::with_current_tls(&text) {
            fsutil::write_atomic(&path, current.as_bytes(), 0o600, owner)
                .map_err(io(format!("write {}", path.display())))?;
        }
        let hba = dirs.pgdata.join("pg_hba.conf");
        let want = self.hba_text(id)?;
        if std::fs::read_to_string(&hba).ok().as_deref() != Some(want.as_str()) {
            fsutil::write_atomic(&hba, want.as_bytes(), 0o600, owner)
                .map_err(io(format!("write {}", hba.display())))?;
        }
        Ok(())
    }

    /// A running cluster's certificate renewed when due, and the postmaster told to reload it;
    /// a failure is only logged (the old certificate is good for a third of its life yet).
    pub(super) fn renew_certificate(&self, owner: Option<Owner>, id: &InstanceId, postmaster: i32) {
        let Some(tls) = &self.tls else { return };
        match tls.ensure(&self.layout, owner, id, false) {
            Ok(false) => {}
            Ok(true) => {
                let pid = nix::unistd::Pid::from_raw(postmaster);
                if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP) {
                    tracing::warn!(instance = %id, error = %e, "cannot signal the postmaster to reload its renewed TLS certificate");
                }
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "cannot renew the cluster's TLS certificate")
            }
        }
    }
}
