//! TLS as an app sees it (issue 13 point 1), on real PostgreSQL 15 through the whole broker:
//! the binding's `uri` with its `sslmode=verify-full` and only the credentials'
//! `ca_certificate` connects over TLS; the same credentials by a name the certificate does not
//! carry are rejected by the client; `jdbcUrl` asks pgjdbc for the same, with the CA in it.
//! A plan with `require_tls` refuses plaintext from the plan change that applies it (a reload),
//! after a restart, and in a clone made into it from a plain instance. (Through an agent: `agents::instances_spread_over_agents_and_live_their_life_there`.)
//!
//! Run: `bash scripts/test binding_tls::`.

use crate::common;

use common::*;
use serde_json::Value;
use sqlx::Row;

/// Whether the session is encrypted (`SET ROLE NONE`: a binding's sessions start as the owner
/// role, and `pg_stat_ssl` shows another role's session as NULL).
async fn ssl_in_use(conn: &mut sqlx::PgConnection) -> bool {
    sqlx::raw_sql("SET ROLE NONE")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0)
}

/// The parameters of `jdbcUrl`'s query, decoded.
fn jdbc_params(credentials: &Value) -> Vec<(String, String)> {
    let jdbc = credentials["jdbcUrl"]
        .as_str()
        .expect("credentials.jdbcUrl");
    reqwest::Url::parse(jdbc)
        .expect("jdbcUrl parses as a URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn a_binding_verifies_its_cluster_with_only_the_credentials_ca() {
    if !pg_available() {
        return;
    }
    // Every loopback address reaches the clusters, so a name outside the certificate can.
    let app = spawn_app_with(|s| s.postgres.listen_address = "0.0.0.0".into()).await;
    let id = app.provision_ready("verified").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    assert_eq!(creds["host"], "127.0.0.1", "{creds}");
    assert_eq!(creds["sslmode"], "verify-full");
    let uri = creds["uri"].as_str().unwrap();
    assert!(uri.ends_with("?sslmode=verify-full"), "{uri}");
    let ca = creds["ca_certificate"].as_str().unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(creds["sslrootcert"], ca);

    let mut conn = connect_verified(&creds, None)
        .await
        .expect("verify-full with the credentials' CA");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert!(ssl_in_use(&mut conn).await, "the session is encrypted");
    drop(conn);

    // 127.0.0.2 reaches the same server, but the certificate does not name it.
    let wrong = connect_verified(&creds, Some("127.0.0.2"))
        .await
        .expect_err("a host the certificate does not name");
    let text = format!("{wrong:?}");
    assert!(
        text.contains("NotValidForName") || text.contains("not valid for name"),
        "{text}"
    );
    let by_other_name = uri.replace("@127.0.0.1:", "@127.0.0.2:");
    let mut conn = connect(&by_other_name)
        .await
        .expect("the same name without verification: only the name was wrong");
    assert!(ssl_in_use(&mut conn).await);

    // JDBC: TLS, verify-full, and the CA itself for pgjdbc's single-certificate factory.
    let params = jdbc_params(&creds);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("ssl"), Some("true"), "{params:?}");
    assert_eq!(get("sslmode"), Some("verify-full"), "{params:?}");
    assert_eq!(
        get("sslfactory"),
        Some("org.postgresql.ssl.SingleCertValidatingFactory")
    );
    assert_eq!(get("sslfactoryarg"), Some(ca), "the CA, decoded");
    assert_eq!(get("user"), creds["username"].as_str());
}

#[tokio::test]
async fn with_client_sslmode_require_the_credentials_ask_for_encryption_only() {
    if !pg_available() {
        return;
    }
    let app = spawn_app_with(|s| {
        s.tls.client_sslmode = wayback::config::ClientSslMode::Require;
    })
    .await;
    let id = app.provision_ready("encrypted").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    assert_eq!(creds["sslmode"], "require");
    let uri = creds["uri"].as_str().unwrap();
    assert!(uri.ends_with("?sslmode=require"), "{uri}");
    assert!(creds["ca_certificate"].is_string(), "the CA is still given");
    // sqlx's `require` encrypts without verifying, as libpq's does without a root file.
    let mut conn = connect_verified(&creds, None).await.unwrap();
    assert!(ssl_in_use(&mut conn).await);
    let params = jdbc_params(&creds);
    assert!(
        params.contains(&("sslmode".into(), "require".into())),
        "{params:?}"
    );
    assert!(!params.iter().any(|(k, _)| k == "sslfactory"), "{params:?}");
}

