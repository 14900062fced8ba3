-- Copies of deleted instances kept for a fast undo (issue 16).
-- kept_copies: one row per deleted instance whose data directory was moved aside on a machine
--   (agent: its agent's name; NULL: the broker's own machine) after a clean shutdown at
--   checkpoint_lsn. A clone takes it only if pg_control still says exactly that. expires_at:
--   Unix milliseconds after which it is removed (the plan's metadata.wayback.undo.keep_hours).
-- instances.restore_note: for a clone, how it was restored (shown when it succeeds).
CREATE TABLE kept_copies (
    instance_id TEXT PRIMARY KEY,
    agent TEXT,
    checkpoint_lsn TEXT NOT NULL,
    system_identifier TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    kept_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
ALTER TABLE instances ADD COLUMN restore_note TEXT;
