//! What the walk writes to and reads from a cluster, over a binding's uri: the table
//! `wayback_smoke` with its rows holding the marker, and the connection that tolerates a
//! cluster still opening up. The connection verifies the cluster as an app would: the uri's
//! `sslmode` (verify-full from this version's brokers) with the CA certificate the credentials
//! carry. An HA instance's uri names every member: the connection tries them in order as libpq
//! does and, for `target_session_attrs=read-write` (or `primary`), keeps the first whose session
//! is not read-only (`SHOW transaction_read_only`). Must not import the broker's internals.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::pguri::PgUri;
use super::ROWS;

/// How long one host may take to accept a connection (libpq's `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the walk connects with: a binding's `uri` and its `ca_certificate` (absent from brokers
/// older than TLS in credentials).
pub(super) struct AppLogin {
    pub uri: String,
    pub ca_certificate: Option<String>,
    /// The binding's whole `credentials` (the HA step reads `jdbcUrl` and `hosts`).
    pub credentials: serde_json::Value,
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

/// Writes one more row (`id` after the last of `rows`) holding `marker` through `login`, and
/// reads every row back: the rows as they are now, and the server port that took the row.
pub(super) async fn write_one_more(
    login: &AppLogin,
    rows: &[(i32, String)],
    marker: &str,
) -> anyhow::Result<(Vec<(i32, String)>, i32)> {
    let mut conn = connect(login).await?;
    let id = rows.last().map_or(1, |(id, _)| id + 1);
    sqlx::query("INSERT INTO wayback_smoke (id, marker) VALUES ($1, $2)")
        .bind(id)
        .bind(format!("{marker}-{id}"))
        .execute(&mut conn)
        .await
        .context("INSERT INTO wayback_smoke")?;
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&mut conn)
        .await
        .context("SELECT inet_server_port()")?;
    let mut expected = rows.to_vec();
    expected.push((id, format!("{marker}-{id}")));
    let found = read_from(&mut conn).await?;
    if found != expected {
        bail!("read back {found:?}, expected {expected:?}");
    }
    Ok((found, port))
}

/// Connects with the binding's uri, a few times: the cluster may still be opening up, or an
/// HA instance's lead may be changing hands.
async fn connect(login: &AppLogin) -> anyhow::Result<sqlx::PgConnection> {
    let uri = PgUri::parse(&login.uri).context("the binding's uri")?;
    let read_write = matches!(
        uri.param("target_session_attrs")?.as_deref(),
        Some("read-write" | "primary")
    );
    let hosts = uri.per_host()?;
    let mut attempt = 0;
    loop {
        let mut failures = Vec::new();
        for (host, single) in &hosts {
            match connect_one(single, login, read_write).await {
                Ok(c) => return Ok(c),
                Err(e) => failures.push(format!("{host}: {e:#}")),
            }
        }
        if attempt >= 4 {
            bail!("connect with the binding's uri: {}", failures.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        attempt += 1;
    }
}

/// One host; with `read_write`, refused when its session is read-only (a standby).
async fn connect_one(
    uri: &str,
    login: &AppLogin,
    read_write: bool,
) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let mut opts: sqlx::postgres::PgConnectOptions = uri.parse()?;
    if let Some(ca) = &login.ca_certificate {
        opts = opts.ssl_root_cert_from_pem(ca.clone().into_bytes());
    }
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&opts))
        .await
        .map_err(|_| anyhow!("no answer in {} s", CONNECT_TIMEOUT.as_secs()))??;
    if read_write {
        let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
            .fetch_one(&mut conn)
            .await
            .context("SHOW transaction_read_only")?;
        if read_only != "off" {
            bail!("read-only session (a standby), and the uri asks for read-write");
        }
    }
    Ok(conn)
}
