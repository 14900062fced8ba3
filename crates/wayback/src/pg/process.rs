//! Running PostgreSQL programs: as whom, with which environment, for how long.
//!
//! initdb and postgres refuse to run as root, and a cluster's files must belong to one
//! unprivileged user. When the broker runs as root, every program here runs as
//! `postgres.os_user` (uid/gid set by the kernel at exec; std drops the supplementary groups);
//! otherwise as the broker's own user. The environment is cleared and rebuilt so that a
//! `PGDATA`, `PGPORT` or `LC_ALL` of the broker cannot change what a program does, and messages
//! are in English (`LC_ALL=C`) because we read some of them (port in use). Command lines never
//! hold a secret, so they go into errors whole. Imports only `pg` siblings.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::fsutil::Owner;
use super::{Binaries, PgError};

/// The OS user clusters run as.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// True when we are root and must switch to `uid`/`gid` for every program.
    pub switch: bool,
}

impl RunAs {
    /// `os_user` when we are root (it must exist), else the current user.
    pub fn resolve(os_user: &str) -> Result<Self, PgError> {
        use nix::unistd::{Uid, User};
        let me = Uid::effective();
        let lookup = |r: nix::Result<Option<User>>, what: &str| {
            r.map_err(|e| PgError::Setup(format!("cannot look up {what}: {e}")))
        };
        if me.is_root() {
            let user = lookup(User::from_name(os_user), "postgres.os_user")?.ok_or_else(|| {
                PgError::NoSuchUser {
                    user: os_user.to_string(),
                }
            })?;
            if user.uid.is_root() {
                return Err(PgError::Setup(format!(
                    "postgres.os_user {os_user:?} is root; PostgreSQL refuses to run as root"
                )));
            }
            return Ok(Self {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
                switch: true,
            });
        }
        let user = lookup(User::from_uid(me), "the current user")?;
        tracing::info!(
            os_user,
            "the broker is not root: clusters run as the broker's own user, postgres.os_user is not used"
        );
        Ok(Self {
            name: user
                .as_ref()
                .map_or_else(|| me.to_string(), |u| u.name.clone()),
            uid: me.as_raw(),
            gid: nix::unistd::Gid::effective().as_raw(),
            home: user.map_or_else(|| PathBuf::from("/"), |u| u.dir),
            switch: false,
        })
    }

    /// Whom files the cluster user must own should be chowned to; `None` when no switch happens.
    pub fn owner(&self) -> Option<Owner> {
        self.switch.then_some(Owner {
            uid: self.uid,
            gid: self.gid,
        })
    }
}

/// The binaries and the user: everything needed to build a command.
#[derive(Debug, Clone)]
pub struct Tools {
    pub bin: Binaries,
    pub run_as: RunAs,
}

impl Tools {
    /// A command for the PostgreSQL program `name` (e.g. `"pg_ctl"`).
    pub fn cmd(&self, name: &str, what: impl Into<String>) -> PgCommand {
        PgCommand {
            program: self.bin.path(name),
            args: Vec::new(),
            what: what.into(),
            timeout: Duration::from_secs(60),
            stdin: None,
            env: vec![
                ("PATH".into(), path_env(self.bin.dir())),
                ("HOME".into(), self.run_as.home.clone().into()),
                ("LC_ALL".into(), "C".into()),
                ("LANG".into(), "C".into()),
                ("USER".into(), self.run_as.name.clone().into()),
            ],
            run_as: self.run_as.switch.then(|| self.run_as.clone()),
        }
    }
}

fn path_env(bin_dir: &Path) -> OsString {
    let mut p = OsString::from(bin_dir);
    p.push(":/usr/bin:/bin");
    p
}

/// One program run: an args struct, so that the whole command line can go into an error.
#[derive(Debug)]
pub struct PgCommand {
    program: PathBuf,
    args: Vec<OsString>,
    what: String,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
    env: Vec<(String, OsString)>,
    run_as: Option<RunAs>,
}

/// What a finished program said.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The last lines of stderr then stdout, for an error message.
    pub fn tail(&self) -> String {
        let mut text = self.stderr.clone();
        if !self.stdout.trim().is_empty() {
            text.push_str(&self.stdout);
        }
        tail_lines(&text, 20)
    }
}

/// The last `n` lines of `text`, at most 4 KiB.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let joined = lines[lines.len().saturating_sub(n)..].join("\n");
    match joined.len() {
        len if len > 4096 => {
            let mut start = len - 4096;
            while !joined.is_char_boundary(start) {
                start += 1;
            }
            joined[start..].to_string()
        }
        _ => joined,
    }
}

impl PgCommand {
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Bytes written to the program's stdin (otherwise stdin is `/dev/null`).
    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }
    /// One more environment variable (a password for a client: never on the command line).
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Runs as the broker's user even when it is root (clients such as `pg_isready`).
    pub fn as_broker(mut self) -> Self {
        self.run_as = None;
        self
    }

    /// The command line as a user would type it.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Runs to completion and fails unless the exit status is 0.
    pub async fn run(self) -> Result<Output, PgError> {
        let (what, command) = (self.what.clone(), self.display());
        let out = self.output().await?;
        if out.success {
            return Ok(out);
        }
        Err(PgError::Command {
            what,
            command,
            status: out.status.clone(),
            output: out.tail(),
        })
    }

    /// Runs to completion; any exit status is an `Ok`. Only spawn failures and timeouts are errors.
    pub async fn output(self) -> Result<Output, PgError> {
        let command = self.display();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // The cluster user may not be able to enter the broker's working directory.
            .current_dir("/")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        let mut child = cmd.spawn().map_err(PgError::io(format!(
            "{}: cannot run `{command}`",
            self.what
        )))?;
        if let (Some(bytes), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // A program that exits early closes its end; its exit status tells what happened.
            tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
            });
        }
        // wait_with_output drains stdout and stderr together, so a chatty child cannot block.
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(result) => result.map_err(PgError::io(format!(
                "{}: waiting for `{command}`",
                self.what
            )))?,
            Err(_) => {
                return Err(PgError::Timeout {
                    what: self.what,
                    command,
                    secs: self.timeout.as_secs(),
                    output: String::new(),
                })
            }
        };
        Ok(Output {
            success: out.status.success(),
            code: out.status.code(),
            status: describe_status(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended abnormally".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        let text = "a\n\nb\nc\nd\n";
        assert_eq!(tail_lines(text, 2), "c\nd");
        assert_eq!(tail_lines("", 3), "");
        let long = "é".repeat(5000);
        assert!(tail_lines(&long, 1).len() <= 4096);
    }
}
