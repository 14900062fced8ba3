//! Rendering the configuration of a member run by Patroni (issue 15) — a pure function, so every
//! byte Patroni is handed is unit-tested.
//!
//! The file is JSON, which is YAML too (Patroni reads it with a YAML parser): every string is
//! quoted by `serde_json`, so no value can start a key or a document. What it fixes, and why:
//!
//! - **Wayback's `postgresql.conf` stays the base.** Patroni writes the data directory's
//!   `postgresql.conf` itself; `postgresql.custom_conf` names the file it includes first. That is
//!   Wayback's own rendering for this member, kept *outside* the data directory (beside it, in
//!   the member's `patroni/` directory), because a standby's data directory is a copy of the
//!   leader's (`pg_basebackup`) and would otherwise start with the leader's ports, sockets and
//!   archive target. Patroni's `postgresql.base.conf` mechanism (it renames an existing
//!   `postgresql.conf`) lives inside the data directory, so it has that flaw and was not taken.
//! - **`pg_hba.conf` stays Wayback's.** No `pg_hba` list is given, so Patroni never writes the
//!   file; the replication role's lines come from the runtime's managed replication block.
//! - **The engine's timings** are those docs/ha-engines.md measured and chose: ttl 20,
//!   loop_wait 2, retry_timeout 5, `failsafe_mode`, `use_pg_rewind`, slots, and
//!   `synchronous_mode` for the `sync` durability. They go to the DCS at the scope's first start
//!   (`bootstrap.dcs`), with the plan's settings that Patroni passes on PostgreSQL's command line
//!   (its cluster-wide ones, e.g. `max_connections`), which would otherwise override the base.
//! - **A failed rewind re-seeds the member** (`remove_data_directory_on_rewind_failure`):
//!   Patroni empties the data directory and seeds it again from the leader with
//!   `pg_basebackup`. The data directory's parent (the cluster directory) is root's, so Patroni
//!   cannot remove the directory itself, only what is in it: its `rmtree` empties it, the final
//!   `rmdir` and the fallback rename fail (logged), and the empty directory, still the cluster
//!   user's 0700, is what `pg_basebackup` fills next (as for a member seeded from the leader).
//! - **Secrets** (the superuser's and the replication role's passwords) are only in this file,
//!   which the runtime writes 0600 for the cluster user, and in Patroni's own passfile beside it.
//! - **The REST API asks for a password** on its unsafe endpoints (`restapi.authentication`:
//!   switchover, failover, restart, reinitialize, config, failsafe). Patroni sends its own
//!   credentials when it calls another member (`POST /failsafe`), so every member of a scope has
//!   the same one: [`rest_password`] derives it from the instance's shared superuser password
//!   and the scope (one-way, so the REST password gives nothing of the superuser's away, and no
//!   new secret has to travel to the members).
//!
//! Imports only `pg` siblings.

use std::collections::BTreeMap;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::PgError;

/// The DCS timings (docs/ha-engines.md, "The choice"): `loop_wait + 2 × retry_timeout ≤ ttl`.
/// The ttl bounds a crash's RTO (the dead leader's key must expire): 20 s measured 20.2 s
/// through OSB against the goal of 20 s, so 15 s, the margin that document named.
pub const TTL_SECS: u32 = 15;
pub const LOOP_WAIT_SECS: u32 = 2;
pub const RETRY_TIMEOUT_SECS: u32 = 5;

/// Patroni's key prefix in etcd: every Wayback instance is a scope under it.
pub const NAMESPACE: &str = "/wayback/";

/// The user of a member's REST API (its password: [`rest_password`]).
pub const REST_USER: &str = "wayback";

