//! Streaming uploads to S3: one PutObject for a small object, a multipart upload above one part.
//!
//! Memory is bounded by `(upload_concurrency + 1) × part_size`: parts are read one after the
//! other from the caller's reader and each is uploaded by its own task, at most
//! `upload_concurrency` at a time. Every part carries its own CRC32 (the server checks it), the
//! upload is created with `ChecksumAlgorithm::Crc32` and completed with each part's ETag *and*
//! checksum — the combination that AWS, Garage and s3s-fs all accept. If the server echoes the
//! object's composite checksum (`crc32(part crcs)-N`) we check it against our own.
//!
//! Any failure or cancellation aborts the multipart upload so that no orphan parts stay billed
//! (a failed abort is logged: a lifecycle rule on incomplete uploads is the operator's backstop).

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::s3::{check_echo, crc32_base64, S3Store};
use super::s3_error::classify;
use super::{Op, PutInfo, StorageError};

/// S3's limit on the parts of one upload.
const MAX_PARTS: i32 = 10_000;

/// A part as uploaded: what CompleteMultipartUpload needs, and its CRC32 for the composite check.
struct Uploaded {
    part: CompletedPart,
    crc32: u32,
}

impl S3Store {
    pub async fn put_stream(
        &self,
        key: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        cancel: &CancellationToken,
    ) -> Result<PutInfo, StorageError> {
        let cancelled = || StorageError::Cancelled {
            op: Op::PutStream,
            location: self.location(key),
        };
        let mut whole = crc32fast::Hasher::new();
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(cancelled()),
            read = self.read_part(key, reader) => read?,
        };
        whole.update(&first);
        if first.len() < self.inner.part_size {
            let size = first.len() as u64;
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(cancelled()),
                put = self.put(key, first) => put.map_err(|e| relabel(e, Op::PutStream))?,
            }
            return Ok(PutInfo {
                size,
                crc32: whole.finalize(),
            });
        }

        let upload_id = self.create_upload(key).await?;
        let mut tasks = JoinSet::new();
        let work = async {
            let (parts, size) = self
                .upload_parts(key, &upload_id, first, reader, &mut whole, &mut tasks)
                .await?;
            self.complete(key, &upload_id, parts).await?;
            Ok(size)
        };
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(cancelled()),
            result = work => result,
        };
        match result {
            Ok(size) => Ok(PutInfo {
                size,
                crc32: whole.finalize(),
            }),
            Err(e) => {
                // Stop and wait for the part uploads first, so none lands after the abort.
                tasks.shutdown().await;
                self.abort(key, &upload_id).await;
                Err(e)
            }
        }
    }

    /// Reads up to one part; shorter only at the end of the stream.
    async fn read_part(
        &self,
        key: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<Bytes, StorageError> {
        let size = self.inner.part_size;
        let mut buf = BytesMut::with_capacity(size);
        while buf.len() < size {
            let n = reader
                .read_buf(&mut buf)
                .await
                .map_err(|e| StorageError::from_io(Op::PutStream, self.location(key), &e))?;
            if n == 0 {
                break;
            }
        }
        Ok(buf.freeze())
    }

    async fn create_upload(&self, key: &str) -> Result<String, StorageError> {
        let output = self
            .inner
            .client
            .create_multipart_upload()
            .bucket(&self.inner.bucket)
            .key(self.full_key(key))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| classify(Op::PutStream, self.location(key), &e))?;
        output.upload_id().map(str::to_owned).ok_or_else(|| {
            StorageError::transient(
                Op::PutStream,
                self.location(key),
                "no upload id in the answer",
            )
        })
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        whole: &mut crc32fast::Hasher,
        tasks: &mut JoinSet<Result<Uploaded, StorageError>>,
    ) -> Result<(Vec<Uploaded>, u64), StorageError> {
        let mut done = Vec::new();
        let (mut part, mut number, mut size) = (first, 1i32, 0u64);
        loop {
            size += part.len() as u64;
            while tasks.len() >= self.inner.upload_concurrency {
                done.push(self.join_one(key, tasks).await?);
            }
            let store = self.clone();
            let (key_owned, id) = (key.to_owned(), upload_id.to_owned());
            tasks.spawn(async move { store.upload_part(&key_owned, &id, number, part).await });
            let next = self.read_part(key, reader).await?;
            if next.is_empty() {
                break;
            }
            whole.update(&next);
            number += 1;
            if number > MAX_PARTS {
                return Err(StorageError::permanent(
                    Op::PutStream,
                    self.location(key),
                    "more than 10000 parts: raise part_size_mib",
                ));
            }
            part = next;
        }
        while !tasks.is_empty() {
            done.push(self.join_one(key, tasks).await?);
        }
        done.sort_by_key(|u| u.part.part_number());
        Ok((done, size))
    }

    async fn join_one(
        &self,
        key: &str,
        tasks: &mut JoinSet<Result<Uploaded, StorageError>>,
    ) -> Result<Uploaded, StorageError> {
        match tasks.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(join)) => Err(StorageError::transient(
                Op::PutStream,
                self.location(key),
                join,
            )),
            None => unreachable!("join_one is only called on a non-empty set"),
        }
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<Uploaded, StorageError> {
        let crc32 = crc32fast::hash(&body);
        let crc = crc32_base64(&body);
        let location = || format!("{} (part {number})", self.location(key));
        let output = self
            .inner
            .client
            .upload_part()
            .bucket(&self.inner.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .part_number(number)
            .content_length(body.len() as i64)
            .checksum_crc32(&crc)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(Op::PutStream, location(), &e))?;
        check_echo(Op::PutStream, location, &crc, output.checksum_crc32())?;
        let e_tag = output.e_tag().ok_or_else(|| {
            StorageError::transient(Op::PutStream, location(), "no ETag in the answer")
        })?;
        let part = CompletedPart::builder()
            .part_number(number)
            .e_tag(e_tag)
            .checksum_crc32(crc)
            .build();
        Ok(Uploaded { part, crc32 })
    }

    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Uploaded>,
    ) -> Result<(), StorageError> {
        let composite = composite_crc32(parts.iter().map(|u| u.crc32));
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(parts.into_iter().map(|u| u.part).collect()))
            .build();
        let output = self
            .inner
            .client
            .complete_multipart_upload()
            .bucket(&self.inner.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .multipart_upload(upload)
            .send()
            .await
            .map_err(|e| classify(Op::PutStream, self.location(key), &e))?;
        // Only a composite echo ("…-N") can be compared: a full-object one is another algorithm.
        let echoed = output.checksum_crc32().filter(|c| c.contains('-'));
        check_echo(Op::PutStream, || self.location(key), &composite, echoed)
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let result = self
            .inner
            .client
            .abort_multipart_upload()
            .bucket(&self.inner.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = result {
            let e = classify(Op::PutStream, self.location(key), &e);
            tracing::warn!(upload_id, error = %e, "could not abort a multipart upload; its parts stay until a lifecycle rule removes them");
        }
    }
}

