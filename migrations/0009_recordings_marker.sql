-- 0009: the database's identity. The media service writes it into the recordings directory as a
-- marker (`.heldar-database-id`), so a start on a disk that did not mount, or on another box's
-- disk, is recognised before the start-up reconcile would take the index's rows for lost files.
CREATE TABLE database_identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id TEXT NOT NULL                   -- 32 lowercase hex digits, random, never changed
) STRICT;
INSERT INTO database_identity (singleton, id) VALUES (1, lower(hex(randomblob(16))));
