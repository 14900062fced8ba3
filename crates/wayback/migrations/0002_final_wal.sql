-- Where a deleted instance's history ends: the LSN of its final WAL switch and when it happened.
ALTER TABLE instances ADD COLUMN final_lsn TEXT;
ALTER TABLE instances ADD COLUMN final_at BIGINT;
