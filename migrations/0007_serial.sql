-- 0007: serial devices: relay pulses in progress, the last debounced state of each alarm
-- input, and the actions rules decided on.
-- Times are Unix epoch milliseconds (UTC) in INTEGER columns.

-- A pulse's end outlives the daemon: after a restart the relay still goes off on time (or at
-- once, if the end passed while the daemon was down).
CREATE TABLE relay_pulses (
    relay INTEGER PRIMARY KEY,         -- numbered from 1 (coil relay - 1)
    until_ms INTEGER NOT NULL
) STRICT;

-- Compared with the first reading after a start, so a change while the daemon was down is
-- still reported.
CREATE TABLE alarm_inputs (
    input INTEGER PRIMARY KEY,         -- numbered from 1 (discrete input input - 1)
    active INTEGER NOT NULL,
    changed_at_ms INTEGER NOT NULL
) STRICT;

-- One row per (outbox record, rule) that matched, written in the rules consumer's transaction
-- with its cursor: a record fires each rule exactly once, crash or not.
CREATE TABLE rule_actions (
    id INTEGER PRIMARY KEY,
    record_seq INTEGER NOT NULL,
    rule INTEGER NOT NULL,             -- index in [[rules]]
    action TEXT NOT NULL,              -- as written in the rule (`relay:1:pulse:2s`)
    created_at_ms INTEGER NOT NULL,
    done_at_ms INTEGER,                -- NULL while pending
    result TEXT,                       -- `ok` or the error
    UNIQUE (record_seq, rule)
) STRICT;
CREATE INDEX rule_actions_pending ON rule_actions (id) WHERE done_at_ms IS NULL;
