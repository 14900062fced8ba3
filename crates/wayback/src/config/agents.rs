//! The broker's agents (`agents.*`) and this process as an agent (`agent.*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

/// broker's own machine).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsSettings {
    /// `name=https://host:port` entries, comma separated. The name is recorded with each
    /// instance placed there, so it must stay the same when the agent's address changes.
    pub urls: Vec<AgentEndpoint>,
    /// Basic-auth user name every agent accepts.
    pub username: String,
    pub password: Option<SecretString>,
    /// PEM file of the CA (or self-signed certificate) the agents' TLS certificates chain to.
    pub ca_cert: Option<PathBuf>,
    pub connect_timeout_secs: u64,
    /// The longest one ordinary call to an agent may take (backups and restores are polled).
    pub request_timeout_secs: u64,
}

/// One agent: its stable name and its base URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentEndpoint {
    pub name: String,
    pub url: String,
}

impl Default for AgentsSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            username: "wayback-agent".into(),
            password: None,
            ca_cert: None,
            connect_timeout_secs: 5,
            // Above an agent's own postgres.start_timeout_secs (60): a start answers in time.
            request_timeout_secs: 120,
        }
    }
}

/// `wayback agent`: the clusters of this VM behind an authenticated HTTP(S) API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    pub listen: SocketAddr,
    pub username: String,
    pub password: Option<SecretString>,
    /// PEM certificate chain and private key; both unset: plain HTTP (tests and labs only).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Most instances this agent takes (also bounded by the port range).
    pub max_instances: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".parse().expect("static address"),
            username: "wayback-agent".into(),
            password: None,
            tls_cert: None,
            tls_key: None,
            max_instances: 50,
        }
    }
}

/// Parses `name=url[,name=url…]`.
pub fn parse_agent_list(v: &str) -> Result<Vec<AgentEndpoint>, String> {
    let mut out: Vec<AgentEndpoint> = Vec::new();
    for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?} is not name=URL"))?;
        let (name, url) = (name.trim(), url.trim().trim_end_matches('/'));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "agent name {name:?} must be letters, digits, '-', '_' or '.'"
            ));
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!("agent {name}: {url:?} is not an http(s) URL"));
        }
        if out.iter().any(|a| a.name == name) {
            return Err(format!("agent name {name:?} appears twice"));
        }
        out.push(AgentEndpoint {
            name: name.to_string(),
            url: url.to_string(),
        });
    }
    Ok(out)
}
