//! Storage settings: one archive URL picks the backend, the rest tunes S3.
//!
//! `s3://bucket/prefix` selects S3 (any S3-compatible server: AWS, Garage, MinIO, s3s-fs);
//! `file:///absolute/dir` selects a local directory. Endpoint, region and keys come from the
//! settings first and otherwise from the standard variables `AWS_ENDPOINT_URL_S3` /
//! `AWS_ENDPOINT_URL`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`. We read exactly these and nothing else — no
//! profile files, no instance metadata service — because a credential chain that probes the
//! network hangs on machines without one, and an archiver that hangs is worse than one that says
//! "no credentials".
//!
//! Resolution is a pure function of the settings and an environment lookup
//! ([`StorageSettings::resolve_with`]) so that tests need not touch the process environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use super::error::StorageError;
use super::key::normalize_root_prefix;

/// Writes the secret in clear. Used only for the archive target file, which is private (0600)
/// to the cluster's OS user: PostgreSQL's archiver must be able to read the key.
fn expose<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    secret
        .as_ref()
        .map(|k| k.expose_secret().to_string())
        .serialize(s)
}

/// How to reach object storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `s3://bucket/prefix` or `file:///absolute/dir`. The broker defaults it with
    /// [`StorageSettings::default_url`]; an empty URL is refused.
    pub url: String,
    /// S3 endpoint, e.g. `http://127.0.0.1:3900`. Default: `AWS_ENDPOINT_URL_S3`, then
    /// `AWS_ENDPOINT_URL`, then AWS's own endpoint for the region.
    pub endpoint: Option<String>,
    /// S3 region. Default: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: Option<String>,
    /// Default: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(serialize_with = "expose")]
    pub secret_access_key: Option<SecretString>,
    /// Address buckets as `endpoint/bucket/key` rather than `bucket.endpoint/key`. Garage,
    /// MinIO and s3s-fs need it; AWS accepts it.
    pub force_path_style: bool,
    /// Accept a plain `http://` endpoint (requests are still signed, but data travels in clear).
    pub allow_http: bool,
    /// How long to wait for a TCP (and TLS) connection.
    pub connect_timeout_ms: u64,
    /// Longest one attempt of one request may take (one part of a multipart upload counts as one
    /// request; a download's body is guarded by stalled-stream protection instead).
    pub attempt_timeout_secs: u64,
    /// Attempts per request, first included, for transient failures (backoff with jitter).
    pub max_attempts: u32,
    /// Multipart part size for `put_stream`, in MiB (S3 allows 5..=5120).
    pub part_size_mib: usize,
    /// Parts of one `put_stream` in flight at once (each holds one part in memory).
    pub upload_concurrency: usize,
    /// Keys per ListObjectsV2 page (S3's maximum is 1000).
    pub list_page_size: i32,
    /// For the archive (`archive.encrypt`): new instances' archives are encrypted client-side
    /// with a data key of their own (`archive/keydoc.rs`). Storage itself ignores it.
    pub encrypt: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            force_path_style: true,
            allow_http: true,
            connect_timeout_ms: 3_000,
            attempt_timeout_secs: 60,
            max_attempts: 3,
            part_size_mib: 16,
            upload_concurrency: 4,
            list_page_size: 1000,
            encrypt: true,
        }
    }
}

impl StorageSettings {
    /// Settings for an archive directory on this machine.
    pub fn local(dir: &Path) -> Self {
        Self {
            url: Self::default_url(dir, ""),
            ..Self::default()
        }
    }

    /// `file://` URL of `sub` under `data_dir` (made absolute against the current directory), the
    /// default archive location of a broker without object storage.
    pub fn default_url(data_dir: &Path, sub: &str) -> String {
        let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        let dir = if sub.is_empty() { dir } else { dir.join(sub) };
        format!("file://{}", dir.display())
    }

