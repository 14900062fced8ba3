//! One agent's HTTP(S) client: basic auth on every call, and every answer read into the
//! runtime's terms — no answer is [`RuntimeError::Unreachable`], an error answer goes through
//! [`from_wire`] like every agent error. Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wayback_api::agent::{Capacity, WireError};

use crate::runtime::error::from_wire;
use crate::runtime::RuntimeError;

/// One agent the broker talks to.
pub struct AgentClient {
    pub name: String,
    pub(super) base: String,
    pub(super) http: reqwest::Client,
    pub(super) username: String,
    pub(super) password: SecretString,
}

impl AgentClient {
    pub async fn capacity(&self) -> Result<Capacity, RuntimeError> {
        self.call(Method::GET, "/v1/capacity", None::<&()>, None)
            .await
    }

    pub(super) async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<T, RuntimeError> {
        let (status, bytes) = self.exchange(&method, path, body, timeout).await?;
        self.read(&method, path, status, &bytes)
    }

    /// [`Self::call`] of a route an older agent may not have: `None` when the agent answers
    /// 404 (an agent answers 404 only for a path it does not serve; its errors are 409, 422
    /// and 503), for the caller to say what to upgrade.
    pub(super) async fn call_if_known<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<Option<T>, RuntimeError> {
        let (status, bytes) = self.exchange(&method, path, body, timeout).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.read(&method, path, status, &bytes).map(Some)
    }

    /// Sends the request; the answer's status and body (no answer: `Unreachable`).
    async fn exchange<B: Serialize + ?Sized>(
        &self,
        method: &Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), RuntimeError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.username, Some(self.password.expose_secret()));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| RuntimeError::Unreachable {
            agent: self.name.clone(),
            message: format!("{method} {path}: {}", error_chain(&e)),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| RuntimeError::Unreachable {
            agent: self.name.clone(),
            message: format!("{method} {path}: reading the answer: {}", error_chain(&e)),
        })?;
        Ok((status, bytes))
    }

    /// An answer read into the runtime's terms: the value, or the agent's error.
    fn read<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        status: reqwest::StatusCode,
        bytes: &[u8],
    ) -> Result<T, RuntimeError> {
        if status.is_success() {
            return serde_json::from_slice(bytes)
                .map_err(|e| self.error(format!("{method} {path}: unexpected answer: {e}")));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.error(
                "the agent refused the broker's credentials; agents.username/password must match the agent's agent.username/password".into(),
            ));
        }
        match serde_json::from_slice::<WireError>(bytes) {
            Ok(e) => Err(from_wire(&self.name, e)),
            Err(_) => Err(self.error(format!(
                "{method} {path}: HTTP {status}: {}",
                String::from_utf8_lossy(bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ))),
        }
    }

    /// A transient error of this agent's.
    fn error(&self, message: String) -> RuntimeError {
        RuntimeError::Agent {
            agent: self.name.clone(),
            message,
            permanent: false,
            user_message: None,
        }
    }
}

/// reqwest's errors say "error sending request" and hide the cause in `source()`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
