//! Listing and deleting in S3, and the start-up check.
//!
//! `list` pages with ListObjectsV2 continuation tokens (page size from the settings, so tests can
//! force several pages with a handful of keys) and sorts the result, because not every
//! S3-compatible server promises order. `delete_many` uses DeleteObjects in batches of 1000 (the
//! API's limit) in quiet mode, treating a per-key NoSuchKey as done.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::s3::{to_chrono, S3Store};
use super::s3_error::{classify, has_status, is_transient_answer};
use super::{ObjectMeta, Op, StorageError};

impl S3Store {
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .client
                .list_objects_v2()
                .bucket(&self.inner.bucket)
                .prefix(self.full_key(prefix))
                .max_keys(self.inner.list_page_size)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify(Op::List, self.location(prefix), &e))?;
            for object in page.contents() {
                let Some(key) = object
                    .key()
                    .and_then(|k| k.strip_prefix(&self.inner.prefix))
                else {
                    continue;
                };
                found.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    last_modified: object.last_modified().and_then(to_chrono),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let result = self
            .inner
            .client
            .delete_object()
            .bucket(&self.inner.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // AWS answers 204 for an absent key; some servers say 404 NoSuchKey.
            Err(e)
                if has_status(&e, 404)
                    && e.as_service_error().and_then(|s| s.code()) == Some("NoSuchKey") =>
            {
                Ok(())
            }
            Err(e) => Err(classify(Op::Delete, self.location(key), &e)),
        }
    }

    pub async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        let mut first_error = None;
        for batch in keys.chunks(1000) {
            if let Err(e) = self.delete_batch(batch).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<(), StorageError> {
        let location = || self.location(&keys[0]);
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StorageError::permanent(Op::DeleteMany, location(), e))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StorageError::permanent(Op::DeleteMany, location(), e))?;
        let output = self
            .inner
            .client
            .delete_objects()
            .bucket(&self.inner.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| classify(Op::DeleteMany, location(), &e))?;
        let failed = output
            .errors()
            .iter()
            .find(|e| e.code() != Some("NoSuchKey"));
        match failed {
            None => Ok(()),
            Some(e) => {
                let key = e.key().unwrap_or_default();
                let location = format!("s3://{}/{key}", self.inner.bucket);
                let detail = format!(
                    "{} {}",
                    e.code().unwrap_or("no error code"),
                    e.message().unwrap_or_default()
                );
                Err(if is_transient_answer(200, e.code()) {
                    StorageError::transient(Op::DeleteMany, location, detail)
                } else {
                    StorageError::permanent(Op::DeleteMany, location, detail)
                })
            }
        }
    }

    pub async fn check(&self) -> Result<(), StorageError> {
        self.inner
            .client
            .list_objects_v2()
            .bucket(&self.inner.bucket)
            .prefix(&self.inner.prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| classify(Op::Check, self.location(""), &e))?;
        Ok(())
    }
}
