-- The audit trail: who asked for what (issue 12). One row per operation a request started,
-- in its own table with its own time, so that pruning finished jobs and operations never
-- removes it; `wayback` removes audit rows only after their own retention.
-- event: provision, clone, update, rename, deprovision, bind, unbind.
-- platform, user_id, identity: from X-Broker-API-Originating-Identity (NULL without it);
-- identity is the decoded object as compact JSON, at most 1 KiB.
-- detail: JSON of what the event needs besides (a clone's source and point in time, a plan).
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    binding_id TEXT,
    operation_id TEXT,
    platform TEXT,
    user_id TEXT,
    identity TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_instance ON audit_events (instance_id, at);
CREATE INDEX audit_events_at ON audit_events (at);
