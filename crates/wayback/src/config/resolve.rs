//! What the settings resolve to on this machine, worked out once and shared by `serve`,
//! `agent` and every operator command: the data directory, the state database's URL (the
//! setting, else the PostgreSQL service in `VCAP_SERVICES`, else SQLite in the data directory),
//! the archive's location (default `file://DATA_DIR/archive`), the `wayback` binary PostgreSQL
//! runs as its archiver, and the broker's password. Opening any of them is the caller's: this
//! module only decides where they are.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use super::Settings;
use crate::storage::StorageSettings;

/// The data directory, created if missing, as a canonical path (clusters and the state
/// database are found under it). It holds secrets (keys, the state database), so whatever the
/// umask it is 0700 — no one else may read or write it; an existing one loses group and other
/// read and write bits. (Clusters run as another OS user add search only: 0711.)
pub fn data_dir(settings: &Settings) -> anyhow::Result<PathBuf> {
    let dir = &settings.data_dir;
    let created = !dir.exists();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create data directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("data directory {}", dir.display()))?
        .permissions()
        .mode()
        & 0o7777;
    let wanted = if created { 0o700 } else { mode & !0o066 };
    if wanted != mode {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(wanted)) {
            // Someone else's directory: say so, and go on as before this rule.
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the data directory private (chmod go-rw)");
        }
    }
    std::fs::canonicalize(dir).with_context(|| format!("data directory {}", dir.display()))
}

/// The `wayback` binary PostgreSQL runs for `archive_command` / `restore_command`
/// (`wal.wayback_bin`, else this executable), staged under the data directory
/// ([`stage_binary`]).
pub fn wayback_binary(settings: &Settings, data_dir: &Path) -> anyhow::Result<PathBuf> {
    stage_binary(&wayback_executable(settings)?, data_dir)
}

/// The `wayback` binary as configured (`wal.wayback_bin`), else this executable; not staged.
pub fn wayback_executable(settings: &Settings) -> anyhow::Result<PathBuf> {
    match &settings.wal.wayback_bin {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().context("find the wayback binary"),
    }
}

/// The state database's URL: `database_url` if the settings name one; else, on Cloud Foundry
/// (`VCAP_SERVICES` is set), the PostgreSQL service bound to the app ([`vcap_state_database`]);
/// else the SQLite file in `data_dir`. Which service was used is logged, its credentials never.
pub fn database_url(settings: &Settings, data_dir: &Path) -> String {
    if let Some(url) = &settings.database_url {
        return url.expose_secret().to_string();
    }
    if let Ok(vcap) = std::env::var("VCAP_SERVICES") {
        match vcap_state_database(&vcap) {
            Ok(Some(found)) => {
                tracing::info!(
                    service = %found.name,
                    label = %found.label,
                    credential = found.field,
                    "state database: the service bound to this app (VCAP_SERVICES)"
                );
                return found.url.expose_secret().to_string();
            }
            // A cf push container's disk goes with the container: SQLite there loses the state.
            Ok(None) => tracing::warn!(
                "VCAP_SERVICES has no bound service with a PostgreSQL `uri`: the state database is \
                 SQLite in the data directory, lost with the container; bind a PostgreSQL service \
                 named wayback-state or set database_url"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "VCAP_SERVICES is not valid JSON; the state database is SQLite in the data directory"
            ),
        }
    }
    default_sqlite_url(data_dir)
}

/// The SQLite state database in `data_dir`, used when no other is configured.
pub fn default_sqlite_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("wayback.db").display()
    )
}

/// The state database found in `VCAP_SERVICES`: which bound service, and its URL.
#[derive(Debug)]
pub struct VcapDatabase {
    pub name: String,
    pub label: String,
    /// The credential the URL came from: `uri`, or `jdbcUrl` when there is no usable `uri`.
    pub field: &'static str,
    pub url: SecretString,
}

