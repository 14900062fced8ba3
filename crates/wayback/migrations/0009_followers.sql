-- Followers (issue 14) and read-only bindings.
-- leader_id: the instance a follower streams from (NULL: not a follower). A follower's
--   replication identity on its leader is the role wb_repl_<follower id, no dashes>, whose
--   password is replication_password, sealed with the operator's keys like binding passwords
--   (context "replication:<follower id>"; replication_password_key: the sealing key's id).
-- bindings.read_only: 1 when the binding's role may read the app database and never write.
ALTER TABLE instances ADD COLUMN leader_id TEXT;
ALTER TABLE instances ADD COLUMN replication_password TEXT;
ALTER TABLE instances ADD COLUMN replication_password_key TEXT;
CREATE INDEX instances_leader ON instances (leader_id);
ALTER TABLE bindings ADD COLUMN read_only BIGINT NOT NULL DEFAULT 0;
