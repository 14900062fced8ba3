-- Secrets at rest: binding passwords are sealed with the operator's keys (crypto module).
-- password_key: the id of the key that sealed `password`; NULL marks a row written before
-- sealing (a clear password), which the broker seals once at start (store::secrets).
ALTER TABLE bindings ADD COLUMN password_key TEXT;
