-- instance.json bookkeeping and the reaper's record.
-- doc_hash: SHA-256 of the instance.json last written to the archive; NULL when it is missing or
-- stale (a write failed): the broker's maintenance pass rewrites those.
-- reaped_at: when the reaper removed the deleted instance's WAL and base backups.
ALTER TABLE instances ADD COLUMN doc_hash TEXT;
ALTER TABLE instances ADD COLUMN reaped_at BIGINT;
