-- Wake on connect (issue 17): why the last wake of a stopped-when-idle instance failed (the
-- short reason its clients were told, never a path) and when (Unix ms, like stopped_at); NULL
-- when none failed since the cluster last started. Cleared with stopped_at once a start works.
ALTER TABLE instances ADD COLUMN wake_error TEXT;
ALTER TABLE instances ADD COLUMN wake_error_at BIGINT;
