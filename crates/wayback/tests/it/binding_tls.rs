//! TLS as an app sees it (issue 13 point 1), on real PostgreSQL 15 through the whole broker:
//! the binding's `uri` with its `sslmode=verify-full` and only the credentials'
//! `ca_certificate` connects over TLS; the same credentials by a name the certificate does not
//! carry are rejected by the client; `jdbcUrl` asks pgjdbc for the same, with the CA in it.
//! (Through an agent: `agents::instances_spread_over_agents_and_live_their_life_there`.)
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
