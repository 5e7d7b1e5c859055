-- 0001: bookkeeping tables. Every time column is Unix epoch milliseconds (UTC) in an INTEGER.

-- One row per applied migration, written in the same transaction as the migration itself.
CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY,          -- the number in the migration's file name
    name TEXT NOT NULL,                   -- the file name without .sql
    applied_at_ms INTEGER NOT NULL,       -- wall clock when it was applied
    binary_version TEXT NOT NULL          -- version of the heldar binary that applied it
) STRICT;

-- One row per daemon start. A row whose stopped_at_ms stayed NULL after a later start means that
-- run ended without a clean stop: a power cut, SIGKILL, a panic or the systemd watchdog.
CREATE TABLE boots (
    id INTEGER PRIMARY KEY,
    started_at_ms INTEGER NOT NULL,
    stopped_at_ms INTEGER,                -- NULL while running, or forever if the run did not stop cleanly
    binary_version TEXT NOT NULL
) STRICT;
