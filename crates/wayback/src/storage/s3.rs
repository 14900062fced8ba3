//! The S3 backend, over aws-sdk-s3 with a client configured by hand.
//!
//! No `aws-config`: its credential chain probes profile files and the instance metadata service,
//! which hangs where there is no network. We build the client from [`S3Target`] alone: static
//! keys, a region, an optional endpoint, path-style addressing (Garage, MinIO and s3s-fs need
//! it), the SDK's standard retry strategy capped at `max_attempts` with short jittered backoff,
//! and a connect and a per-attempt timeout, so that a dead server costs seconds, not forever.
//!
//! Integrity: every upload carries a CRC32 we compute from the caller's bytes (the server must
//! check it and refuse a mismatch), and if the server echoes a checksum we compare it too.
//! Downloads ask for checksum validation (`ChecksumMode::Enabled`): the SDK checks a whole
//! object's stored CRC32 against the body as it streams and fails the read on a mismatch.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use super::s3_error::{body_error, classify, has_status};
use super::{ObjectMeta, ObjectReader, Op, S3Target, StorageError};

/// An S3 bucket and prefix; cheap to clone (the client and its connection pool are shared).
#[derive(Clone)]
pub struct S3Store {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) part_size: usize,
    pub(super) upload_concurrency: usize,
    pub(super) list_page_size: i32,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.inner.bucket)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    pub fn new(target: &S3Target) -> Self {
        let credentials = Credentials::new(
            &target.access_key_id,
            target.secret_access_key.expose_secret(),
            target
                .session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            None,
            "wayback-storage-settings",
        );
        let retry = RetryConfig::standard()
            .with_max_attempts(target.max_attempts)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(5));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(target.connect_timeout)
            .operation_attempt_timeout(target.attempt_timeout)
            .build();
        let mut config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(target.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(target.force_path_style)
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(endpoint) = &target.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            inner: Arc::new(Inner {
                client: Client::from_conf(config.build()),
                bucket: target.bucket.clone(),
                prefix: target.prefix.clone(),
                part_size: target.part_size,
                upload_concurrency: target.upload_concurrency,
                list_page_size: target.list_page_size,
            }),
        }
    }

    pub fn location(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.inner.bucket, self.inner.prefix)
    }

    pub(super) fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let crc = crc32_base64(&bytes);
        let output = self
            .inner
            .client
            .put_object()
            .bucket(&self.inner.bucket)
            .key(self.full_key(key))
            .content_length(bytes.len() as i64)
            .checksum_crc32(&crc)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| classify(Op::Put, self.location(key), &e))?;
        check_echo(
            Op::Put,
            || self.location(key),
            &crc,
            output.checksum_crc32(),
        )
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let Some(output) = self.get_object(Op::Get, key, None).await? else {
            return Ok(None);
        };
        let data = output
            .body
            .collect()
            .await
            .map_err(|e| body_error(Op::Get, self.location(key), &e))?;
        Ok(Some(data.into_bytes()))
    }

    pub async fn get_stream(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        let output = self.get_object(Op::GetStream, key, None).await?;
        Ok(output.map(|o| ObjectReader::new(o.body.into_async_read())))
    }

    pub async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<Option<Bytes>, StorageError> {
        let wanted = range.end - range.start;
        let Some(output) = self.get_object(Op::GetRange, key, Some(range)).await? else {
            return Ok(None);
        };
        let data = output
            .body
            .collect()
            .await
            .map_err(|e| body_error(Op::GetRange, self.location(key), &e))?
            .into_bytes();
        if data.len() as u64 != wanted {
            return Err(StorageError::permanent(
                Op::GetRange,
                self.location(key),
                format!(
                    "asked for {wanted} bytes, got {}: the range ends beyond the object",
                    data.len()
                ),
            ));
        }
        Ok(Some(data))
    }

    async fn get_object(
        &self,
        op: Op,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, StorageError> {
        let mut request = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.bucket)
            .key(self.full_key(key));
        request = match &range {
            // A part of an object carries no checksum of its own.
            Some(r) => request.range(format!("bytes={}-{}", r.start, r.end - 1)),
            None => request.checksum_mode(ChecksumMode::Enabled),
        };
        match request.send().await {
            Ok(output) => Ok(Some(output)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) if range.is_some() && has_status(&e, 416) => Err(StorageError::permanent(
                op,
                self.location(key),
                "the range lies beyond the object's end (HTTP 416)",
            )),
            Err(e) => Err(classify(op, self.location(key), &e)),
        }
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let result = self
            .inner
            .client
            .head_object()
            .bucket(&self.inner.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: output.content_length().unwrap_or(0).max(0) as u64,
                last_modified: output.last_modified().and_then(to_chrono),
            })),
            Err(e)
                if e.as_service_error().is_some_and(|s| s.is_not_found())
                    || has_status(&e, 404) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify(Op::Head, self.location(key), &e)),
        }
    }
}

/// Base64 of the big-endian CRC32 (IEEE), the form of `x-amz-checksum-crc32`.
pub(super) fn crc32_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(bytes).to_be_bytes())
}

/// If the server echoed a checksum, it must be the one we sent.
pub(super) fn check_echo(
    op: Op,
    location: impl FnOnce() -> String,
    sent: &str,
    echoed: Option<&str>,
) -> Result<(), StorageError> {
    match echoed {
        Some(echoed) if echoed != sent => Err(StorageError::transient(
            op,
            location(),
            format!("the server stored CRC32 {echoed}, we sent {sent}"),
        )),
        _ => Ok(()),
    }
}

pub(super) fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}
