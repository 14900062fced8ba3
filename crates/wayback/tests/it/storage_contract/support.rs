//! Backends and data for the contract tests: the shared S3 server from the environment, a
//! temporary directory, deterministic bytes, and readers that chunk or fail on purpose.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use secrecy::SecretString;
use tokio::io::{AsyncRead, ReadBuf};
use wayback::storage::{ObjectStore, StorageSettings};

pub struct S3Env {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub region: String,
}

/// The shared s3s-fs from `scripts/test`, or `None` (after saying why) when absent.
pub fn s3_env() -> Option<S3Env> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let env = (|| {
        Some(S3Env {
            endpoint: var("WAYBACK_TEST_S3_ENDPOINT")?,
            access_key: var("WAYBACK_TEST_S3_ACCESS_KEY")?,
            secret_key: var("WAYBACK_TEST_S3_SECRET_KEY")?,
            bucket: var("WAYBACK_TEST_S3_BUCKET")?,
            region: var("WAYBACK_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
        })
    })();
    require(
        "an S3 server (WAYBACK_TEST_S3_ENDPOINT and friends)",
        env.is_some(),
    );
    env
}

pub fn require(what: &str, present: bool) {
    if !present {
        if std::env::var("WAYBACK_TEST_DRIVEN").is_ok() {
            panic!("{what} is required (run the tests through scripts/test)");
        }
        eprintln!("SKIPPED: {what} is missing; run the tests through scripts/test");
    }
}

/// Settings for a fresh prefix of the shared bucket: small parts and pages, so that multipart
/// and pagination are exercised with little data.
pub fn s3_settings(env: &S3Env) -> StorageSettings {
    StorageSettings {
        url: format!("s3://{}/test-{}/", env.bucket, uuid::Uuid::new_v4()),
        endpoint: Some(env.endpoint.clone()),
        region: Some(env.region.clone()),
        access_key_id: Some(env.access_key.clone()),
        secret_access_key: Some(SecretString::from(env.secret_key.clone())),
        part_size_mib: 5,
        list_page_size: 3,
        ..StorageSettings::default()
    }
}

pub fn local_store() -> (tempfile::TempDir, ObjectStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        ObjectStore::open(&StorageSettings::local(&dir.path().join("archive"))).expect("open");
    (dir, store)
}

/// Fast deterministic bytes (xorshift), different per seed.
pub fn pseudo_random(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Hands out `data` at most `chunk` bytes per read.
pub struct ChunkedReader {
    pub data: Bytes,
    chunk: usize,
}

impl ChunkedReader {
    pub fn new(data: Bytes, chunk: usize) -> Self {
        Self { data, chunk }
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        let head = self.data.split_to(n);
        buf.put_slice(&head);
        Poll::Ready(Ok(()))
    }
}

/// Yields `data`, then fails instead of ending.
pub struct FailingReader(ChunkedReader);

impl FailingReader {
    pub fn new(data: Bytes) -> Self {
        Self(ChunkedReader::new(data, 256 * 1024))
    }
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.0.data.is_empty() {
            return Poll::Ready(Err(std::io::Error::other("the source broke")));
        }
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}
