use super::*;

fn input<'a>(floors: &'a SettingFloors, recovery: bool, archiving: bool) -> ConfInput<'a> {
    ConfInput {
        listen_address: "127.0.0.1",
        port: 5433,
        socket_dir: "/tmp/wbt-x/run",
        log_dir: "/tmp/wbt-x/log",
        wayback_bin: "/opt/way back/wayback",
        target_file: "/tmp/wbt-x/archive.json",
        archive_reads: true,
        archiving,
        archive_timeout_secs: 60,
        tls_files: true,
        standby: None,
        recovery: recovery.then(|| {
            (
                RestoreTarget::PointInTime("2026-01-02T03:04:05.123456Z".parse().unwrap()),
                floors,
            )
        }),
    }
}

#[test]
fn recovery_settings_read_the_source_and_promote() {
    let floors = SettingFloors {
        max_connections: 120,
        ..SettingFloors::default()
    };
    let text = render_conf(&input(&floors, true, false)).unwrap();
    for line in [
        "port = '5433'",
        "archive_mode = 'off'",
        "restore_command = '''/opt/way back/wayback'' wal-fetch --target /tmp/wbt-x/archive.json %f %p'",
        "recovery_target_action = 'promote'",
        "recovery_target_timeline = 'latest'",
        "recovery_target_time = '2026-01-02 03:04:05.123456+00'",
        "max_connections = '120'",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing in\n{text}");
    }
    assert!(
        !text.contains("max_wal_senders"),
        "zero floors are not written"
    );
}

#[test]
fn once_promoted_only_ordinary_settings_remain() {
    let floors = SettingFloors::default();
    let text = render_conf(&input(&floors, false, true)).unwrap();
    assert!(
        !text.contains("restore_command") && !text.contains("recovery_target"),
        "{text}"
    );
    assert!(text.contains("archive_mode = 'on'"), "{text}");
    assert!(
        text.contains("wal-push --target /tmp/wbt-x/archive.json %p"),
        "{text}"
    );
}

#[test]
fn floors_are_at_least_the_source_configuration() {
    let conf = "max_connections = '300'\nmax_wal_senders = '10' # comment\n";
    let floors = SettingFloors {
        max_connections: 100,
        max_locks_per_transaction: 64,
        ..SettingFloors::default()
    };
    let f = effective_floors(conf, &floors);
    assert_eq!(
        (
            f.max_connections,
            f.max_wal_senders,
            f.max_locks_per_transaction
        ),
        (300, 10, 64)
    );
}

#[test]
fn tls_is_off_only_where_its_files_are_missing() {
    let floors = SettingFloors::default();
    let with_files = render_conf(&input(&floors, true, true)).unwrap();
    assert!(!with_files.contains("ssl"), "{with_files}");
    let scratch = render_conf(&ConfInput {
        tls_files: false,
        ..input(&floors, true, true)
    })
    .unwrap();
    assert!(scratch.contains("ssl = 'off'\n"), "{scratch}");
}

#[test]
fn a_standby_streams_from_its_slot_falls_back_to_the_archive_and_never_promotes() {
    let floors = SettingFloors::default();
    let source = StandbySource {
        conninfo: "host=10.0.0.1 port=5433 user=wb_repl_x passfile=/c/replication.pass".into(),
        slot: "wb_follower_x".into(),
    };
    let text = render_conf(&ConfInput {
        standby: Some(&source),
        recovery: Some((RestoreTarget::Latest, &floors)),
        ..input(&floors, false, false)
    })
    .unwrap();
    for line in [
        "archive_mode = 'off'",
        "restore_command = '''/opt/way back/wayback'' wal-fetch --target /tmp/wbt-x/archive.json %f %p'",
        "primary_conninfo = 'host=10.0.0.1 port=5433 user=wb_repl_x passfile=/c/replication.pass'",
        "primary_slot_name = 'wb_follower_x'",
        "hot_standby = 'on'",
        "hot_standby_feedback = 'on'",
        "recovery_target_timeline = 'latest'",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing in\n{text}");
    }
    assert!(!text.contains("recovery_target_action"), "{text}");
    assert!(!text.contains("recovery_target_time "), "{text}");
    assert!(!text.contains("password"), "no secret in the file: {text}");
}

#[test]
fn a_live_fork_recovers_from_its_own_pg_wal_alone() {
    let floors = SettingFloors::default();
    let text = render_conf(&ConfInput {
        archive_reads: false,
        recovery: Some((RestoreTarget::Latest, &floors)),
        ..input(&floors, true, true)
    })
    .unwrap();
    assert!(text.contains("restore_command = 'false'\n"), "{text}");
    assert!(!text.contains("wal-fetch"), "{text}");
    assert!(
        text.contains("recovery_target_action = 'promote'\n"),
        "{text}"
    );
    assert!(
        text.contains("wal-push"),
        "it archives into its own prefix: {text}"
    );
}
