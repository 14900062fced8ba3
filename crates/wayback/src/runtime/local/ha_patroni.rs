//! The Patroni process of an HA member and the two services it talks to: its REST API
//! (`GET /cluster`, `POST /switchover`) and the scope's keys in etcd (removed when the scope's
//! last member is destroyed).
//!
//! Patroni runs as the cluster user, detached from the runtime like PostgreSQL under `pg_ctl`:
//! `setsid -f` puts it in a session of its own whose parent exits at once, so it survives the
//! broker or agent restarting and is never the runtime's zombie. Its pid is in
//! `<cluster>/patroni/patroni.pid` (written by the shell that `exec`s it, so the pid is
//! Patroni's), its output in `patroni.log` beside it. A pid counts as Patroni only while
//! `/proc/<pid>/cmdline` names it (a reused pid or a zombie does not).
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{io, rt};
use crate::pg::patroni::{NAMESPACE, REST_USER};
use crate::pg::{fsutil, PgError, Tools};
use crate::runtime::ha::{parse_cluster, HaStatus};
use crate::runtime::RuntimeError;

/// How long one call to a Patroni REST API or to etcd may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// A switchover waits for the new leader (Patroni answers when it is done).
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// What the runtime needs to find a member again (no secret: those are in `patroni.yml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MemberRecord {
    pub scope: String,
    pub name: String,
    /// `host:port` of the member's REST API.
    pub rest: String,
    pub dcs: Vec<String>,
}

/// A member's files, all in `<cluster>/patroni/` (0700, the cluster user's).
pub(super) struct PatroniFiles {
    pub dir: PathBuf,
}