/// Picks the state database from a `VCAP_SERVICES` document (`{label: [service, …], …}`):
/// among the bound services whose credentials hold a PostgreSQL URL (`uri`, else a
/// `jdbc:postgresql:` `jdbcUrl`), the first one named or tagged `wayback-state`, else the first
/// whose tags or label mention postgres, else the first. `None` when there is no such service.
pub fn vcap_state_database(vcap: &str) -> Result<Option<VcapDatabase>, serde_json::Error> {
    let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_str(vcap)?;
    let mut best: Option<(u8, VcapDatabase)> = None;
    for (label, services) in &doc {
        for service in services.as_array().into_iter().flatten() {
            let Some((field, url)) = postgres_url(&service["credentials"]) else {
                continue;
            };
            let name = service["name"].as_str().unwrap_or_default().to_string();
            let tags: Vec<String> = service["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_ascii_lowercase))
                .collect();
            let rank = if name == "wayback-state" || tags.iter().any(|t| t == "wayback-state") {
                0
            } else if tags.iter().any(|t| t.contains("postgres"))
                || label.to_ascii_lowercase().contains("postgres")
            {
                1
            } else {
                2
            };
            if !matches!(&best, Some((r, _)) if *r <= rank) {
                let found = VcapDatabase {
                    name,
                    label: label.clone(),
                    field,
                    url: SecretString::from(url),
                };
                best = Some((rank, found));
            }
        }
    }
    Ok(best.map(|(_, found)| found))
}

/// A PostgreSQL URL from a binding's credentials: `uri` (`postgres://` or `postgresql://`),
/// else `jdbcUrl` (`jdbc:postgresql://…?user=…&password=…`, which sqlx reads without `jdbc:`).
fn postgres_url(credentials: &serde_json::Value) -> Option<(&'static str, String)> {
    let is_postgres = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
    if let Some(uri) = credentials["uri"].as_str().filter(|u| is_postgres(u)) {
        return Some(("uri", uri.to_string()));
    }
    credentials["jdbcUrl"]
        .as_str()
        .and_then(|u| u.strip_prefix("jdbc:"))
        .filter(|u| is_postgres(u))
        .map(|u| ("jdbcUrl", u.to_string()))
}

/// The archive's settings, with `file://DATA_DIR/archive` when they name no URL.
pub fn archive(settings: &Settings, data_dir: &Path) -> StorageSettings {
    let mut archive = settings.archive.clone();
    if archive.url.trim().is_empty() {
        archive.url = StorageSettings::default_url(data_dir, "archive");
    }
    archive
}

/// Puts the `wayback` binary where the clusters' OS user can run it: `<data_dir>/bin/wayback`
/// (a hard link, or a copy across file systems). PostgreSQL runs archive_command as that user,
/// and the binary's own location (a build tree under /root, say) may be closed to it. Renewed
/// at every start, so an upgraded broker archives with the new binary.
pub fn stage_binary(binary: &Path, data_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = data_dir.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let staged = dir.join("wayback");
    // A name of our own: another broker sharing the directory may be staging at the same time,
    // and copying onto a link to the source would truncate the source.
    let tmp = dir.join(format!("wayback.new.{}", uuid::Uuid::new_v4().simple()));
    if std::fs::hard_link(binary, &tmp).is_err() {
        std::fs::copy(binary, &tmp)
            .with_context(|| format!("copy {} to {}", binary.display(), tmp.display()))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &staged).with_context(|| format!("install {}", staged.display()))?;
    Ok(staged)
}

/// The configured broker password, or one generated once into `<data_dir>/broker-password`
/// (mode 0600). The password itself is never logged; its file is named instead.
pub fn broker_password(settings: &Settings, data_dir: &Path) -> anyhow::Result<SecretString> {
    if let Some(p) = &settings.broker.password {
        return Ok(p.clone());
    }
    let path = data_dir.join("broker-password");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_string();
        if !existing.is_empty() {
            return Ok(SecretString::from(existing));
        }
    }
    let password = crate::domain::new_password();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("write {}", path.display()))?;
    std::io::Write::write_all(&mut file, password.expose_secret().as_bytes())?;
    file.sync_all()?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(user = %settings.broker.username, file = %path.display(), "no broker password configured; generated one into this file");
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn pick(vcap: &str) -> Option<(String, &'static str, String)> {
        vcap_state_database(vcap)
            .expect("valid JSON")
            .map(|f| (f.name, f.field, f.url.expose_secret().to_string()))
    }

    #[test]
    fn a_service_named_or_tagged_wayback_state_wins() {
        let vcap = r#"{
          "a-postgres": [{"name": "other-db", "label": "a-postgres", "tags": ["postgresql"],
                          "credentials": {"uri": "postgres://u:p@other:5432/x"}}],
          "user-provided": [{"name": "wayback-state", "label": "user-provided", "tags": [],
                             "credentials": {"uri": "postgresql://u:p@state:5432/wayback"}}]
        }"#;
        assert_eq!(
            pick(vcap),
            Some((
                "wayback-state".into(),
                "uri",
                "postgresql://u:p@state:5432/wayback".into()
            ))
        );
        let tagged = r#"{"p": [
          {"name": "db1", "tags": ["postgres"], "credentials": {"uri": "postgres://one/db"}},
          {"name": "db2", "tags": ["Wayback-State"], "credentials": {"uri": "postgres://two/db"}}
        ]}"#;
        assert_eq!(pick(tagged).unwrap().0, "db2");
    }

    #[test]
    fn else_a_postgres_tag_or_label_else_the_first_postgres_uri() {
        let by_tag = r#"{"databases": [
          {"name": "plain", "tags": [], "credentials": {"uri": "postgres://plain/db"}},
          {"name": "pg", "tags": ["relational", "PostgreSQL"], "credentials": {"uri": "postgres://pg/db"}}
        ]}"#;
        assert_eq!(pick(by_tag).unwrap().0, "pg");
        let by_label = r#"{
          "a-db": [{"name": "plain", "credentials": {"uri": "postgres://plain/db"}}],
          "postgresql-db": [{"name": "labelled", "credentials": {"uri": "postgres://l/db"}}]
        }"#;
        assert_eq!(pick(by_label).unwrap().0, "labelled");
        let untagged = r#"{"x": [{"name": "only", "credentials": {"uri": "postgres://o/db"}}]}"#;
        assert_eq!(pick(untagged).unwrap().0, "only");
    }

    #[test]
    fn uri_before_jdbc_url_and_only_postgres_urls() {
        let both = r#"{"p": [{"name": "db", "tags": ["postgres"], "credentials": {
          "uri": "postgres://u:p@h:5432/d",
          "jdbcUrl": "jdbc:postgresql://h:5432/d?user=u&password=p"}}]}"#;
        assert_eq!(pick(both).unwrap().1, "uri");
        let jdbc = r#"{"p": [{"name": "db", "tags": ["postgres"], "credentials": {
          "jdbcUrl": "jdbc:postgresql://h:5432/d?user=u&password=p"}}]}"#;
        assert_eq!(
            pick(jdbc),
            Some((
                "db".into(),
                "jdbcUrl",
                "postgresql://h:5432/d?user=u&password=p".into()
            ))
        );
        let mysql = r#"{"p-mysql": [{"name": "wayback-state", "tags": ["mysql"], "credentials": {
          "uri": "mysql://u:p@h:3306/d", "jdbcUrl": "jdbc:mysql://h:3306/d"}}]}"#;
        assert_eq!(pick(mysql), None);
    }

    #[test]
    fn none_without_a_postgres_service_and_errors_on_bad_json() {
        assert_eq!(pick("{}"), None);
        assert_eq!(
            pick(r#"{"s3": [{"name": "bucket", "credentials": {"bucket": "b"}}], "odd": "x"}"#),
            None
        );
        assert_eq!(pick(r#"{"p": [{"name": "no-credentials"}]}"#), None);
        assert!(vcap_state_database("not json").is_err());
    }

    #[test]
    fn the_found_url_stays_out_of_debug_output() {
        let found = vcap_state_database(
            r#"{"p": [{"name": "db", "credentials": {"uri": "postgres://u:hunter2@h/d"}}]}"#,
        )
        .unwrap()
        .unwrap();
        assert!(!format!("{found:?}").contains("hunter2"));
    }

    #[test]
    fn the_setting_wins_over_vcap_services() {
        let settings = Settings {
            database_url: Some(SecretString::from("postgres://configured/db")),
            ..Settings::default()
        };
        assert_eq!(
            database_url(&settings, Path::new("/tmp/x")),
            "postgres://configured/db"
        );
    }
}
