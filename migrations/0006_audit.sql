-- 0006: the audit trail: who changed what, when, and how it ended.
-- Times are Unix epoch milliseconds (UTC) in INTEGER columns.

-- Append-only: triggers refuse UPDATE and DELETE, so a bug or a hand-typed statement cannot
-- rewrite history; removing rows takes a schema change that `heldar db check` would show.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,               -- tok_<n> | uid:<n> (control socket) | local | mqtt | anonymous
    source TEXT NOT NULL,              -- client address, `control socket`, or the MQTT topic
    action TEXT NOT NULL,              -- `POST /api/v1/cameras` | `mqtt config/camera/gate/set`
    status INTEGER NOT NULL,           -- HTTP status; for MQTT 200 applied, 400 refused
    detail TEXT                        -- the error message when refused or failed
) STRICT;
CREATE INDEX audit_by_time ON audit (at_ms);

CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;
