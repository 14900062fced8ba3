//! A real headless Chromium driven over the DevTools protocol, for the dashboard's page test.
//!
//! The protocol runs over `--remote-debugging-pipe` (file descriptors 3 and 4 of the browser,
//! messages as JSON ended by a NUL byte) rather than a websocket: no port to discover from the
//! browser's stderr, nothing listening on the machine, no websocket crate. Through it the test
//! sets the session cookie, emulates a phone's viewport, reads the DOM and takes screenshots,
//! and hears every console message, uncaught exception and browser log entry (a CSP violation,
//! a failed load) as it happens — which `--dump-dom` and stderr logging do not report reliably.
//!
//! Debian's `chromium` (`scripts/setup --with-browser`); as root it runs with `--no-sandbox`.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// The longest one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The browser's program, if it is installed.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
    })
}

/// One browser process and its protocol pipe; killed on drop.
pub struct Browser {
    child: tokio::process::Child,
    to_browser: pipe::Sender,
    from_browser: pipe::Receiver,
    buffer: Vec<u8>,
    next_id: u64,
    /// Every event received so far (method, params, session).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts the browser (headless, a fresh profile).
    pub async fn launch(program: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (commands_read, commands_write) = nix::unistd::pipe().unwrap();
        let (replies_read, replies_write) = nix::unistd::pipe().unwrap();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args([
            "--headless",
            "--remote-debugging-pipe",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            "--password-store=basic",
            "--use-mock-keychain",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
        if nix::unistd::geteuid().is_root() {
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let (r, w) = (commands_read.as_raw_fd(), replies_write.as_raw_fd());
        // SAFETY: only async-signal-safe dup2 calls between fork and exec. dup2 clears
        // close-on-exec on the new descriptors, so the browser keeps 3 and 4.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        drop((commands_read, replies_write));
        Browser {
            child,
            to_browser: pipe::Sender::from_owned_fd(commands_write).unwrap(),
            from_browser: pipe::Receiver::from_owned_fd(replies_read).unwrap(),
            buffer: Vec::new(),
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        }
    }

    /// Calls `method` (on the page `session`, or the browser) and returns its result; an
    /// error answer fails the test.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).await.unwrap();
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = tokio::time::timeout(left, self.next_message())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer in {CALL_TIMEOUT:?}"));
            if reply.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(e) = reply.get("error") {
                    panic!("{method}: {e}");
                }
                return reply["result"].clone();
            }
            self.events.push(reply);
        }
    }

    async fn next_message(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == 0) {
                let msg: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&msg[..end]).unwrap();
            }
            // On the heap: an array here would sit in every future that awaits a call.
            let mut chunk = vec![0u8; 65536];
            let n = self.from_browser.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the browser closed its protocol pipe");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// A new tab, attached, with the runtime, log and page domains on.
    pub async fn new_page(&mut self) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in [
            "Runtime.enable",
            "Log.enable",
            "Page.enable",
            "Network.enable",
        ] {
            self.call(Some(&session), domain, json!({})).await;
        }
        session
    }

    /// Sets the viewport: `mobile` emulates a phone (touch, device width).
    pub async fn viewport(&mut self, session: &str, width: u32, height: u32, mobile: bool) {
        self.call(
            Some(session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 }, "mobile": mobile }),
        )
        .await;
        if mobile {
            self.call(
                Some(session),
                "Emulation.setTouchEmulationEnabled",
                json!({ "enabled": true, "maxTouchPoints": 5 }),
            )
            .await;
        }
    }

    /// A cookie for `url`'s origin.
    pub async fn set_cookie(&mut self, session: &str, url: &str, name: &str, value: &str) {
        let set = self
            .call(
                Some(session),
                "Network.setCookie",
                json!({ "url": url, "name": name, "value": value, "path": "/dashboard/" }),
            )
            .await;
        assert_eq!(set["success"], json!(true), "{set}");
    }

    pub async fn navigate(&mut self, session: &str, url: &str) {
        let nav = self
            .call(Some(session), "Page.navigate", json!({ "url": url }))
            .await;
        assert!(nav.get("errorText").is_none(), "{url}: {nav}");
    }

    /// The value of JavaScript `expression` in the page.
    pub async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let r = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page (or fails the test with `what`).
    pub async fn wait_for(&mut self, session: &str, expression: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.eval(session, expression).await == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within 60 s; problems: {:?}",
                self.problems()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the whole page (beyond the viewport), written to `path`.
    pub async fn screenshot(&mut self, session: &str, path: &Path) {
        let shot = self
            .call(
                Some(session),
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }

    /// Every console error or warning, uncaught exception and error log entry so far, as text.
    pub fn problems(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => Some(format!(
                        "exception: {}",
                        p["exceptionDetails"]["exception"]["description"]
                            .as_str()
                            .or(p["exceptionDetails"]["text"].as_str())
                            .unwrap_or("?")
                    )),
                    "Runtime.consoleAPICalled"
                        if matches!(p["type"].as_str(), Some("error" | "assert" | "warning")) =>
                    {
                        Some(format!("console.{}: {}", p["type"], p["args"]))
                    }
                    "Log.entryAdded"
                        if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) =>
                    {
                        Some(format!(
                            "log {} ({}): {} {}",
                            p["entry"]["level"],
                            p["entry"]["source"],
                            p["entry"]["text"],
                            p["entry"]["url"]
                        ))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Closes the browser and waits for it.
    pub async fn close(mut self) {
        // No answer is awaited: the browser may exit before it sends one.
        self.next_id += 1;
        let mut bytes =
            serde_json::to_vec(&json!({ "id": self.next_id, "method": "Browser.close" })).unwrap();
        bytes.push(0);
        let _ = self.to_browser.write_all(&bytes).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
