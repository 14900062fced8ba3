//! config.json parsing, expiry, and the refresh write-back against a wiremock UAA.

use super::*;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An unsigned JWT with the given `exp` (the signature is never checked here).
fn jwt(exp: i64) -> String {
    let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2ln",
        enc(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        enc(&serde_json::json!({"exp": exp, "user_name": "alice"}))
    )
}

/// The fixture config (a cf CLI v4 file) in a temp CF_HOME, with `access` and `uaa` set.
fn write_config(dir: &Path, access: &str, uaa: &str, mode: u32) -> PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cf-wayback/cf-config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    v["AccessToken"] = Value::String(format!("bearer {access}"));
    v["UaaEndpoint"] = Value::String(uaa.to_string());
    let path = config_path(dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    set_mode(&path, mode);
    path
}

/// File modes are Unix's; elsewhere `mode` is not set and not checked.
#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) {}

#[test]
fn reads_target_token_and_space() {
    let dir = tempfile::tempdir().unwrap();
    let token = jwt(4_000_000_000);
    let path = write_config(dir.path(), &token, "https://uaa.example.com", 0o600);
    let config = CfConfig::load(&path).unwrap();
    let target = config.target().unwrap();
    assert_eq!(target.api_endpoint, "https://api.example.com");
    assert_eq!(target.access_token.expose_secret(), token);
    assert_eq!(target.space_guid, "5ace0000-0000-4000-8000-000000000002");
    assert_eq!(target.space_name, "staging");
    assert!(!target.ssl_disabled);
    assert_eq!(config.uaa_endpoint().unwrap(), "https://uaa.example.com");
    assert_eq!(config.oauth_client(), ("cf".to_string(), String::new()));
    assert_eq!(config.refresh_token(), "REFRESH_TOKEN");
}

#[test]
fn the_cf_cli_example_file_parses_and_old_style_endpoints_get_a_scheme() {
    // The shape as in the cf CLI's own test data: no schemes, no bearer prefix.
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cf-wayback/cf-config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    v["Target"] = "api.example.com".into();
    v["UaaEndpoint"] = "".into();
    v["AuthorizationEndpoint"] = "auth.example.com".into();
    v["AccessToken"] = "the-access-token".into();
    v["SSLDisabled"] = true.into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let config = CfConfig::load(&path).unwrap();
    let target = config.target().unwrap();
    assert_eq!(target.api_endpoint, "https://api.example.com");
    assert_eq!(target.access_token.expose_secret(), "the-access-token");
    assert!(target.ssl_disabled);
    assert_eq!(config.uaa_endpoint().unwrap(), "https://auth.example.com");
}

#[test]
fn missing_login_or_space_says_which_cf_command_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    // (config, expected exit code, words the message must contain)
    for (config, code, words) in [
        (r#"{"Target": ""}"#, 3, "cf api"),
        (
            r#"{"Target": "https://api.x", "AccessToken": ""}"#,
            3,
            "cf login",
        ),
        (
            r#"{"Target": "https://api.x", "AccessToken": "bearer x", "SpaceFields": {"GUID": ""}}"#,
            2,
            "cf target",
        ),
    ] {
        std::fs::write(&path, config).unwrap();
        let err = CfConfig::load(&path).unwrap().target().err().unwrap();
        assert_eq!(err.exit_code(), code, "{config}: {err}");
        assert!(err.to_string().contains(words), "{config}: {err}");
    }
    let err = CfConfig::load(&dir.path().join("nope.json")).err().unwrap();
    assert_eq!(err.exit_code(), 3, "{err}");
}

#[test]
fn expiry_is_read_from_the_jwt_with_a_margin() {
    let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let t = now.timestamp();
    assert_eq!(jwt_expiry(&format!("bearer {}", jwt(t))), Some(t));
    // (token, needs a refresh, why)
    for (token, want, why) in [
        (jwt(t - 1), true, "expired"),
        (jwt(t + 10), true, "expires within the margin"),
        (
            jwt(t + EXPIRY_MARGIN_SECS + 1),
            false,
            "valid beyond the margin",
        ),
        (
            "not-a-jwt".to_string(),
            false,
            "unreadable: let the server judge",
        ),
        ("a.!!!.c".to_string(), false, "payload not base64"),
    ] {
        assert_eq!(needs_refresh(&token, now), want, "{why}");
    }
}

#[test]
fn strip_bearer_and_schemes() {
    assert_eq!(strip_bearer("bearer abc"), "abc");
    assert_eq!(strip_bearer("Bearer  abc "), "abc");
    assert_eq!(strip_bearer("abc"), "abc");
    assert_eq!(with_scheme("api.x.com/"), "https://api.x.com");
    assert_eq!(with_scheme("http://127.0.0.1:9"), "http://127.0.0.1:9");
}

#[tokio::test]
async fn an_expired_token_is_refreshed_and_written_back_keeping_the_rest() {
    let uaa = MockServer::start().await;
    let fresh = jwt(4_000_000_000);
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        // basic auth `cf:` — the cf CLI's public client, no secret
        .and(header("authorization", "Basic Y2Y6"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=REFRESH_TOKEN"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": fresh, "token_type": "bearer",
            "refresh_token": "NEW_REFRESH", "expires_in": 599,
        })))
        .expect(1)
        .mount(&uaa)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &jwt(1_000), &uaa.uri(), 0o640);
    let before: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    let mut config = CfConfig::load(&path).unwrap();
    let http = reqwest::Client::new();
    assert!(ensure_fresh(&mut config, &http, Utc::now()).await.unwrap());
    assert_eq!(config.target().unwrap().access_token.expose_secret(), fresh);

    let after: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(after["AccessToken"], format!("bearer {fresh}"));
    assert_eq!(after["RefreshToken"], "NEW_REFRESH");
    let (mut b, mut a) = (before.clone(), after.clone());
    for key in ["AccessToken", "RefreshToken"] {
        b.as_object_mut().unwrap().remove(key);
        a.as_object_mut().unwrap().remove(key);
    }
    assert_eq!(a, b, "every other field is kept");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");

    // Fresh now: no second refresh (the mock expects exactly one call).
    assert!(!ensure_fresh(&mut config, &http, Utc::now()).await.unwrap());
}

#[tokio::test]
async fn a_refused_refresh_is_an_auth_error_and_leaves_the_file_alone() {
    let uaa = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": "invalid_token", "error_description": "refresh token expired"})))
        .mount(&uaa)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &jwt(1_000), &uaa.uri(), 0o600);
    let before = std::fs::read_to_string(&path).unwrap();
    let mut config = CfConfig::load(&path).unwrap();
    let err = ensure_fresh(&mut config, &reqwest::Client::new(), Utc::now())
        .await
        .err()
        .unwrap();
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("refresh token expired"), "{err}");
    assert!(err.to_string().contains("cf login"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}
