//! A binding's `uri` as libpq reads it, multi-host included: an HA instance's binding names
//! every member (`postgres://u:p@h1:p1,h2:p2/db?target_session_attrs=read-write&…`), which
//! neither `url` nor sqlx parses. [`PgUri`] splits it into one single-host uri per member (the
//! order kept, `target_session_attrs` left out: libpq's, not the server's) so the walk can do
//! what libpq does: try each host in turn and keep the first whose session matches. Pure.
//! Must not import the broker's internals.

use anyhow::{anyhow, bail, Context};

/// A `postgres://` or `postgresql://` uri, its hosts apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PgUri {
    scheme: String,
    /// `user:password` as written (percent-encoded), without the `@`.
    userinfo: String,
    /// `host:port` each, as written (an IPv6 address in brackets, the port optional).
    pub(super) hosts: Vec<String>,
    /// `/database`, or empty.
    path: String,
    /// The query as written, without the `?`.
    query: String,
}

impl PgUri {
    pub(super) fn parse(uri: &str) -> anyhow::Result<PgUri> {
        let (scheme, rest) = uri
            .split_once("://")
            .filter(|(s, _)| matches!(*s, "postgres" | "postgresql"))
            .ok_or_else(|| anyhow!("not a postgres:// uri"))?;
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let (userinfo, hostlist) = authority.rsplit_once('@').unwrap_or(("", authority));
        let hosts: Vec<String> = hostlist.split(',').map(str::to_string).collect();
        if hosts.iter().any(|h| h.is_empty()) {
            bail!("the uri names an empty host");
        }
        Ok(PgUri {
            scheme: scheme.to_string(),
            userinfo: userinfo.to_string(),
            hosts,
            path: path.to_string(),
            query: query.to_string(),
        })
    }

    /// The uri of `host` alone, parsed by the `url` crate (for the user, the password and the
    /// query's pairs).
    fn url_of(&self, host: &str) -> anyhow::Result<reqwest::Url> {
        let at = if self.userinfo.is_empty() { "" } else { "@" };
        let text = format!(
            "{}://{}{at}{host}{}?{}",
            self.scheme, self.userinfo, self.path, self.query
        );
        reqwest::Url::parse(&text).with_context(|| format!("the binding's uri, host {host}"))
    }

    pub(super) fn username(&self) -> anyhow::Result<String> {
        Ok(self.url_of(&self.hosts[0])?.username().to_string())
    }

    /// The password as written in the uri (percent-encoded), if any.
    pub(super) fn password(&self) -> anyhow::Result<Option<String>> {
        Ok(self.url_of(&self.hosts[0])?.password().map(str::to_string))
    }

    /// `/database`, or empty.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The value of the query parameter `key`, decoded.
    pub(super) fn param(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .url_of(&self.hosts[0])?
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned()))
    }

    /// One uri per host, in order, with every query parameter but `target_session_attrs`.
    pub(super) fn per_host(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.hosts
            .iter()
            .map(|host| {
                let mut url = self.url_of(host)?;
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| k != "target_session_attrs")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.set_query(None);
                if !kept.is_empty() {
                    url.query_pairs_mut().extend_pairs(kept);
                }
                Ok((host.clone(), url.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_uri_splits_into_one_uri_per_member_in_order() {
        let u = PgUri::parse(
            "postgres://u_a:Pw1@10.0.0.5:40001,[::1]:40002/app?target_session_attrs=read-write&sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(u.hosts, ["10.0.0.5:40001", "[::1]:40002"]);
        assert_eq!(u.username().unwrap(), "u_a");
        assert_eq!(u.password().unwrap().as_deref(), Some("Pw1"));
        assert_eq!(u.path(), "/app");
        assert_eq!(
            u.param("target_session_attrs").unwrap().as_deref(),
            Some("read-write")
        );
        let per_host: Vec<String> = u.per_host().unwrap().into_iter().map(|(_, u)| u).collect();
        assert_eq!(
            per_host,
            [
                "postgres://u_a:Pw1@10.0.0.5:40001/app?sslmode=verify-full",
                "postgres://u_a:Pw1@[::1]:40002/app?sslmode=verify-full",
            ]
        );
    }

    #[test]
    fn a_single_host_uri_is_one_host() {
        let u = PgUri::parse("postgresql://u:p@db.example:5432/app?sslmode=require").unwrap();
        assert_eq!(u.hosts, ["db.example:5432"]);
        assert_eq!(
            u.per_host().unwrap()[0].1,
            "postgresql://u:p@db.example:5432/app?sslmode=require"
        );
        assert_eq!(u.param("target_session_attrs").unwrap(), None);
    }

    #[test]
    fn what_is_not_a_postgres_uri_is_refused() {
        for bad in ["http://h/db", "postgres://u:p@h1,,h2/db", "no scheme"] {
            assert!(PgUri::parse(bad).is_err(), "{bad}");
        }
    }
}
