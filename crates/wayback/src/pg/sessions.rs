//! Who is connected to a running cluster, read from `/proc` without opening a session (issue
//! 17: the idle clock). The supervisor asks every few seconds for every instance that may stop
//! when idle; a SCRAM-authenticated connection per question is what point 0 of the issue took
//! out of supervision, so this reads what the kernel and PostgreSQL already publish.
//!
//! The postmaster is the pid in `postmaster.pid` (alive, and working in this data directory:
//! [`super::pidfile::live_postmaster`]). Every server process is its child: found through
//! `/proc/<pid>/task/<pid>/children`, or, on a kernel without that file, by the parent pid in
//! each `/proc/<pid>/stat`. PostgreSQL rewrites each child's command line into its *process
//! title* (`/proc/<pid>/cmdline`), which says what the process is:
//!
//! - `postgres: [<cluster_name>: ]<user> <database> <host> <activity>` — a client backend;
//!   `<host>` is `[local]` for the unix socket, else `<address>(<port>)`;
//! - `postgres: [<cluster_name>: ]walsender <user> <host> <activity>` — a replication
//!   connection (a follower, an HA standby, `pg_basebackup`);
//! - anything else — the checkpointer, background writer, walwriter, autovacuum launcher and
//!   workers, archiver, logical replication launcher, startup, walreceiver, parallel workers
//!   and other background workers — is the server's own, and not a session.
//!
//! The rules:
//!
//! 1. A client is recognised by its host field (`[local]` or `address(port)`), the third word
//!    at the earliest, never by the activity: the fixed part `<user> <database> <host>` is
//!    written at connection start even with `update_process_title = off` (only the activity
//!    is then left alone), so the count does not depend on that setting.
//! 2. A backend that has not yet sent its startup packet still carries the postmaster's
//!    command line and is not counted: a silent TCP connection is not a session.
//! 3. Client backends of a user named in `exclude` (the broker's and agent's superuser) are
//!    not counted: supervision must not keep a cluster awake. The user is the first word, so a
//!    role whose name has spaces is known by its first word.
//! 4. Walsenders count whatever their user: a base backup or a standby needs the server up.
//!    (A client backend of a role named `walsender` reads like a walsender and is counted as
//!    replication: either way the cluster is not idle.)
//!
//! Imports only `pg` siblings.

use std::path::Path;

use super::pidfile::live_postmaster;
use super::PgError;

/// The sessions of a running cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCount {
    /// Client backends, `exclude`d users left out.
    pub clients: u32,
    /// Walsenders.
    pub replication: u32,
}

/// What a server process's title says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Title<'a> {
    Client {
        user: &'a str,
    },
    Replication {
        user: &'a str,
    },
    /// The postmaster, an auxiliary or background process, or a backend still waiting for
    /// its startup packet.
    Server,
}

/// Reads a process title (rule 1 to 4).
pub fn classify(title: &str) -> Title<'_> {
    let Some(rest) = title.trim().strip_prefix("postgres: ") else {
        return Title::Server;
    };
    let mut words: Vec<&str> = rest.split_whitespace().collect();
    // `cluster_name` (Wayback sets it to the instance id) comes first, followed by a colon.
    if words
        .first()
        .is_some_and(|w| w.len() > 1 && w.ends_with(':'))
    {
        words.remove(0);
    }
    let host_at = words.iter().skip(2).position(|w| is_host(w)).map(|i| i + 2);
    match (words.as_slice(), host_at) {
        (["walsender", user, ..], Some(_)) => Title::Replication { user },
        ([user, ..], Some(_)) => Title::Client { user },
        _ => Title::Server,
    }
}

/// `[local]`, or `address(port)` (`address` a host name when `log_hostname` is on).
fn is_host(word: &str) -> bool {
    if word == "[local]" {
        return true;
    }
    let Some((address, port)) = word.strip_suffix(')').and_then(|w| w.rsplit_once('(')) else {
        return false;
    };
    !address.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
}

/// Counts the titles of a cluster's server processes (rules 3 and 4).
pub fn count<'a>(titles: impl IntoIterator<Item = &'a str>, exclude: &[&str]) -> SessionCount {
    let mut n = SessionCount::default();
    for title in titles {
        match classify(title) {
            Title::Client { user } if !exclude.contains(&user) => n.clients += 1,
            Title::Replication { .. } => n.replication += 1,
            Title::Client { .. } | Title::Server => {}
        }
    }
    n
}

