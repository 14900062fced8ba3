//! What the walk writes to and reads from a cluster, over a binding's uri: the table
//! `wayback_smoke` with its rows holding the marker, and the connection that tolerates a
//! cluster still opening up. Must not import the broker's internals.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::ROWS;

/// Creates the table, writes the rows and reads them back.
pub(super) async fn write(uri: &str, marker: &str) -> anyhow::Result<(Vec<(i32, String)>, String)> {
    let mut conn = connect(uri).await?;
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

pub(super) async fn read_rows(uri: &str) -> anyhow::Result<Vec<(i32, String)>> {
    let mut conn = connect(uri).await?;
    read_from(&mut conn).await
}

async fn read_from(conn: &mut sqlx::PgConnection) -> anyhow::Result<Vec<(i32, String)>> {
    sqlx::query_as("SELECT id, marker FROM wayback_smoke ORDER BY id")
        .fetch_all(conn)
        .await
        .context("SELECT FROM wayback_smoke")
}

/// Connects with the binding's uri, a few times: the cluster may still be opening up.
async fn connect(uri: &str) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let mut attempt = 0;
    loop {
        match sqlx::PgConnection::connect(uri).await {
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
