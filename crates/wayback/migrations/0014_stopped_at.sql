-- Idle stop (issue 17): stopped_at is when the instance's cluster was stopped because it was
-- idle (Unix ms, like every time here); NULL while it runs. Set by the idle_stop job once the
-- cluster is parked, cleared when a client's connection (or the broker) starts it again.
ALTER TABLE instances ADD COLUMN stopped_at BIGINT;
-- At most one idle_stop job waiting or running per instance.
CREATE UNIQUE INDEX jobs_one_idle_stop ON jobs (instance_id) WHERE kind = 'idle_stop' AND state = 'pending';
