//! Tests that need an S3 server of their own: one they can stop, whose files they can damage or
//! inspect, and one that never answers.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use wayback::storage::{ObjectStore, Op, StorageSettings};

use super::support::{pseudo_random, require, ChunkedReader, FailingReader};

use crate::common::s3_server;

use s3_server::S3Server;

struct OwnS3 {
    server: S3Server,
    root: RootPath,
    settings: StorageSettings,
}

/// The server's directory, named as the tests below use it (`s3.root.path()`).
struct RootPath(PathBuf);

impl RootPath {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl OwnS3 {
    const BUCKET: &'static str = S3Server::BUCKET;

    /// Starts s3s-fs on a free port with one bucket; `None` (after saying why) without the binary.
    async fn start() -> Option<Self> {
        let server = S3Server::start().await;
        require(
            "the s3s-fs binary (scripts/setup --with-s3)",
            server.is_some(),
        );
        let server = server?;
        let settings = StorageSettings {
            part_size_mib: 5,
            ..server.settings("p/")
        };
        Some(Self {
            root: RootPath(server.root().to_path_buf()),
            server,
            settings,
        })
    }

    fn store(&self) -> ObjectStore {
        ObjectStore::open(&self.settings).expect("open")
    }

    fn pending_uploads(&self) -> Vec<String> {
        self.server.pending_uploads()
    }

    fn stop(&mut self) {
        self.server.stop()
    }
}

#[tokio::test]
async fn s3_bad_credentials_and_missing_bucket_are_permanent() {
    let Some(s3) = OwnS3::start().await else {
        return;
    };
    s3.store().check().await.expect("good settings work");

    let wrong_secret = StorageSettings {
        secret_access_key: Some(SecretString::from("not-the-secret")),
        ..s3.settings.clone()
    };
    let err = ObjectStore::open(&wrong_secret)
        .unwrap()
        .check()
        .await
        .expect_err("bad secret");
    assert!(err.is_permanent(), "{err}");
    assert!(
        !format!("{err} {err:?}").contains("own-secret")
            && !err.to_string().contains("not-the-secret")
    );

    let no_bucket = StorageSettings {
        url: "s3://no-such-bucket/p/".into(),
        ..s3.settings.clone()
    };
    let store = ObjectStore::open(&no_bucket).unwrap();
    let err = store.check().await.expect_err("missing bucket");
    assert!(
        err.is_permanent() && err.to_string().contains("NoSuchBucket"),
        "{err}"
    );
    let err = store.list("").await.expect_err("list in a missing bucket");
    assert!(err.is_permanent(), "{err}");
    // Unlike S3, s3s-fs creates a missing bucket on PutObject and answers GetObject in a missing
    // bucket with NoSuchKey; ObjectStore::check at start-up is what catches a wrong bucket name.
}

#[tokio::test]
async fn s3_damaged_objects_fail_the_read_instead_of_returning_bad_bytes() {
    let Some(s3) = OwnS3::start().await else {
        return;
    };
    let store = s3.store();
    let data = pseudo_random(100_000, 10);
    store.put("damaged", data.clone()).await.unwrap();
    assert_eq!(store.get("damaged").await.unwrap().unwrap(), data);
    // Flip one bit behind the server's back: its stored CRC32 no longer matches the bytes.
    let path = s3.root.path().join(OwnS3::BUCKET).join("p/damaged");
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[50_000] ^= 0x10;
    std::fs::write(&path, on_disk).unwrap();
    let err = store.get("damaged").await.expect_err("checksum mismatch");
    assert!(
        !err.is_permanent() && err.to_string().contains("checksum"),
        "{err}"
    );
    let mut reader = store.get_stream("damaged").await.unwrap().unwrap();
    let mut sink = Vec::new();
    assert!(
        reader.read_to_end(&mut sink).await.is_err(),
        "the stream ends in an error"
    );
}

#[tokio::test]
async fn s3_multipart_uploads_are_aborted_on_failure_and_cancellation() {
    let Some(s3) = OwnS3::start().await else {
        return;
    };
    let store = s3.store();
    let err = store
        .put_stream(
            "broken",
            FailingReader::new(pseudo_random(17 * 1024 * 1024, 6)),
        )
        .await
        .expect_err("broken reader");
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(
        s3.pending_uploads(),
        Vec::<String>::new(),
        "aborted after a failure"
    );

    let cancel = CancellationToken::new();
    let reader = CancellingReader {
        inner: ChunkedReader::new(pseudo_random(12 * 1024 * 1024, 7), 64 * 1024),
        cancel: cancel.clone(),
    };
    let err = store
        .with_cancel(cancel)
        .put_stream("cancelled", reader)
        .await
        .expect_err("cancelled");
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(
        s3.pending_uploads(),
        Vec::<String>::new(),
        "aborted after cancellation"
    );
    assert!(store.list("").await.unwrap().is_empty());
}

/// Yields its data, then cancels the token and never ends: a stream cut off mid-upload.
struct CancellingReader {
    inner: ChunkedReader,
    cancel: CancellationToken,
}

impl AsyncRead for CancellingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.inner.data.is_empty() {
            self.cancel.cancel();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[tokio::test]
async fn s3_stopped_server_fails_transiently_within_bounded_time() {
    let Some(mut s3) = OwnS3::start().await else {
        return;
    };
    let store = s3.store();
    store
        .put("k", Bytes::from_static(b"v"))
        .await
        .expect("while running");
    s3.stop();
    let bound = Duration::from_secs(10);
    for op in [Op::Get, Op::Put, Op::Head, Op::List, Op::PutStream] {
        let started = Instant::now();
        let result = match op {
            Op::Get => store.get("k").await.map(drop),
            Op::Put => store.put("k", Bytes::from_static(b"v")).await,
            Op::Head => store.head("k").await.map(drop),
            Op::List => store.list("").await.map(drop),
            _ => store
                .put_stream("k", &pseudo_random(6 << 20, 8)[..])
                .await
                .map(drop),
        };
        let elapsed = started.elapsed();
        let err = result.expect_err("the server is gone");
        assert!(!err.is_permanent(), "{op}: {err}");
        assert_eq!(err.op(), Some(op), "{err}");
        assert!(elapsed < bound, "{op} took {elapsed:?}: {err}");
        eprintln!("{op} against a stopped server failed after {elapsed:?}: {err}");
    }
}

#[tokio::test]
async fn s3_silent_server_times_out() {
    // Accepts connections and never answers: only the attempt timeout ends the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let settings = StorageSettings {
        url: "s3://silent/p/".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Some("a".into()),
        secret_access_key: Some(SecretString::from("s")),
        attempt_timeout_secs: 1,
        max_attempts: 2,
        ..StorageSettings::default()
    };
    let store = ObjectStore::open(&settings).unwrap();
    let started = Instant::now();
    let err = store.get("k").await.expect_err("no answer");
    assert!(!err.is_permanent(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}: {err}",
        started.elapsed()
    );
    holder.abort();
}
