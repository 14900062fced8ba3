//! Rendering `postgresql.conf` and `pg_hba.conf` — pure functions, so every byte we hand the
//! server is unit-tested.
//!
//! We own `postgresql.conf` whole (initdb's is replaced). It has three tiers, in this order:
//! settings Wayback manages (addresses, sockets, auth, WAL level, logging — a plan may not touch
//! them, and one that tries is refused rather than silently ignored), defaults a plan may override,
//! then the plan's settings. Every value is written as a quoted string literal: the server accepts
//! quotes for every type, and quoting means no plan value can end the line or start an `include`.
//! Last comes `include_if_exists = 'wayback-archive.conf'`, the one file the archive subsystem
//! writes (archive/restore settings), so it never has to edit ours. Imports only `pg` siblings.

use std::collections::BTreeMap;
use std::path::Path;

use super::server_log::{LogBudget, LOG_DIRECTORY, LOG_FILENAME};
use super::{PgError, SUPERUSER};

/// Settings a plan must not set: they are Wayback's to choose, or would let a plan read files,
/// load code paths, or move the cluster's addresses and archive.
const MANAGED: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "password_encryption",
    "wal_level",
    "cluster_name",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "include",
    "include_dir",
    "include_if_exists",
    "logging_collector",
    "log_destination",
    "log_directory",
    "log_filename",
    "log_file_mode",
    "log_rotation_age",
    "log_rotation_size",
    "log_truncate_on_rotation",
    "log_line_prefix",
    "log_statement",
    "lc_messages",
    "dynamic_library_path",
    "restore_command",
    "promote_trigger_file",
];

/// Prefixes of managed families (archiving, recovery targets, replication source, TLS files).
const MANAGED_PREFIXES: &[&str] = &["archive_", "recovery_", "primary_", "ssl"];

/// The file the archive subsystem owns, included last.
pub const ARCHIVE_INCLUDE: &str = "wayback-archive.conf";

/// Defaults a plan may override. `log_min_error_statement = panic` keeps the text of failed
/// statements (which may hold an app's cleartext `PASSWORD '…'`) out of the server log.
const DEFAULTS: &[(&str, &str)] = &[
    ("max_connections", "100"),
    ("shared_buffers", "128MB"),
    ("dynamic_shared_memory_type", "posix"),
    ("max_wal_size", "1GB"),
    ("min_wal_size", "80MB"),
    ("timezone", "UTC"),
    ("log_timezone", "UTC"),
    ("datestyle", "iso, mdy"),
    ("lc_monetary", "C"),
    ("lc_numeric", "C"),
    ("lc_time", "C"),
    ("default_text_search_config", "pg_catalog.english"),
    ("log_min_error_statement", "panic"),
    // A follower's slot keeps WAL on its leader; a dead follower must not fill the leader's
    // disk. Past this, the slot is invalidated and the follower falls back to the archive.
    ("max_slot_wal_keep_size", "1024MB"),
    // Statement statistics for the sampler's top statements and lock waiters' text (issue 19,
    // `pg::activity`): normalised text only. Utility statements are not tracked because
    // PostgreSQL 15 keeps their text verbatim (an `ALTER ROLE … PASSWORD '…'`). A plan may
    // turn the library off by setting `shared_preload_libraries`; the rest then does nothing.
    ("shared_preload_libraries", "pg_stat_statements"),
    ("compute_query_id", "auto"),
    ("pg_stat_statements.track", "top"),
    ("pg_stat_statements.track_utility", "off"),
];

/// What the managed tier needs to know.
#[derive(Debug, Clone)]
pub struct ConfInput<'a> {
    pub listen_address: &'a str,
    pub port: u16,
    pub socket_dir: &'a Path,
    /// Shown in `ps` output next to every server process; the instance id.
    pub cluster_name: &'a str,
    pub settings: &'a BTreeMap<String, String>,
    /// How much server log to keep (`postgres.log_keep_mb`).
    pub log_budget: LogBudget,
    /// Serve TLS with the certificate in `../tls/` (see [`tls_lines`]).
    pub tls: bool,
}

/// A cluster's certificate and key, relative to its data directory (PostgreSQL reads relative
/// `ssl_*_file` paths from there): beside `pgdata`, never in it, so that base backups and the
/// clones made from them never carry the key, and a restored `postgresql.conf` names the
/// clone's own files.
pub const TLS_DIRECTORY: &str = "../tls";
pub const TLS_CERT_FILE: &str = "server.crt";
pub const TLS_KEY_FILE: &str = "server.key";

