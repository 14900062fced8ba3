//! Standalone mode's view of the cf CLI's `$CF_HOME/.cf/config.json` (ConfigVersion 4): the
//! target, the user's tokens and the targeted space, and refreshing an expired access token
//! the way the cf CLI does.
//!
//! The file belongs to the cf CLI, so it is read as a JSON object and written back with only
//! `AccessToken` and `RefreshToken` changed: every other field survives, including ones this
//! code has never heard of, and on Unix the file keeps its mode (it holds tokens: usually
//! 0600). The write goes to a temporary file in the same directory and is renamed over the
//! original, so a cf command running at the same moment reads the old file or the new one,
//! never half.
//!
//! A token's expiry is read from the JWT's `exp` claim without verifying the signature: the
//! broker and the Cloud Controller verify it; here it only decides whether to refresh first.
//! Imports `cli_error` only.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::cli_error::CliError;

/// Refresh when the token expires within this many seconds: it must survive the requests.
pub const EXPIRY_MARGIN_SECS: i64 = 30;

/// The variables that name the user's home, for messages.
#[cfg(not(windows))]
pub const HOME_VARIABLES: &str = "HOME";
#[cfg(windows)]
pub const HOME_VARIABLES: &str = "HOMEDRIVE/HOMEPATH or USERPROFILE";

/// `$CF_HOME`, else the user's home as the cf CLI finds it: the directory holding `.cf/`.
pub fn cf_home() -> Option<PathBuf> {
    set_var("CF_HOME").or_else(user_home).map(PathBuf::from)
}

fn set_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

#[cfg(not(windows))]
fn user_home() -> Option<OsString> {
    set_var("HOME")
}

/// `%HOMEDRIVE%%HOMEPATH%`, else `%USERPROFILE%`, in the cf CLI's order.
#[cfg(windows)]
fn user_home() -> Option<OsString> {
    match (set_var("HOMEDRIVE"), set_var("HOMEPATH")) {
        (Some(mut drive), Some(path)) => {
            drive.push(path);
            Some(drive)
        }
        _ => set_var("USERPROFILE"),
    }
}

pub fn config_path(cf_home: &Path) -> PathBuf {
    cf_home.join(".cf").join("config.json")
}

/// `Target` and the UAA endpoints are stored without a scheme by old cf versions.
pub fn with_scheme(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    }
}

/// The token without its `bearer ` prefix (cf stores and hands out `bearer eyJ…`).
pub fn strip_bearer(token: &str) -> &str {
    let t = token.trim();
    match t.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => t,
    }
}

/// The `exp` claim of a JWT, unverified; `None` if it is not a readable JWT.
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = strip_bearer(token).split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["exp"].as_i64()
}

/// True when the token expires within the margin. A token whose expiry cannot be read is
/// used as it is: the server that checks it says what is wrong.
pub fn needs_refresh(token: &str, now: DateTime<Utc>) -> bool {
    jwt_expiry(token).is_some_and(|exp| exp <= now.timestamp() + EXPIRY_MARGIN_SECS)
}

/// What a command needs from the config file.
pub struct Target {
    pub api_endpoint: String,
    pub access_token: SecretString,
    pub space_guid: String,
    pub space_name: String,
    pub ssl_disabled: bool,
}

/// `~/.cf/config.json`, held as the JSON object it is.
pub struct CfConfig {
    path: PathBuf,
    fields: Map<String, Value>,
}