/// The REST API password of every member of `scope`: SHA-256 over a label, the scope and the
/// instance's superuser password (which all its members share), in hex.
pub fn rest_password(scope: &str, superuser_password: &SecretString) -> SecretString {
    let mut h = Sha256::new();
    h.update(b"wayback patroni restapi\0");
    h.update(scope.as_bytes());
    h.update(b"\0");
    h.update(superuser_password.expose_secret().as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    SecretString::from(hex)
}

/// Settings Patroni passes on PostgreSQL's command line and keeps the same on every member (from
/// the DCS): a plan's value must go there, not only into the base file.
const CLUSTER_WIDE: &[&str] = &[
    "max_connections",
    "max_locks_per_transaction",
    "max_worker_processes",
    "max_prepared_transactions",
    "track_commit_timestamp",
    "max_wal_senders",
    "max_replication_slots",
    "wal_keep_size",
];

/// One login Patroni uses.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    pub username: &'a str,
    pub password: &'a SecretString,
}

/// Everything one member's configuration is made of.
#[derive(Debug, Clone)]
pub struct PatroniInput<'a> {
    /// The Patroni scope: the instance id (one scope per instance in the shared etcd).
    pub scope: &'a str,
    /// This member's name, unique in the scope.
    pub name: &'a str,
    /// etcd client endpoints, `host:port`.
    pub etcd_hosts: &'a [String],
    /// Where this member's REST API listens, and the address the others reach it at.
    pub rest_listen: &'a str,
    pub rest_connect: &'a str,
    /// Where this member's PostgreSQL listens, and the address the others reach it at.
    pub pg_listen: &'a str,
    pub pg_connect: &'a str,
    pub data_dir: &'a Path,
    pub bin_dir: &'a Path,
    /// Wayback's rendered `postgresql.conf` for this member (outside the data directory).
    pub custom_conf: &'a Path,
    /// Patroni's passfile for its own `pg_basebackup` / `pg_rewind` runs.
    pub pgpass: &'a Path,
    /// The unix socket directory Patroni connects through (the base file sets the same).
    pub socket_dir: &'a Path,
    /// `synchronous_mode`: a commit waits for the standby, and only it may be promoted.
    pub synchronous: bool,
    /// Superuser (Patroni's own connections and `pg_rewind`).
    pub superuser: Login<'a>,
    /// The role standbys stream with.
    pub replication: Login<'a>,
    /// What the REST API's unsafe endpoints ask for (the same on every member of the scope).
    pub rest: Login<'a>,
    /// The plan's settings (to find the cluster-wide ones).
    pub plan_settings: &'a BTreeMap<String, String>,
}

fn path_str<'p>(what: &str, p: &'p Path) -> Result<&'p str, PgError> {
    p.to_str().ok_or_else(|| PgError::InvalidSetting {
        name: "patroni.yml".into(),
        reason: format!("the {what} path {} is not valid UTF-8", p.display()),
    })
}

