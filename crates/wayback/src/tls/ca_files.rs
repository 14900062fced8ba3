//! Where the CA comes from: the operator's settings (a path or the PEM itself), else the pair
//! generated once into `<data_dir>/tls/`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{Ca, TlsError};

/// The generated CA's certificate and key, in `<data_dir>/tls/`.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

/// A generated CA lasts ten years; rotating it is replacing the directory's pair (or
/// configuring one) and restarting.
const GENERATED_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The operator's CA, as the settings give it (`tls.ca_cert`, `tls.ca_key`).
#[derive(Debug, Clone, Default)]
pub struct CaSource {
    pub cert: Option<String>,
    pub key: Option<SecretString>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> TlsError {
    move |source| TlsError::Io { context, source }
}

/// The PEM itself, or the contents of the file it names. `secret` values are never quoted in
/// the error: a key pasted with a typo (not starting with `-----BEGIN`) must not reach a log.
fn pem_or_file(setting: &str, value: &str, secret: bool) -> Result<String, TlsError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.to_string());
    }
    let context = if secret {
        format!("read {setting}: it is neither PEM (-----BEGIN …) nor the path of a readable file")
    } else {
        format!("read {setting} from {value}")
    };
    fs::read_to_string(value.trim()).map_err(io(context))
}

impl CaSource {
    /// Both or neither: a certificate without its key (or the reverse) is a mistake to name.
    pub fn check(&self) -> Result<(), String> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                Err("tls.ca_cert is set but tls.ca_key is not; set both or neither".into())
            }
            (None, Some(_)) => {
                Err("tls.ca_key is set but tls.ca_cert is not; set both or neither".into())
            }
            _ => Ok(()),
        }
    }

    /// The operator's CA when configured, else the one in `<data_dir>/tls/`, generated there
    /// the first time.
    pub fn load(&self, data_dir: &Path) -> Result<Ca, TlsError> {
        self.check().map_err(|reason| TlsError::Invalid {
            what: "the TLS settings".into(),
            reason,
        })?;
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let cert = pem_or_file("tls.ca_cert", cert, false)?;
            let key = SecretString::from(pem_or_file("tls.ca_key", key.expose_secret(), true)?);
            return Ca::from_pem(&cert, &key);
        }
        load_or_generate(&data_dir.join("tls"))
    }
}

fn load_or_generate(dir: &Path) -> Result<Ca, TlsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    if cert_path.is_file() && key_path.is_file() {
        let cert =
            fs::read_to_string(&cert_path).map_err(io(format!("read {}", cert_path.display())))?;
        let key =
            fs::read_to_string(&key_path).map_err(io(format!("read {}", key_path.display())))?;
        return Ca::from_pem(&cert, &SecretString::from(key)).map_err(|e| TlsError::Invalid {
            what: format!("the CA in {}", dir.display()),
            reason: format!(
                "{e}; remove {} and {} to have a new one generated",
                cert_path.display(),
                key_path.display()
            ),
        });
    }
    let ca = Ca::generate("Wayback cluster CA", GENERATED_CA_LIFETIME)?;
    ensure_private_dir(dir)?;
    // The key first: a certificate without its key would be taken for a complete pair.
    let key_pem = ca.issuer.key().serialize_pem();
    write_private(&key_path, key_pem.as_bytes())?;
    write_private(&cert_path, ca.certificate_pem().as_bytes())?;
    tracing::info!(dir = %dir.display(), fingerprint = %ca.fingerprint(), "generated the cluster CA");
    Ok(ca)
}

/// Creates `dir` 0700 (and makes an existing one 0700), whatever the umask.
pub(super) fn ensure_private_dir(dir: &Path) -> Result<(), TlsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("create {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dir.display())))
}

/// Writes `path` 0600 through a temporary file renamed into place, so a reader never sees half
/// a key and the mode never depends on the umask.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("create {}", tmp.display())))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", tmp.display())))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("rename {}", tmp.display())))
}
