//! A `pg_basebackup` that stops sending (PostgreSQL waiting for its end segment to be archived)
//! fails the backup after `stall_timeout`, not never.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::domain::{InstanceId, SpaceGuid};

#[tokio::test]
async fn a_stream_that_stalls_fails_after_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Sends a little, then hangs as pg_basebackup does while the server waits for archiving.
    let script = dir.path().join("pg_basebackup");
    std::fs::write(&script, "#!/bin/sh\nprintf 'some bytes'\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let source = BackupSource {
        instance_id: "stalled".into(),
        pg_basebackup: script,
        // No server here: ending its side fails, and is only logged.
        socket_dir: dir.path().join("no-socket"),
        port: 1,
        password: SecretString::from("pw".to_string()),
        system_identifier: 1,
        data_key: None,
    };
    let options = BackupOptions {
        compression_level: 1,
        part_bytes: 1 << 20,
        uploads_in_flight: 1,
        stream_timeout: Duration::from_secs(60),
        stall_timeout: Duration::from_millis(500),
        archive_wait: Duration::from_secs(1),
        reason: "manual".into(),
    };
    let store = ObjectStore::local(&dir.path().join("archive")).unwrap();
    let space = SpaceGuid::parse("space-1".to_string()).unwrap();
    let prefix = InstancePrefix::new(&space, &InstanceId::parse("stalled").unwrap());
    let mut uploader = PartUploader::new(store, prefix, "b1".into(), 1, None, 1);
    let started = Instant::now();
    let e = match stream(&source, &options, "b1", &mut uploader).await {
        Ok(_) => panic!("a stalled stream must fail"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("backup.stall_timeout_secs"), "{e}");
    assert!(e.contains("after 10 bytes"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed at the stall timeout, not at the end of the stream: {:?}",
        started.elapsed()
    );
    uploader.drain().await;
}