/// What a client backend's title says it is doing: the words after its host (`idle`,
/// `idle in transaction`, `SELECT`, `UPDATE waiting`, …); empty with `update_process_title =
/// off`. None for anything that is not a client backend.
pub fn client_activity(title: &str) -> Option<(&str, &str)> {
    let Title::Client { user } = classify(title) else {
        return None;
    };
    // The host is the first word (from the third on) that reads as one (rule 1).
    let rest = title.trim().strip_prefix("postgres: ")?;
    let mut seen = 0;
    let mut offset = 0;
    for word in rest.split_whitespace() {
        let at = rest[offset..].find(word)? + offset;
        offset = at + word.len();
        seen += 1;
        let first_is_cluster = seen == 1 && word.len() > 1 && word.ends_with(':');
        if first_is_cluster {
            seen = 0;
            continue;
        }
        if seen >= 3 && is_host(word) {
            return Some((user, rest[offset..].trim()));
        }
    }
    None
}

/// The sessions of the cluster in `pgdata`; None when no postmaster runs there.
pub fn sessions(pgdata: &Path, exclude: &[&str]) -> Result<Option<SessionCount>, PgError> {
    let Some(titles) = titles(pgdata)? else {
        return Ok(None);
    };
    Ok(Some(count(titles.iter().map(String::as_str), exclude)))
}

/// The titles of every server process of the cluster in `pgdata`; None when no postmaster
/// runs there.
pub fn titles(pgdata: &Path) -> Result<Option<Vec<String>>, PgError> {
    let Some(pm) = live_postmaster(pgdata)? else {
        return Ok(None);
    };
    // A child that exits between the listing and the read of its title is simply gone.
    Ok(Some(
        children(pm.pid).into_iter().filter_map(title_of).collect(),
    ))
}

/// What [`titles_cached`] remembers of one cluster between two looks, so that a look at an
/// idle cluster costs a few reads of `/proc` instead of one per server process: the postmaster
/// checked (and when), and the children whose title said they are the server's own
/// (checkpointer, walwriter, …: they never become sessions).
#[derive(Debug, Default)]
pub struct TitleCache {
    postmaster: Option<(i32, std::time::Instant)>,
    server: std::collections::HashSet<i32>,
}

/// The full postmaster check (its working directory is the data directory) again after this
/// long, in case a crashed postmaster's pid was reused.
const RECHECK_POSTMASTER: std::time::Duration = std::time::Duration::from_secs(30);

/// [`titles`] for a caller that looks at the same cluster again and again (the activity
/// sampler, every second): the titles of the children that may be sessions. A child whose
/// title once named a server process (rule 1: `postgres: ` and not a client or walsender) is
/// not read again while it lives; a backend still waiting for its startup packet carries the
/// postmaster's command line, not `postgres: …`, and is always read again. The postmaster is
/// checked in full on the first look, when `postmaster.pid` names another pid, and every 30 s;
/// in between, the pid being alive is enough.
pub fn titles_cached(
    pgdata: &Path,
    cache: &mut TitleCache,
) -> Result<Option<Vec<String>>, PgError> {
    let path = pgdata.join("postmaster.pid");
    let pid = match std::fs::read_to_string(&path) {
        Ok(text) => super::pidfile::parse_postmaster_pid(&text).map(|pm| pm.pid),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(PgError::io(format!("read {}", path.display()))(e)),
    };
    let Some(pid) = pid else {
        *cache = TitleCache::default();
        return Ok(None);
    };
    let fresh = cache.postmaster.is_some_and(|(known, at)| {
        known == pid
            && at.elapsed() < RECHECK_POSTMASTER
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    });
    if !fresh {
        if !live_postmaster(pgdata)?.is_some_and(|pm| pm.pid == pid) {
            *cache = TitleCache::default();
            return Ok(None);
        }
        if cache.postmaster.map(|(known, _)| known) != Some(pid) {
            cache.server.clear();
        }
        cache.postmaster = Some((pid, std::time::Instant::now()));
    }
    Ok(Some(session_titles(&children(pid), &mut cache.server)))
}

/// The titles of `kids` that may be sessions; `server` (the children known to be the server's
/// own) is kept to the living and grows by each newly seen one.
fn session_titles(kids: &[i32], server: &mut std::collections::HashSet<i32>) -> Vec<String> {
    server.retain(|p| kids.contains(p));
    let mut out = Vec::new();
    for &kid in kids {
        if server.contains(&kid) {
            continue;
        }
        let Some(title) = title_of(kid) else { continue };
        if title.starts_with("postgres: ") && classify(&title) == Title::Server {
            server.insert(kid);
        } else {
            out.push(title);
        }
    }
    out
}

