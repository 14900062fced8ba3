//! Clusters serve TLS (issue 13 point 1) on real PostgreSQL 15, checked with `psql` and libpq's
//! own verification: `sslmode=verify-full` with only the CA certificate succeeds by every name
//! the certificate carries and fails by another; another CA is refused; the key lives outside
//! `pgdata`, 0600 and the cluster user's; a due certificate is renewed by `status` (the
//! supervisor's call) and reloaded without a restart; a cluster made before TLS gets it at its
//! next start, and with `tls.require` refuses plaintext from its next start; a fork gets its own certificate and key, and bindings of both verify.
//!
//! Run: `bash scripts/test cluster_tls::`.

use crate::pg_support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pg_support::{free_port, pg_available, TestRuntime, BIN_DIR};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use wayback::domain::InstanceId;
use wayback::runtime::{ClusterSpec, ClusterStatus};

const PASSWORD: &str = "tls-test-password-0123456789";

fn spec(id: &str, port: u16) -> ClusterSpec {
    ClusterSpec {
        instance: InstanceId::parse(id).unwrap(),
        port,
        settings: BTreeMap::new(),
        require_tls: false,
    }
}

/// `psql` as the app's role over TCP to `host`; its output, or its stderr. (`SET ROLE NONE`: the
/// role's sessions start as the owner role, and `pg_stat_ssl` shows another role's session
/// as NULL.)
fn psql(
    host: &str,
    port: u16,
    sslmode: &str,
    root_cert: &Path,
    sql: &str,
) -> Result<String, String> {
    let mut cmd = std::process::Command::new(Path::new(BIN_DIR).join("psql"));
    cmd.args(["-X", "-q", "-A", "-t", "-c", "SET ROLE NONE", "-c", sql])
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", "app1")
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "db")
        .env("PGSSLMODE", sslmode)
        .env("PGSSLROOTCERT", root_cert)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null());
    output(cmd)
}

