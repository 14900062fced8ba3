//! The checks types alone cannot make, each naming the key to fix.

use super::{ConfigError, Settings};

impl Settings {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if self.broker.username.is_empty() {
            return invalid("broker.username", "must not be empty");
        }
        if self.postgres.port_min == 0 || self.postgres.port_min > self.postgres.port_max {
            return invalid(
                "postgres.port_min",
                "must be at least 1 and not above postgres.port_max",
            );
        }
        if !(1..=1 << 20).contains(&self.postgres.log_keep_mb) {
            return invalid("postgres.log_keep_mb", "must be between 1 and 1048576");
        }
        if self.postgres.os_user.is_empty() {
            return invalid("postgres.os_user", "must not be empty");
        }
        if self.dashboard.enabled() {
            if self.dashboard.client_secret.is_none() {
                return invalid(
                    "dashboard.client_secret",
                    "is required when dashboard.client_id is set",
                );
            }
            if self.cc.api_url.is_none() {
                return invalid(
                    "dashboard.client_id",
                    "needs cc.api_url (the dashboard's sign-in asks the Cloud Controller and its UAA)",
                );
            }
            if !self
                .dashboard
                .client_id
                .bytes()
                .all(|b| b.is_ascii_graphic())
            {
                return invalid(
                    "dashboard.client_id",
                    "must be printable ASCII without spaces",
                );
            }
        }
        if !(1..=720).contains(&self.dashboard.session_minutes) {
            return invalid("dashboard.session_minutes", "must be between 1 and 720");
        }
        if let Err(m) = self.ha.check() {
            return invalid("ha.dcs_endpoints", &m);
        }
        if !(1..=86_400).contains(&self.diagnose.long_transaction_secs) {
            return invalid(
                "diagnose.long_transaction_secs",
                "must be between 1 and 86400",
            );
        }
        if !(0.0..=1.0).contains(&self.trash.min_free_share) {
            return invalid("trash.min_free_share", "must be between 0 and 1");
        }
        if self.jobs.concurrency == 0 {
            return invalid("jobs.concurrency", "must be at least 1");
        }
        if !(1..=16).contains(&self.jobs.background_concurrency) {
            return invalid("jobs.background_concurrency", "must be between 1 and 16");
        }
        if self.jobs.max_attempts == 0 {
            return invalid("jobs.max_attempts", "must be at least 1");
        }
        if self.jobs.lease_secs < 2 {
            return invalid("jobs.lease_secs", "must be at least 2");
        }
        if !(0..=19).contains(&self.wal.compression_level) {
            return invalid("wal.compression_level", "must be between 0 and 19");
        }
        if self.wal.archive_timeout_secs == 0 {
            return invalid("wal.archive_timeout_secs", "must be at least 1");
        }
        if !(1..=19).contains(&self.backup.compression_level) {
            return invalid("backup.compression_level", "must be between 1 and 19");
        }
        if !(1..=16).contains(&self.backup.uploads_in_flight) {
            return invalid("backup.uploads_in_flight", "must be between 1 and 16");
        }
        if !((64 << 10)..=(1 << 30)).contains(&self.backup.part_bytes) {
            return invalid("backup.part_bytes", "must be between 65536 and 1073741824");
        }
        if self.backup.stream_timeout_secs == 0 {
            return invalid("backup.stream_timeout_secs", "must be at least 1");
        }
        if self.backup.stall_timeout_secs == 0 {
            return invalid("backup.stall_timeout_secs", "must be at least 1");
        }
        if self.retention.interval_secs == 0 {
            return invalid("retention.interval_secs", "must be at least 1");
        }
        if self.http.max_body_bytes < 1024 {
            return invalid("http.max_body_bytes", "must be at least 1024");
        }
        if !self.agents.urls.is_empty() {
            if self.agents.password.is_none() {
                return invalid(
                    "agents.password",
                    "agents.urls is set: the agents' basic-auth password is needed too",
                );
            }
            if self.agents.username.is_empty() {
                return invalid("agents.username", "must not be empty");
            }
            if self.agents.request_timeout_secs == 0 || self.agents.connect_timeout_secs == 0 {
                return invalid("agents.request_timeout_secs", "timeouts must be at least 1");
            }
        }
        if self.agent.tls_cert.is_some() != self.agent.tls_key.is_some() {
            return invalid(
                "agent.tls_cert",
                "agent.tls_cert and agent.tls_key go together: set both or neither",
            );
        }
        if self.agent.max_instances == 0 {
            return invalid("agent.max_instances", "must be at least 1");
        }
        if self.cc.api_url.is_some() {
            if self.cc.client_id.is_empty() || self.cc.client_secret.is_none() {
                return invalid(
                    "cc.client_id",
                    "cc.api_url is set: cc.client_id and cc.client_secret are needed too",
                );
            }
            if self.cc.attempts == 0 {
                return invalid("cc.attempts", "must be at least 1");
            }
            if self.cc.request_timeout_secs == 0 || self.cc.connect_timeout_secs == 0 {
                return invalid("cc.request_timeout_secs", "timeouts must be at least 1");
            }
        }
        if self.cc.reconcile_interval_secs == 0 {
            return invalid("cc.reconcile_interval_secs", "must be at least 1");
        }
        if let Err((key, message)) = self.encryption.check() {
            return invalid(key, &message);
        }
        if self.metrics.auth == super::MetricsAuth::Own {
            if self.metrics.password.is_none() {
                return invalid(
                    "metrics.password",
                    "metrics.auth is `own`: a password for GET /metrics is needed",
                );
            }
            if self.metrics.username.is_empty() {
                return invalid("metrics.username", "must not be empty");
            }
        }
        if let Err((key, message)) = self.tls.check() {
            return invalid(key, message);
        }
        Ok(())
    }
}
