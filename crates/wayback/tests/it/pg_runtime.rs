//! The local runtime against real PostgreSQL 15 processes: a cluster's whole life (create, start,
//! database, login roles over TCP, kill -9 and restart, settings with and without restart,
//! destroy), template copies with their own identity, a busy port, idempotency, and the cost of
//! template vs initdb. Every server is stopped by the `TestRuntime` guard.
//!
//! Run: `bash scripts/test pg_runtime::` (add `--no-capture` to see the timings).

use crate::pg_support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use pg_support::{free_port, pg_available, TestRuntime};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use wayback::domain::InstanceId;
use wayback::runtime::{ClusterSpec, ClusterStatus, RuntimeError};

fn spec(id: &str, port: u16, settings: &[(&str, &str)]) -> ClusterSpec {
    ClusterSpec {
        instance: InstanceId::parse(id).unwrap(),
        port,
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        require_tls: false,
    }
}

async fn tcp_login(port: u16, user: &str, pw: &str, db: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(user)
        .password(pw)
        .database(db)
        .disable_statement_logging()
        .connect()
        .await
}

async fn admin(t: &TestRuntime, id: &InstanceId, db: &str) -> PgConnection {
    let opts = t.local.admin_options(id).await.unwrap().database(db);
    PgConnection::connect_with(&opts).await.unwrap()
}

async fn show(t: &TestRuntime, id: &InstanceId, name: &str) -> String {
    let mut c = admin(t, id, "template1").await;
    sqlx::query_scalar(&format!("SHOW {name}"))
        .fetch_one(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_cluster_lives_and_dies() {
    if !pg_available() {
        return;
    }
    let t = TestRuntime::new(true);
    let rt = &t.runtime;
    t.runtime.prepare().await.unwrap();
    let port = free_port();
    let s = spec("life-1", port, &[("work_mem", "4MB")]);
    let id = s.instance.clone();

    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Absent);
    rt.create_cluster(&s).await.unwrap();
    rt.create_cluster(&s).await.unwrap(); // idempotent: only rewrites the configuration
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Stopped);
    rt.start(&id).await.unwrap();
    rt.start(&id).await.unwrap();
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Running);

    // The superuser password file: the broker's user only.
    let pw_file = t.data_dir().join("clusters/life-1/admin-password");
    let md = std::fs::metadata(&pw_file).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
    assert_eq!(md.uid(), nix::unistd::Uid::effective().as_raw());
    let pgdata = t.local.cluster_dirs(&id).pgdata;
    assert_eq!(std::fs::metadata(&pgdata).unwrap().mode() & 0o777, 0o700);

    // Nothing is trusted: the superuser without a password is turned away, even on the socket.
    let no_pw = t.local.admin_options(&id).await.unwrap().password("");
    assert!(PgConnection::connect_with(&no_pw).await.is_err());

    rt.ensure_database(&id, "appdb", "app_owner").await.unwrap();
    rt.ensure_database(&id, "appdb", "app_owner").await.unwrap();
    let pw1 = SecretString::from("Passw0rdOne");
    rt.create_login_role(
        &id,
        "app_user_1",
        &pw1,
        "app_owner",
        &wayback::runtime::RoleAccess::Owner,
    )
    .await
    .unwrap();
    // Resetting the password is idempotent and the old one stops working.
    let pw2 = SecretString::from("Passw0rdTwo");
    rt.create_login_role(
        &id,
        "app_user_1",
        &pw2,
        "app_owner",
        &wayback::runtime::RoleAccess::Owner,
    )
    .await
    .unwrap();
    assert!(tcp_login(port, "app_user_1", pw1.expose_secret(), "appdb")
        .await
        .is_err());

    let mut app = tcp_login(port, "app_user_1", pw2.expose_secret(), "appdb")
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (id int)")
        .execute(&mut app)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES (1)")
        .execute(&mut app)
        .await
        .unwrap();
    app.close().await.unwrap();

    // The password reached the server only as a verifier.
    let mut su = admin(&t, &id, "appdb").await;
    let stored: String =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'app_user_1'")
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");

    // A session still open at unbind is ended.
    let mut lingering = tcp_login(port, "app_user_1", pw2.expose_secret(), "appdb")
        .await
        .unwrap();
    rt.drop_login_role(&id, "app_user_1", "app_owner")
        .await
        .unwrap();
    rt.drop_login_role(&id, "app_user_1", "app_owner")
        .await
        .unwrap();
    assert!(sqlx::query("SELECT 1")
        .execute(&mut lingering)
        .await
        .is_err());
    assert!(tcp_login(port, "app_user_1", pw2.expose_secret(), "appdb")
        .await
        .is_err());
    let owner: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'notes'")
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(
        owner, "app_owner",
        "the app's table survives unbind, owned by the owner role"
    );
    su.close().await.unwrap();

    // kill -9 of the postmaster: not running, and a start brings it back.
    let pm = wayback::pg::ctl::live_postmaster(&pgdata).unwrap().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pm.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while rt.status(&id).await.unwrap() == ClusterStatus::Running {
        assert!(Instant::now() < deadline, "still running after kill -9");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Stopped);
    rt.start(&id).await.unwrap();
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Running);

    // work_mem reloads; shared_buffers needs a restart.
    let applied = rt
        .apply_settings(&spec("life-1", port, &[("work_mem", "8MB")]))
        .await
        .unwrap();
    assert!(!applied.restarted);
    assert_eq!(show(&t, &id, "work_mem").await, "8MB");
    let s2 = spec(
        "life-1",
        port,
        &[("work_mem", "8MB"), ("shared_buffers", "64MB")],
    );
    assert!(rt.apply_settings(&s2).await.unwrap().restarted);
    assert_eq!(show(&t, &id, "shared_buffers").await, "64MB");
    assert!(
        !rt.apply_settings(&s2).await.unwrap().restarted,
        "nothing changed"
    );

    // A value the server refuses is a permanent error, and the cluster keeps its old settings.
    let bad = spec(
        "life-1",
        port,
        &[("work_mem", "lots"), ("shared_buffers", "64MB")],
    );
    let err = rt.apply_settings(&bad).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("work_mem"), "{err}");
    assert_eq!(show(&t, &id, "work_mem").await, "8MB");

    // A new port restarts onto it.
    let port2 = free_port();
    assert!(
        rt.apply_settings(&spec("life-1", port2, &[]))
            .await
            .unwrap()
            .restarted
    );
    assert_eq!(show(&t, &id, "port").await, port2.to_string());
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Running);

    rt.stop(&id).await.unwrap();
    rt.stop(&id).await.unwrap();
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Stopped);
    rt.start(&id).await.unwrap();
    rt.destroy(&id).await.unwrap();
    rt.destroy(&id).await.unwrap();
    assert!(!t.data_dir().join("clusters/life-1").exists());
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Absent);
    std::net::TcpListener::bind(("127.0.0.1", port2)).expect("the port is free again");
    rt.stop(&id).await.unwrap();
    assert!(matches!(rt.start(&id).await, Err(e) if e.is_permanent()));
}