/// A catalog whose medium plan has the small plan's settings and `require_tls`: a plan change
/// to it is a reload, and only the TLS requirement differs.
fn catalog_with_a_tls_plan(dir: &std::path::Path) -> std::path::PathBuf {
    let mut doc: Value = serde_json::from_str(wayback::catalog::BUILTIN_CATALOG).unwrap();
    let plans = &mut doc["services"][0]["plans"];
    plans[1]["metadata"]["postgresql"] = plans[0]["metadata"]["postgresql"].clone();
    plans[1]["metadata"]["wayback"]["require_tls"] = true.into();
    let path = dir.join("catalog-tls.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

/// When the instance's postmaster started (unchanged by a reload).
async fn postmaster_start(app: &TestApp, id: &str) -> String {
    let mut admin = app.admin(id).await;
    sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

/// Connects with the binding's uri and `sslmode` instead of its own.
async fn connect_with_sslmode(uri: &str, mode: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    use sqlx::Connection;
    let plain = uri.replace("sslmode=verify-full", &format!("sslmode={mode}"));
    sqlx::PgConnection::connect(&plain).await
}

#[tokio::test]
async fn a_plan_with_require_tls_refuses_plaintext_from_its_plan_change_on() {
    if !pg_available() {
        return;
    }
    let dir = test_root();
    let catalog = catalog_with_a_tls_plan(dir.path());
    let app = spawn_app_with(move |s| s.catalog = Some(catalog)).await;
    let id = app.provision_ready("plain-first").await;
    let started_at = postmaster_start(&app, &id).await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let uri = creds["uri"].as_str().unwrap();
    let mut conn = connect_with_sslmode(uri, "disable")
        .await
        .expect("a plan without require_tls accepts plaintext");
    assert!(!ssl_in_use(&mut conn).await);
    drop(conn);

    // The plan change applies it (a reload: the settings are the same).
    let r = app
        .osb(
            reqwest::Method::PATCH,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
        )
        .json(&serde_json::json!({
            "service_id": SERVICE_ID, "plan_id": MEDIUM, "previous_values": { "plan_id": SMALL }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (reqwest::StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    assert_eq!(
        postmaster_start(&app, &id).await,
        started_at,
        "applied by a reload"
    );
    let refused = connect_with_sslmode(uri, "disable")
        .await
        .expect_err("plaintext, with the plan requiring TLS");
    assert!(format!("{refused}").contains("no encryption"), "{refused}");
    let mut conn = connect_verified(&creds, None).await.expect("TLS is fine");
    assert!(ssl_in_use(&mut conn).await);
    drop(conn);

    // A restart keeps it: the start is given no plan, the cluster remembers it.
    let pid = postmaster_pid(&app.cluster_dir(&id)).expect("postmaster.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut conn = loop {
        match connect_verified(&creds, None).await {
            Ok(c) if postmaster_pid(&app.cluster_dir(&id)) != Some(pid) => break c,
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the supervisor did not restart the cluster"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    assert!(ssl_in_use(&mut conn).await);
    assert!(
        connect_with_sslmode(uri, "disable").await.is_err(),
        "still refused after a restart"
    );
}

/// A clone follows its own plan, not its source's `pg_hba.conf`: a clone of a plain instance
/// into the plan with `require_tls` refuses plaintext.
#[tokio::test]
async fn a_clone_into_a_plan_with_require_tls_refuses_plaintext() {
    if !pg_available() {
        return;
    }
    let dir = test_root();
    let catalog = catalog_with_a_tls_plan(dir.path());
    let app = spawn_app_with(move |s| s.catalog = Some(catalog)).await;
    let src = app.provision_ready("plain-source").await;
    let store = wayback::storage::ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let prefix = wayback::archive::layout::InstancePrefix::new(
        &wayback::domain::SpaceGuid::parse(SPACE).unwrap(),
        &wayback::domain::InstanceId::parse(src.clone()).unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while wayback::archive::window::restore_window(&store, &prefix)
        .await
        .unwrap()
        .backups
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no base backup of {src}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let clone = new_id();
    let mut body = clone_body("tls-clone", SPACE, serde_json::json!({"clone-from": src}));
    body["plan_id"] = MEDIUM.into();
    let r = app.put_instance(&clone, &body).await;
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, done) = app.poll_instance(&clone, op["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{status} {done}");

    let src_creds = app.bind_sync(&src, &new_id()).await;
    let src_uri = src_creds["uri"].as_str().unwrap();
    assert!(
        connect_with_sslmode(src_uri, "disable").await.is_ok(),
        "the source is plain"
    );
    let creds = app.bind_sync(&clone, &new_id()).await;
    let uri = creds["uri"].as_str().unwrap();
    let refused = connect_with_sslmode(uri, "disable")
        .await
        .expect_err("plaintext to a clone whose plan requires TLS");
    assert!(format!("{refused}").contains("no encryption"), "{refused}");
    let mut conn = connect_verified(&creds, None).await.unwrap();
    assert!(ssl_in_use(&mut conn).await);
}