/// The managed TLS settings. TLS 1.2 at least; the server reloads these files at SIGHUP.
fn tls_lines() -> [(&'static str, String); 4] {
    [
        ("ssl", "on".into()),
        ("ssl_cert_file", format!("{TLS_DIRECTORY}/{TLS_CERT_FILE}")),
        ("ssl_key_file", format!("{TLS_DIRECTORY}/{TLS_KEY_FILE}")),
        ("ssl_min_protocol_version", "TLSv1.2".into()),
    ]
}

/// `conf` (a `postgresql.conf` we wrote, maybe before clusters served TLS) with today's TLS
/// lines in the managed tier; None when it needs no change or is not ours (no managed tier).
/// How an existing cluster gets TLS at its next start.
pub fn with_current_tls(conf: &str) -> Option<String> {
    let mut out = String::with_capacity(conf.len() + 200);
    let mut inserted = false;
    for line in conf.lines() {
        let name = line.split_once('=').map(|(n, _)| n.trim());
        if name.is_some_and(|n| n.starts_with("ssl")) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line == "# Managed by Wayback" {
            for (name, value) in tls_lines() {
                out.push_str(&format!("{name} = {}\n", quote_value(name, &value).ok()?));
            }
            inserted = true;
        }
    }
    (inserted && out != conf).then_some(out)
}

/// The managed logging settings: the collector writes size- and day-rotated files into
/// `../log` (see `server_log`, which deletes the oldest beyond the budget).
fn logging_lines(budget: LogBudget) -> [(&'static str, String); 8] {
    [
        ("logging_collector", "on".into()),
        ("log_destination", "stderr".into()),
        ("log_directory", LOG_DIRECTORY.into()),
        ("log_filename", LOG_FILENAME.into()),
        ("log_file_mode", "0600".into()),
        ("log_rotation_age", "1d".into()),
        ("log_rotation_size", format!("{}kB", budget.rotation_kb())),
        ("log_truncate_on_rotation", "off".into()),
    ]
}

/// `conf` (a `postgresql.conf` we wrote, maybe by an older version) with the managed logging
/// settings of today in place of whatever it had; None when it needs no change. This is how a
/// cluster made before the logging collector was used picks it up at its next start, without
/// the plan's settings, which only the next `apply_settings` brings.
pub fn with_current_logging(conf: &str, budget: LogBudget) -> Option<String> {
    let names: Vec<&str> = logging_lines(budget).iter().map(|(n, _)| *n).collect();
    let mut out = String::with_capacity(conf.len() + 256);
    let mut inserted = false;
    for line in conf.lines() {
        let name = line.split_once('=').map(|(n, _)| n.trim());
        if name.is_some_and(|n| names.contains(&n)) {
            if !inserted {
                for (name, value) in logging_lines(budget) {
                    out.push_str(&format!("{name} = {}\n", quote_value(name, &value).ok()?));
                }
                inserted = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    (inserted && out != conf).then_some(out)
}

/// Quotes `value` as a postgresql.conf string literal. Control characters (newlines above all)
/// are refused: they cannot be written safely and no setting needs them.
pub fn quote_value(name: &str, value: &str) -> Result<String, PgError> {
    if value.chars().any(char::is_control) {
        return Err(PgError::InvalidSetting {
            name: name.into(),
            reason: "the value contains a control character".into(),
        });
    }
    Ok(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

fn check_plan_setting(name: &str) -> Result<(), PgError> {
    let refuse = |reason: &str| {
        Err(PgError::InvalidSetting {
            name: name.into(),
            reason: reason.into(),
        })
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return refuse("a setting name is lower-case letters and '_' only");
    }
    if MANAGED.contains(&name) || MANAGED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return refuse("Wayback manages this setting; a plan may not set it");
    }
    Ok(())
}

/// The whole `postgresql.conf`.
pub fn render_postgresql_conf(input: &ConfInput<'_>) -> Result<String, PgError> {
    for name in input.settings.keys() {
        check_plan_setting(name)?;
    }
    let socket_dir = input
        .socket_dir
        .to_str()
        .ok_or_else(|| PgError::InvalidSetting {
            name: "unix_socket_directories".into(),
            reason: "the socket directory is not valid UTF-8".into(),
        })?;
    let mut out = String::from(
        "# Written by Wayback; edits are overwritten. Plan settings come from the catalog.\n\n\
         # Managed by Wayback\n",
    );
    let mut line = |name: &str, value: &str| -> Result<(), PgError> {
        out.push_str(&format!("{name} = {}\n", quote_value(name, value)?));
        Ok(())
    };
    if input.tls {
        for (name, value) in tls_lines() {
            line(name, &value)?;
        }
    }
    line("listen_addresses", input.listen_address)?;
    line("port", &input.port.to_string())?;
    line("unix_socket_directories", socket_dir)?;
    line("password_encryption", "scram-sha-256")?;
    line("wal_level", "replica")?;
    line("cluster_name", input.cluster_name)?;
    for (name, value) in logging_lines(input.log_budget) {
        line(name, &value)?;
    }
    line("log_line_prefix", "%m [%p] %q%u@%d ")?;
    line("log_statement", "none")?;
    line("lc_messages", "C")?;
    out.push_str("\n# Defaults (a plan may override)\n");
    for (name, value) in DEFAULTS {
        if !input.settings.contains_key(*name) {
            out.push_str(&format!("{name} = {}\n", quote_value(name, value)?));
        }
    }
    out.push_str("\n# Plan settings\n");
    for (name, value) in input.settings {
        out.push_str(&format!("{name} = {}\n", quote_value(name, value)?));
    }
    out.push_str(&format!(
        "\n# Archiving and recovery, written by the archive subsystem when enabled\n\
         include_if_exists = '{ARCHIVE_INCLUDE}'\n"
    ));
    Ok(out)
}

/// The whole `pg_hba.conf`: SCRAM everywhere, nothing trusted, no cleartext or md5. Local
/// replication is for base backups taken over the unix socket by the superuser. With
/// `require_tls`, TCP connections must use TLS (`hostssl`); the unix socket stays for the
/// runtime's own admin connections on this machine.
pub fn render_pg_hba(require_tls: bool) -> String {
    let host = if require_tls { "hostssl" } else { "host   " };
    format!(
        "# Written by Wayback; edits are overwritten.\n\
         # TYPE  DATABASE     USER  ADDRESS    METHOD\n\
         local   all          all              scram-sha-256\n\
         local   replication  all              scram-sha-256\n\
         {host} all          all   0.0.0.0/0  scram-sha-256\n\
         {host} all          all   ::/0       scram-sha-256\n"
    )
}

/// The ident map of a follower's admin peer line ([`render_admin_peer`]).
pub const ADMIN_PEER_MAP: &str = "wayback_runtime";

/// A follower's admin access (pure): its roles and their passwords are its leader's, which
/// the runtime does not know, so the runtime's own OS user (`os_user`) logs in as the
/// superuser over the unix socket by `peer` authentication; no password is involved. The
/// `pg_hba.conf` line goes first (it matches only the superuser on the socket, and a peer
/// login from any other OS user fails without falling through), the `pg_ident.conf` text is
/// the whole file. Promotion gives the superuser a password of its own and drops the line.
pub fn render_admin_peer(os_user: &str) -> Result<(String, String), PgError> {
    if os_user.is_empty()
        || !os_user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(PgError::InvalidSetting {
            name: "pg_ident.conf".into(),
            reason: format!("the OS user {os_user:?} cannot be written unquoted"),
        });
    }
    Ok((
        format!(
            "# The runtime's own admin connections to this follower (peer, no password)\n\
             local   all          {SUPERUSER}  peer map={ADMIN_PEER_MAP}\n"
        ),
        format!(
            "# Written by Wayback; edits are overwritten.\n\
             {ADMIN_PEER_MAP} {os_user} {SUPERUSER}\n"
        ),
    ))
}

/// The managed block of `pg_hba.conf` for followers: one `replication` line per (role,
/// address), the address alone (`/32` or `/128`), SCRAM, and `hostssl` whenever the cluster
/// serves TLS. Appended after [`render_pg_hba`]'s lines (which never match a replication
/// connection over TCP), and rendered again at every rewrite of the file, so a start keeps it.
/// Refuses a role that is not a plain lower-case name or an address that is not an IP.
pub fn render_replication_hba(entries: &[(String, String)], tls: bool) -> Result<String, PgError> {
    if entries.is_empty() {
        return Ok(String::new());
    }
    let host = if tls { "hostssl" } else { "host   " };
    let mut out = String::from("# Followers' replication, managed by Wayback\n");
    for (role, address) in entries {
        let bad = |reason: &str| PgError::InvalidSetting {
            name: "pg_hba.conf replication line".into(),
            reason: format!("{reason}: {role:?} from {address:?}"),
        };
        if role.is_empty()
            || !role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad(
                "a replication role is lower-case letters, digits and '_'",
            ));
        }
        let ip: std::net::IpAddr = address
            .parse()
            .map_err(|_| bad("a follower's address is one IP address"))?;
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        out += &format!("{host} replication  {role}  {ip}/{bits}  scram-sha-256\n");
    }
    Ok(out)
}

/// The port a rendered `postgresql.conf` sets (our `port = 'N'` line).
pub fn configured_port(conf: &str) -> Option<u16> {
    conf.lines().find_map(|l| {
        let (name, value) = l.split_once('=')?;
        (name.trim() == "port").then(|| value.trim().trim_matches('\'').parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(settings: &BTreeMap<String, String>) -> ConfInput<'_> {
        ConfInput {
            listen_address: "127.0.0.1",
            port: 40001,
            socket_dir: Path::new("/data/clusters/i-1/run"),
            cluster_name: "i-1",
            settings,
            log_budget: LogBudget::from_mb(64),
            tls: false,
        }
    }

    #[test]
    fn tls_files_are_outside_pgdata_and_older_confs_get_them() {
        let settings = BTreeMap::new();
        let plain = render_postgresql_conf(&input(&settings)).unwrap();
        assert!(!plain.contains("ssl"));
        let conf = render_postgresql_conf(&ConfInput {
            tls: true,
            ..input(&settings)
        })
        .unwrap();
        for line in [
            "ssl = 'on'\n",
            "ssl_cert_file = '../tls/server.crt'\n",
            "ssl_key_file = '../tls/server.key'\n",
        ] {
            assert!(conf.contains(line), "{line}");
        }
        assert_eq!(with_current_tls(&conf), None, "already current");
        let upgraded = with_current_tls(&plain).unwrap();
        assert_eq!(upgraded, conf, "the same lines in the same place");
        let stale = conf.replace("'../tls/server.key'", "'/elsewhere/key'");
        assert_eq!(with_current_tls(&stale).unwrap(), conf);
        assert_eq!(with_current_tls("port = '1'\n"), None, "not ours");
    }

    fn plan(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_managed_then_defaults_then_plan() {
        let settings = plan(&[("shared_buffers", "256MB"), ("work_mem", "8MB")]);
        let conf = render_postgresql_conf(&input(&settings)).unwrap();
        assert!(conf.contains("listen_addresses = '127.0.0.1'\n"));
        assert!(conf.contains("port = '40001'\n"));
        assert!(conf.contains("unix_socket_directories = '/data/clusters/i-1/run'\n"));
        assert!(conf.contains("password_encryption = 'scram-sha-256'\n"));
        assert!(conf.contains("wal_level = 'replica'\n"));
        assert_eq!(
            conf.matches("shared_buffers").count(),
            1,
            "plan replaces the default"
        );
        let (defaults, plan_part) = conf.split_once("# Plan settings").unwrap();
        assert!(defaults.contains("max_connections = '100'"));
        assert!(plan_part.contains("shared_buffers = '256MB'\nwork_mem = '8MB'\n"));
        assert!(conf.ends_with("include_if_exists = 'wayback-archive.conf'\n"));
        assert_eq!(configured_port(&conf), Some(40001));
    }

    #[test]
    fn the_server_log_is_collected_rotated_and_outside_pgdata() {
        let conf = render_postgresql_conf(&input(&BTreeMap::new())).unwrap();
        for line in [
            "logging_collector = 'on'\n",
            "log_directory = '../log'\n",
            "log_filename = 'postgresql-%Y%m%d-%H%M%S.log'\n",
            "log_rotation_size = '8192kB'\n",
            "log_truncate_on_rotation = 'off'\n",
        ] {
            assert!(conf.contains(line), "{line}");
        }
        for name in ["log_directory", "log_rotation_size", "log_filename"] {
            let settings = plan(&[(name, "1")]);
            assert!(render_postgresql_conf(&input(&settings)).is_err(), "{name}");
        }
        assert_eq!(with_current_logging(&conf, LogBudget::from_mb(64)), None);
    }

    #[test]
    fn an_older_conf_gets_todays_logging_settings() {
        let old = "# Managed by Wayback\nport = '40001'\nlogging_collector = 'off'\n\
                   log_destination = 'stderr'\nlog_line_prefix = '%m '\n\n\
                   # Plan settings\nwork_mem = '8MB'\n";
        let new = with_current_logging(old, LogBudget::from_mb(16)).unwrap();
        assert!(
            new.contains(
                "logging_collector = 'on'\nlog_destination = 'stderr'\nlog_directory = '../log'\n"
            ),
            "{new}"
        );
        assert!(new.contains("log_rotation_size = '2048kB'"), "{new}");
        assert!(!new.contains("'off'\nlog_destination") && new.contains("work_mem = '8MB'\n"));
        assert_eq!(new.matches("log_destination").count(), 1);
        assert_eq!(with_current_logging(&new, LogBudget::from_mb(16)), None);
        assert!(
            with_current_logging(&new, LogBudget::from_mb(32)).is_some(),
            "budget changed"
        );
        assert_eq!(
            with_current_logging("port = '1'\n", LogBudget::from_mb(16)),
            None,
            "not ours"
        );
    }

    #[test]
    fn quotes_values_as_string_literals() {
        assert_eq!(quote_value("x", "it's").unwrap(), "'it''s'");
        assert_eq!(quote_value("x", r"a\b").unwrap(), r"'a\\b'");
        assert_eq!(quote_value("x", "").unwrap(), "''");
        let err = quote_value("x", "a'\ninclude = '/etc/passwd").unwrap_err();
        assert!(err.is_permanent());
    }

    #[test]
    fn refuses_managed_and_malformed_names() {
        for (name, why) in [
            ("port", "managed"),
            ("listen_addresses", "managed"),
            ("archive_command", "archive family"),
            ("recovery_target_time", "recovery family"),
            ("ssl_key_file", "TLS files"),
            ("include", "a directive, not a setting"),
            ("Work_mem", "upper case"),
            ("work-mem", "dash"),
            ("work_mem ", "space"),
            ("pg_stat_statements.max", "dot"),
            ("", "empty"),
        ] {
            let settings = plan(&[(name, "1")]);
            let err = render_postgresql_conf(&input(&settings)).expect_err(why);
            assert!(
                matches!(err, PgError::InvalidSetting { .. }),
                "{why}: {err}"
            );
        }
    }

    #[test]
    fn followers_get_one_replication_line_each_and_nothing_else() {
        assert_eq!(render_replication_hba(&[], true).unwrap(), "");
        let entries = [
            ("wb_repl_a1".to_string(), "10.0.0.7".to_string()),
            ("wb_repl_b2".to_string(), "fd00::2".to_string()),
        ];
        let text = render_replication_hba(&entries, true).unwrap();
        assert!(text.contains("hostssl replication  wb_repl_a1  10.0.0.7/32  scram-sha-256\n"));
        assert!(text.contains("hostssl replication  wb_repl_b2  fd00::2/128  scram-sha-256\n"));
        let plain = render_replication_hba(&entries[..1], false).unwrap();
        assert!(plain.contains("host    replication  wb_repl_a1  10.0.0.7/32"));
        for (role, addr, why) in [
            ("all", "0.0.0.0/0", "a network, not one address"),
            ("x y", "10.0.0.1", "a space would add a column"),
            ("Admin", "10.0.0.1", "upper case needs quoting"),
            ("", "10.0.0.1", "empty"),
        ] {
            let e = [(role.to_string(), addr.to_string())];
            assert!(render_replication_hba(&e, true).is_err(), "{why}");
        }
    }

    #[test]
    fn a_followers_admin_peer_line_maps_only_the_runtimes_user() {
        let (hba, ident) = render_admin_peer("wayback").unwrap();
        let line = hba.lines().find(|l| !l.starts_with('#')).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words,
            ["local", "all", SUPERUSER, "peer", "map=wayback_runtime"]
        );
        assert!(ident.ends_with(&format!("wayback_runtime wayback {SUPERUSER}\n")));
        for bad in ["", "a b", "x\ny", "#root"] {
            assert!(render_admin_peer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hba_is_scram_only() {
        let required = render_pg_hba(true);
        assert!(required.contains("hostssl all") && !required.contains("host    all"));
        assert_eq!(required.replace("hostssl", "host   "), render_pg_hba(false));
        let hba = render_pg_hba(false);
        for line in hba.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.ends_with("scram-sha-256"), "{line}");
        }
        assert!(!hba.contains("trust") && !hba.contains("md5") && !hba.contains("password "));
        assert!(hba.contains("0.0.0.0/0") && hba.contains("::/0"));
    }
}
