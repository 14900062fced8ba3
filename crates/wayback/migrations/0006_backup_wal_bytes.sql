-- The cluster's WAL-record counter (pg_stat_wal.wal_bytes) read just before each base backup
-- started, so that the schedule counts the WAL a restore from it would replay without the
-- padding segment switches leave. NULL for backups recorded before, or when it was unknown.
ALTER TABLE backups ADD COLUMN wal_bytes_at_start BIGINT;
