//! Secrets at rest: binding passwords are sealed in the state database (the raw SQLite files
//! and PostgreSQL's raw column hold no password), rows from before sealing are sealed once at
//! start, `rekey` moves them to the current key so that the old key can go, and a broker
//! without a key that sealed something refuses to start, naming the setting and the key.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::{Connection, Row};
use wayback::crypto::{encode_key, random_key_bytes, Keyring};
use wayback::domain::{BindingId, BindingState, InstanceId, OperationKind};
use wayback::store::{now_millis, BindingRecord, Store};

use crate::common;
use crate::store::{instance, job, operation};

const MARKER: &str = "MarkerPasswordQ7zX9v";

fn keys(ids: &[&str]) -> BTreeMap<String, SecretString> {
    ids.iter()
        .map(|id| (id.to_string(), encode_key(&random_key_bytes())))
        .collect()
}

fn keyring(all: &BTreeMap<String, SecretString>, ids: &[&str], current: &str) -> Arc<Keyring> {
    let chosen = ids
        .iter()
        .map(|id| {
            (
                id.to_string(),
                wayback::crypto::decode_key(id, &all[*id]).unwrap(),
            )
        })
        .collect();
    Arc::new(Keyring::new(chosen, Some(current)).unwrap())
}

async fn insert_binding(store: &Store, id: &str) {
    let binding = BindingRecord {
        id: BindingId::parse(id).unwrap(),
        instance_id: wayback::domain::InstanceId::parse("i-1").unwrap(),
        request: json!({}),
        role_name: format!("u_{id}"),
        password: SecretString::from(format!("{MARKER}{id}")),
        state: BindingState::Creating,
        read_only: false,
        created_at: now_millis(),
        updated_at: now_millis(),
        deleted_at: None,
    };
    let op = format!("op-{id}");
    store
        .insert_binding(
            &binding,
            &operation(&op, "i-1", Some(id), OperationKind::Bind),
            &job(&op, "i-1", Some(id)),
        )
        .await
        .unwrap();
}

/// Instance `i-1` and its binding `b-1` (password `MARKER` + id).
async fn insert_instance_and_binding(store: &Store) {
    store
        .insert_instance(
            &instance("i-1"),
            Some("db"),
            &operation("op-i", "i-1", None, OperationKind::Provision),
            &job("op-i", "i-1", None),
        )
        .await
        .unwrap();
    insert_binding(store, "b-1").await;
}

async fn password(store: &Store, id: &str) -> String {
    let got = store.get_binding(&BindingId::parse(id).unwrap()).await;
    got.unwrap().unwrap().password.expose_secret().to_string()
}

/// The suite both backends run; `raw` reads the stored password column of every binding.
async fn suite(url: &str, raw: impl AsyncFn() -> Vec<String>) {
    let all = keys(&["old", "new"]);
    let old = Store::connect(url)
        .await
        .unwrap()
        .with_keyring(keyring(&all, &["old"], "old"));
    insert_instance_and_binding(&old).await;
    assert_eq!(password(&old, "b-1").await, format!("{MARKER}b-1"));
    // A follower's replication password is sealed the same way (here on i-1's row).
    let follower = InstanceId::parse("i-1").unwrap();
    let repl = SecretString::from(format!("{MARKER}repl"));
    old.ensure_replication_password(&follower, &repl)
        .await
        .unwrap();
    // An HA instance's shared superuser password too (migration 0013; here on i-1's row).
    let superuser = SecretString::from(format!("{MARKER}superuser"));
    let stored = old
        .ensure_ha_superuser_password(&follower, &superuser)
        .await
        .unwrap();
    assert_eq!(stored.expose_secret(), superuser.expose_secret());
    let again = old
        .ensure_ha_superuser_password(&follower, &SecretString::from("another".to_string()))
        .await
        .unwrap();
    assert_eq!(
        again.expose_secret(),
        superuser.expose_secret(),
        "made once"
    );
    for value in raw().await {
        assert!(!value.contains(MARKER), "stored in clear: {value}");
        assert!(value.starts_with("wbenc:v1:old:"), "{value}");
    }

    // Rotation: both keys, `new` current; rekey re-seals; then `old` can go.
    let both =
        Store::connect(url)
            .await
            .unwrap()
            .with_keyring(keyring(&all, &["old", "new"], "new"));
    insert_binding(&both, "b-2").await;
    assert_eq!(both.reseal_secrets().await.unwrap(), 1);
    assert_eq!(both.reseal_secrets().await.unwrap(), 0, "idempotent");
    assert_eq!(both.reseal_replication_passwords().await.unwrap(), 1);
    assert_eq!(
        both.reseal_replication_passwords().await.unwrap(),
        0,
        "idempotent"
    );
    assert_eq!(both.reseal_ha_superuser_passwords().await.unwrap(), 1);
    assert_eq!(both.reseal_ha_superuser_passwords().await.unwrap(), 0);
    let only_new = Store::connect(url)
        .await
        .unwrap()
        .with_keyring(keyring(&all, &["new"], "new"));
    assert!(only_new.missing_secret_keys().await.unwrap().is_empty());
    assert_eq!(password(&only_new, "b-1").await, format!("{MARKER}b-1"));
    assert_eq!(password(&only_new, "b-2").await, format!("{MARKER}b-2"));
    let reopened = only_new.replication_password(&follower).await.unwrap();
    assert_eq!(
        reopened.unwrap().expose_secret(),
        format!("{MARKER}repl"),
        "opens with the new key alone"
    );
    let reopened = only_new.ha_superuser_password(&follower).await.unwrap();
    assert_eq!(
        reopened.unwrap().expose_secret(),
        format!("{MARKER}superuser")
    );
    let only_old = Store::connect(url)
        .await
        .unwrap()
        .with_keyring(keyring(&all, &["old"], "old"));
    assert_eq!(only_old.missing_secret_keys().await.unwrap(), vec!["new"]);
    for value in raw().await {
        assert!(value.starts_with("wbenc:v1:new:"), "{value}");
    }
}