/// The whole `patroni.yml` of one member (JSON, which Patroni's YAML parser reads). A secret:
/// it holds passwords.
pub fn render_patroni_config(input: &PatroniInput<'_>) -> Result<SecretString, PgError> {
    if input.etcd_hosts.is_empty() {
        return Err(PgError::InvalidSetting {
            name: "patroni.yml".into(),
            reason: "an HA member needs at least one etcd endpoint".into(),
        });
    }
    let mut dcs_parameters = serde_json::Map::new();
    for name in CLUSTER_WIDE {
        if let Some(value) = input.plan_settings.get(*name) {
            dcs_parameters.insert((*name).into(), Value::String(value.clone()));
        }
    }
    let login =
        |l: &Login<'_>| json!({ "username": l.username, "password": l.password.expose_secret() });
    let postgresql = json!({
        "listen": input.pg_listen,
        "connect_address": input.pg_connect,
        "data_dir": path_str("data", input.data_dir)?,
        "bin_dir": path_str("binaries", input.bin_dir)?,
        "custom_conf": path_str("base configuration", input.custom_conf)?,
        "pgpass": path_str("passfile", input.pgpass)?,
        "use_unix_socket": true,
        // Wayback's clusters have no `postgres` database (Patroni's default).
        "database": super::sql::ADMIN_DATABASE,
        "authentication": {
            "superuser": login(&input.superuser),
            "replication": login(&input.replication),
            "rewind": login(&input.superuser),
        },
        "parameters": {
            "unix_socket_directories": path_str("socket", input.socket_dir)?,
        },
        "basebackup": [{ "checkpoint": "fast" }],
        // A member whose rewind failed is seeded again from the leader, never left down.
        "remove_data_directory_on_rewind_failure": true,
    });
    let config = json!({
        "scope": input.scope,
        "namespace": NAMESPACE,
        "name": input.name,
        "restapi": {
            "listen": input.rest_listen,
            "connect_address": input.rest_connect,
            "authentication": login(&input.rest),
        },
        "etcd3": { "hosts": input.etcd_hosts },
        "bootstrap": {
            "dcs": {
                "ttl": TTL_SECS,
                "loop_wait": LOOP_WAIT_SECS,
                "retry_timeout": RETRY_TIMEOUT_SECS,
                "failsafe_mode": true,
                "synchronous_mode": input.synchronous,
                "postgresql": {
                    "use_pg_rewind": true,
                    "use_slots": true,
                    "parameters": dcs_parameters,
                },
            },
        },
        "postgresql": postgresql,
        "watchdog": { "mode": "off" },
    });
    let text = serde_json::to_string_pretty(&config).expect("JSON values always serialise");
    Ok(SecretString::from(text + "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(synchronous: bool, settings: &BTreeMap<String, String>) -> Value {
        let su = SecretString::from("su-secret");
        let repl = SecretString::from("repl-secret");
        let rest = rest_password("inst-1", &su);
        let hosts = vec!["127.0.0.1:2379".to_string(), "10.0.0.2:2379".to_string()];
        let input = PatroniInput {
            scope: "inst-1",
            name: "m1",
            etcd_hosts: &hosts,
            rest_listen: "127.0.0.1:8008",
            rest_connect: "10.0.0.1:8008",
            pg_listen: "127.0.0.1:5432",
            pg_connect: "10.0.0.1:5432",
            data_dir: Path::new("/d/clusters/inst-1/pgdata"),
            bin_dir: Path::new("/usr/lib/postgresql/15/bin"),
            custom_conf: Path::new("/d/clusters/inst-1/patroni/wayback.conf"),
            pgpass: Path::new("/d/clusters/inst-1/patroni/pgpass"),
            socket_dir: Path::new("/d/clusters/inst-1/run"),
            synchronous,
            superuser: Login {
                username: "wayback_admin",
                password: &su,
            },
            replication: Login {
                username: "wb_ha_repl",
                password: &repl,
            },
            rest: Login {
                username: REST_USER,
                password: &rest,
            },
            plan_settings: settings,
        };
        let text = render_patroni_config(&input).unwrap();
        serde_json::from_str(text.expose_secret()).unwrap()
    }

    #[test]
    fn a_member_gets_the_chosen_timings_and_keeps_wayback_files() {
        let v = render(true, &BTreeMap::new());
        assert_eq!(v["scope"], "inst-1");
        assert_eq!(v["namespace"], NAMESPACE);
        let dcs = &v["bootstrap"]["dcs"];
        assert_eq!(dcs["ttl"], 15);
        assert_eq!(dcs["loop_wait"], 2);
        assert_eq!(dcs["retry_timeout"], 5);
        assert_eq!(dcs["failsafe_mode"], true);
        assert_eq!(dcs["synchronous_mode"], true);
        assert_eq!(dcs["postgresql"]["use_pg_rewind"], true);
        let pg = &v["postgresql"];
        assert_eq!(pg["custom_conf"], "/d/clusters/inst-1/patroni/wayback.conf");
        // pg_hba.conf stays Wayback's: Patroni writes it only when given a list.
        assert!(pg.get("pg_hba").is_none() && v["bootstrap"].get("pg_hba").is_none());
        assert_eq!(pg["authentication"]["rewind"]["username"], "wayback_admin");
        assert_eq!(pg["remove_data_directory_on_rewind_failure"], true);
        assert_eq!(pg["database"], "template1");
        assert_eq!(
            pg["authentication"]["replication"]["password"],
            "repl-secret"
        );
        assert_eq!(v["etcd3"]["hosts"][1], "10.0.0.2:2379");
        // The REST API's unsafe endpoints ask for the scope's password.
        let auth = &v["restapi"]["authentication"];
        assert_eq!(auth["username"], REST_USER);
        assert_eq!(
            auth["password"],
            rest_password("inst-1", &SecretString::from("su-secret")).expose_secret()
        );
        // A standby is seeded by Patroni's own basebackup from the leader.
        assert!(pg.get("create_replica_methods").is_none());
        assert_eq!(
            render(false, &BTreeMap::new())["bootstrap"]["dcs"]["synchronous_mode"],
            false
        );
    }

    #[test]
    fn the_rest_password_is_the_scopes_and_hides_the_superusers() {
        let su = SecretString::from("su-secret");
        let a = rest_password("inst-1", &su);
        assert_eq!(
            a.expose_secret(),
            rest_password("inst-1", &su).expose_secret()
        );
        assert_eq!(a.expose_secret().len(), 64);
        assert!(!a.expose_secret().contains("su-secret"));
        assert_ne!(
            a.expose_secret(),
            rest_password("inst-2", &su).expose_secret()
        );
        let other = SecretString::from("other");
        assert_ne!(
            a.expose_secret(),
            rest_password("inst-1", &other).expose_secret()
        );
    }

    #[test]
    fn cluster_wide_plan_settings_go_to_the_dcs() {
        let settings = BTreeMap::from([
            ("max_connections".to_string(), "250".to_string()),
            ("work_mem".to_string(), "8MB".to_string()),
        ]);
        let v = render(false, &settings);
        let params = &v["bootstrap"]["dcs"]["postgresql"]["parameters"];
        assert_eq!(params["max_connections"], "250");
        // The rest stays in Wayback's base file only.
        assert!(params.get("work_mem").is_none());
    }

    #[test]
    fn values_cannot_break_out_of_the_file() {
        let su = SecretString::from("pw\"\n  evil: true");
        let repl = SecretString::from("r");
        let hosts = vec!["127.0.0.1:2379".to_string()];
        let settings = BTreeMap::new();
        let input = PatroniInput {
            scope: "s",
            name: "n\nrestapi: {}",
            etcd_hosts: &hosts,
            rest_listen: "127.0.0.1:1",
            rest_connect: "127.0.0.1:1",
            pg_listen: "127.0.0.1:2",
            pg_connect: "127.0.0.1:2",
            data_dir: Path::new("/d"),
            bin_dir: Path::new("/b"),
            custom_conf: Path::new("/c"),
            pgpass: Path::new("/p"),
            socket_dir: Path::new("/s"),
            synchronous: false,
            superuser: Login {
                username: "su",
                password: &su,
            },
            replication: Login {
                username: "r",
                password: &repl,
            },
            rest: Login {
                username: "u",
                password: &repl,
            },
            plan_settings: &settings,
        };
        let text = render_patroni_config(&input).unwrap();
        let v: Value = serde_json::from_str(text.expose_secret()).unwrap();
        assert_eq!(v["name"], "n\nrestapi: {}");
        assert_eq!(
            v["postgresql"]["authentication"]["superuser"]["password"],
            "pw\"\n  evil: true"
        );
        assert!(v.get("evil").is_none());
        let no_hosts = PatroniInput {
            etcd_hosts: &[],
            ..input
        };
        assert!(render_patroni_config(&no_hosts).is_err());
    }
}