/// A process title: the command line up to its first NUL (PostgreSQL pads the rest with NULs).
fn title_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// The children of `pid`: the kernel's list when it keeps one (`CONFIG_PROC_CHILDREN`), else
/// every process whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(pid)
        })
        .collect()
}

/// The parent pid in a `/proc/<pid>/stat` line (the field after the state, which follows the
/// command name in parentheses; the name may itself hold `)`).
fn parent_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &[&str] = &["wayback_admin"];

    /// Titles as PostgreSQL 15 writes them, with and without `cluster_name`, and what each is.
    #[test]
    fn titles_say_what_each_process_is() {
        let cases = [
            (
                "postgres: i-1: app_user app [local] idle",
                Title::Client { user: "app_user" },
            ),
            (
                "postgres: app_user app 127.0.0.1(51234) SELECT",
                Title::Client { user: "app_user" },
            ),
            (
                "postgres: i-1: u app ::1(40000) idle in transaction (aborted)",
                Title::Client { user: "u" },
            ),
            (
                "postgres: i-1: u app db.example.org(5) idle",
                Title::Client { user: "u" },
            ),
            // update_process_title = off: the fixed part alone.
            (
                "postgres: i-1: u app 10.0.0.7(4242)",
                Title::Client { user: "u" },
            ),
            (
                "postgres: i-1: wayback_admin app [local] idle",
                Title::Client {
                    user: "wayback_admin",
                },
            ),
            (
                "postgres: i-1: walsender wb_repl 10.0.0.2(5000) streaming 0/3000148",
                Title::Replication { user: "wb_repl" },
            ),
            (
                "postgres: walsender wayback_admin [local] sending backup \"base\"",
                Title::Replication {
                    user: "wayback_admin",
                },
            ),
            ("postgres: i-1: checkpointer ", Title::Server),
            ("postgres: i-1: background writer ", Title::Server),
            ("postgres: i-1: walwriter ", Title::Server),
            ("postgres: i-1: autovacuum launcher ", Title::Server),
            ("postgres: i-1: autovacuum worker app", Title::Server),
            (
                "postgres: i-1: archiver last was 000000010000000000000003",
                Title::Server,
            ),
            (
                "postgres: i-1: logical replication launcher ",
                Title::Server,
            ),
            ("postgres: i-1: logger ", Title::Server),
            (
                "postgres: i-1: startup recovering 000000010000000000000004",
                Title::Server,
            ),
            (
                "postgres: i-1: walreceiver streaming 0/4000060",
                Title::Server,
            ),
            (
                "postgres: i-1: parallel worker for PID 4242 ",
                Title::Server,
            ),
            (
                "postgres: i-1: logical replication worker for subscription 16399 ",
                Title::Server,
            ),
            ("postgres: stats collector ", Title::Server),
            // The postmaster, and a backend forked for a connection that sent nothing yet.
            (
                "/usr/lib/postgresql/15/bin/postgres -D /data/clusters/i-1/pgdata",
                Title::Server,
            ),
            ("", Title::Server),
        ];
        for (title, want) in cases {
            assert_eq!(classify(title), want, "{title:?}");
        }
    }

    #[test]
    fn a_clients_activity_is_what_follows_its_host() {
        let cases = [
            (
                "postgres: i-1: app_user app [local] idle",
                Some(("app_user", "idle")),
            ),
            (
                "postgres: i-1: u app 127.0.0.1(5) idle in transaction (aborted)",
                Some(("u", "idle in transaction (aborted)")),
            ),
            (
                "postgres: u app ::1(40000) UPDATE waiting",
                Some(("u", "UPDATE waiting")),
            ),
            ("postgres: i-1: u app 10.0.0.7(4242)", Some(("u", ""))),
            // The cluster name and a database named like the user do not confuse the search.
            ("postgres: u: u u [local] SELECT", Some(("u", "SELECT"))),
            ("postgres: i-1: checkpointer ", None),
            (
                "postgres: i-1: walsender wb 10.0.0.2(5000) streaming 0/3",
                None,
            ),
        ];
        for (title, want) in cases {
            assert_eq!(client_activity(title), want, "{title:?}");
        }
    }

    #[test]
    fn hosts_are_the_local_socket_or_an_address_with_a_port() {
        for yes in [
            "[local]",
            "127.0.0.1(1)",
            "::1(5432)",
            "fe80::1%eth0(9)",
            "h.example(22)",
        ] {
            assert!(is_host(yes), "{yes}");
        }
        for no in [
            "(1)",
            "a()",
            "a(b)",
            "a(1",
            "local",
            "(aborted)",
            "0/3000148",
            "[local",
        ] {
            assert!(!is_host(no), "{no}");
        }
    }

    #[test]
    fn the_admin_is_not_a_client_but_any_walsender_is_replication() {
        let titles = [
            "postgres: i-1: checkpointer ",
            "postgres: i-1: wayback_admin app [local] idle",
            "postgres: i-1: wayback_admin postgres [local] SELECT",
            "postgres: i-1: app_user app 127.0.0.1(1) idle",
            "postgres: i-1: ro_user app 127.0.0.1(2) idle",
            "postgres: i-1: walsender wayback_admin [local] streaming 0/1",
            "postgres: i-1: walsender wb_follow 10.0.0.3(7) streaming 0/1",
        ];
        assert_eq!(
            count(titles, ADMIN),
            SessionCount {
                clients: 2,
                replication: 2
            }
        );
        assert_eq!(count(titles, &[]).clients, 4);
    }

    /// A role whose name has spaces is known by its first word; one that merely starts with
    /// the admin's name is not the admin.
    #[test]
    fn names_with_spaces_and_look_alikes() {
        assert_eq!(
            classify("postgres: i-1: my role my db [local] idle"),
            Title::Client { user: "my" }
        );
        let n = count(["postgres: i-1: wayback_admin2 app [local] idle"], ADMIN);
        assert_eq!(n.clients, 1);
    }

    #[test]
    fn the_parent_pid_is_read_past_a_command_name_with_parentheses() {
        assert_eq!(parent_of("4242 (postgres) S 4000 4242 4242 0"), Some(4000));
        assert_eq!(parent_of("7 (a) b) R 1 7 7 0"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }

    /// A shell's two children, through the kernel's list; and the scan of `/proc` agrees.
    #[test]
    fn server_children_are_read_once_and_sessions_every_time() {
        use std::os::unix::process::CommandExt;
        // A checkpointer-like child and a client-like one, by their argv[0].
        let mut shell = std::process::Command::new("bash")
            .args([
                "-c",
                "(exec -a 'postgres: checkpointer' sleep 30) & \
                 (exec -a 'postgres: app db [local] idle' sleep 30) & wait",
            ])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = shell.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let ready = |kids: &[i32]| {
            kids.len() == 2
                && kids
                    .iter()
                    .all(|p| title_of(*p).is_some_and(|t| t.starts_with("postgres: ")))
        };
        let mut kids = children(pid);
        while !ready(&kids) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            kids = children(pid);
        }
        let mut server = std::collections::HashSet::new();
        let first = session_titles(&kids, &mut server);
        let second = session_titles(&kids, &mut server);
        let known = server.len();
        let gone = session_titles(&[], &mut server);
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = shell.kill();
        let _ = shell.wait();
        assert_eq!(first, vec!["postgres: app db [local] idle".to_string()]);
        assert_eq!(second, first);
        assert_eq!(known, 1, "the checkpointer is remembered");
        assert!(
            gone.is_empty() && server.is_empty(),
            "a child gone is forgotten"
        );
    }

    #[test]
    fn children_are_found() {
        use std::os::unix::process::CommandExt;
        // Its own process group, so that the clean-up kills the sleeps with it.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = shell.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // A child is seen between its fork and its exec with the shell's title: wait for both
        // to be `sleep`.
        let execed = |seen: &[i32]| {
            seen.len() == 2
                && seen
                    .iter()
                    .all(|p| title_of(*p).as_deref() == Some("sleep"))
        };
        let mut seen = children(pid);
        while !execed(&seen) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            seen = children(pid);
        }
        let scanned: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| parent_of(&s))
                    == Some(pid)
            })
            .collect();
        let titles: Vec<Option<String>> = seen.iter().map(|p| title_of(*p)).collect();
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = shell.kill();
        let _ = shell.wait();
        let (mut seen, mut scanned) = (seen, scanned);
        seen.sort();
        scanned.sort();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen, scanned);
        assert!(
            titles.iter().all(|t| t.as_deref() == Some("sleep")),
            "{titles:?}"
        );
    }
}