#[tokio::test]
async fn sqlite_files_hold_no_binding_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = wayback::config::resolve::default_sqlite_url(dir.path());
    let path = dir.path().to_path_buf();
    suite(&url, async || {
        // Every file SQLite keeps (the database, its WAL and shared memory), read raw.
        for entry in std::fs::read_dir(&path).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(MARKER),
                "a raw state database file holds a password"
            );
        }
        store_passwords(&url).await
    })
    .await;
}

async fn store_passwords(url: &str) -> Vec<String> {
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT password FROM bindings UNION ALL SELECT superuser_password FROM instances \
         WHERE superuser_password IS NOT NULL",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.iter()
        .map(|r| r.get::<String, _>("password"))
        .collect()
}

#[tokio::test]
async fn postgres_column_holds_no_binding_password() {
    let base = std::env::var("WAYBACK_TEST_PG_URL").ok();
    if !common::require("a PostgreSQL server in WAYBACK_TEST_PG_URL", base.is_some()) {
        return;
    }
    sqlx::any::install_default_drivers();
    let base = base.unwrap();
    let db = format!("secrets_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let url = format!("{prefix}/{db}");
    suite(&url, async || store_passwords(&url).await).await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// A row written before sealing (password_key NULL, clear password) is sealed at start, once;
/// a broker without the key that sealed rows refuses to start, naming the setting and the id.
#[tokio::test]
async fn clear_rows_are_sealed_at_start_and_a_missing_key_refuses_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = wayback::config::Settings {
        data_dir: dir.path().to_path_buf(),
        encryption: wayback::config::EncryptionSettings {
            keys: keys(&["ops-1"]),
            current_key: None,
        },
        ..Default::default()
    };
    let (store, url) = wayback::open::state_store(&settings, dir.path())
        .await
        .unwrap();
    insert_instance_and_binding(&store).await;
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE bindings SET password = $1, password_key = NULL WHERE id = 'b-1'")
        .bind(format!("{MARKER}b-1"))
        .execute(&mut conn)
        .await
        .unwrap();
    store.close().await;

    let (store, _) = wayback::open::state_store(&settings, dir.path())
        .await
        .unwrap();
    assert_eq!(password(&store, "b-1").await, format!("{MARKER}b-1"));
    let stored = store_passwords(&url).await;
    assert!(
        stored.iter().all(|v| v.starts_with("wbenc:v1:ops-1:")),
        "{stored:?}"
    );
    assert_eq!(store.seal_clear_secrets().await.unwrap(), 0, "sealed once");
    store.close().await;

    settings.encryption.keys = keys(&["ops-2"]);
    let refused = wayback::open::state_store(&settings, dir.path()).await;
    let message = format!("{:#}", refused.err().expect("refuses to start"));
    assert!(message.contains("encryption.keys"), "{message}");
    assert!(message.contains("ops-1"), "{message}");

    // The broker binary, started with another key only, exits and says the same.
    let other = &settings.encryption.keys["ops-2"];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env(
            "WAYBACK_ENCRYPTION_KEYS",
            format!("ops-2:{}", other.expose_secret()),
        )
        .env("WAYBACK_BROKER_PASSWORD", "pw")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("encryption.keys") && stderr.contains("ops-1"),
        "{stderr}"
    );
    assert!(!stderr.contains(other.expose_secret()), "{stderr}");
}