    /// Resolves the settings against the process environment.
    pub fn resolve(&self) -> Result<Target, StorageError> {
        self.resolve_with(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Resolves the settings, reading variables through `env` (see the module docs).
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Target, StorageError> {
        match StorageUrl::parse(&self.url)? {
            StorageUrl::Local { dir } => Ok(Target::Local { dir }),
            StorageUrl::S3 { bucket, prefix } => {
                let first = |own: &Option<String>, vars: &[&str]| {
                    own.clone().or_else(|| vars.iter().find_map(|v| env(v)))
                };
                let endpoint = first(&self.endpoint, &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]);
                if let Some(endpoint) = &endpoint {
                    check_endpoint(endpoint, self.allow_http)?;
                }
                let region = first(&self.region, &["AWS_REGION", "AWS_DEFAULT_REGION"])
                    .unwrap_or_else(|| "us-east-1".into());
                let access_key_id = first(&self.access_key_id, &["AWS_ACCESS_KEY_ID"]);
                let secret_access_key = self
                    .secret_access_key
                    .clone()
                    .or_else(|| env("AWS_SECRET_ACCESS_KEY").map(SecretString::from));
                let (Some(access_key_id), Some(secret_access_key)) =
                    (access_key_id, secret_access_key)
                else {
                    return Err(StorageError::Config(format!(
                        "{} needs an access key id and a secret access key: set them in the \
                         storage settings or in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                        self.url
                    )));
                };
                Ok(Target::S3(Box::new(S3Target {
                    bucket,
                    prefix,
                    endpoint,
                    region,
                    access_key_id,
                    secret_access_key,
                    session_token: env("AWS_SESSION_TOKEN").map(SecretString::from),
                    force_path_style: self.force_path_style,
                    connect_timeout: Duration::from_millis(self.connect_timeout_ms.max(1)),
                    attempt_timeout: Duration::from_secs(self.attempt_timeout_secs.max(1)),
                    max_attempts: self.max_attempts.max(1),
                    part_size: self.part_size_mib.clamp(5, 5120) * 1024 * 1024,
                    upload_concurrency: self.upload_concurrency.max(1),
                    list_page_size: self.list_page_size.clamp(1, 1000),
                })))
            }
        }
    }
}

fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<(), StorageError> {
    let bad = |reason: &str| StorageError::Config(format!("S3 endpoint {endpoint:?}: {reason}"));
    if endpoint.starts_with("https://") {
        Ok(())
    } else if endpoint.starts_with("http://") {
        if allow_http {
            Ok(())
        } else {
            Err(bad("plain http is refused (allow_http = false)"))
        }
    } else {
        Err(bad("must start with https:// or http://"))
    }
}

/// Where the settings lead, with every default and environment variable applied.
#[derive(Debug, Clone)]
pub enum Target {
    Local { dir: PathBuf },
    S3(Box<S3Target>),
}

/// A fully resolved S3 target. `Debug` shows no secret (they are [`SecretString`]s).
#[derive(Debug, Clone)]
pub struct S3Target {
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
    pub force_path_style: bool,
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
    pub part_size: usize,
    pub upload_concurrency: usize,
    pub list_page_size: i32,
}

/// A parsed archive URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// `s3://bucket/prefix/`: `prefix` is empty or ends with `/`.
    S3 { bucket: String, prefix: String },
    /// `file:///absolute/dir`.
    Local { dir: PathBuf },
}

impl StorageUrl {
    pub fn parse(url: &str) -> Result<Self, StorageError> {
        let invalid = |reason: String| StorageError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if url.is_empty() {
            return Err(invalid(
                "empty: use s3://BUCKET/PREFIX or file:///ABSOLUTE/DIR".into(),
            ));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket_name(bucket).map_err(|r| invalid(format!("bucket {bucket:?}: {r}")))?;
            if prefix.contains(['?', '#']) {
                return Err(invalid("a query or fragment is not allowed".into()));
            }
            let prefix = normalize_root_prefix(prefix)?;
            return Ok(StorageUrl::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "a file URL needs an absolute path and no host: file:///ABSOLUTE/DIR".into(),
                ));
            }
            if path.contains(['?', '#', '%']) {
                return Err(invalid(
                    "'?', '#' and '%' are not supported in file URLs".into(),
                ));
            }
            let dir = Path::new(path);
            if dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(invalid("'..' is not allowed in the path".into()));
            }
            return Ok(StorageUrl::Local {
                dir: dir.to_owned(),
            });
        }
        let scheme = url.split_once("://").map(|(s, _)| s);
        Err(invalid(match scheme {
            Some(s) => {
                format!("unsupported scheme {s:?}: use s3://BUCKET/PREFIX or file:///ABSOLUTE/DIR")
            }
            None => "not a URL: use s3://BUCKET/PREFIX or file:///ABSOLUTE/DIR".into(),
        }))
    }
}

/// S3's bucket naming rules (the subset that matters for path-style requests).
fn check_bucket_name(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("a bucket name has only lowercase letters, digits, '-' and '.'");
    }
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !ends_ok(bucket.bytes().next()) || !ends_ok(bucket.bytes().last()) {
        return Err("a bucket name starts and ends with a letter or digit");
    }
    Ok(())
}
