-- Restore drills (issue 18): one row per drill job. result is 'running' until the drill ends,
-- then 'passed' or 'failed'; report holds the whole DrillReport (wayback_api::drills) as JSON.
-- agent: the machine it ran on ('' for the broker's own), for the per-machine limit.
CREATE TABLE drills (
    job_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    result TEXT NOT NULL,
    report TEXT
);
CREATE INDEX drills_instance ON drills (instance_id, started_at);

-- At most one drill job waiting or running per instance.
CREATE UNIQUE INDEX jobs_one_drill ON jobs (instance_id) WHERE kind = 'drill' AND state = 'pending';
