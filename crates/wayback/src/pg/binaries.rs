//! Finding the PostgreSQL 15 server binaries and checking that they are the right major version.
//!
//! Order: `postgres.bin_dir` if set (it must be complete), else Debian's
//! `/usr/lib/postgresql/15/bin`, else whatever `pg_config --bindir` names. A wrong major version is
//! refused at start-up rather than discovered when a cluster fails to read its data directory.
//! Imports only `pg` siblings.

use std::path::{Path, PathBuf};

use super::PgError;

/// The major version this driver speaks (conf settings, pg_control layout, WAL format).
pub const MAJOR: u32 = 15;

/// Programs the runtime calls; all must be present.
pub const REQUIRED: &[&str] = &["initdb", "pg_ctl", "postgres", "pg_isready", "pg_resetwal"];

const DEBIAN_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
    /// `postgres --version` output, e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
}

impl Binaries {
    /// Finds and checks the binaries.
    pub async fn discover(configured: Option<&Path>) -> Result<Self, PgError> {
        let dir = match configured {
            Some(dir) => dir.to_path_buf(),
            None if Path::new(DEBIAN_BIN_DIR).join("postgres").is_file() => DEBIAN_BIN_DIR.into(),
            None => pg_config_bindir().await?,
        };
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|p| !dir.join(p).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(PgError::Binaries(format!(
                "{} missing in {} (install postgresql-15, or set WAYBACK_PG_BIN_DIR)",
                missing.join(", "),
                dir.display()
            )));
        }
        let out = tokio::process::Command::new(dir.join("postgres"))
            .arg("--version")
            .env_clear()
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                PgError::Binaries(format!("cannot run {}/postgres: {e}", dir.display()))
            })?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match parse_major(&version) {
            Some(MAJOR) => Ok(Self { dir, version }),
            _ => Err(PgError::Binaries(format!(
                "{}/postgres --version says {version:?}; PostgreSQL {MAJOR} is required",
                dir.display()
            ))),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Absolute path of one program.
    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

async fn pg_config_bindir() -> Result<PathBuf, PgError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let not_found = |why: String| {
        PgError::Binaries(format!(
            "{DEBIAN_BIN_DIR} does not exist and `pg_config --bindir` {why}; \
             install postgresql-15 or set WAYBACK_PG_BIN_DIR"
        ))
    };
    let out = tokio::process::Command::new("pg_config")
        .arg("--bindir")
        .env_clear()
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| not_found(format!("cannot run: {e}")))?;
    if !out.status.success() {
        return Err(not_found(format!(
            "failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The major version in `postgres --version` output.
pub fn parse_major(version: &str) -> Option<u32> {
    let rest = version.split("(PostgreSQL)").nth(1)?.trim();
    let number = rest.split_whitespace().next()?;
    number
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_major_version() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 16beta2"), Some(16));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("something else"), None);
    }

    #[tokio::test]
    async fn an_incomplete_bin_dir_is_named_with_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::discover(Some(dir.path())).await.unwrap_err();
        assert!(err.is_permanent());
        let msg = err.to_string();
        assert!(
            msg.contains("initdb") && msg.contains("pg_resetwal"),
            "{msg}"
        );
    }
}
