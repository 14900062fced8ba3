-- Dashboard single sign-on (issue 19): sign-ins started and not yet finished. state_hash is
-- the SHA-256 (hex) of the OAuth2 `state` the browser carries, never the state itself;
-- verifier is the PKCE code verifier sealed with the keyring (bound to state_hash). A row is
-- deleted when its callback arrives (single use) and pruned after 10 minutes. Shared by every
-- broker of the state database, so a sign-in started on one finishes on another.
CREATE TABLE dashboard_logins (
    state_hash TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    verifier TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX dashboard_logins_created ON dashboard_logins (created_at);