impl CfConfig {
    pub fn load(path: &Path) -> Result<CfConfig, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Auth(format!(
                "cannot read the cf CLI's config {}: {e}. Log in with `cf login` first \
                 (or set CF_HOME to the directory holding .cf/)",
                path.display()
            ))
        })?;
        let fields = match serde_json::from_str(&text) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => {
                return Err(CliError::Failed(format!(
                    "{} is not a JSON object",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(CliError::Failed(format!(
                    "cannot parse {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(CfConfig {
            path: path.to_path_buf(),
            fields,
        })
    }

    fn text(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw `AccessToken` (`bearer eyJ…`), empty when logged out.
    pub fn access_token(&self) -> &str {
        self.text("AccessToken")
    }

    pub fn refresh_token(&self) -> &str {
        self.text("RefreshToken")
    }

    /// `UaaEndpoint`, else `AuthorizationEndpoint` (which is the UAA on most foundations).
    pub fn uaa_endpoint(&self) -> Option<String> {
        [self.text("UaaEndpoint"), self.text("AuthorizationEndpoint")]
            .into_iter()
            .find(|s| !s.is_empty())
            .map(with_scheme)
    }

    /// The OAuth client the cf CLI logged in with: `cf` and no secret unless configured.
    pub fn oauth_client(&self) -> (String, String) {
        let id = match self.text("UAAOAuthClient") {
            "" => "cf",
            id => id,
        };
        (
            id.to_string(),
            self.text("UAAOAuthClientSecret").to_string(),
        )
    }

    /// The target, token and space; errors say which `cf` command fixes them.
    pub fn target(&self) -> Result<Target, CliError> {
        let api = self.text("Target");
        if api.is_empty() {
            return Err(CliError::Auth(
                "no API endpoint targeted: run `cf api URL` and `cf login` first".into(),
            ));
        }
        if self.access_token().is_empty() {
            return Err(CliError::Auth("not logged in: run `cf login` first".into()));
        }
        let space = self
            .fields
            .get("SpaceFields")
            .cloned()
            .unwrap_or(Value::Null);
        let space_guid = space["GUID"].as_str().unwrap_or("").to_string();
        if space_guid.is_empty() {
            return Err(CliError::Usage(
                "no space targeted: run `cf target -o ORG -s SPACE` first".into(),
            ));
        }
        Ok(Target {
            api_endpoint: with_scheme(api),
            access_token: SecretString::from(strip_bearer(self.access_token()).to_string()),
            space_guid,
            space_name: space["Name"].as_str().unwrap_or("").to_string(),
            ssl_disabled: self.fields.get("SSLDisabled").and_then(Value::as_bool) == Some(true),
        })
    }

    /// Stores new tokens as the cf CLI does: `AccessToken` as `bearer <jwt>`.
    pub fn set_tokens(&mut self, access: &SecretString, refresh: Option<&SecretString>) {
        self.fields.insert(
            "AccessToken".into(),
            Value::String(format!("bearer {}", access.expose_secret())),
        );
        if let Some(refresh) = refresh {
            self.fields.insert(
                "RefreshToken".into(),
                Value::String(refresh.expose_secret().to_string()),
            );
        }
    }

    /// Writes the file back atomically, keeping its mode (on Unix).
    pub fn save(&self) -> Result<(), CliError> {
        let fail = |what: &str, e: std::io::Error| {
            CliError::Failed(format!("{what} {}: {e}", self.path.display()))
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".config.json.wayback-{}.tmp", std::process::id()));
        let mut text =
            serde_json::to_string_pretty(&self.fields).expect("a JSON object serialises");
        text.push('\n');
        let written = (|| {
            let mut f = create_like(&self.path, &tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail("cannot write", e));
        }
        Ok(())
    }
}

/// The tokens the UAA hands back.
pub struct Tokens {
    pub access: SecretString,
    pub refresh: Option<SecretString>,
}

/// `POST <uaa>/oauth/token` with `grant_type=refresh_token`, as the cf CLI does.
pub async fn refresh(
    http: &reqwest::Client,
    uaa: &str,
    client: &(String, String),
    refresh_token: &str,
) -> Result<Tokens, CliError> {
    let url = format!("{}/oauth/token", uaa.trim_end_matches('/'));
    let resp = http
        .post(&url)
        .basic_auth(&client.0, Some(&client.1))
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .map_err(|e| CliError::transport("refreshing the access token at the UAA", &e))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let why = body["error_description"]
            .as_str()
            .or(body["error"].as_str())
            .unwrap_or("no reason given");
        let msg = format!(
            "the access token expired and the UAA refused to refresh it ({status}: {why}): \
             run `cf login` again"
        );
        return Err(if status.is_server_error() {
            CliError::Unreachable(msg)
        } else {
            CliError::Auth(msg)
        });
    }
    let Some(access) = body["access_token"].as_str() else {
        return Err(CliError::Auth(
            "the UAA's token answer has no access_token: run `cf login` again".into(),
        ));
    };
    Ok(Tokens {
        access: SecretString::from(access.to_string()),
        refresh: body["refresh_token"]
            .as_str()
            .map(|r| SecretString::from(r.to_string())),
    })
}

/// Refreshes the config's access token if it is (about to be) expired and writes the new
/// tokens back. Returns whether it refreshed.
pub async fn ensure_fresh(
    config: &mut CfConfig,
    http: &reqwest::Client,
    now: DateTime<Utc>,
) -> Result<bool, CliError> {
    if !needs_refresh(config.access_token(), now) {
        return Ok(false);
    }
    if config.refresh_token().is_empty() {
        return Err(CliError::Auth(
            "the access token has expired and there is no refresh token: run `cf login` again"
                .into(),
        ));
    }
    let Some(uaa) = config.uaa_endpoint() else {
        return Err(CliError::Auth(
            "the access token has expired and config.json names no UAA: run `cf login` again"
                .into(),
        ));
    };
    let tokens = refresh(http, &uaa, &config.oauth_client(), config.refresh_token()).await?;
    config.set_tokens(&tokens.access, tokens.refresh.as_ref());
    config.save()?;
    Ok(true)
}

/// Creates `tmp`, empty, with the mode of `original` (0600 if it cannot be read): the file
/// holds tokens, so the copy must not be wider open than the original.
#[cfg(unix)]
fn create_like(original: &Path, tmp: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = std::fs::metadata(original)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)?;
    // The umask may have narrowed the mode; restore it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Creates `tmp`, empty. Without Unix modes, a new file in the user's `.cf/` inherits that
/// directory's access control, as the cf CLI's own writes do.
#[cfg(not(unix))]
fn create_like(_original: &Path, tmp: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
}

#[cfg(test)]
mod tests;