/// `wayback rekey` (the binary, as an operator runs it) moves every secret to the current
/// key; afterwards a broker with only that key reads them.
#[tokio::test]
async fn rekey_then_read_with_only_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let all = keys(&["old", "new"]);
    let mut settings = wayback::config::Settings {
        data_dir: dir.path().to_path_buf(),
        encryption: wayback::config::EncryptionSettings {
            keys: all
                .iter()
                .filter(|(id, _)| *id == "old")
                .map(|(i, k)| (i.clone(), k.clone()))
                .collect(),
            current_key: None,
        },
        ..Default::default()
    };
    let (store, _) = wayback::open::state_store(&settings, dir.path())
        .await
        .unwrap();
    insert_instance_and_binding(&store).await;
    // A dashboard sign-in started before the rekey, to finish after it.
    let login_instance = wayback::domain::InstanceId::parse("i-1").unwrap();
    let verifier = secrecy::SecretString::from("pkce-verifier-of-a-pending-sign-in");
    let now_ms = chrono::Utc::now().timestamp_millis();
    store
        .insert_dashboard_login("state-digest", &login_instance, &verifier, now_ms, 0)
        .await
        .unwrap();
    store.close().await;

    let list = |ids: &[&str]| {
        ids.iter()
            .map(|id| format!("{id}:{}", all[*id].expose_secret()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args(["rekey", "--data-dir"])
        .arg(dir.path())
        .env("WAYBACK_ENCRYPTION_KEYS", list(&["old", "new"]))
        .env("WAYBACK_ENCRYPTION_CURRENT_KEY", "new")
        .env("WAYBACK_LOG_FORMAT", "plain")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("binding passwords (state database): 1 re-sealed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pending dashboard sign-ins (state database): 1 re-sealed"),
        "{stdout}"
    );
    assert!(stdout.contains("sealed with key new"), "{stdout}");

    settings.encryption.keys = all.into_iter().filter(|(id, _)| id == "new").collect();
    let (store, _) = wayback::open::state_store(&settings, dir.path())
        .await
        .unwrap();
    assert_eq!(password(&store, "b-1").await, format!("{MARKER}b-1"));
    let login = store
        .take_dashboard_login("state-digest", 0)
        .await
        .unwrap()
        .expect("the pending sign-in is still there");
    assert_eq!(
        login.verifier.expose_secret(),
        verifier.expose_secret(),
        "it opens with the new key alone"
    );
}

/// Under a permissive umask (000) every file the broker keeps its state and keys in is 0600
/// and the data directory 0700: the state database with its WAL and shared memory, the
/// generated key, the generated broker password. (nextest runs each
/// test in its own process, so the umask changes no other test.)
#[tokio::test]
async fn state_files_are_private_under_a_permissive_umask() {
    use std::os::unix::fs::PermissionsExt;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let parent = tempfile::tempdir().unwrap();
    let settings = wayback::config::Settings {
        data_dir: parent.path().join("data"),
        ..Default::default()
    };
    let data_dir = wayback::config::resolve::data_dir(&settings).unwrap();
    wayback::config::resolve::broker_password(&settings, &data_dir).unwrap();
    let (store, _) = wayback::open::state_store(&settings, &data_dir)
        .await
        .unwrap();
    insert_instance_and_binding(&store).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700, "the data directory");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(mode(&path), 0o600, "{name}");
        seen.push(name);
    }
    seen.sort();
    for expected in [
        "broker-password",
        "encryption-key",
        "wayback.db",
        "wayback.db-wal",
    ] {
        assert!(seen.iter().any(|n| n == expected), "{expected} in {seen:?}");
    }
    store.close().await;
}

/// The broker binary run under umask 000 (real PostgreSQL): after a provision, its data
/// directory is 0700 (0711 when clusters run as another OS user), and every file it holds
/// directly — state database with -wal/-shm, generated key — and each
/// cluster's archive.json is 0600; no directory or file anywhere under the clusters is open to
/// others for writing. (The staged binary in `bin/` is 0755 by design; the local `archive/` is
/// the file:// object store and is left out.)
#[tokio::test]
async fn broker_files_are_private_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    if !common::require(
        "PostgreSQL binaries (scripts/test)",
        std::env::var("WAYBACK_TEST_DRIVEN").is_ok(),
    ) {
        return;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let root = common::test_root();
    let site = crate::restart::harness::Site::new(root.path());
    let mut broker = site.start();
    let client = site.client();
    client.wait_healthy().await;
    let id = common::new_id();
    let (status, body) = client
        .put_instance(&id, &common::provision_body(common::SMALL, "private"))
        .await
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let (_, done) = client.wait_done(&id, body["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    broker.stop().await;
    common::stop_all_clusters(&site.data_dir);

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = &site.data_dir;
    assert!(
        matches!(mode(data), 0o700 | 0o711),
        "data dir {:o}",
        mode(data)
    );
    // (The harness configures the broker password: no broker-password file here.)
    for name in ["wayback.db", "encryption-key"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    let cluster = data.join("clusters").join(&id);
    assert_eq!(mode(&cluster.join("archive.json")), 0o600);
    let mut stack = vec![data.join("clusters")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            // Sockets are PostgreSQL's to open to clients (its run/ directory guards them).
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_symlink() || meta.file_type().is_socket() {
                continue;
            }
            let m = meta.permissions().mode() & 0o777;
            assert_eq!(m & 0o022, 0, "{} is {m:o}", path.display());
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
}
