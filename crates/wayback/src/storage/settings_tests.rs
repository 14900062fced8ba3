//! Unit tests of URL parsing and of resolving settings against an environment.

use std::collections::HashMap;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::settings::{StorageSettings, StorageUrl, Target};
use super::StorageError;

fn s3(bucket: &str, prefix: &str) -> StorageUrl {
    StorageUrl::S3 {
        bucket: bucket.into(),
        prefix: prefix.into(),
    }
}

#[test]
fn parses_s3_urls_with_and_without_prefix() {
    assert_eq!(StorageUrl::parse("s3://bucket").unwrap(), s3("bucket", ""));
    assert_eq!(StorageUrl::parse("s3://bucket/").unwrap(), s3("bucket", ""));
    assert_eq!(
        StorageUrl::parse("s3://my-bucket/a/b").unwrap(),
        s3("my-bucket", "a/b/")
    );
    assert_eq!(
        StorageUrl::parse("s3://b.c.d/a/b/").unwrap(),
        s3("b.c.d", "a/b/")
    );
}

#[test]
fn parses_absolute_file_urls() {
    assert_eq!(
        StorageUrl::parse("file:///var/lib/wayback/archive").unwrap(),
        StorageUrl::Local {
            dir: PathBuf::from("/var/lib/wayback/archive")
        }
    );
}

#[test]
fn refuses_bad_urls_with_a_reason() {
    let cases = [
        ("", "empty"),
        ("/var/archive", "not a URL"),
        ("gs://bucket/x", "unsupported scheme \"gs\""),
        ("https://host/bucket", "unsupported scheme \"https\""),
        ("s3://", "bucket"),
        ("s3://Bucket/x", "lowercase"),
        ("s3://ab/x", "3 to 63"),
        ("s3://-bucket/x", "starts and ends"),
        ("s3://bucket/a//b", "empty segment"),
        ("s3://bucket/a/../b", "'..'"),
        ("s3://bucket/a?x=1", "query"),
        ("file://relative/dir", "absolute path"),
        ("file://host/dir", "absolute path"),
        ("file:///a/../b", "'..'"),
        ("file:///a%20b", "'%'"),
    ];
    for (url, why) in cases {
        let err = StorageUrl::parse(url).expect_err(url);
        assert!(
            matches!(err, StorageError::InvalidUrl { .. }),
            "{url}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(why), "{url}: {text}");
        assert!(err.is_permanent());
    }
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn s3_target(
    settings: &StorageSettings,
    vars: &[(&str, &str)],
) -> Result<super::S3Target, StorageError> {
    match settings.resolve_with(env(vars))? {
        Target::S3(t) => Ok(*t),
        Target::Local { .. } => panic!("expected S3"),
    }
}

#[test]
fn explicit_settings_win_over_the_environment() {
    let settings = StorageSettings {
        url: "s3://bucket/p".into(),
        endpoint: Some("http://127.0.0.1:9000".into()),
        region: Some("garage".into()),
        access_key_id: Some("AKID".into()),
        secret_access_key: Some(SecretString::from("s3cret")),
        ..StorageSettings::default()
    };
    let vars = [
        ("AWS_ENDPOINT_URL", "https://elsewhere"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "ENVKEY"),
        ("AWS_SECRET_ACCESS_KEY", "envsecret"),
    ];
    let t = s3_target(&settings, &vars).unwrap();
    assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(t.region, "garage");
    assert_eq!(t.access_key_id, "AKID");
    assert_eq!(t.secret_access_key.expose_secret(), "s3cret");
    assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("bucket", "p/"));
    assert!(t.force_path_style);
}

#[test]
fn the_environment_fills_what_settings_leave_out() {
    let settings = StorageSettings {
        url: "s3://bucket".into(),
        ..StorageSettings::default()
    };
    let vars = [
        ("AWS_ENDPOINT_URL", "http://general"),
        ("AWS_ENDPOINT_URL_S3", "http://s3-specific"),
        ("AWS_DEFAULT_REGION", "eu-central-1"),
        ("AWS_ACCESS_KEY_ID", "ENVKEY"),
        ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ("AWS_SESSION_TOKEN", "token"),
    ];
    let t = s3_target(&settings, &vars).unwrap();
    assert_eq!(t.endpoint.as_deref(), Some("http://s3-specific"));
    assert_eq!(t.region, "eu-central-1");
    assert_eq!(t.access_key_id, "ENVKEY");
    assert_eq!(t.secret_access_key.expose_secret(), "envsecret");
    assert_eq!(
        t.session_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        Some("token".into())
    );

    let bare = [("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "S")];
    let t = s3_target(&settings, &bare).unwrap();
    assert_eq!(t.endpoint, None);
    assert_eq!(t.region, "us-east-1");
}

#[test]
fn missing_keys_and_plain_http_are_refused_without_leaking_secrets() {
    let settings = StorageSettings {
        url: "s3://bucket".into(),
        ..StorageSettings::default()
    };
    let err = s3_target(&settings, &[("AWS_ACCESS_KEY_ID", "K")]).unwrap_err();
    assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    assert!(err.is_permanent());

    let strict = StorageSettings {
        url: "s3://bucket".into(),
        endpoint: Some("http://127.0.0.1:1".into()),
        allow_http: false,
        secret_access_key: Some(SecretString::from("very-secret-value")),
        access_key_id: Some("K".into()),
        ..StorageSettings::default()
    };
    let err = s3_target(&strict, &[]).unwrap_err();
    assert!(err.to_string().contains("plain http"), "{err}");
    assert!(!format!("{err} {err:?} {strict:?}").contains("very-secret-value"));

    let ftp = StorageSettings {
        endpoint: Some("ftp://x".into()),
        ..strict
    };
    assert!(s3_target(&ftp, &[])
        .unwrap_err()
        .to_string()
        .contains("https://"));
}

#[test]
fn local_urls_ignore_s3_settings_and_the_default_is_absolute() {
    let settings = StorageSettings::local(std::path::Path::new("/data/archive"));
    assert_eq!(settings.url, "file:///data/archive");
    match settings.resolve_with(env(&[])).unwrap() {
        Target::Local { dir } => assert_eq!(dir, PathBuf::from("/data/archive")),
        Target::S3(_) => panic!("expected local"),
    }
    let url = StorageSettings::default_url(std::path::Path::new("rel-data"), "archive");
    assert!(
        url.starts_with("file:///") && url.ends_with("/rel-data/archive"),
        "{url}"
    );
    assert!(StorageUrl::parse(&url).is_ok());
}

#[test]
fn tuning_values_are_clamped_to_what_s3_allows() {
    let settings = StorageSettings {
        url: "s3://bucket".into(),
        part_size_mib: 1,
        list_page_size: 5000,
        upload_concurrency: 0,
        max_attempts: 0,
        ..StorageSettings::default()
    };
    let t = s3_target(
        &settings,
        &[("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "S")],
    )
    .unwrap();
    assert_eq!(t.part_size, 5 * 1024 * 1024);
    assert_eq!(t.list_page_size, 1000);
    assert_eq!(t.upload_concurrency, 1);
    assert_eq!(t.max_attempts, 1);
}
