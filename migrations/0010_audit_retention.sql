-- 0010: audit retention. Audit rows stay append-only, with one exception: the retention pass may
-- delete rows older than the cutoff it writes into `audit_retention` in the same transaction.
-- A hand-typed DELETE of anything newer is still refused.
-- Times are Unix epoch milliseconds (UTC) in INTEGER columns.

-- At most one row, present only inside the retention pass's transaction.
CREATE TABLE audit_retention (
    before_ms INTEGER NOT NULL
) STRICT;

DROP TRIGGER audit_append_only_delete;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
WHEN OLD.at_ms >= COALESCE((SELECT MIN(before_ms) FROM audit_retention), -9223372036854775808)
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only; only the retention pass deletes rows past audit_max_age');
END;