impl PatroniFiles {
    pub fn new(cluster: &Path) -> Self {
        Self {
            dir: cluster.join("patroni"),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("member.json")
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("patroni.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }
    /// Wayback's `postgresql.conf` for this member (Patroni's `custom_conf`).
    pub fn base_conf(&self) -> PathBuf {
        self.dir.join("wayback.conf")
    }
    pub fn pgpass(&self) -> PathBuf {
        self.dir.join("pgpass")
    }
    /// The REST API's password (`pg::patroni::rest_password`), 0600.
    pub fn rest_auth(&self) -> PathBuf {
        self.dir.join("rest-auth")
    }

    /// The REST API's password; None for a member made before the API asked for one.
    pub fn rest_auth_password(&self) -> Option<SecretString> {
        let text = std::fs::read_to_string(self.rest_auth()).ok()?;
        Some(SecretString::from(text.trim().to_string()))
    }

    pub fn load_record(&self) -> Result<MemberRecord, RuntimeError> {
        let path = self.record();
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| rt(PgError::Setup(format!("read {}: {e}", path.display()))))
    }

    /// Patroni's pid while it runs.
    pub fn running(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("patroni")
            .then_some(pid)
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Starts Patroni for the member whose files are `files` unless it runs; returns its pid.
pub(super) async fn spawn(tools: &Tools, files: &PatroniFiles) -> Result<i32, RuntimeError> {
    if let Some(pid) = files.running() {
        return Ok(pid);
    }
    let missing = |p: &str| {
        rt(PgError::Setup(format!(
            "{p} is not installed (bash scripts/setup installs Patroni from Debian)"
        )))
    };
    let patroni = find_program("patroni").ok_or_else(|| missing("patroni"))?;
    let setsid = find_program("setsid").ok_or_else(|| missing("setsid (util-linux)"))?;
    let owner = tools.run_as.owner();
    fsutil::ensure_file(&files.log(), 0o600, owner)
        .map_err(io(format!("create {}", files.log().display())))?;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(files.log())
        .map_err(io(format!("open {}", files.log().display())))?;
    let _ = std::fs::remove_file(files.pid());
    let mut path = std::ffi::OsString::from(tools.bin.dir());
    path.push(":/usr/bin:/bin");
    let mut cmd = tokio::process::Command::new(&setsid);
    cmd.arg("-f")
        .args([
            "/bin/sh",
            "-c",
            "echo $$ > \"$1\" && exec \"$2\" \"$3\"",
            "sh",
        ])
        .arg(files.pid())
        .arg(&patroni)
        .arg(files.config())
        .env_clear()
        .env("PATH", path)
        .env("HOME", &tools.run_as.home)
        .env("USER", &tools.run_as.name)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(io(format!("open {}", files.log().display())))?,
        )
        .stderr(log);
    if tools.run_as.switch {
        cmd.uid(tools.run_as.uid).gid(tools.run_as.gid);
    }
    let status = cmd
        .status()
        .await
        .map_err(io(format!("run {} for patroni", setsid.display())))?;
    if !status.success() {
        return Err(rt(PgError::Setup(format!(
            "setsid -f patroni {}: {status}",
            files.config().display()
        ))));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = files.running() {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            return Err(rt(PgError::Setup(format!(
                "patroni did not start; its log {} ends: {}",
                files.log().display(),
                log_tail(files)
            ))));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of Patroni's log, for an error.
pub(super) fn log_tail(files: &PatroniFiles) -> String {
    let text = std::fs::read_to_string(files.log()).unwrap_or_default();
    crate::pg::process::tail_lines(&text, 10)
}

/// Sends `signal` to Patroni and waits (bounded) until it is gone. SIGTERM: Patroni stops its
/// PostgreSQL first (a leader gives up its key); SIGKILL: PostgreSQL is left running.
pub(super) async fn signal_and_wait(
    files: &PatroniFiles,
    signal: Signal,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + timeout;
    while let Some(pid) = files.running() {
        let _ = kill(Pid::from_raw(pid), signal);
        if Instant::now() >= deadline {
            return Err(rt(PgError::Setup(format!(
                "patroni {pid} did not end within {} s after {signal}",
                timeout.as_secs()
            ))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn http() -> Result<reqwest::Client, RuntimeError> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| rt(PgError::Setup(format!("build an HTTP client: {e}"))))
}

fn unreachable(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    rt(PgError::Setup(format!("{what}: {e}")))
}

/// The scope's members, from the member's own REST API.
pub(super) async fn cluster(rest: &str) -> Result<HaStatus, RuntimeError> {
    let url = format!("http://{rest}/cluster");
    let what = format!("ask patroni at {rest} for its cluster");
    let body: serde_json::Value = http()?
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unreachable(&what, e))?
        .json()
        .await
        .map_err(|e| unreachable(&what, e))?;
    Ok(parse_cluster(&body))
}

/// A switchover from `leader` (to `candidate`, or to the member Patroni picks), asked of the
/// member at `rest` with the scope's REST password; Patroni answers once it is done.
pub(super) async fn switchover(
    rest: &str,
    auth: Option<&SecretString>,
    leader: &str,
    candidate: Option<&str>,
) -> Result<(), RuntimeError> {
    let mut body = serde_json::json!({ "leader": leader });
    if let Some(c) = candidate {
        body["candidate"] = c.into();
    }
    let what = format!("switchover through patroni at {rest}");
    let mut req = http()?
        .post(format!("http://{rest}/switchover"))
        .timeout(SWITCHOVER_TIMEOUT)
        .json(&body);
    if let Some(pw) = auth {
        req = req.basic_auth(REST_USER, Some(pw.expose_secret()));
    }
    let answer = req.send().await.map_err(|e| unreachable(&what, e))?;
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(rt(PgError::Setup(format!(
            "{what}: {status}: {}",
            text.trim()
        ))));
    }
    Ok(())
}

/// Deletes the keys under `key` (a prefix when it ends in `/`) through etcd's v3 JSON gateway,
/// asking each endpoint in turn until one answers.
pub(super) async fn etcd_delete(dcs: &[String], key: &str) -> Result<(), RuntimeError> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut body = serde_json::json!({ "key": b64(key.as_bytes()) });
    if key.ends_with('/') {
        // The range end of a prefix: its last byte plus one ('/' + 1 = '0').
        let mut end = key.as_bytes().to_vec();
        *end.last_mut().expect("not empty") += 1;
        body["range_end"] = b64(&end).into();
    }
    let client = http()?;
    let mut last = String::from("no etcd endpoint");
    for host in dcs {
        match client
            .post(format!("http://{host}/v3/kv/deleterange"))
            .json(&body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{host}: {e}"),
        }
    }
    Err(unreachable(&format!("delete {key} in etcd"), last))
}

/// The scope's key prefix in etcd.
pub(super) fn scope_prefix(scope: &str) -> String {
    format!("{NAMESPACE}{scope}/")
}
