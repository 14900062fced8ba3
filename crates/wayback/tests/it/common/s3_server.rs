//! An S3 server of a test's own (s3s-fs on a free port of 127.0.0.1): one it can stop and start
//! again on the same port and directory, whose files it can damage or inspect. The shared server
//! that `scripts/test` starts (`WAYBACK_TEST_S3_*`) is never stopped by a test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use wayback::storage::StorageSettings;

pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    pub port: u16,
}

impl S3Server {
    pub const BUCKET: &'static str = "own-bucket";
    const ACCESS: &'static str = "own-access";
    const SECRET: &'static str = "own-secret";

    /// Starts s3s-fs with one bucket; `None` when the binary is missing (the caller decides
    /// whether that fails the test).
    pub async fn start() -> Option<Self> {
        s3s_fs_binary()?;
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(Self::BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: None,
            root,
            port,
        };
        server.resume().await;
        Some(server)
    }

    /// Starts the server again (after [`S3Server::stop`]) on the same port and directory.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(s3s_fs_binary().expect("s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", Self::ACCESS, "--secret-key", Self::SECRET])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server: requests fail with connection refused until [`S3Server::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Settings for `s3://own-bucket/<prefix>`.
    pub fn settings(&self, prefix: &str) -> StorageSettings {
        StorageSettings {
            url: format!("s3://{}/{prefix}", Self::BUCKET),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            region: Some("us-east-1".into()),
            access_key_id: Some(Self::ACCESS.into()),
            secret_access_key: Some(SecretString::from(Self::SECRET)),
            ..StorageSettings::default()
        }
    }

    /// The environment that points a `wayback` command's archive at `s3://own-bucket/<prefix>`.
    pub fn env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            (
                "WAYBACK_ARCHIVE_URL",
                format!("s3://{}/{prefix}", Self::BUCKET),
            ),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", Self::ACCESS.into()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET.into()),
        ]
    }

    /// The directory s3s-fs serves (buckets are its subdirectories).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// s3s-fs keeps multipart state as `.upload_id-*` files in its root.
    pub fn pending_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.starts_with(".upload_id-"))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn s3s_fs_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    on_path
        .into_iter()
        .chain(cargo_home.map(|c| c.join("bin/s3s-fs")))
        .find(|p| p.is_file())
}