/// S3's composite checksum of a multipart object: CRC32 over the parts' big-endian CRC32s,
/// base64, then `-` and the number of parts.
fn composite_crc32(part_crcs: impl Iterator<Item = u32>) -> String {
    let mut hasher = crc32fast::Hasher::new();
    let mut count = 0;
    for crc in part_crcs {
        hasher.update(&crc.to_be_bytes());
        count += 1;
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(hasher.finalize().to_be_bytes());
    format!("{b64}-{count}")
}

/// The single-PutObject path of `put_stream` reports itself as `put_stream`.
fn relabel(e: StorageError, op: Op) -> StorageError {
    match e {
        StorageError::Transient {
            location, detail, ..
        } => StorageError::Transient {
            op,
            location,
            detail,
        },
        StorageError::Permanent {
            location, detail, ..
        } => StorageError::Permanent {
            op,
            location,
            detail,
        },
        StorageError::Cancelled { location, .. } => StorageError::Cancelled { op, location },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_checksum_is_crc32_of_part_crcs() {
        // Two parts; the value is CRC32 over the concatenated big-endian part CRCs.
        let parts = [crc32fast::hash(b"hello"), crc32fast::hash(b"world")];
        let mut joined = Vec::new();
        for p in parts {
            joined.extend_from_slice(&p.to_be_bytes());
        }
        let expected = format!("{}-2", crc32_base64(&joined));
        assert_eq!(composite_crc32(parts.into_iter()), expected);
    }
}