#[tokio::test]
async fn template_copies_have_their_own_identity() {
    if !pg_available() {
        return;
    }
    let t = TestRuntime::new(true);
    let (a, b) = (
        spec("copy-a", free_port(), &[]),
        spec("copy-b", free_port(), &[]),
    );
    // Templates of earlier revisions are not used, and go.
    for old in ["template/pg15/pgdata", "template/pg15-r2/pgdata"] {
        let old = t.data_dir().join(old);
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("PG_VERSION"), "15\n").unwrap();
    }
    // Concurrent creates: the template is made once.
    let (ra, rb) = tokio::join!(t.runtime.create_cluster(&a), t.runtime.create_cluster(&b));
    ra.unwrap();
    rb.unwrap();
    assert!(!t.data_dir().join("template/pg15").exists());
    assert!(!t.data_dir().join("template/pg15-r2").exists());
    let template = std::fs::read(
        t.data_dir()
            .join("template/pg15-r3/pgdata/global/pg_control"),
    )
    .unwrap();
    let template_id = u64::from_ne_bytes(template[..8].try_into().unwrap());
    let mut ids = vec![template_id];
    for s in [&a, &b] {
        t.runtime.start(&s.instance).await.unwrap();
        let on_disk = t.local.system_identifier(&s.instance).unwrap();
        let mut c = admin(&t, &s.instance, "template1").await;
        let live: i64 = sqlx::query_scalar("SELECT system_identifier FROM pg_control_system()")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(live as u64, on_disk);
        ids.push(on_disk);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "template, a and b all differ");
    // The two copies do not share a superuser password either.
    let pw = |id: &str| {
        std::fs::read_to_string(t.data_dir().join(format!("clusters/{id}/admin-password"))).unwrap()
    };
    assert_ne!(pw("copy-a"), pw("copy-b"));
}

