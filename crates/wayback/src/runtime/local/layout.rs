//! Where the local runtime keeps things under `data_dir` — pure path arithmetic, no I/O.
//!
//! ```text
//! <data_dir>/template/pg15-r3/pgdata      the template data directory (made once per revision)
//! <data_dir>/clusters/<instance>/          root-owned 0711 when the broker is root
//!     pgdata/                              0700, the cluster user's
//!     pgdata.partial/                      a data directory being made; renamed to pgdata
//!     run/                                 unix socket directory, 0700, the cluster user's
//!     postgres.log                         the postmaster's stderr before the collector runs (pg_ctl -l)
//!     log/                                 0700, the server log: rotated files, oldest deleted
//!                                          beyond postgres.log_keep_mb (pg::server_log)
//!     admin-password                       superuser password, 0600, the broker's user only
//!     tls/                                 0700, the cluster user's: server.crt, server.key,
//!                                          issued.json (0600), never inside pgdata
//! <data_dir>/clusters/<instance>~<member>/ one member of an HA instance (issue 15), laid out as
//!                                          above: a machine may hold several members of one
//!                                          instance (`InstanceId::member_key`; `~` is never in
//!                                          an id); a single-member instance keeps the path above
//! <data_dir>/trash/                        0700: copies of deleted instances kept for undo
//!     <instance>/                          0700, the cluster user's
//!         pgdata/                          the data directory, shut down cleanly, moved here
//!         kept.json                        what it holds (written after the move)
//! ```
//!
//! Instance ids are validated (`[A-Za-z0-9._-]`, no leading dot), and member names are letters,
//! digits, `-` and `_`, so a cluster key is safe as a path component. Must not import anything beyond `pg`, `domain`.

use std::path::{Path, PathBuf};

use crate::domain::InstanceId;
use crate::pg::{binaries::MAJOR, initdb::TEMPLATE_REVISION, ClusterDirs};

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn clusters(&self) -> PathBuf {
        self.root.join("clusters")
    }
    pub fn templates(&self) -> PathBuf {
        self.root.join("template")
    }
    /// The template directory for this major version and template revision; its data directory
    /// is `pgdata/` inside.
    pub fn template(&self) -> PathBuf {
        self.templates()
            .join(format!("pg{MAJOR}-r{TEMPLATE_REVISION}"))
    }
    /// Templates of earlier revisions this version no longer uses (revision 1 had no suffix).
    pub fn obsolete_templates(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.templates().join(format!("pg{MAJOR}"))];
        dirs.extend(
            (2..TEMPLATE_REVISION).map(|r| self.templates().join(format!("pg{MAJOR}-r{r}"))),
        );
        dirs
    }
    pub fn template_pgdata(&self) -> PathBuf {
        self.template().join("pgdata")
    }
    pub fn cluster(&self, id: &InstanceId) -> PathBuf {
        self.clusters().join(id.as_str())
    }
    pub fn dirs(&self, id: &InstanceId) -> ClusterDirs {
        let c = self.cluster(id);
        ClusterDirs {
            pgdata: c.join("pgdata"),
            socket_dir: c.join("run"),
            log_file: c.join("postgres.log"),
            log_dir: c.join("log"),
        }
    }
    pub fn partial(&self, id: &InstanceId) -> PathBuf {
        self.cluster(id).join("pgdata.partial")
    }
    /// The cluster's TLS certificate, key and issue record (outside `pgdata`).
    pub fn tls_dir(&self, id: &InstanceId) -> PathBuf {
        self.cluster(id).join("tls")
    }
    /// Present when the cluster's plan requires TLS (`metadata.wayback.require_tls`).
    pub fn plan_requires_tls(&self, id: &InstanceId) -> PathBuf {
        self.cluster(id).join("plan-requires-tls")
    }
    /// Where deleted instances' data directories are kept for undo (same file system as
    /// `clusters/`, so moving one in or out is a rename).
    pub fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }
    pub fn trash_entry(&self, id: &InstanceId) -> PathBuf {
        self.trash().join(id.as_str())
    }
    pub fn password_file(&self, id: &InstanceId) -> PathBuf {
        self.cluster(id).join("admin-password")
    }
    /// The server's socket path; an error message if it is too long for a unix socket.
    pub fn check_socket_path(&self, id: &InstanceId, port: u16) -> Result<(), String> {
        let path = self.dirs(id).socket_dir.join(format!(".s.PGSQL.{port}"));
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "the unix socket path {} is {len} bytes long, more than the {MAX_SOCKET_PATH} \
                 a unix socket allows; use a shorter data_dir",
                path.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_nest_under_the_instance() {
        let l = Layout::new("/var/lib/wayback".into());
        let id = InstanceId::parse("6f1c2a").unwrap();
        let d = l.dirs(&id);
        assert_eq!(
            d.pgdata,
            Path::new("/var/lib/wayback/clusters/6f1c2a/pgdata")
        );
        assert_eq!(
            d.socket_dir,
            Path::new("/var/lib/wayback/clusters/6f1c2a/run")
        );
        assert_eq!(d.log_dir, Path::new("/var/lib/wayback/clusters/6f1c2a/log"));
        assert_eq!(
            l.template_pgdata(),
            Path::new("/var/lib/wayback/template/pg15-r3/pgdata")
        );
        assert_eq!(
            l.obsolete_templates(),
            [
                Path::new("/var/lib/wayback/template/pg15"),
                Path::new("/var/lib/wayback/template/pg15-r2")
            ]
        );
        assert_eq!(
            l.password_file(&id),
            Path::new("/var/lib/wayback/clusters/6f1c2a/admin-password")
        );
    }

    #[test]
    fn an_ha_members_cluster_has_its_own_directory_beside_its_instances() {
        let l = Layout::new("/var/lib/wayback".into());
        let id = InstanceId::parse("6f1c2a").unwrap();
        let key = id.member_key("m2");
        assert_eq!(
            l.dirs(&key).pgdata,
            Path::new("/var/lib/wayback/clusters/6f1c2a~m2/pgdata")
        );
        assert_eq!(
            l.password_file(&key),
            Path::new("/var/lib/wayback/clusters/6f1c2a~m2/admin-password")
        );
        assert_eq!(
            l.cluster(&id),
            Path::new("/var/lib/wayback/clusters/6f1c2a")
        );
    }

    #[test]
    fn long_socket_paths_are_refused_with_the_path() {
        let l = Layout::new("/var/vcap/store/wayback".into());
        let guid = InstanceId::parse("0b6c1f3e-8d4a-4c2b-9f1e-2a3b4c5d6e7f").unwrap();
        assert!(l.check_socket_path(&guid, 40000).is_ok());
        let long = InstanceId::parse("x".repeat(64)).unwrap();
        let msg = l.check_socket_path(&long, 40000).unwrap_err();
        assert!(msg.contains("shorter data_dir"), "{msg}");
    }
}
