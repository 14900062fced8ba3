-- Base backups, as the broker saw them finish (the archive's manifest.json files stay the source
-- of truth; this is the schedule's memory and the metrics' source).
CREATE TABLE backups (
    instance_id TEXT NOT NULL,
    backup_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    start_lsn TEXT NOT NULL,
    stop_lsn TEXT NOT NULL,
    stop_wal TEXT NOT NULL,
    stop_time BIGINT NOT NULL,
    raw_bytes BIGINT NOT NULL,
    stored_bytes BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    stream_ms BIGINT NOT NULL,
    archive_wait_ms BIGINT NOT NULL,
    -- The job that took it (the operator command reports its own job's backup).
    job_id TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (instance_id, backup_id)
);

-- At most one backup job waiting or running per instance: the schedule, a provision and an
-- operator may all ask at once, and a second copy of the same backup is only cost.
CREATE UNIQUE INDEX jobs_one_backup ON jobs (instance_id) WHERE kind = 'backup' AND state = 'pending';
