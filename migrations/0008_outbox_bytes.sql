-- 0008: the outbox's payload size as a running count of bytes, kept by triggers, so compaction
-- and `heldar outbox status` read one row instead of summing every payload inside the writer.
INSERT OR REPLACE INTO counters (name, value)
    SELECT 'outbox_bytes', COALESCE(SUM(length(CAST(payload AS BLOB))), 0) FROM outbox;

CREATE TRIGGER outbox_bytes_on_insert AFTER INSERT ON outbox BEGIN
    UPDATE counters SET value = value + length(CAST(NEW.payload AS BLOB)) WHERE name = 'outbox_bytes';
END;

CREATE TRIGGER outbox_bytes_on_delete AFTER DELETE ON outbox BEGIN
    UPDATE counters SET value = value - length(CAST(OLD.payload AS BLOB)) WHERE name = 'outbox_bytes';
END;
