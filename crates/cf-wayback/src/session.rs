//! Who the user is and where: the token, API endpoint and space a command runs with, from
//! cf over RPC (plugin mode) or from `config.json` (standalone), and the broker found for
//! them. Commands receive a [`Session`] and never ask where it came from.
//! Imports `broker_client`, `cc_client`, `cli_error` and `discovery`.

use std::path::PathBuf;

use secrecy::SecretString;

use crate::broker_client::{BrokerApi, BrokerError, Listed};
use crate::cc_client::CcClient;
use crate::cli_error::CliError;
use crate::discovery::{self, BrokerMemory, Source};

pub struct Session {
    pub http: reqwest::Client,
    /// The CF API endpoint, with scheme, no trailing slash.
    pub api: String,
    pub token: SecretString,
    pub space_guid: String,
    pub space_name: String,
    /// Where `.cf/` lives, for remembering the broker; `None`: nothing remembered.
    pub cf_home: Option<PathBuf>,
    /// How the user runs commands, for hints: `cf` or `cf-wayback`.
    pub prefix: &'static str,
}

impl Session {
    pub fn cc(&self) -> CcClient<'_> {
        CcClient {
            http: &self.http,
            api: &self.api,
            token: &self.token,
        }
    }

    fn memory(&self) -> BrokerMemory {
        BrokerMemory::new(self.cf_home.as_deref())
    }

    /// The broker URL and where it came from; `rediscover` skips the remembered one.
    async fn broker_url(
        &self,
        flag: Option<&str>,
        rediscover: bool,
    ) -> Result<(String, Source), CliError> {
        if let Some(url) = flag.map(str::trim).filter(|u| !u.is_empty()) {
            return Ok((url.trim_end_matches('/').to_string(), Source::Flag));
        }
        if !rediscover {
            if let Some(url) = self.memory().recall(&self.api) {
                return Ok((url, Source::Remembered));
            }
        }
        match discovery::discover(&self.cc(), &self.space_guid)
            .await?
            .into_iter()
            .next()
        {
            Some(url) => Ok((url, Source::Discovered)),
            None => Err(discovery::not_found(&self.space_name, self.prefix)),
        }
    }

    /// The broker at `url` as this session's user.
    pub fn broker_at<'a>(&'a self, url: &'a str) -> BrokerApi<'a> {
        BrokerApi {
            http: &self.http,
            base: url,
            token: &self.token,
        }
    }

    /// The space's instances from the broker (`name`: those that have or had it), and the
    /// broker's URL. A remembered URL that does not answer is discovered again; a URL that
    /// worked is remembered for this API endpoint.
    pub async fn broker_instances(
        &self,
        flag: Option<&str>,
        name: Option<&str>,
    ) -> Result<(String, Vec<Listed>), CliError> {
        let (mut url, mut source) = self.broker_url(flag, false).await?;
        loop {
            let api = BrokerApi {
                http: &self.http,
                base: &url,
                token: &self.token,
            };
            match api
                .instances(&self.space_guid, &self.space_name, name)
                .await
            {
                Ok(list) => {
                    self.memory().remember(&self.api, &url);
                    return Ok((url, list));
                }
                Err(BrokerError::Unreachable(e)) if source == Source::Remembered => {
                    let (found, how) = match self.broker_url(flag, true).await {
                        Ok(found) => found,
                        Err(_) => return Err(e),
                    };
                    if found == url {
                        return Err(e);
                    }
                    (url, source) = (found, how);
                }
                Err(e) => {
                    let e = CliError::from(e);
                    return Err(match (source, e) {
                        (Source::Flag, CliError::Unreachable(m)) => CliError::Unreachable(format!(
                            "{m}\nCheck the URL given with --broker-url / WAYBACK_BROKER_URL."
                        )),
                        (_, e) => e,
                    });
                }
            }
        }
    }
}
