//! What the walk writes to and reads from a cluster, over a binding's uri: the table
//! `wayback_smoke` with its rows holding the marker, and the connection that tolerates a
//! cluster still opening up. The connection verifies the cluster as an app would: the uri's
//! `sslmode` (verify-full from this version's brokers) with the CA certificate the credentials
//! carry. Must not import the broker's internals.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::ROWS;

/// What the walk connects with: a binding's `uri` and its `ca_certificate` (absent from brokers
/// older than TLS in credentials).
pub(super) struct AppLogin {
    pub uri: String,
    pub ca_certificate: Option<String>,
}

/// Creates the table, writes the rows and reads them back.
pub(super) async fn write(
    login: &AppLogin,
    marker: &str,
) -> anyhow::Result<(Vec<(i32, String)>, String)> {
    let mut conn = connect(login).await?;
    sqlx::raw_sql("CREATE TABLE wayback_smoke (id integer PRIMARY KEY, marker text NOT NULL)")
        .execute(&mut conn)
        .await
        .context("CREATE TABLE wayback_smoke")?;
    let rows: Vec<(i32, String)> = (1..=ROWS).map(|i| (i, format!("{marker}-{i}"))).collect();
    for (id, m) in &rows {
        sqlx::query("INSERT INTO wayback_smoke (id, marker) VALUES ($1, $2)")
            .bind(id)
            .bind(m)
            .execute(&mut conn)
            .await
            .context("INSERT INTO wayback_smoke")?;
    }
    let found = read_from(&mut conn).await?;
    if found != rows {
        bail!("read back {found:?}, wrote {rows:?}");
    }
    Ok((
        rows,
        format!("{ROWS} rows with marker {marker} written and read back"),
    ))
}

pub(super) async fn read_rows(login: &AppLogin) -> anyhow::Result<Vec<(i32, String)>> {
    let mut conn = connect(login).await?;
    read_from(&mut conn).await
}

async fn read_from(conn: &mut sqlx::PgConnection) -> anyhow::Result<Vec<(i32, String)>> {
    sqlx::query_as("SELECT id, marker FROM wayback_smoke ORDER BY id")
        .fetch_all(conn)
        .await
        .context("SELECT FROM wayback_smoke")
}

/// Connects with the binding's uri, a few times: the cluster may still be opening up.
async fn connect(login: &AppLogin) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let mut opts: sqlx::postgres::PgConnectOptions =
        login.uri.parse().context("the binding's uri")?;
    if let Some(ca) = &login.ca_certificate {
        opts = opts.ssl_root_cert_from_pem(ca.clone().into_bytes());
    }
    let mut attempt = 0;
    loop {
        match sqlx::PgConnection::connect_with(&opts).await {
            Ok(c) => return Ok(c),
            Err(e) if attempt >= 4 => {
                return Err(anyhow!("connect with the binding's uri: {e}"));
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        attempt += 1;
    }
}