/// What a `psql` run printed, or its stderr when it failed.
fn output(mut cmd: std::process::Command) -> Result<String, String> {
    let out = cmd.output().expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

async fn admin_scalar(t: &TestRuntime, id: &InstanceId, sql: &str) -> String {
    let opts = t
        .local
        .admin_options(id)
        .await
        .unwrap()
        .database("template1");
    let mut c = PgConnection::connect_with(&opts).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
}

fn tls_settings() -> wayback::config::PostgresSettings {
    wayback::config::PostgresSettings {
        // Every loopback address reaches the cluster, so a name outside the certificate can.
        listen_address: "0.0.0.0".into(),
        ..pg_support::settings(true)
    }
}

async fn app_ready(t: &TestRuntime, id: &InstanceId) {
    t.runtime.ensure_database(id, "db", "owner").await.unwrap();
    let pw = SecretString::from(PASSWORD.to_string());
    t.runtime
        .create_login_role(
            id,
            "app1",
            &pw,
            "owner",
            &wayback::runtime::RoleAccess::Owner,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cluster_serves_tls_that_only_its_ca_and_names_verify() {
    if !pg_available() {
        return;
    }
    let t = TestRuntime::with_tls(tls_settings(), "127.0.0.1");
    t.runtime.prepare().await.unwrap();
    let port = free_port();
    let s = spec("tls-1", port);
    let id = s.instance.clone();
    t.runtime.create_cluster(&s).await.unwrap();
    t.runtime.start(&id).await.unwrap();
    app_ready(&t, &id).await;
    let ca = t.data_dir().join("tls/ca.crt");

    for host in ["127.0.0.1", "localhost"] {
        assert_eq!(
            psql(host, port, "verify-full", &ca, SSL_IN_USE).unwrap(),
            "t",
            "{host}"
        );
    }
    let wrong = psql("127.0.0.2", port, "verify-full", &ca, SSL_IN_USE).unwrap_err();
    assert!(wrong.contains("does not match host name"), "{wrong}");
    assert_eq!(
        psql("127.0.0.2", port, "require", &ca, SSL_IN_USE).unwrap(),
        "t",
        "only the name was wrong"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other = wayback::tls::CaSource::default()
        .load(other_dir.path())
        .unwrap();
    let other_ca = other_dir.path().join("other.crt");
    std::fs::write(&other_ca, other.certificate_pem()).unwrap();
    let refused = psql("127.0.0.1", port, "verify-full", &other_ca, SSL_IN_USE).unwrap_err();
    assert!(refused.contains("certificate verify failed"), "{refused}");

    // The key: outside pgdata (no backup carries it), the cluster user's, 0600.
    let cluster = t.data_dir().join("clusters/tls-1");
    let pgdata_owner = std::fs::metadata(cluster.join("pgdata")).unwrap().uid();
    let tls_dir = cluster.join("tls");
    assert_eq!(std::fs::metadata(&tls_dir).unwrap().mode() & 0o777, 0o700);
    for f in ["server.key", "server.crt", "issued.json"] {
        let md = std::fs::metadata(tls_dir.join(f)).unwrap();
        assert_eq!((md.mode() & 0o777, md.uid()), (0o600, pgdata_owner), "{f}");
    }
    let in_pgdata: Vec<PathBuf> = walk(&cluster.join("pgdata"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key" || e == "crt"))
        .collect();
    assert!(in_pgdata.is_empty(), "{in_pgdata:?}");

    // Due (two thirds of its life passed): the supervisor's status call renews and reloads.
    let started = admin_scalar(&t, &id, "SELECT pg_postmaster_start_time()::text").await;
    let loaded = admin_scalar(&t, &id, "SELECT pg_conf_load_time()::text").await;
    let old_cert = std::fs::read_to_string(tls_dir.join("server.crt")).unwrap();
    let record = tls_dir.join("issued.json");
    let mut issued: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let back = chrono::Utc::now() - chrono::Duration::days(61);
    issued["issued_at"] = serde_json::json!(back.to_rfc3339());
    std::fs::write(&record, issued.to_string()).unwrap();
    assert_eq!(t.runtime.status(&id).await.unwrap(), ClusterStatus::Running);
    let new_cert = std::fs::read_to_string(tls_dir.join("server.crt")).unwrap();
    assert_ne!(old_cert, new_cert, "renewed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin_scalar(&t, &id, "SELECT pg_conf_load_time()::text").await == loaded {
        assert!(Instant::now() < deadline, "the postmaster did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        admin_scalar(&t, &id, "SELECT pg_postmaster_start_time()::text").await,
        started,
        "no restart"
    );
    assert_eq!(
        psql("localhost", port, "verify-full", &ca, SSL_IN_USE).unwrap(),
        "t"
    );
    assert_eq!(t.runtime.status(&id).await.unwrap(), ClusterStatus::Running);
    assert_eq!(
        std::fs::read_to_string(tls_dir.join("server.crt")).unwrap(),
        new_cert,
        "not renewed again while current"
    );
}

#[tokio::test]
async fn a_cluster_made_before_tls_serves_it_and_requires_it_from_its_next_start() {
    if !pg_available() {
        return;
    }
    let plain = TestRuntime::with_settings(tls_settings());
    plain.runtime.prepare().await.unwrap();
    let port = free_port();
    let s = spec("tls-2", port);
    let id = s.instance.clone();
    plain.runtime.create_cluster(&s).await.unwrap();
    plain.runtime.start(&id).await.unwrap();
    app_ready(&plain, &id).await;
    assert_eq!(admin_scalar(&plain, &id, "SHOW ssl").await, "off");
    plain.runtime.stop(&id).await.unwrap();

    let ca = wayback::tls::CaSource::default()
        .load(&plain.data_dir())
        .unwrap();
    let ca = std::sync::Arc::new(ca);
    let runtime = |require: bool| {
        let tls = wayback::runtime::ClusterTls::new(ca.clone(), "127.0.0.1").requiring(require);
        wayback::runtime::LocalRuntime::new(plain.data_dir(), tls_settings()).with_tls(tls)
    };
    let ca_file = plain.data_dir().join("tls/ca.crt");
    let upgraded = runtime(false);
    upgraded.start(&id).await.unwrap();
    assert_eq!(
        psql("127.0.0.1", port, "verify-full", &ca_file, SSL_IN_USE).unwrap(),
        "t"
    );
    assert_eq!(
        psql("127.0.0.1", port, "disable", &ca_file, SSL_IN_USE).unwrap(),
        "f",
        "plaintext is accepted without tls.require"
    );
    upgraded.stop(&id).await.unwrap();

    let required = runtime(true);
    required.start(&id).await.unwrap();
    assert_eq!(
        psql("127.0.0.1", port, "verify-full", &ca_file, SSL_IN_USE).unwrap(),
        "t"
    );
    let refused = psql("127.0.0.1", port, "disable", &ca_file, SSL_IN_USE).unwrap_err();
    assert!(refused.contains("no encryption"), "{refused}");
}

/// `psql` with a binding's `uri` (plus `sslmode`) and only `root_cert`; its output or stderr.
fn psql_uri(uri: &str, sslmode: &str, root_cert: &Path, sql: &str) -> Result<String, String> {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let mut cmd = std::process::Command::new(Path::new(BIN_DIR).join("psql"));
    cmd.arg(format!("{uri}{sep}sslmode={sslmode}"))
        .args(["-X", "-q", "-A", "-t", "-c", "SET ROLE NONE", "-c", sql])
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("PGSSLROOTCERT", root_cert)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null());
    output(cmd)
}

/// A fork gets its own certificate and key, never its source's, and serves TLS the CA verifies.
#[tokio::test]
async fn a_clone_has_its_own_certificate_and_key() {
    if !pg_available() {
        return;
    }
    let app = crate::common::spawn_app().await;
    let store = wayback::storage::ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let src = app.provision_ready("tls-src").await;
    let prefix = wayback::archive::layout::InstancePrefix::new(
        &wayback::domain::SpaceGuid::parse(crate::common::SPACE).unwrap(),
        &InstanceId::parse(src.clone()).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while wayback::archive::window::restore_window(&store, &prefix)
        .await
        .unwrap()
        .backups
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no base backup of {src} in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (clone, _) = app
        .clone_ready("tls-fork", serde_json::json!({"clone-from": src}))
        .await;
    let tls_of = |id: &str| app.data_dir.join("clusters").join(id).join("tls");
    for f in ["server.key", "server.crt"] {
        let (a, b) = (tls_of(&src).join(f), tls_of(&clone).join(f));
        assert_ne!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{f}"
        );
    }
    let ca = app.data_dir.join("tls/ca.crt");
    for id in [&src, &clone] {
        let creds = app.bind_sync(id, &crate::common::new_id()).await;
        let uri = creds["uri"].as_str().unwrap();
        assert_eq!(
            psql_uri(uri, "verify-full", &ca, SSL_IN_USE).unwrap(),
            "t",
            "{id}"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
