//! Every cluster's server log is rotated and bounded (`postgres.log_keep_mb`), on real
//! PostgreSQL: a burst of logging leaves the log directory under the bound, and a cluster made
//! before the collector was used picks it up at its next start.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

fn server_log_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let len = e.metadata().ok()?.len();
                    name.starts_with("postgresql-").then_some((name, len))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn total(files: &[(String, u64)]) -> u64 {
    files.iter().map(|f| f.1).sum()
}

/// Waits (with a deadline) until `check` holds; returns what it saw last.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> (bool, T)) -> T
where
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, seen) = check();
        if ok {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "not within 60 s: {what}; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `RAISE LOG` in a loop writes ~6 MiB of server log; with 1 MiB to keep, the server rotates
/// every 128 kB (at most once a second: the file names are per second) and the supervisor's
/// checks delete the oldest files, or cut a file grown within one second, down to the bound.
#[tokio::test]
async fn a_burst_of_logging_leaves_the_log_directory_under_the_bound() {
    if !pg_available() {
        return;
    }
    let app = spawn_app_with(|s| s.postgres.log_keep_mb = 1).await;
    let id = app.provision_ready("chatty").await;
    let log_dir = app.cluster_dir(&id).join("log");
    let conf =
        std::fs::read_to_string(app.cluster_dir(&id).join("pgdata/postgresql.conf")).unwrap();
    assert!(conf.contains("logging_collector = 'on'"), "{conf}");
    assert!(conf.contains("log_rotation_size = '128kB'"), "{conf}");

    let mut admin = app.admin(&id).await;
    exec(
        &mut admin,
        "DO $$ BEGIN FOR i IN 1..6000 LOOP \
         RAISE LOG 'wayback burst % %', i, repeat('x', 1000); END LOOP; END $$;",
    )
    .await;
    // The burst went to the collector's files (oldest already deleted, maybe), not postgres.log.
    let files = eventually("the burst is logged and pruned to the bound", || {
        let files = server_log_files(&log_dir);
        let burst_ended = files.iter().any(|(name, _)| {
            std::fs::read_to_string(log_dir.join(name))
                .is_ok_and(|t| t.contains("wayback burst 6000 "))
        });
        (burst_ended && total(&files) <= MIB, files)
    })
    .await;
    // ~6 MiB of burst cannot fit in 1 MiB: its middle was deleted or cut. (Its first lines may
    // stay: the oldest file is kept whole when the cut of a later one already met the bound.)
    for (name, _) in &files {
        let text = std::fs::read_to_string(log_dir.join(name)).unwrap();
        assert!(
            !text.contains("wayback burst 3000 "),
            "the middle of the burst was deleted: {files:?}"
        );
    }
    let startup = std::fs::metadata(app.cluster_dir(&id).join("postgres.log"))
        .unwrap()
        .len();
    assert!(
        startup < 64 * 1024,
        "postgres.log holds only start-up output: {startup} bytes"
    );
}

/// A cluster whose `postgresql.conf` still logs everything to `postgres.log` (as clusters of
/// older brokers do) is given the collector at its next start, and the grown `postgres.log`
/// is emptied.
#[tokio::test]
async fn an_older_cluster_gets_the_rotated_log_at_its_next_start() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let id = app.provision_ready("old").await;
    let dir = app.cluster_dir(&id);
    let conf_path = dir.join("pgdata/postgresql.conf");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    let old: String = conf
        .lines()
        .filter(|l| {
            !l.starts_with("log_")
                || l.starts_with("log_destination")
                || l.starts_with("log_line_prefix")
                || l.starts_with("log_statement")
                || l.starts_with("log_min")
                || l.starts_with("log_timezone")
        })
        .map(|l| {
            if l.starts_with("logging_collector") {
                "logging_collector = 'off'\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(!old.contains("log_directory"), "{old}");
    std::fs::write(&conf_path, &old).unwrap();
    std::fs::remove_dir_all(dir.join("log")).unwrap();
    std::fs::write(dir.join("postgres.log"), vec![b'.'; 2 * MIB as usize]).unwrap();
    let before = postmaster_pid(&dir).expect("running");
    stop_all_clusters(&app.data_dir);
    // The supervisor finds it down and starts it again.
    eventually("the supervisor restarts the cluster", || {
        let pid = postmaster_pid(&dir);
        let ready = pid.is_some_and(|p| p != before)
            && std::fs::read_to_string(dir.join("pgdata/postmaster.pid"))
                .is_ok_and(|t| t.contains("ready"));
        (ready, pid)
    })
    .await;
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    assert!(conf.contains("logging_collector = 'on'"), "{conf}");
    assert!(conf.contains("log_directory = '../log'"), "{conf}");
    assert!(dir.join("log").is_dir());
    eventually("the restarted server writes into log/", || {
        let files = server_log_files(&dir.join("log"));
        (!files.is_empty(), files)
    })
    .await;
    let startup = std::fs::metadata(dir.join("postgres.log")).unwrap().len();
    assert!(startup < MIB, "postgres.log was emptied: {startup} bytes");
}