/// What `ensure_database` promises, comparable across clusters: who owns the database and may
/// connect to it, what the owner role may do, and who owns `public` in it.
async fn app_state(t: &TestRuntime, id: &InstanceId, db: &str, owner: &str) -> Vec<String> {
    let mut c = admin(t, id, "template1").await;
    let (dba, acl): (String, String) = sqlx::query_as(
        "SELECT pg_get_userbyid(datdba)::text, datacl::text FROM pg_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(&mut c)
    .await
    .unwrap();
    let role: String = sqlx::query_scalar(
        "SELECT format('login=%s super=%s createdb=%s createrole=%s inherit=%s',
                rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolinherit)
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(owner)
    .fetch_one(&mut c)
    .await
    .unwrap();
    let mut c = admin(t, id, db).await;
    let (nsp_owner, nsp_acl): (String, String) = sqlx::query_as(
        "SELECT pg_get_userbyid(nspowner)::text, coalesce(nspacl::text, '')
         FROM pg_namespace WHERE nspname = 'public'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    // The ACLs name the owner by name, which is the same in both clusters.
    vec![dba, acl, role, nsp_owner, nsp_acl]
}

async fn databases(t: &TestRuntime, id: &InstanceId) -> Vec<String> {
    let mut c = admin(t, id, "template1").await;
    sqlx::query_scalar("SELECT datname::text FROM pg_database ORDER BY datname")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_template_copy_comes_with_the_app_database_made_as_ensure_database_makes_it() {
    use wayback::pg::{APP_DATABASE, APP_OWNER};
    if !pg_available() {
        return;
    }
    // The reference: a plain initdb cluster, where ensure_database does all the work over SQL.
    let plain = TestRuntime::new(false);
    let p = spec("app-plain", free_port(), &[]);
    plain.runtime.create_cluster(&p).await.unwrap();
    plain.runtime.start(&p.instance).await.unwrap();
    plain
        .runtime
        .ensure_database(&p.instance, APP_DATABASE, APP_OWNER)
        .await
        .unwrap();
    let expected = app_state(&plain, &p.instance, APP_DATABASE, APP_OWNER).await;
    assert!(
        expected[1].contains("app_owner=CTc/app_owner"),
        "{expected:?}"
    );
    assert!(
        !expected[1].contains("=Tc/"),
        "PUBLIC may not connect: {expected:?}"
    );

    let t = TestRuntime::new(true);
    let s = spec("app-copy", free_port(), &[]);
    let id = s.instance.clone();
    t.runtime.create_cluster(&s).await.unwrap();
    t.runtime.start(&id).await.unwrap();
    assert_eq!(
        databases(&t, &id).await,
        ["app", "template0", "template1"],
        "no postgres database in a template copy"
    );
    assert_eq!(app_state(&t, &id, APP_DATABASE, APP_OWNER).await, expected);
    // Found made, so left alone: a GRANT or REVOKE would give the catalog row a new xmin.
    let row_version = || async {
        let mut c = admin(&t, &id, "template1").await;
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM pg_database WHERE datname = 'app'")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    let before = row_version().await;
    for _ in 0..2 {
        t.runtime
            .ensure_database(&id, APP_DATABASE, APP_OWNER)
            .await
            .unwrap();
        assert_eq!(app_state(&t, &id, APP_DATABASE, APP_OWNER).await, expected);
    }
    assert_eq!(
        row_version().await,
        before,
        "ensure_database changed nothing"
    );

    // Anything found different is put right, not taken as made.
    let mut su = admin(&t, &id, "template1").await;
    sqlx::query("GRANT CONNECT ON DATABASE app TO PUBLIC")
        .execute(&mut su)
        .await
        .unwrap();
    t.runtime
        .ensure_database(&id, APP_DATABASE, APP_OWNER)
        .await
        .unwrap();
    assert_eq!(app_state(&t, &id, APP_DATABASE, APP_OWNER).await, expected);
    let mut app = admin(&t, &id, APP_DATABASE).await;
    sqlx::query("ALTER SCHEMA public OWNER TO wayback_admin")
        .execute(&mut app)
        .await
        .unwrap();
    t.runtime
        .ensure_database(&id, APP_DATABASE, APP_OWNER)
        .await
        .unwrap();
    assert_eq!(app_state(&t, &id, APP_DATABASE, APP_OWNER).await, expected);

    // Other names still work on a copy: made over SQL, the same way.
    t.runtime
        .ensure_database(&id, "other", "other_owner")
        .await
        .unwrap();
    let other = app_state(&t, &id, "other", "other_owner").await;
    let renamed: Vec<String> = expected
        .iter()
        .map(|v| v.replace("app_owner", "other_owner"))
        .collect();
    assert_eq!(other, renamed);
}

#[tokio::test]
async fn a_copy_makes_the_free_space_and_visibility_maps_it_was_not_given() {
    if !pg_available() {
        return;
    }
    let t = TestRuntime::new(true);
    let s = spec("maps-1", free_port(), &[]);
    let id = s.instance.clone();
    t.runtime.create_cluster(&s).await.unwrap();
    let global = t.local.cluster_dirs(&id).pgdata.join("global");
    assert!(!std::fs::read_dir(&global).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with("_vm")));
    t.runtime.start(&id).await.unwrap();
    let mut c = admin(&t, &id, "app").await;
    let sizes =
        "SELECT pg_relation_size('pg_class', 'fsm') > 0, pg_relation_size('pg_class', 'vm') > 0";
    let before: (bool, bool) = sqlx::query_as(sizes).fetch_one(&mut c).await.unwrap();
    assert_eq!(before, (false, false), "copied without them");
    // Catalog inserts into pages initdb marked all-visible, table data, then VACUUM.
    for sql in [
        "CREATE TABLE t AS SELECT i FROM generate_series(1, 10000) i",
        "CREATE INDEX ON t (i)",
        "DELETE FROM t WHERE i % 2 = 0",
        "VACUUM pg_class",
        "VACUUM t",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    let after: (bool, bool) = sqlx::query_as(sizes).fetch_one(&mut c).await.unwrap();
    assert_eq!(after, (true, true), "made again when needed");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE i > 5000")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 2500);
}

#[tokio::test]
async fn a_refused_plan_setting_fails_a_template_copy_permanently() {
    if !pg_available() {
        return;
    }
    let t = TestRuntime::new(true);
    // shared_buffers is overridden for the single-user run, and must be checked all the same.
    for (name, value) in [
        ("work_mem", "lots"),
        ("shared_buffers", "lots"),
        ("no_such_setting", "1"),
    ] {
        let s = spec("refused-1", free_port(), &[(name, value)]);
        let err = t.runtime.create_cluster(&s).await.unwrap_err();
        assert!(err.is_permanent(), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
        assert_eq!(
            t.runtime.status(&s.instance).await.unwrap(),
            ClusterStatus::Absent,
            "{name}"
        );
    }
    let s = spec("refused-1", free_port(), &[("work_mem", "8MB")]);
    t.runtime.create_cluster(&s).await.unwrap();
    t.runtime.start(&s.instance).await.unwrap();
    assert_eq!(show(&t, &s.instance, "work_mem").await, "8MB");
}

#[tokio::test]
async fn a_busy_port_is_reported_as_such() {
    if !pg_available() {
        return;
    }
    let t = TestRuntime::new(true);
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let s = spec("busy-1", port, &[]);
    t.runtime.create_cluster(&s).await.unwrap();
    match t.runtime.start(&s.instance).await {
        Err(RuntimeError::PortInUse(p)) => assert_eq!(p, port),
        other => panic!("expected PortInUse({port}), got {other:?}"),
    }
    assert_eq!(
        t.runtime.status(&s.instance).await.unwrap(),
        ClusterStatus::Stopped
    );
    drop(listener);
    t.runtime.start(&s.instance).await.unwrap();

    // A restarted broker (a new runtime on the same data directory) finds the cluster running.
    let again = wayback::runtime::LocalRuntime::new(t.data_dir(), pg_support::settings(true));
    assert_eq!(
        again.status(&s.instance).await.unwrap(),
        ClusterStatus::Running
    );
    again.start(&s.instance).await.unwrap();
    again
        .ensure_database(&s.instance, "db", "owner")
        .await
        .unwrap();
}

#[tokio::test]
async fn plain_initdb_works_and_bad_plans_are_refused() {
    if !pg_available() {
        return;
    }
    let t = TestRuntime::new(false);
    let s = spec("plain-1", free_port(), &[("port", "1")]);
    let err = t.runtime.create_cluster(&s).await.unwrap_err();
    assert!(
        err.is_permanent() && err.to_string().contains("port"),
        "{err}"
    );
    let s = spec("plain-1", s.port, &[("max_connections", "50")]);
    t.runtime.create_cluster(&s).await.unwrap();
    t.runtime.start(&s.instance).await.unwrap();
    assert_eq!(show(&t, &s.instance, "max_connections").await, "50");
    assert!(
        !t.data_dir()
            .join("template")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "no template without use_template"
    );
}

/// The admin database holds `pg_stat_statements` from the cluster's making (the template has it;
/// a cluster made without one gets it from `ensure_database`), so the sampler never has to create
/// it: its commit would end the restore window after the user's last one. No sampler runs here.
#[tokio::test]
async fn the_admin_database_has_pg_stat_statements_from_the_start() {
    if !pg_available() {
        return;
    }
    async fn has_statements(t: &TestRuntime, id: &InstanceId) -> bool {
        let mut c = admin(t, id, "template1").await;
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
    }
    for use_template in [true, false] {
        let t = TestRuntime::new(use_template);
        t.runtime.prepare().await.unwrap();
        let s = spec("statements-1", free_port(), &[]);
        t.runtime.create_cluster(&s).await.unwrap();
        t.runtime.start(&s.instance).await.unwrap();
        assert_eq!(
            has_statements(&t, &s.instance).await,
            use_template,
            "use_template={use_template}: before ensure_database"
        );
        t.runtime
            .ensure_database(&s.instance, "appdb", "app_owner")
            .await
            .unwrap();
        assert!(
            has_statements(&t, &s.instance).await,
            "use_template={use_template}: after ensure_database"
        );
    }
}

#[tokio::test]
async fn a_missing_os_user_is_a_permanent_error_naming_it() {
    if !pg_available() || !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let mut settings = pg_support::settings(true);
    settings.os_user = "wayback-no-such-user".into();
    let t = TestRuntime::with_settings(settings);
    let err = t.runtime.prepare().await.unwrap_err();
    assert!(err.is_permanent());
    assert!(
        err.to_string().contains("wayback-no-such-user") && err.to_string().contains("useradd"),
        "{err}"
    );
}

/// Not an assertion on speed (machines differ), a measurement: run with `--no-capture`.
#[tokio::test]
async fn template_vs_initdb_timing() {
    if !pg_available() {
        return;
    }
    for use_template in [true, false] {
        let t = TestRuntime::new(use_template);
        t.runtime.prepare().await.unwrap();
        let mut times = Vec::new();
        for i in 0..3 {
            let s = spec(&format!("timing-{i}"), free_port(), &[]);
            let started = Instant::now();
            t.runtime.create_cluster(&s).await.unwrap();
            let created = started.elapsed();
            t.runtime.start(&s.instance).await.unwrap();
            times.push((created, started.elapsed()));
            t.runtime.destroy(&s.instance).await.unwrap();
        }
        let fmt: Vec<String> = times
            .iter()
            .map(|(c, s)| {
                format!(
                    "create {:.3}s, create+start {:.3}s",
                    c.as_secs_f64(),
                    s.as_secs_f64()
                )
            })
            .collect();
        eprintln!("use_template={use_template}: {}", fmt.join(" | "));
    }
}

#[tokio::test]
async fn a_private_data_dir_is_opened_and_a_closed_ancestor_is_named() {
    use std::os::unix::fs::PermissionsExt;
    if !pg_available() || !nix::unistd::Uid::effective().is_root() {
        return;
    }
    // Our own 0700 data directory: opened to 0711 so that the cluster user can pass through.
    let t = TestRuntime::new(true);
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    t.runtime.prepare().await.unwrap();
    let mode = std::fs::metadata(t.dir.path()).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o711);

    // Someone else's 0700 directory above the data directory: a permanent error naming it.
    let outer = tempfile::tempdir().unwrap();
    pg_support::open_dir(outer.path());
    let closed = outer.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&closed, Some(65534), Some(65534)).unwrap();
    let local =
        wayback::runtime::LocalRuntime::new(closed.join("data"), pg_support::settings(true));
    let err = local.prepare().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let expected = format!("cannot enter {},", closed.display());
    assert!(err.to_string().contains(&expected), "{err}");
}
